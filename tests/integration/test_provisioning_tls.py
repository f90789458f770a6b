"""The provisioning connection over TLS with a password (Choria's provisioning account), against a nats-server that
requires both: the agent verifies the broker, presents a client certificate when asked, and logs in; without the
right password or CA it stays out, says why, and keeps trying."""

from __future__ import annotations

import pathlib
import time

import pytest

from ansible_collections.zeroinit.bootstrap.plugins.module_utils.choria.transport import tls_context
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.pki.ca import CertificateAuthority
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.provisioning.bulk import provision
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.provisioning.settings import ProvisionSettings
from tests.support.broker import EmbeddedBroker
from tests.support.fleet import AgentFleet, AgentProcess, TestCA

TOKEN = "fleet-token"
USERS = {"node": "node-password", "provisioner": "provisioner-password"}


@pytest.fixture(scope="module")
def tls_ca():
    return TestCA("provisioning network CA")


@pytest.fixture(scope="module")
def secured_broker(tls_ca, tmp_path_factory):
    """Requires TLS with a client certificate from the CA, and a user and password."""
    files = tls_ca.write_key_pair(tmp_path_factory.mktemp("broker"), "broker", ips=["127.0.0.1"], server=True)
    tls = {"cert": files["cert"], "key": files["key"], "ca": files["ca"], "verify": True}
    with EmbeddedBroker(tls=tls, users=USERS) as broker:
        yield broker


def with_user(url: str, user: str) -> str:
    scheme, rest = url.split("://", 1)
    return f"{scheme}://{user}:{USERS[user]}@{rest}"


def test_a_fleet_is_provisioned_over_tls_with_a_password(secured_broker, tls_ca, tmp_path):
    node_tls = tls_ca.write_key_pair(tmp_path / "node-tls", "fleet-node", client=True)
    provisioner_tls = tls_ca.write_key_pair(tmp_path / "provisioner-tls", "provisioner", client=True)
    probe_tls = tls_context(ca=provisioner_tls["ca"], cert=provisioner_tls["cert"], key=provisioner_tls["key"])
    config = {
        "plugin.zeroinit.agent.tls_ca": node_tls["ca"],
        "plugin.zeroinit.agent.tls_cert": node_tls["cert"],
        "plugin.zeroinit.agent.tls_key": node_tls["key"],
        "plugin.zeroinit.agent.broker_user": "node",
        "plugin.zeroinit.agent.broker_password": USERS["node"],
    }
    ca_cert, ca_key = str(tmp_path / "ca.pem"), str(tmp_path / "ca.key")
    CertificateAuthority.load_or_create(ca_cert, ca_key, common_name="node CA")
    probe = (with_user(secured_broker.url, "provisioner"), probe_tls)
    with AgentFleet(secured_broker.url, 3, tmp_path / "fleet", token=TOKEN, config=config, probe=probe) as fleet:
        out = provision(
            ProvisionSettings(
                brokers=[with_user(secured_broker.url, "provisioner")],
                token=TOKEN,
                signer={"ca_cert": ca_cert, "ca_key": ca_key},
                configuration={"plugin.choria.middleware_hosts": "nats://127.0.0.1:1", "collectives": "members"},
                tls_ca=provisioner_tls["ca"],
                tls_cert=provisioner_tls["cert"],
                tls_key=provisioner_tls["key"],
                timeout=5.0,
                discovery_timeout=2.0,
                expect=3,
            )
        )
        assert out["failed"] == {} and out["provisioned"] == fleet.identities
        for identity in fleet.identities:
            assert (pathlib.Path(fleet.node_dir(identity)) / "ssl" / "certificate.pem").is_file()
        assert "Traceback" not in fleet.log_tail(100_000)


def _log_says(agent: AgentProcess, needle: str, timeout: float = 20.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        log = agent.log_tail(100_000)
        if needle in log:
            return log
        time.sleep(0.2)
    raise AssertionError(f"{needle!r} not in the agent's log:\n{agent.log_tail()}")


@pytest.mark.parametrize(
    "settings, needle",
    [
        ({"broker_password": "wrong"}, "Authorization Violation"),
        ({"tls_ca": None}, "CERTIFICATE_VERIFY_FAILED"),  # the system CAs do not vouch for this broker
        ({"tls_cert": None, "tls_key": None}, "CERTIFICATE_REQUIRED"),  # the broker asks for a client certificate
    ],
    ids=["wrong-password", "unverified-broker", "no-client-certificate"],
)
def test_without_the_right_credentials_the_agent_stays_out_and_says_why(
    secured_broker, tls_ca, tmp_path, settings, needle
):
    node_tls = tls_ca.write_key_pair(tmp_path / "node-tls", "lonely-node", client=True)
    values = {
        "tls_ca": node_tls["ca"],
        "tls_cert": node_tls["cert"],
        "tls_key": node_tls["key"],
        "broker_user": "node",
        "broker_password": USERS["node"],
    }
    values.update(settings)
    config = {f"plugin.zeroinit.agent.{k}": v for k, v in values.items() if v is not None}
    agent = AgentProcess(secured_broker.url, "lonely.example.net", tmp_path / "node", token=TOKEN, config=config)
    agent.launch()
    try:
        # TLS 1.3 refuses a missing client certificate after the client's handshake is done: an attempt may end in a
        # broken pipe before the server's alert is read, so the reason is waited for over several attempts.
        log = _log_says(agent, needle, timeout=90.0)
        _log_says(agent, "retrying in")
        assert agent.running() and "Traceback" not in log
    finally:
        agent.stop()
