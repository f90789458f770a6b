"""The broker role over SSH on a namespace host: a provisioning broker, a members' broker that takes only site
certificates and asks the OCSP responder beside it about each one, and a revocation that shuts a member out."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys

import pytest

from ansible_collections.zeroinit.bootstrap.plugins.module_utils.provisioning.rpc import RpcClient
from tests.support import netns
from tests.support.ansible_run import run_playbook
from tests.support.broker import find_nats_server
from tests.support.site import make_site, member_certificate, members_connect, site_ca

pytestmark = pytest.mark.netns

PLAY = """
- name: Run the brokers
  hosts: brokers
  gather_facts: false
  vars:
    site_secrets_dir: "{{ site_dir }}"
  pre_tasks:
    - name: Unlock the site CA for this run
      ansible.builtin.include_role:
        name: zeroinit.bootstrap.site_secrets
        tasks_from: unlock
        apply: {delegate_to: localhost, run_once: true}
  roles:
    - role: zeroinit.bootstrap.broker
      vars:
        broker_site_dir: "{{ site_dir }}"
        broker_ca_key: "{{ site_secrets_unlocked.ca }}"
        broker_nats_server: "{{ nats_server }}"
        broker_python: "{{ venv_python }}"
        broker_supervisor: background
  post_tasks:
    - name: Lock the site CA again
      ansible.builtin.include_role:
        name: zeroinit.bootstrap.site_secrets
        tasks_from: lock
        apply: {delegate_to: localhost, run_once: true}
"""

REVOKE = """
- name: Revoke a member and publish the CRL
  hosts: brokers
  gather_facts: false
  vars:
    site_secrets_dir: "{{ site_dir }}"
  tasks:
    - name: Unlock the site CA
      ansible.builtin.include_role:
        name: zeroinit.bootstrap.site_secrets
        tasks_from: unlock
        apply: {delegate_to: localhost, run_once: true}
    - name: Revoke
      zeroinit.bootstrap.pki_revoke:
        ca_cert: "{{ site_dir }}/ca.pem"
        ca_key: "{{ site_secrets_unlocked.ca }}"
        records: "{{ site_dir }}/revocations.json"
        crl: "{{ site_dir }}/crl.pem"
        certificates: ["{{ revoked }}"]
      delegate_to: localhost
      run_once: true
    - name: Publish
      ansible.builtin.include_role:
        name: zeroinit.bootstrap.broker
        tasks_from: crl
      vars:
        broker_site_dir: "{{ site_dir }}"
    - name: Lock
      ansible.builtin.include_role:
        name: zeroinit.bootstrap.site_secrets
        tasks_from: lock
        apply: {delegate_to: localhost, run_once: true}
"""


@pytest.fixture(scope="module")
def broker_host(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("broker-role")
    key = tmp / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    net = netns.TestNetwork.create("brokerrole", 1, authorized_keys=(tmp / "id_ed25519.pub").read_text())
    host = net.hosts[0]
    try:
        site = make_site(tmp / "site")
        inventory = tmp / "inventory.json"
        inventory.write_text(json.dumps({"brokers": {"hosts": net.ansible_hosts(key, ansible_pipelining=True)}}))
        extra = {"site_dir": str(site["dir"]), "nats_server": find_nats_server(), "venv_python": sys.executable}
        yield {"net": net, "host": host, "site": site, "inventory": str(inventory), "extra": extra, "tmp": tmp}
    finally:
        try:
            host.run(["/opt/zeroinit/broker/zeroinit-brokerctl", "stop", "all"], check=False, timeout=60)
        finally:
            net.destroy()


def play(broker_host, text, **extra):
    return run_playbook(
        text,
        inventory=broker_host["inventory"],
        extra_vars=dict(broker_host["extra"], **extra),
        args=["--vault-password-file", broker_host["site"]["password"]],
    )


def explain(result, host) -> str:
    logs = []
    for name in ("ocsp", "members", "provisioning"):
        try:
            with open(host.path(f"/var/lib/zeroinit/zeroinit-broker-{name}.log")) as handle:
                logs.append(f"--- {name}\n{handle.read()[-1500:]}")
        except OSError:
            logs.append(f"--- {name}: no log")
    return f"{result.stdout[-3000:]}\n{result.stderr[-1500:]}\n" + "\n".join(logs)


def test_the_broker_role_runs_both_brokers_and_a_revoked_member_is_refused(broker_host):
    host, site = broker_host["host"], broker_host["site"]
    first = play(broker_host, PLAY)
    assert first.rc == 0, explain(first, host)
    assert first.changed(host.name) > 0

    async def provisioning_answers() -> bool:
        async with RpcClient([f"nats://{host.address}:4222"]) as client:
            return await client.discover(timeout=0.5) == []

    assert asyncio.run(provisioning_answers())  # reachable, and nobody is waiting on it yet

    ca = site_ca(site)
    members = f"tls://{host.address}:4223"
    member = member_certificate(ca, "node1.fleet.example.net", broker_host["tmp"] / "node1")
    other = member_certificate(ca, "node2.fleet.example.net", broker_host["tmp"] / "node2")
    assert members_connect(members, member["ca"], member["cert"], member["key"]) == "connected", explain(first, host)

    from ansible_collections.zeroinit.bootstrap.plugins.module_utils.pki.ca import CertificateAuthority

    stranger = member_certificate(
        CertificateAuthority.create("stranger CA"), "node9.fleet.example.net", broker_host["tmp"] / "n9"
    )
    shutil.copy(member["ca"], stranger["ca"])
    assert members_connect(members, stranger["ca"], stranger["cert"], stranger["key"]).startswith("refused")

    second = play(broker_host, PLAY)
    assert second.rc == 0 and second.changed(host.name) == 0, explain(second, host)

    revoked = play(broker_host, REVOKE, revoked=member["pem"])
    assert revoked.rc == 0, explain(revoked, host)
    refused = members_connect(members, member["ca"], member["cert"], member["key"])
    assert refused.startswith("refused"), explain(revoked, host)
    assert members_connect(members, other["ca"], other["cert"], other["key"]) == "connected"
    with open(host.path("/var/lib/zeroinit/zeroinit-broker-members.log")) as handle:
        assert "not OCSP valid" in handle.read()
