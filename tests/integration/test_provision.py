"""The bulk provisioner against a real agent fleet on a real nats-server: nodes end as members of a new broker.

Every node must end configured with a certificate that chains to the CA and carries its own key, a
server.conf equal to what was decided, and answer ping in its new collective on a second broker. Failures
stay per node: refused nodes remain in provisioning mode with nothing configured.
"""

import asyncio
import hashlib
import json
import pathlib
import sys

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from ansible_collections.zeroinit.bootstrap.plugins.module_utils.choria.config import parse_config
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.provisioning.bulk import BulkRun, provision
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.provisioning.deciders import SignerDecider
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.provisioning.flow import FlowOptions, ProvisioningFlow
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.provisioning.helper import NodeFailure
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.provisioning.rpc import RpcClient, RpcError
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.provisioning.settings import ProvisionSettings
from tests.support.bus import BusCapture
from tests.support.fleet import AgentFleet, discover

TOKEN = "fleet-token"
HELPERS = pathlib.Path(__file__).parent / "helpers"
SECURITY_KEYS = {
    "plugin.security.provider",
    "plugin.security.file.certificate",
    "plugin.security.file.key",
    "plugin.security.file.ca",
}


def member_config(members, collective="members"):
    return {"plugin.choria.middleware_hosts": members.url, "collectives": collective, "main_collective": collective}


def settings(broker, **kw):
    base = dict(brokers=[broker.url], token=TOKEN, timeout=5.0, retries=1, discovery_timeout=1.5)
    base.update(kw)
    return ProvisionSettings(**base)


def snapshot(fleet) -> dict:
    """Every file of every node: path -> sha256 (to prove that nothing changed)."""
    files = {}
    for path in sorted(pathlib.Path(fleet.state_dir).rglob("*")):
        if path.is_file():
            files[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return files


def assert_member(fleet, identity, ca_cert_path, decided: dict):
    """Certificate chains to the CA and matches the node's own key; server.conf is what was decided."""
    ssl = pathlib.Path(fleet.node_dir(identity)) / "ssl"
    cert = x509.load_pem_x509_certificate((ssl / "certificate.pem").read_bytes())
    ca_cert = x509.load_pem_x509_certificate(pathlib.Path(ca_cert_path).read_bytes())
    cert.verify_directly_issued_by(ca_cert)
    key = serialization.load_pem_private_key((ssl / "private.pem").read_bytes(), password=None)
    fmt = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert cert.public_key().public_bytes(*fmt) == key.public_key().public_bytes(*fmt)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == identity
    assert (ssl / "private.pem").stat().st_mode & 0o077 == 0
    conf = parse_config((pathlib.Path(fleet.node_dir(identity)) / "server.conf").read_text())
    assert {k: v for k, v in conf.items() if k not in SECURITY_KEYS} == decided
    assert conf["plugin.security.file.key"] == str(ssl / "private.pem")


def in_provisioning(broker, identities, timeout=3.0):
    return asyncio.run(discover(broker.url, identities, timeout))


def members_answering(members, identities, collective="members", timeout=20.0):
    return asyncio.run(discover(members.url, identities, timeout, collective=collective))


def test_signer_run_makes_every_node_a_member_and_no_key_crosses_the_bus(nats_broker, members, ca, tmp_path):
    with AgentFleet(nats_broker.url, 6, tmp_path / "fleet", token=TOKEN) as fleet:
        config = member_config(members)
        with BusCapture(nats_broker.url) as bus:
            out = provision(settings(nats_broker, signer=ca, configuration=config, expect=6))
        assert out["changed"] is True and out["failed"] == {}
        assert out["provisioned"] == fleet.identities
        assert out["counts"]["provisioned"] == 6 and out["timings"]["node"]["count"] == 6
        for identity in fleet.identities:
            decided = dict(config, identity=identity, **{"plugin.choria.server.provision": "false"})
            assert_member(fleet, identity, ca["ca_cert"], decided)
        assert members_answering(members, fleet.identities) == fleet.identities

        # The private keys were made on the nodes and never travelled: neither PEM text nor DER on the bus.
        assert len(bus.messages) >= 6 * 8
        keys = [(pathlib.Path(fleet.node_dir(i)) / "ssl" / "private.pem").read_bytes() for i in fleet.identities]
        assert bus.key_material(keys) == []

        # Second run: every node left provisioning mode, nothing to do.
        again = provision(settings(nats_broker, signer=ca, configuration=config))
        assert again["changed"] is False and again["counts"]["discovered"] == 0


def test_helper_defers_nodes_and_a_later_run_provisions_them(nats_broker, members, ca, tmp_path):
    base = tmp_path / "base.json"
    base.write_text(json.dumps(member_config(members)))
    hold = tmp_path / "hold.txt"
    facts = {"role": "web"}
    with AgentFleet(nats_broker.url, 4, tmp_path / "fleet", token=TOKEN, facts=facts) as fleet:
        held = fleet.identities[:2]
        hold.write_text("\n".join(held) + "\n")
        helper = [
            sys.executable,
            str(HELPERS / "policy_helper.py"),
            "--ca-cert",
            ca["ca_cert"],
            "--ca-key",
            ca["ca_key"],
            "--config",
            str(base),
            "--defer-file",
            str(hold),
        ]
        first = provision(settings(nats_broker, helper=helper, configuration={"loglevel": "info"}))
        assert first["provisioned"] == fleet.identities[2:]
        assert first["deferred"] == {i: f"{i} is on the hold list" for i in held}
        assert in_provisioning(nats_broker, held) == held
        for identity in held:
            assert not (pathlib.Path(fleet.node_dir(identity)) / "ssl" / "certificate.pem").exists()
        decided = dict(member_config(members), loglevel="info")
        decided.update({"plugin.choria.server.provision": "false", "plugin.zeroinit.role": "web"})
        for identity in fleet.identities[2:]:
            assert_member(fleet, identity, ca["ca_cert"], dict(decided, identity=identity))

        hold.write_text("")
        second = provision(settings(nats_broker, helper=helper, configuration={"loglevel": "info"}))
        assert second["provisioned"] == held and second["deferred"] == {}
        for identity in held:
            assert_member(fleet, identity, ca["ca_cert"], dict(decided, identity=identity))
        assert members_answering(members, fleet.identities) == fleet.identities


@pytest.mark.parametrize(
    "mode,needle",
    [
        ("exit", "exited with status 3"),
        ("silent", "printed nothing"),
        ("garbage", "not JSON"),
        ("slow", "ran longer than 1s"),
        ("loop", "leaves provisioning on"),
    ],
)
def test_each_helper_failure_fails_only_that_node_before_configure(nats_broker, tmp_path, mode, needle):
    with AgentFleet(nats_broker.url, 2, tmp_path / "fleet", token=TOKEN) as fleet:
        before = {i: sorted(p.name for p in (pathlib.Path(fleet.node_dir(i))).rglob("*")) for i in fleet.identities}
        helper = [sys.executable, str(HELPERS / "broken_helper.py"), mode]
        out = provision(settings(nats_broker, helper=helper, helper_timeout=1.0))
        assert out["provisioned"] == [] and sorted(out["failed"]) == fleet.identities
        for identity in fleet.identities:
            error = out["failed"][identity]
            assert needle in error and identity in error
            if mode != "loop":
                assert "broken_helper:" in error  # the helper's stderr is in the error
            node = pathlib.Path(fleet.node_dir(identity))
            assert not (node / "ssl" / "certificate.pem").exists()
            assert not (node / "server.conf").exists() or before[identity].count("server.conf")
        # Nothing was configured: every node is still in provisioning mode and can be provisioned later.
        assert in_provisioning(nats_broker, fleet.identities) == fleet.identities


def test_policy_refusals_fail_the_node_with_the_rule_and_leave_it_in_provisioning(nats_broker, members, ca, tmp_path):
    with AgentFleet(nats_broker.url, 4, tmp_path / "fleet", token=TOKEN) as fleet:
        liar, denied, small_key, good = fleet.identities
        config = member_config(members)
        # A node that asks for a certificate naming another node (its gencsr CN is someone else's).
        out = provision(
            settings(nats_broker, signer=ca, configuration=config, identities=[liar], csr_subject={"cn": good})
        )
        assert liar in out["failed"] and f"signer refused the CSR of {liar}" in out["failed"][liar]
        assert good in out["failed"][liar]
        # A deny-listed name.
        signer = dict(ca, deny=["^{}$".format(denied.replace(".", r"\."))])
        out = provision(settings(nats_broker, signer=signer, configuration=config, identities=[denied]))
        assert "deny" in out["failed"][denied]
        # An RSA key smaller than the policy's minimum (the node makes RSA-2048; the policy wants 3072).
        signer = dict(ca, min_rsa_bits=3072)
        out = provision(
            settings(nats_broker, signer=signer, configuration=config, identities=[small_key], key_type="rsa")
        )
        assert "2048" in out["failed"][small_key] and "3072" in out["failed"][small_key]
        for identity in (liar, denied, small_key):
            assert not (pathlib.Path(fleet.node_dir(identity)) / "ssl" / "certificate.pem").exists()
        assert in_provisioning(nats_broker, [liar, denied, small_key]) == sorted([liar, denied, small_key])
        # The refusals touched nobody else: the last node provisions normally afterwards.
        out = provision(settings(nats_broker, signer=ca, configuration=config))
        assert good in out["provisioned"]
        assert_member(
            fleet, good, ca["ca_cert"], dict(config, identity=good, **{"plugin.choria.server.provision": "false"})
        )


def test_rsa_1024_csr_is_refused_by_the_signer_before_anything_is_signed(ca, tmp_path):
    key = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "weak.example.net")]))
        .sign(key, __import__("cryptography.hazmat.primitives.hashes", fromlist=["SHA256"]).SHA256())
    )
    signer = SignerDecider(ca, {})
    with pytest.raises(NodeFailure) as err:
        csr_data = {"csr": csr.public_bytes(serialization.Encoding.PEM).decode(), "ssldir": "/x"}
        asyncio.run(signer.decide("weak.example.net", {}, csr_data))
    assert "1024" in str(err.value) and "weak.example.net" in str(err.value)


def test_wrong_token_is_refused_by_every_node(nats_broker, ca, tmp_path):
    with AgentFleet(nats_broker.url, 3, tmp_path / "fleet", token=TOKEN) as fleet:
        out = provision(settings(nats_broker, signer=ca, token="not-the-token"))
        assert out["provisioned"] == [] and sorted(out["failed"]) == fleet.identities
        for error in out["failed"].values():
            assert error.startswith("gencsr refused by") and "incorrect provisioning token" in error
        for identity in fleet.identities:
            assert not (pathlib.Path(fleet.node_dir(identity)) / "ssl" / "private.pem").exists()


def test_check_mode_changes_nothing_on_any_node(nats_broker, ca, tmp_path):
    with AgentFleet(nats_broker.url, 3, tmp_path / "fleet", token=TOKEN) as fleet:
        before = snapshot(fleet)
        out = provision(settings(nats_broker, signer=ca, check_mode=True))
        assert out["would_provision"] == fleet.identities and out["provisioned"] == []
        assert snapshot(fleet) == before
        assert in_provisioning(nats_broker, fleet.identities) == fleet.identities


def test_a_node_that_boots_during_the_wait_window_is_provisioned(nats_broker, members, ca, tmp_path):
    config = member_config(members)
    with AgentFleet(nats_broker.url, 2, tmp_path / "early", token=TOKEN, prefix="early") as early:
        late = AgentFleet(nats_broker.url, 1, tmp_path / "late", token=TOKEN, prefix="late")

        async def run():
            # Start the late node a moment after the provisioner began listening.
            loop = asyncio.get_running_loop()
            provisioner = BulkRun(
                settings(nats_broker, signer=None, configuration=config, wait=20, expect=3), SignerDecider(ca, config)
            )
            task = asyncio.ensure_future(provisioner.run())
            await asyncio.sleep(1.0)
            await loop.run_in_executor(None, late.launch)
            return await task

        try:
            out = asyncio.run(run())
        finally:
            late.stop()
        assert out["provisioned"] == sorted(early.identities + late.identities)


class LosesTheRestart:
    """A real RPC client whose ``restart`` requests never reach the node, as in a broker restart between a node's
    ``configure`` and its ``restart``."""

    def __init__(self, client):
        self.client = client
        self.lost = []

    async def call(self, identity, agent, action, data, **kw):
        if action == "restart":
            self.lost.append(identity)
            raise RpcError(f"restart: no reply from {identity} within 1.0s (1 attempts)")
        return await self.client.call(identity, agent, action, data, **kw)


def test_a_node_whose_restart_was_lost_is_restarted_into_its_configuration_not_configured_again(
    nats_broker, members, ca, tmp_path
):
    """Its configure locked it to the site (token only: trust on first use), so the next run's gencsr and configure
    are refused; the next run sends the restart it missed, and the node joins its collective with the files and key
    that configure wrote."""
    config = member_config(members)
    options = FlowOptions(token=TOKEN, timeout=5.0, retries=1)
    with AgentFleet(nats_broker.url, 1, tmp_path / "fleet", token=TOKEN) as fleet:
        identity = fleet.identities[0]

        async def first_run():
            # The provisioner's own caller id: the node's per-caller lock keeps others out while it works on it.
            async with RpcClient([nats_broker.url], callerid=settings(nats_broker).callerid) as client:
                lossy = LosesTheRestart(client)
                decider = SignerDecider(ca, config)
                try:
                    return await ProvisioningFlow(lossy, decider, options).run(identity), lossy.lost
                finally:
                    await decider.finish()

        outcome, lost = asyncio.run(first_run())
        assert (outcome.status, outcome.step, lost) == ("failed", "restart", [identity])
        assert in_provisioning(nats_broker, [identity]) == [identity]  # configured on disk, still waiting
        configured = snapshot(fleet)

        out = provision(settings(nats_broker, signer=ca, configuration=config))
        assert out["provisioned"] == [identity] and out["failed"] == {}, out
        assert members_answering(members, [identity]) == [identity]
        decided = dict(config, identity=identity, **{"plugin.choria.server.provision": "false"})
        assert_member(fleet, identity, ca["ca_cert"], decided)
        # Nothing was configured again: the key, certificate and server.conf are the ones the first run wrote.
        assert {
            path: digest for path, digest in snapshot(fleet).items() if "/ssl/" in path or "server.conf" in path
        } == {path: digest for path, digest in configured.items() if "/ssl/" in path or "server.conf" in path}
