"""site.yaml with zeroinit_provisioner_mode=service: the master elects and rotates as in the one-shot mode
(test_site.py; one master here, the switch is what is tested), then the provisioner service is installed on it
(role provisioner) instead of the controller's bulk run, and it provisions the fleet waiting on the brokers with
no play running; a mode that is neither refuses before anything runs."""

from __future__ import annotations

import asyncio
import json
import os
import pathlib
import sys

import pytest
from cryptography import x509

from tests.support.ansible_run import run_playbook
from tests.support.broker import EmbeddedBroker
from tests.support.fleet import AgentFleet, discover
from tests.support.netns import TestNetwork
from tests.support.site import OCSP_URL, make_site
from tests.support.ssh import keygen

pytestmark = [pytest.mark.netns, pytest.mark.slow]
NODES = 4
TOKEN = "site-service-token"
CTL = "/opt/zeroinit/provisioner/zeroinit-provisionerctl"


@pytest.fixture
def site(tmp_path):
    bootstrap, public_key = keygen(tmp_path, "bootstrap")
    net = TestNetwork.create("sitesvc", 1, authorized_keys=public_key)
    service_host = net.hosts[0]
    broker = None
    try:
        os.makedirs(service_host.path("/etc/zeroinit/ca"), exist_ok=True)
        broker = EmbeddedBroker(host=net.bridge_address).start()
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
        secrets = make_site(tmp_path / "site", name="sitesvc")  # site.yaml keeps what init-site made
        extra = {
            "zeroinit_site_dir": str(secrets["dir"]),
            "key_rotation_private_key": str(tmp_path / "controller" / "site_ed25519"),
            "zeroinit_provisioner_mode": "service",
            "zeroinit_provisioner_hosts": service_host.name,
            "provisioner_site": "sitesvc",
            "provisioner_brokers": [broker.url],
            "provisioner_token": TOKEN,
            "provisioner_python": sys.executable,
            "provisioner_monitor_address": "{{ ansible_host }}",
            "provisioner_signer": {
                "ca_cert": "/etc/zeroinit/ca/ca.pem",
                "ca_key": "/etc/zeroinit/ca/ca-key.pem",
                "create_ca": True,
                "allowed_sans": [r"^node\d+\.fleet\.example\.net$"],
                # site.yaml refuses a service whose certificates would not name the site's OCSP responder
                "ocsp_url": OCSP_URL,
            },
            "provisioner_configuration": {
                "plugin.choria.middleware_hosts": broker.url,
                "collectives": "sitesvc",
                "main_collective": "sitesvc",
            },
        }
        yield {
            "net": net,
            "host": service_host,
            "broker": broker,
            "inventory": inventory,
            "extra": extra,
            "password": secrets["password"],
        }
    finally:
        try:
            service_host.run([CTL, "stop"], check=False, timeout=120)
        finally:
            if broker is not None:
                broker.stop()
            net.destroy()


def test_site_in_service_mode_installs_the_service_which_provisions_the_fleet(site, tmp_path):
    host, broker = site["host"], site["broker"]
    with AgentFleet(broker.url, NODES, tmp_path / "fleet", token=TOKEN) as fleet:
        run = run_playbook(
            "playbooks/site.yaml",
            inventory=site["inventory"],
            extra_vars=site["extra"],
            args=["--vault-password-file", site["password"]],
        )
        assert run.rc == 0, run.stdout[-4000:] + run.stderr[-2000:]
        assert run.result("Provision the workers waiting on the site's provisioning brokers")["skipped"] is True, (
            "no one-shot run from the controller"
        )
        health = run.result("Wait for the service's /healthz", host.name)
        assert health["status"] == 200
        assert TOKEN not in run.stdout + run.stderr

        members = asyncio.run(discover(broker.url, fleet.identities, 90, collective="sitesvc"))
        log = pathlib.Path(host.path("/var/lib/zeroinit/zeroinit-provisioner.log"))
        assert members == fleet.identities, log.read_text()[-4000:] if log.exists() else "(no service log)"
        ca = x509.load_pem_x509_certificate(pathlib.Path(host.path("/etc/zeroinit/ca/ca.pem")).read_bytes())
        for identity in fleet.identities:
            cert = x509.load_pem_x509_certificate((fleet.node_dir(identity) / "ssl" / "certificate.pem").read_bytes())
            cert.verify_directly_issued_by(ca)


def test_site_refuses_an_unknown_provisioner_mode_before_anything_runs():
    run = run_playbook("playbooks/site.yaml", extra_vars={"zeroinit_provisioner_mode": "daemon"})
    assert run.rc != 0
    assert "zeroinit_provisioner_mode must be oneshot or service, not daemon" in run.stdout, run.stdout[-3000:]
    assert [task["task"]["name"] for task in run.tasks()] == ["Check zeroinit_provisioner_mode"]
