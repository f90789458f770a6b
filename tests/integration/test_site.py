"""site.yaml end to end: three namespace masters with sshd trusting a bootstrap key, and a fleet waiting on a
provisioning broker. One run elects, rotates and provisions; a second run changes nothing anywhere."""

from __future__ import annotations

import json
import subprocess

import pytest
from cryptography import x509

from tests.support.ansible_run import run_playbook
from tests.support.fleet import AgentFleet
from tests.support.netns import TestNetwork

NODES = 6
TOKEN = "site-token"


def keygen(path):
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "bootstrap", "-f", str(path)], check=True)
    return path.with_suffix(".pub").read_text()


@pytest.fixture
def site(tmp_path, nats_broker):
    bootstrap = tmp_path / "bootstrap"
    net = TestNetwork.create("site", 3, authorized_keys=keygen(bootstrap))
    try:
        with AgentFleet(nats_broker.url, NODES, tmp_path / "fleet", token=TOKEN) as fleet:
            inventory = tmp_path / "inventory.json"
            inventory.write_text(
                json.dumps(
                    {
                        "all": {
                            "children": {"masters": {"hosts": net.ansible_hosts(bootstrap)}},
                            "hosts": {"localhost": {"ansible_connection": "local"}},
                        }
                    }
                )
            )
            extra = {
                "key_rotation_private_key": str(tmp_path / "controller" / "site_ed25519"),
                "zeroinit_provision_brokers": [nats_broker.url],
                "zeroinit_provision_token": TOKEN,
                "zeroinit_provision_expect": NODES,
                "zeroinit_provision_signer": {
                    "ca_cert": str(tmp_path / "ca" / "ca.pem"),
                    "ca_key": str(tmp_path / "ca" / "ca-key.pem"),
                    "create_ca": True,
                    "allowed_sans": [r"^node\d+\.fleet\.example\.net$"],
                },
                "zeroinit_provision_configuration": {"collectives": "site", "main_collective": "site"},
            }
            (tmp_path / "ca").mkdir()
            yield {
                "net": net,
                "fleet": fleet,
                "inventory": inventory,
                "extra": extra,
                "bootstrap": bootstrap,
                "tmp": tmp_path,
            }
    finally:
        net.destroy()


def test_site_elects_rotates_and_provisions_then_changes_nothing(site):
    net, fleet, tmp = site["net"], site["fleet"], site["tmp"]
    first = run_playbook("playbooks/site.yaml", inventory=site["inventory"], extra_vars=site["extra"])
    assert first.rc == 0, first.stdout[-4000:] + first.stderr[-2000:]

    lowest = min(net.hosts, key=lambda h: h.int_id)
    leaders = {
        first.result("Publish the election result as facts", h.name)["ansible_facts"]["zeroinit_leader"]
        for h in net.hosts
    }
    assert leaders == {lowest.address}

    new_key = tmp / "controller" / "site_ed25519"
    for host in net.hosts:
        assert net.login(host, new_key).returncode == 0, f"new key does not log in to {host.name}"
        assert net.login(host, site["bootstrap"]).returncode != 0, (
            f"sshd still accepts the bootstrap key on {host.name}"
        )

    ca = x509.load_pem_x509_certificate((tmp / "ca" / "ca.pem").read_bytes())
    for identity in fleet.identities:
        node = fleet.node_dir(identity)
        assert "plugin.choria.server.provision = false" in (node / "server.conf").read_text()
        cert = x509.load_pem_x509_certificate((node / "ssl" / "certificate.pem").read_bytes())
        cert.verify_directly_issued_by(ca)
        assert cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value == identity

    # The inventory still names the bootstrap key: the run logs in with the rotated one where it works.
    second = run_playbook("playbooks/site.yaml", inventory=site["inventory"], extra_vars=site["extra"])
    assert second.rc == 0, second.stdout[-4000:] + second.stderr[-2000:]
    assert {host: stats["changed"] for host, stats in second.stats.items()} == dict.fromkeys(second.stats, 0)
