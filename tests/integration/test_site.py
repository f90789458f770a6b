"""site.yaml end to end: two namespace masters with sshd trusting a bootstrap key, a broker host, and a fleet
waiting in provisioning mode with the site's token. One run elects, rotates, runs the site's brokers and makes every
worker a member over TLS with a certificate from the site CA; a second run changes nothing anywhere."""

from __future__ import annotations

import asyncio
import json
import ssl
import subprocess
import sys

import pytest
from cryptography import x509
from cryptography.x509.oid import AuthorityInformationAccessOID

from ansible_collections.zeroinit.bootstrap.plugins.module_utils.choria.security import ca_key_fingerprints
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.node.state import SITE_LOCK_FILE
from tests.support.ansible_run import run_playbook
from tests.support.broker import find_nats_server
from tests.support.fleet import AgentFleet, discover
from tests.support.netns import TestNetwork
from tests.support.site import OCSP_URL, make_site, unlocked, vault

pytestmark = pytest.mark.netns

NODES = 6


def keygen(path):
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "bootstrap", "-f", str(path)], check=True)
    return path.with_suffix(".pub").read_text()


@pytest.fixture
def site(tmp_path):
    bootstrap = tmp_path / "bootstrap"
    net = TestNetwork.create("site", 3, authorized_keys=keygen(bootstrap))
    masters, broker = net.hosts[:2], net.hosts[2]
    try:
        secrets = make_site(tmp_path / "site", name="lab")
        token = vault().decrypt((secrets["dir"] / "token").read_bytes()).decode()
        hosts = net.ansible_hosts(bootstrap, ansible_pipelining=True)
        inventory = tmp_path / "inventory.json"
        inventory.write_text(
            json.dumps(
                {
                    "all": {
                        "children": {
                            "masters": {"hosts": {h.name: hosts[h.name] for h in masters}},
                            "brokers": {"hosts": {broker.name: hosts[broker.name]}},
                        },
                        "hosts": {"localhost": {"ansible_connection": "local"}},
                    }
                }
            )
        )
        extra = {
            "key_rotation_private_key": str(tmp_path / "controller" / "site_ed25519"),
            "zeroinit_site_dir": str(secrets["dir"]),
            "zeroinit_site_name": "lab",
            "zeroinit_site_signer_options": {"allowed_sans": [r"^node\d+\.fleet\.example\.net$"]},
            "zeroinit_provision_expect": NODES,
            "zeroinit_provision_wait": 90,
            "zeroinit_provision_fail_on_node_error": True,
            "broker_nats_server": find_nats_server(),
            "broker_python": sys.executable,
            "broker_supervisor": "background",
        }
        # The fleet boots before its broker exists and retries until site.yaml starts it; its image pins the site's
        # provisioning CA, so only the site's provisioner is obeyed.
        pinned = ["--provisioning-ca", str(secrets["dir"] / "provisioning-ca.pem")]
        broker_url = f"nats://{broker.address}:4222"
        fleet = AgentFleet(broker_url, NODES, tmp_path / "fleet", token=token, extra_args=pinned).launch()
        try:
            yield {
                "net": net,
                "masters": masters,
                "broker": broker,
                "fleet": fleet,
                "secrets": secrets,
                "inventory": inventory,
                "extra": extra,
                "bootstrap": bootstrap,
                "tmp": tmp_path,
            }
        finally:
            fleet.stop()
    finally:
        try:
            broker.run(["/opt/zeroinit/broker/zeroinit-brokerctl", "stop", "all"], check=False, timeout=60)
        finally:
            net.destroy()


def run_site(site, **extra):
    return run_playbook(
        "playbooks/site.yaml",
        inventory=site["inventory"],
        extra_vars=dict(site["extra"], **extra),
        args=["--vault-password-file", site["secrets"]["password"]],
    )


def members(site) -> list:
    secrets = site["secrets"]
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(secrets["dir"] / "ca.pem"))
    key = unlocked(secrets, "operator-key.pem", site["tmp"])
    context.load_cert_chain(str(secrets["dir"] / "operator.pem"), key)
    url = f"tls://{site['broker'].address}:4223"
    return asyncio.run(discover(url, site["fleet"].identities, 20.0, collective="lab", tls=context))


def test_site_elects_rotates_runs_the_brokers_and_makes_every_worker_a_member_then_changes_nothing(site):
    net, fleet, tmp = site["net"], site["fleet"], site["tmp"]
    first = run_site(site)
    assert first.rc == 0, first.stdout[-4000:] + first.stderr[-2000:]

    lowest = min(site["masters"], key=lambda h: h.int_id)
    leaders = {
        first.result("Publish the election result as facts", h.name)["ansible_facts"]["zeroinit_leader"]
        for h in site["masters"]
    }
    assert leaders == {lowest.address}
    new_key = tmp / "controller" / "site_ed25519"
    for host in site["masters"]:
        assert net.login(host, new_key).returncode == 0, f"new key does not log in to {host.name}"
        assert net.login(host, site["bootstrap"]).returncode != 0, f"sshd accepts the bootstrap key on {host.name}"

    ca = x509.load_pem_x509_certificate((site["secrets"]["dir"] / "ca.pem").read_bytes())
    provisioning_ca_keys = list(ca_key_fingerprints((site["secrets"]["dir"] / "provisioning-ca.pem").read_text()))
    for identity in fleet.identities:
        node = fleet.node_dir(identity)
        conf = (node / "server.conf").read_text()
        assert "plugin.choria.server.provision = false" in conf
        assert f"plugin.choria.middleware_hosts = tls://{site['broker'].address}:4223" in conf
        assert "plugin.zeroinit.renewal.enabled = true" in conf
        cert = x509.load_pem_x509_certificate((node / "ssl" / "certificate.pem").read_bytes())
        cert.verify_directly_issued_by(ca)
        assert cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value == identity
        access = cert.extensions.get_extension_for_class(x509.AuthorityInformationAccess).value
        assert [d.access_location.value for d in access if d.access_method == AuthorityInformationAccessOID.OCSP] == [
            OCSP_URL
        ]
        # Configured by a request the site's provisioner signed: the node is locked to the site's provisioning CA too.
        lock = json.loads((node / SITE_LOCK_FILE).read_text())
        assert lock["provisioning_ca_keys_sha256"] == provisioning_ca_keys
    assert members(site) == fleet.identities

    # The inventory still names the bootstrap key: the run logs in with the rotated one where it works.
    second = run_site(site, zeroinit_provision_wait=0)
    assert second.rc == 0, second.stdout[-4000:] + second.stderr[-2000:]
    assert {host: stats["changed"] for host, stats in second.stats.items()} == dict.fromkeys(second.stats, 0)


def test_site_in_service_mode_refuses_a_signer_without_the_sites_ocsp_responder(tmp_path):
    # Checked before anything runs: no master, broker or secret is touched.
    signer = {"ca_cert": "/etc/zeroinit/provisioner/ca.pem", "ca_key": "/etc/zeroinit/provisioner/ca-key.pem"}
    result = run_playbook(
        "playbooks/site.yaml",
        extra_vars={
            "zeroinit_site_dir": str(tmp_path / "site"),
            "zeroinit_provisioner_mode": "service",
            "provisioner_signer": signer,
        },
    )
    assert result.rc != 0
    message = result.result("Check the service's signer names the site's OCSP responder", "localhost")["msg"]
    assert "provisioner_signer needs ocsp_url (the site's OCSP responder, http://127.0.0.1:8889/)" in message
    assert not (tmp_path / "site").exists()
