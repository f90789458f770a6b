"""The provisioner role over SSH on a network-namespace host, against a real nats-server: it installs and starts
the service, /healthz answers, a waiting fleet gets provisioned by the service, choria_provision drives it
(status, pause, resume), a refused configuration leaves the running service alone, a second run changes
nothing."""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import pathlib
import sys
import time

import pytest
from cryptography import x509

from tests.support import netns
from tests.support.ansible_run import run_module, run_playbook
from tests.support.broker import EmbeddedBroker
from tests.support.fleet import AgentFleet, discover
from tests.support.ssh import keygen

pytestmark = [pytest.mark.netns, pytest.mark.slow]
NODES = 5
TOKEN = "service-role-token"
SITE = "rolesite"
MONITOR_PORT = 9180
CTL = "/opt/zeroinit/provisioner/zeroinit-provisionerctl"
PIDFILE = "/var/lib/zeroinit/zeroinit-provisioner.pid"

PLAY = f"""
- name: Run the provisioner service
  hosts: provisioners
  gather_facts: false
  roles:
    - role: zeroinit.bootstrap.provisioner
      vars:
        provisioner_site: {SITE}
        provisioner_brokers: ["{{{{ broker_url }}}}"]
        provisioner_token: {TOKEN}
        provisioner_python: {sys.executable}
        provisioner_interval: 10s
        provisioner_workers: 10
        provisioner_monitor_address: "{{{{ ansible_host }}}}"
        provisioner_signer:
          ca_cert: /etc/zeroinit/ca/ca.pem
          ca_key: /etc/zeroinit/ca/ca-key.pem
          create_ca: true
          allowed_sans: ['^node\\d+\\.fleet\\.example\\.net$']
        provisioner_configuration:
          plugin.choria.middleware_hosts: "{{{{ broker_url }}}}"
          collectives: roleprod
          main_collective: roleprod
"""


@pytest.fixture(scope="module")
def service_host(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("provisioner-role")
    key, public_key = keygen(tmp, "id_ed25519")
    net = netns.TestNetwork.create("provrole", 1, sshd=True, authorized_keys=public_key)
    host = net.hosts[0]
    broker = None
    try:
        os.makedirs(host.path("/etc/zeroinit/ca"), exist_ok=True)
        broker = EmbeddedBroker(host=net.bridge_address).start()
        hosts = net.ansible_hosts(key, ansible_pipelining=True)
        inventory = tmp / "inventory.json"
        inventory.write_text(json.dumps({"provisioners": {"hosts": hosts}}))
        yield host, broker, str(inventory), tmp
    finally:
        try:
            host.run([CTL, "stop"], check=False, timeout=120)
        finally:
            if broker is not None:
                broker.stop()
            net.destroy()


def http_get(host, path: str) -> tuple[int, str]:
    connection = http.client.HTTPConnection(host.address, MONITOR_PORT, timeout=5)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read().decode()
    finally:
        connection.close()


def explain(result, host) -> str:
    try:
        log = pathlib.Path(host.path("/var/lib/zeroinit/zeroinit-provisioner.log")).read_text()[-4000:]
    except OSError:
        log = "(no service log)"
    return f"{result.stdout[-4000:]}\n{result.stderr[-2000:]}\nservice log:\n{log}"


def members(broker, fleet) -> list[str]:
    """Nodes that answer in their configured collective: provisioned and restarted."""
    return asyncio.run(discover(broker.url, fleet.identities, 5, collective="roleprod"))


def test_role_runs_the_service_which_provisions_the_fleet_and_a_second_run_changes_nothing(service_host):
    host, broker, inventory, tmp = service_host
    with AgentFleet(broker.url, NODES, tmp / "fleet", token=TOKEN) as fleet:
        first = run_playbook(PLAY, inventory=inventory, extra_vars={"broker_url": broker.url})
        assert first.rc == 0, explain(first, host)
        assert first.changed(host.name) > 0
        assert TOKEN not in first.stdout + first.stderr, "the token is never shown"

        assert http_get(host, "/healthz")[0] == 200
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and members(broker, fleet) != fleet.identities:
            time.sleep(0.5)
        assert members(broker, fleet) == fleet.identities, explain(first, host)
        ca = x509.load_pem_x509_certificate(pathlib.Path(host.path("/etc/zeroinit/ca/ca.pem")).read_bytes())
        for identity in fleet.identities:
            cert = x509.load_pem_x509_certificate((fleet.node_dir(identity) / "ssl" / "certificate.pem").read_bytes())
            cert.verify_directly_issued_by(ca)
        metrics = http_get(host, "/metrics")[1]
        assert f'choria_provisioner_provisioned{{site="{SITE}"}} {NODES}' in metrics, explain(first, host)

        conf = pathlib.Path(host.path("/etc/zeroinit/provisioner.yaml"))
        assert oct(conf.stat().st_mode & 0o777) == "0o600"
        assert f"token: {TOKEN}" in conf.read_text()
        pid_before = pathlib.Path(host.path(PIDFILE)).read_text()

        # choria_provision drives the running service from the controller
        control = {"site": SITE, "brokers": [broker.url], "token": TOKEN, "gather": 1.0}
        status = run_module("zeroinit.bootstrap.choria_provision", dict(control, action="status"))
        assert status["changed"] is False, status
        [instance] = status["instances"]
        assert instance["paused"] is False and instance["provisioned"] == NODES
        paused = run_module("zeroinit.bootstrap.choria_provision", dict(control, action="pause"))
        assert paused["changed"] is True and [i["paused"] for i in paused["instances"]] == [True], paused
        assert f'choria_provisioner_paused{{site="{SITE}"}} 1' in http_get(host, "/metrics")[1]
        resumed = run_module("zeroinit.bootstrap.choria_provision", dict(control, action="resume"))
        assert resumed["changed"] is True and [i["paused"] for i in resumed["instances"]] == [False], resumed

        # a configuration the service refuses is not installed: the running service keeps its file
        refused = run_playbook(
            PLAY.replace("provisioner_workers: 10", "provisioner_workers: 0"),
            inventory=inventory,
            extra_vars={"broker_url": broker.url},
        )
        assert refused.rc != 0
        assert "workers: must be at least 1" in refused.stdout, explain(refused, host)
        assert "workers: 10" in conf.read_text()
        assert pathlib.Path(host.path(PIDFILE)).read_text() == pid_before

        second = run_playbook(PLAY, inventory=inventory, extra_vars={"broker_url": broker.url})
        assert second.rc == 0, explain(second, host)
        assert second.changed(host.name) == 0, explain(second, host)
        assert pathlib.Path(host.path(PIDFILE)).read_text() == pid_before
        assert http_get(host, "/healthz")[0] == 200
