"""The provision_agent role over SSH on a network-namespace host: the agent it installs answers discovery."""

from __future__ import annotations

import asyncio
import json
import os
import pathlib
import subprocess
import sys

import pytest

from ansible_collections.zeroinit.bootstrap.plugins.module_utils.choria.transport import tls_context
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.provisioning.rpc import RpcClient
from tests.support import netns
from tests.support.ansible_run import run_playbook
from tests.support.broker import EmbeddedBroker
from tests.support.fleet import TestCA, discover

pytestmark = pytest.mark.netns
VENV_PYTHON = sys.executable  # test hosts share this machine's filesystem, so the venv is theirs too

PLAY = f"""
- name: Install the node agent
  hosts: workers
  gather_facts: false
  roles:
    - role: zeroinit.bootstrap.provision_agent
      vars:
        provision_agent_brokers: ["{{{{ broker_url }}}}"]
        provision_agent_token: role-test-token
        provision_agent_identity: "{{{{ inventory_hostname }}}}.lab"
        provision_agent_python: {VENV_PYTHON}
        provision_agent_facts:
          role: worker
          address: "{{{{ ansible_host }}}}"
"""


@pytest.fixture(scope="module")
def worker(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("agent-role")
    key = tmp / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "agent-role-test", "-f", str(key)], check=True)
    net = netns.TestNetwork.create("agentrole", 1, sshd=True, authorized_keys=(tmp / "id_ed25519.pub").read_text())
    host = net.hosts[0]
    broker = None
    try:
        bridge_address = net.bridge_address
        broker = EmbeddedBroker(host=bridge_address).start()
        inventory = tmp / "inventory.json"
        inventory.write_text(json.dumps({"workers": {"hosts": net.ansible_hosts(key, ansible_pipelining=True)}}))
        yield net, host, broker, str(inventory)
    finally:
        try:
            host.run(["/opt/zeroinit/agent/zeroinit-agentctl", "stop"], check=False, timeout=60)
        finally:
            if broker is not None:
                broker.stop()
            net.destroy()


def explain(result, host) -> str:
    """What to look at when an assertion fails: the play's output and the agent's log on the host."""
    try:
        with open(host.path("/var/lib/zeroinit/zeroinit-agent.log")) as handle:
            log = handle.read()[-3000:]
    except OSError:
        log = "(no agent log)"
    return f"{result.stdout[-3000:]}\n{result.stderr[-2000:]}\nagent log:\n{log}"


def test_role_installs_a_running_agent_that_answers_discovery_and_is_idempotent(worker):
    _net, host, broker, inventory = worker
    identity = f"{host.name}.lab"
    first = run_playbook(PLAY, inventory=inventory, extra_vars={"broker_url": broker.url})
    assert first.rc == 0, explain(first, host)
    assert first.changed(host.name) > 0

    found = asyncio.run(discover(broker.url, [identity], 30))
    assert found == [identity], explain(first, host)

    async def inventory_of():
        async with RpcClient([broker.url]) as client:
            return await client.call(identity, "rpcutil", "inventory", timeout=10)

    reply = asyncio.run(inventory_of())
    assert reply.ok and reply.data["facts"] == {"role": "worker", "address": host.address, "identity": identity}

    # the files are the host's own (bind-mounted per host), the token file is private
    conf = host.path("/etc/zeroinit/agent.conf")
    assert oct(__import__("os").stat(conf).st_mode & 0o777) == "0o600"
    assert "plugin.zeroinit.agent.token = role-test-token" in pathlib.Path(conf).read_text()
    status = host.run(["/opt/zeroinit/agent/zeroinit-agentctl", "status"], check=False)
    assert status.returncode == 0 and "running" in status.stdout
    pid_before = pathlib.Path(host.path("/var/lib/zeroinit/zeroinit-agent.pid")).read_text()

    second = run_playbook(PLAY, inventory=inventory, extra_vars={"broker_url": broker.url})
    assert second.rc == 0, explain(second, host)
    assert second.changed(host.name) == 0, explain(second, host)
    assert pathlib.Path(host.path("/var/lib/zeroinit/zeroinit-agent.pid")).read_text() == pid_before
    assert asyncio.run(discover(broker.url, [identity], 30)) == [identity], explain(second, host)

    # a changed setting restarts the agent, which then reports the new facts
    third = run_playbook(
        PLAY.replace("role: worker", "role: gateway"), inventory=inventory, extra_vars={"broker_url": broker.url}
    )
    assert third.rc == 0 and third.changed(host.name) > 0, explain(third, host)
    assert asyncio.run(discover(broker.url, [identity], 30)) == [identity], explain(third, host)
    assert asyncio.run(inventory_of()).data["facts"]["role"] == "gateway"


def test_role_sets_up_tls_and_a_password_on_the_provisioning_connection(worker, tmp_path):
    """Against a broker on the bridge that requires TLS and a password: the agent verifies it and logs in."""
    _net, host, plain_broker, inventory = worker
    identity = f"{host.name}.lab"
    ca = TestCA("provisioning network CA")
    files = ca.write_key_pair(tmp_path / "broker", "broker", ips=[plain_broker.host], server=True)
    tls = {"cert": files["cert"], "key": files["key"], "ca": files["ca"], "verify": False}
    with EmbeddedBroker(host=plain_broker.host, tls=tls, users={"node": "n0de-pw", "provisioner": "pr0v-pw"}) as broker:
        play = PLAY.replace(
            "provision_agent_python:",
            "provision_agent_tls_ca: \"{{ lookup('file', tls_ca) }}\"\n"
            "        provision_agent_broker_user: node\n"
            "        provision_agent_broker_password: n0de-pw\n"
            "        provision_agent_python:",
        )
        result = run_playbook(play, inventory=inventory, extra_vars={"broker_url": broker.url, "tls_ca": files["ca"]})
        assert result.rc == 0 and result.changed(host.name) > 0, explain(result, host)
        assert "n0de-pw" not in result.stdout + result.stderr
        conf = pathlib.Path(host.path("/etc/zeroinit/agent.conf")).read_text()
        assert "plugin.zeroinit.agent.tls_ca = /etc/zeroinit/provisioning-broker-ca.pem" in conf
        assert "plugin.zeroinit.agent.broker_password = n0de-pw" in conf
        url = broker.url.replace("tls://", "tls://provisioner:pr0v-pw@")
        found = asyncio.run(discover(url, [identity], 30, tls=tls_context(ca=files["ca"])))
        assert found == [identity], explain(result, host)


def test_role_turns_on_signed_requests_and_the_provisioning_jwt(worker, tmp_path):
    """With the provisioning CA and the JWT set, the agent refuses unsigned provisioning and serves its JWT."""
    from ansible_collections.zeroinit.bootstrap.plugins.module_utils.choria.jwt import issue_provisioning_jwt
    from ansible_collections.zeroinit.bootstrap.plugins.module_utils.choria.security import RequestSigner
    from tests.support.certificates import Authority, ec_key

    _net, host, broker, inventory = worker
    identity = f"{host.name}.lab"
    provisioning_ca = Authority("role provisioning CA")
    (tmp_path / "provisioning-ca.pem").write_text(provisioning_ca.pem)
    token = issue_provisioning_jwt(ec_key(), "role-test-token", [broker.url], [f"{host.name}.lab"])
    (tmp_path / "node.jwt").write_text(token)
    play = PLAY + (
        f"        provision_agent_provisioning_ca: \"{{{{ lookup('file', '{tmp_path / 'provisioning-ca.pem'}') }}}}\"\n"
        f"        provision_agent_provisioning_jwt: \"{{{{ lookup('file', '{tmp_path / 'node.jwt'}') }}}}\"\n"
        "        provision_agent_max_ttl: 120\n"
    )
    first = run_playbook(play, inventory=inventory, extra_vars={"broker_url": broker.url})
    assert first.rc == 0 and first.changed(host.name) > 0, explain(first, host)
    assert token not in first.stdout  # the JWT carries the token: never shown
    jwt_file = host.path("/etc/zeroinit/provisioning.jwt")
    assert os.stat(jwt_file).st_mode & 0o777 == 0o600
    assert asyncio.run(discover(broker.url, [identity], 30)) == [identity], explain(first, host)
    leaf = provisioning_ca.issue("prov.lab")

    async def ask():
        async with RpcClient([broker.url]) as client:
            unsigned = await client.call(identity, "choria_provision", "jwt", {"token": "role-test-token"}, timeout=10)
            client.signer = RequestSigner(leaf.pem, leaf.key_pem)
            signed = await client.call(identity, "choria_provision", "jwt", {"token": "role-test-token"}, timeout=10)
            return unsigned, signed

    unsigned, signed = asyncio.run(ask())
    assert unsigned.statuscode == 1 and "request is unsigned (insecure)" in unsigned.statusmsg
    assert signed.ok and signed.data == {"jwt": token, "ecdh_public": ""}
    again = run_playbook(play, inventory=inventory, extra_vars={"broker_url": broker.url})
    assert again.rc == 0 and again.changed(host.name) == 0, explain(again, host)
