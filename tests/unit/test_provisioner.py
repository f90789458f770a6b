"""The bulk provisioner's decisions with a scripted RPC transport (the real fleet is in tests/integration)."""

import asyncio
import datetime
import json
import re

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ansible_collections.zeroinit.bootstrap.plugins.module_utils import provisioner as pv
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.choria.protocol import Reply, rpc_reply_body
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.provision_helper import Decision, NodeFailure
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.rpc import RpcTimeout
from tests.support.rules import BROKER_URLS

CERT = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
CSR = "-----BEGIN CERTIFICATE REQUEST-----\nMIIB\n-----END CERTIFICATE REQUEST-----\n"


class ScriptedClient:
    """Answers like nodes in provisioning mode; ``silent`` nodes never answer, ``refuse`` maps action->msg."""

    def __init__(self, nodes, silent=(), refuse=None):
        self.nodes = list(nodes)
        self.silent = set(silent)
        self.refuse = refuse or {}
        self.sent = []

    async def connect(self):
        return None

    async def close(self):
        return None

    async def discover(self, timeout=2.0, expect=None, flt=None):
        found = self.nodes
        if flt and flt.get("identity"):
            found = [n for n in found if n in flt["identity"]]
        return sorted(found)

    async def call(self, identity, agent, action, data=None, timeout=10.0, retries=0, step=""):
        self.sent.append((identity, action, dict(data or {})))
        if identity in self.silent:
            raise RpcTimeout("%s: no reply from %s within %.1fs (%d attempts)" % (step, identity, timeout, retries + 1))
        if (identity, action) in self.refuse:
            return Reply("r", identity, agent, rpc_reply_body(action, 1, self.refuse[(identity, action)]))
        data_out = {
            "inventory": {"facts": {"host": identity}, "version": "1"},
            "gencsr": {"csr": CSR, "public_key": "PUB", "ssldir": "/ssl/" + identity},
            "ping": {"pong": 1},
        }.get(action, {"message": "ok"})
        return Reply("r", identity, agent, rpc_reply_body(action, 0, "OK", data_out))


class StaticSigner:
    def __init__(self, refuse=()):
        self.refuse = set(refuse)

    def decide(self, identity, csr):
        if identity in self.refuse:
            raise NodeFailure(f"signer refused the CSR of {identity}: CN mismatch")
        return Decision(
            certificate=CERT,
            ca=CERT,
            ssldir=csr["ssldir"],
            configuration={"identity": identity, "plugin.choria.server.provision": "false"},
        )


def run(settings, client, signer=None):
    prov = pv.ChoriaProvisioner(settings, signer if signer is not None else StaticSigner())
    prov._client = lambda: client
    return asyncio.run(prov.provision())


def settings(**kw):
    base = dict(brokers=["nats://127.0.0.1:1"], token="tok", timeout=0.1, retries=0, discovery_timeout=0.1)
    base.update(kw)
    return pv.ProvisionSettings(**base)


def test_every_node_goes_through_the_pipeline_in_order():
    client = ScriptedClient(["n2", "n1"])
    out = run(settings(splay=3), client)
    assert out["provisioned"] == ["n1", "n2"] and out["changed"] is True
    assert out["counts"] == {"discovered": 2, "provisioned": 2, "deferred": 0, "failed": 0, "shutdown": 0}
    actions = [sent[1] for sent in client.sent if sent[0] == "n1"]
    assert actions == ["inventory", "gencsr", "configure", "restart"]
    sent = {a: d for ident, a, d in client.sent if ident == "n1"}
    assert sent["gencsr"]["cn"] == "n1" and sent["gencsr"]["token"] == "tok"
    assert json.loads(sent["configure"]["config"])["plugin.choria.server.provision"] == "false"
    assert sent["configure"]["ssldir"] == "/ssl/n1"
    assert sent["restart"] == {"token": "tok", "splay": 3}
    assert out["timings"]["gencsr"]["count"] == 2 and out["timings"]["total_seconds"] >= 0


def test_one_silent_node_fails_with_the_step_and_does_not_stop_the_others():
    client = ScriptedClient(["a", "b", "c"], silent={"b"})
    out = run(settings(), client)
    assert out["provisioned"] == ["a", "c"]
    assert out["failed"]["b"].startswith("inventory: no reply from b")


def test_a_refusal_fails_the_node_with_the_agents_message():
    client = ScriptedClient(["a", "b"], refuse={("b", "gencsr"): "could not obtain provisioning lock"})
    out = run(settings(), client)
    assert "could not obtain provisioning lock" in out["failed"]["b"] and "gencsr" in out["failed"]["b"]
    assert out["provisioned"] == ["a"]


def test_signer_refusal_fails_the_node_before_configure():
    client = ScriptedClient(["good", "liar"])
    out = run(settings(), client, StaticSigner(refuse={"liar"}))
    assert "CN mismatch" in out["failed"]["liar"]
    assert ("liar", "configure") not in [sent[:2] for sent in client.sent]
    assert out["provisioned"] == ["good"]


def test_check_mode_sends_only_inventory():
    client = ScriptedClient(["a", "b"])
    out = run(settings(check_mode=True), client)
    assert out["would_provision"] == ["a", "b"] and out["provisioned"] == []
    assert {sent[1] for sent in client.sent} == {"inventory"}


def test_nothing_discovered_is_no_change():
    out = run(settings(), ScriptedClient([]))
    assert out["changed"] is False and out["counts"]["discovered"] == 0


def test_listed_identities_limit_the_run_and_missing_ones_are_reported_absent():
    client = ScriptedClient(["a", "b", "c"])
    out = run(settings(identities=["a", "zz"]), client)
    assert out["provisioned"] == ["a"] and out["absent"] == ["zz"]
    assert {sent[0] for sent in client.sent} == {"a"}


def test_expect_stops_taking_new_nodes_once_reached():
    client = ScriptedClient(["n%02d" % i for i in range(20)])
    out = run(settings(expect=5, workers=1), client)
    assert len(out["provisioned"]) == 5


def test_invalid_identity_from_the_bus_is_failed_not_addressed():
    client = ScriptedClient(["ok", "bad name"])
    out = run(settings(), client)
    assert "not a valid node name" in out["failed"]["bad name"]
    assert "bad name" not in {sent[0] for sent in client.sent}


def test_helper_and_signer_are_exclusive_and_helper_must_exist(tmp_path):
    with pytest.raises(pv.ProvisionError, match="mutually exclusive"):
        pv.ChoriaProvisioner(settings(helper="/bin/true", signer={"ca_cert": "x"}))
    with pytest.raises(pv.ProvisionError, match="helper"):
        pv.ChoriaProvisioner(settings(helper=str(tmp_path / "nope")))


def test_single_configure_refuses_a_config_that_keeps_provisioning_on():
    prov = pv.ChoriaProvisioner(settings(configuration={"identity": "a"}))
    with pytest.raises(pv.ProvisionError, match="leaves provisioning on"):
        asyncio.run(prov.single("configure", "a", {"certificate": CERT, "ca": CERT}))


def test_single_action_in_check_mode_only_pings():
    client = ScriptedClient(["a"])
    prov = pv.ChoriaProvisioner(settings(check_mode=True))
    prov._client = lambda: client
    out = asyncio.run(prov.single("restart", "a"))
    assert out["changed"] is True and [sent[1] for sent in client.sent] == ["ping"]


def test_percentiles_are_nearest_rank():
    values = sorted(float(v) for v in range(1, 101))
    assert pv.percentile(values, 0.5) == 50.0 and pv.percentile(values, 0.99) == 99.0
    assert pv.percentile([], 0.5) == 0.0


def test_helper_certificate_must_parse_and_carry_the_csr_key():
    def key_and_csr():
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "n1")])
        csr = x509.CertificateSigningRequestBuilder().subject_name(name).sign(key, hashes.SHA256())
        return key, csr.public_bytes(serialization.Encoding.PEM).decode()

    key, csr_pem = key_and_csr()
    other_key, other_csr = key_and_csr()
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "n1")]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ca")]))
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(other_key, hashes.SHA256())
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM).decode()
    assert pv.certificate_problem(cert_pem, csr_pem) == ""
    assert "public key" in pv.certificate_problem(cert_pem, other_csr)
    assert "does not parse" in pv.certificate_problem(CERT, csr_pem)


@pytest.mark.parametrize("value,expected", BROKER_URLS)
def test_brokers_follow_the_one_rule(value, expected):
    if isinstance(expected, list):
        assert pv.ChoriaProvisioner(settings(brokers=value)).brokers == expected
    else:
        with pytest.raises(pv.ProvisionError, match=re.escape(expected)):
            pv.ChoriaProvisioner(settings(brokers=value))
