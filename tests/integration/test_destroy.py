"""destroy.yaml against a real site: brokers on a namespace host (the broker role), a fleet provisioned with the site
CA, and each way of confirming, refusing, and taking nodes out."""

from __future__ import annotations

import asyncio
import json
import os
import shutil

import pytest
from cryptography import x509

from ansible_collections.zeroinit.bootstrap.plugins.module_utils.provisioning.rpc import RpcClient
from tests.support.ansible_run import run_playbook
from tests.support.certificates import Authority
from tests.support.fleet import AgentFleet, discover
from tests.support.site import OCSP_URL, members_connect, unlocked, vault

pytestmark = pytest.mark.netns

NODES = 4
IDENTITIES = [f"node{i}.fleet.example.net" for i in range(1, NODES + 1)]


@pytest.fixture(scope="module")
def fleet(site_broker, tmp_path_factory):
    assert site_broker.first.rc == 0, site_broker.explain(site_broker.first)
    tmp = tmp_path_factory.mktemp("destroy")
    site = site_broker.site
    token = vault().decrypt((site["dir"] / "token").read_bytes()).decode()
    # The nodes pin the site's provisioning CA, as an image made for the site does: provisioning, and destroy after it
    # (a configured node is locked to its site), are signed by the site's provisioner.
    pinned = ["--provisioning-ca", str(site["dir"] / "provisioning-ca.pem")]
    with AgentFleet(site_broker.provisioning_url, NODES, tmp / "fleet", token=token, extra_args=pinned) as agents:
        ca_key = unlocked(site, "ca-key.pem", tmp)
        provisioner_key = unlocked(site, "provisioner-key.pem", tmp)
        try:
            provisioned = run_playbook(
                "playbooks/provision_fleet.yaml",
                extra_vars={
                    "zeroinit_provision_brokers": [site_broker.provisioning_url],
                    "zeroinit_provision_token": token,
                    "zeroinit_provision_expect": NODES,
                    "zeroinit_provision_fail_on_node_error": True,
                    "zeroinit_provision_signing_cert": str(site["dir"] / "provisioner.pem"),
                    "zeroinit_provision_signing_key": provisioner_key,
                    "zeroinit_provision_signer": {
                        "ca_cert": str(site["dir"] / "ca.pem"),
                        "ca_key": ca_key,
                        "allowed_sans": [r"^node\d+\.fleet\.example\.net$"],
                        "ocsp_url": OCSP_URL,
                    },
                    "zeroinit_provision_configuration": {
                        "plugin.choria.middleware_hosts": site_broker.members_url,
                        "collectives": "lab",
                        "main_collective": "lab",
                    },
                },
            )
        finally:
            os.unlink(ca_key)
            os.unlink(provisioner_key)
        assert provisioned.rc == 0, provisioned.stdout[-3000:]
        assert sorted(members(site_broker, tmp)) == IDENTITIES, agents.log_tail()
        yield {"agents": agents, "tmp": tmp, "site": site}


def operator_tls(site_broker, tmp) -> dict:
    site = site_broker.site
    return {
        "ca": str(site["dir"] / "ca.pem"),
        "cert": str(site["dir"] / "operator.pem"),
        "key": unlocked(site, "operator-key.pem", tmp),
    }


def members(site_broker, tmp, timeout=20.0) -> list:
    """The nodes answering discovery in the members' collective, asked over TLS with the operator certificate."""
    import ssl

    tls = operator_tls(site_broker, tmp)
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=tls["ca"])
    context.load_cert_chain(tls["cert"], tls["key"])
    return asyncio.run(discover(site_broker.members_url, IDENTITIES, timeout, collective="lab", tls=context))


def waiting(site_broker, wanted, timeout=20.0) -> list:
    return asyncio.run(discover(site_broker.provisioning_url, wanted, timeout))


def destroy(site_broker, *, confirm=None, after=None, limit=None, check=False, listed=IDENTITIES, **variables):
    """destroy.yaml with the ``listed`` nodes in the inventory's members group (confirm=all finds the others)."""
    extra = {"zeroinit_site_dir": str(site_broker.site["dir"]), "zeroinit_site_name": "lab", **variables}
    if confirm is not None:
        extra["confirm"] = confirm
    if after is not None:
        extra["after"] = after
    inventory = site_broker.inventory(members={name: {"ansible_connection": "local"} for name in listed})
    return site_broker.play("playbooks/destroy.yaml", inventory=inventory, limit=limit, check=check, **extra)


def failure_messages(result) -> str:
    return " ".join(
        host_result.get("msg", "")
        for task in result.tasks()
        for host_result in task.get("hosts", {}).values()
        if host_result.get("failed")
    )


def state(agents, identity) -> list:
    node = agents.node_dir(identity)
    return sorted(str(p.relative_to(node)) for p in node.rglob("*") if p.is_file())


@pytest.mark.parametrize(
    "confirm, after, limit, needle",
    [
        (None, None, None, "-e confirm=host -l <nodes>"),
        ("yes", None, None, 'confirm must be host (with -l) or all, not "yes"'),
        ("host", None, None, "confirm=host destroys the nodes -l names, and no -l was given"),
        ("all", None, IDENTITIES[0], "confirm=all destroys every node, and -l"),
        ("all", "reboot", None, 'after must be reprovision or shutdown, not "reboot"'),
    ],
)
def test_destroy_refuses_anything_but_an_exact_confirmation_and_touches_nothing(
    site_broker, fleet, confirm, after, limit, needle
):
    before = {identity: state(fleet["agents"], identity) for identity in IDENTITIES}
    result = destroy(site_broker, confirm=confirm, after=after, limit=limit)
    assert result.rc != 0
    assert needle in failure_messages(result), result.stdout[-3000:]
    assert {identity: state(fleet["agents"], identity) for identity in IDENTITIES} == before


def test_destroy_in_check_mode_asks_each_node_and_changes_nothing(site_broker, fleet):
    crl = (site_broker.site["dir"] / "crl.pem").read_bytes()
    result = destroy(site_broker, confirm="all", check=True)
    assert result.rc == 0, failure_messages(result) + site_broker.explain(result)
    assert all("would be wiped" in result.result("Report what was destroyed and revoked", n)["msg"] for n in IDENTITIES)
    assert (site_broker.site["dir"] / "crl.pem").read_bytes() == crl
    assert sorted(members(site_broker, fleet["tmp"])) == IDENTITIES


def test_destroy_signed_by_another_sites_provisioner_is_refused_and_removes_nothing(site_broker, fleet):
    node = IDENTITIES[2]
    other = Authority("another site's provisioning CA").issue("prov.other.example.net")
    (fleet["tmp"] / "other-provisioner.pem").write_text(other.pem)
    (fleet["tmp"] / "other-provisioner-key.pem").write_text(other.key_pem)
    os.chmod(fleet["tmp"] / "other-provisioner-key.pem", 0o600)
    before = state(fleet["agents"], node)
    crl = (site_broker.site["dir"] / "crl.pem").read_bytes()
    result = destroy(
        site_broker,
        confirm="host",
        limit=node,
        zeroinit_provision_signing_cert=str(fleet["tmp"] / "other-provisioner.pem"),
        zeroinit_provision_signing_key=str(fleet["tmp"] / "other-provisioner-key.pem"),
    )
    assert result.rc != 0
    assert f"request not authenticated by {node}" in failure_messages(result), site_broker.explain(result)
    assert state(fleet["agents"], node) == before
    assert (site_broker.site["dir"] / "crl.pem").read_bytes() == crl
    assert sorted(members(site_broker, fleet["tmp"])) == IDENTITIES


def test_destroy_one_node_revokes_its_certificate_wipes_it_and_shuts_it_down(site_broker, fleet):
    agents, node = fleet["agents"], IDENTITIES[0]
    stolen = fleet["tmp"] / "stolen"
    stolen.mkdir()
    for name in ("certificate.pem", "private.pem", "ca.pem"):
        shutil.copy(agents.node_dir(node) / "ssl" / name, stolen / name)
    serial = x509.load_pem_x509_certificate((stolen / "certificate.pem").read_bytes()).serial_number
    url = site_broker.members_url
    assert (
        members_connect(url, str(stolen / "ca.pem"), str(stolen / "certificate.pem"), str(stolen / "private.pem"))
        == "connected"
    )

    result = destroy(site_broker, confirm="host", after="shutdown", limit=node)
    assert result.rc == 0, failure_messages(result) + site_broker.explain(result)
    assert state(agents, node) == []
    records = json.loads((site_broker.site["dir"] / "revocations.json").read_text())
    assert {(r["serial"], r["identity"]) for r in records["revoked"]} >= {(f"{serial:x}", node)}
    crl = x509.load_pem_x509_crl((site_broker.site["dir"] / "crl.pem").read_bytes())
    assert crl.get_revoked_certificate_by_serial_number(serial) is not None
    refused = members_connect(url, str(stolen / "ca.pem"), str(stolen / "certificate.pem"), str(stolen / "private.pem"))
    assert refused.startswith("refused"), site_broker.logs()
    assert sorted(members(site_broker, fleet["tmp"])) == IDENTITIES[1:]
    assert waiting(site_broker, [node], timeout=3) == []  # shut down, not waiting for provisioning


def test_destroy_with_after_reprovision_brings_the_node_back_in_provisioning_mode(site_broker, fleet):
    node = IDENTITIES[1]
    result = destroy(site_broker, confirm="host", limit=node)
    assert result.rc == 0, failure_messages(result) + site_broker.explain(result)
    assert waiting(site_broker, [node]) == [node]
    assert state(fleet["agents"], node) == []
    assert node not in members(site_broker, fleet["tmp"], timeout=3)


def test_destroy_all_leaves_no_node_state_and_no_member_connected(site_broker, fleet):
    # Nobody listed: "all" is every node that answers on the site's brokers (node1 was shut down before).
    result = destroy(site_broker, confirm="all", listed=())
    assert result.rc == 0, failure_messages(result) + site_broker.explain(result)
    assert set(result.stats) - {"localhost"} == set(IDENTITIES[1:])
    for identity in IDENTITIES:
        assert state(fleet["agents"], identity) == [], identity
    assert members(site_broker, fleet["tmp"], timeout=3) == []
    connz = site_broker.connections()
    assert connz["num_connections"] == 0, connz

    async def ping_nobody() -> list:
        async with RpcClient([site_broker.provisioning_url]) as client:
            return await client.discover(timeout=2)

    assert sorted(asyncio.run(ping_nobody())) == IDENTITIES[1:]  # back in provisioning mode, with no state
