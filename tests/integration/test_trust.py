"""Trust on the provisioning network, attacked the way a hostile network would, against real agents on a real
nats-server: every refusal is asserted by its statusmsg (or the provisioner's reason) and by "no file changed" on
the node.

The fleet pins site A's provisioning CA (``--provisioning-ca``) and carries one provisioning JWT per node
(``--provisioning-jwt`` DIR/<identity>.jwt). Refused: unsigned requests, a provisioner of another CA, an expired
provisioner certificate, a certificate without the provisioner usage, a forged signature, a stale request with a
huge ttl, a wrong token, a captured signed gencsr and configure replayed, a node whose JWT is missing, expired,
forged or for other identities, and, once a node is locked to its site, another site's provisioner (signed under
another CA, or the token alone). A valid JWT's verified claims reach the helper as its ``jwt`` input.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import pathlib
import time

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from ansible_collections.zeroinit.bootstrap.plugins.module_utils.choria import protocol as p
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.choria import subjects as sj
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.choria.jwt import issue_provisioning_jwt
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.choria.security import PROVISIONER_USAGE, RequestSigner
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.choria.transport import connect, tls_context
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.pki.ca import CertificateAuthority
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.provisioning.bulk import provision
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.provisioning.rpc import RpcClient
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.provisioning.settings import ProvisionSettings
from tests.support.broker import EmbeddedBroker
from tests.support.bus import BusCapture
from tests.support.certificates import UNTRUSTED_SIGNERS, Authority, provisioner_signers, signer_of
from tests.support.fleet import AgentFleet, AgentProcess, TestCA

TOKEN = "trust-token"
FLEET = 8
DOMAIN = "fleet.example.net"
CONFIG_STAYING = {  # provisioning stays on: the node is locked by configure but keeps serving provisioning
    "plugin.choria.server.provision": "true",
    "plugin.choria.middleware_hosts": "nats://127.0.0.1:1",
}


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """Site A: its CA (node certificates), its provisioning CA and provisioner, the JWT issuer; and the attackers'."""
    tmp = tmp_path_factory.mktemp("site")
    provisioning = Authority("site A provisioning CA")
    issuer = ed25519.Ed25519PrivateKey.generate()
    (tmp / "provisioning-ca.pem").write_text(provisioning.pem)
    (tmp / "jwt-issuer.pub").write_bytes(
        issuer.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    provisioner = provisioning.write_leaf(tmp / "provisioner", "prov.a.example.net")
    return {
        "dir": tmp,
        "ca": TestCA("site A CA"),
        "provisioning_ca": str(tmp / "provisioning-ca.pem"),
        "provisioner": RequestSigner.from_files(provisioner["cert"], provisioner["key"]),
        "provisioner_files": provisioner,
        "issuer": issuer,
        "jwt_verify_key": str(tmp / "jwt-issuer.pub"),
        **{name: signer for name, signer in provisioner_signers(provisioning).items() if name != "provisioner"},
    }


def node_name(index: int) -> str:
    return f"node{index}.{DOMAIN}"


@pytest.fixture(scope="module")
def fleet(module_broker, site, tmp_path_factory):
    """Eight nodes pinning site A's provisioning CA. Their JWTs: node1-4 valid, node5 none, node6 expired, node7
    forged (another issuer), node8 for identities of another domain."""
    state = tmp_path_factory.mktemp("trust-fleet")
    jwts = state / "jwt"
    jwts.mkdir()
    urls = [module_broker.url]
    for index in (1, 2, 3, 4):
        token = issue_provisioning_jwt(site["issuer"], TOKEN, urls, [f"*.{DOMAIN}"])
        (jwts / f"{node_name(index)}.jwt").write_text(token)
    expired = issue_provisioning_jwt(site["issuer"], TOKEN, urls, [f"*.{DOMAIN}"], validity=60, now=time.time() - 7200)
    (jwts / f"{node_name(6)}.jwt").write_text(expired)
    forged = issue_provisioning_jwt(ed25519.Ed25519PrivateKey.generate(), TOKEN, urls, [f"*.{DOMAIN}"])
    (jwts / f"{node_name(7)}.jwt").write_text(forged)
    elsewhere = issue_provisioning_jwt(site["issuer"], TOKEN, urls, ["*.other.example.net"])
    (jwts / f"{node_name(8)}.jwt").write_text(elsewhere)
    with AgentFleet(
        module_broker.url,
        FLEET,
        state / "nodes",
        token=TOKEN,
        extra_args=["--provisioning-ca", site["provisioning_ca"], "--provisioning-jwt", str(jwts)],
    ) as fleet:
        yield fleet


def files_of(node_dir) -> dict:
    """Every file of a node: path -> (sha256, mode). Equal before and after: nothing changed."""
    found = {}
    for path in sorted(pathlib.Path(node_dir).rglob("*")):
        if path.is_file():
            found[str(path)] = (hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mode & 0o7777)
    return found


async def call(url, identity, action, data, signer=None, agent="choria_provision", **envelope):
    """One request to one node, signed by ``signer``; ``envelope`` overrides its fields (ttl, time)."""
    async with RpcClient([url], callerid="attacker", signer=signer) as client:
        if not envelope:
            return await client.call(identity, agent, action, data, timeout=10)
        req = client.new_request(agent, p.rpc_request_body(agent, action, data), [identity])
        for name, value in envelope.items():
            setattr(req, name, value)
        sub = await client.nc.subscribe(req.reply_to)
        await client.publish_request(req, [identity])
        msg = await sub.next_msg(timeout=10)
        await sub.unsubscribe()
        return p.decode_reply(msg.data)


# ---------------------------------------------------------------------------------------------- signatures


@pytest.mark.parametrize(
    "who,reason",
    UNTRUSTED_SIGNERS,
)
def test_unauthenticated_provisioning_requests_are_refused_and_change_nothing(fleet, module_broker, site, who, reason):
    identity = node_name(1)
    before = files_of(fleet.node_dir(identity))
    signer = site[who] if who else None
    replies = [
        asyncio.run(call(module_broker.url, identity, action, {"token": TOKEN}, signer=signer))
        for action in ("gencsr", "jwt", "shutdown")
    ]
    for reply in replies:
        assert reply.statuscode == p.StatusCode.ABORTED
        assert reply.statusmsg.startswith(f"request not authenticated by {identity}: ") and reason in reply.statusmsg
    assert files_of(fleet.node_dir(identity)) == before
    assert not (fleet.node_dir(identity) / "ssl" / "private.pem").exists()
    assert fleet.running()  # the shutdown was refused too


def test_a_forged_signature_is_refused(fleet, module_broker, site):
    """A captured signature and pubcert put on another message: the signature covers the message, not the cert."""
    identity = node_name(1)
    genuine = p.Request(
        agent="choria_provision",
        body=p.rpc_request_body("choria_provision", "jwt", {"token": TOKEN}),
        callerid="choria=attacker",
        senderid="attacker",
    )
    signature, pubcert = site["provisioner"].sign(json.dumps(p.request_document(genuine)))
    forged = p.Request(
        agent="choria_provision",
        body=p.rpc_request_body("choria_provision", "gencsr", {"token": TOKEN}),
        callerid="choria=attacker",
        senderid="attacker",
    )
    forged.reply_to = sj.reply_subject(forged.callerid, forged.requestid)
    secure = p.secure_request_document(forged)
    secure.update(signature=signature, pubcert=pubcert)
    raw = json.dumps(p.transport_document(secure, forged.reply_to, "attacker")).encode()
    reply = asyncio.run(publish_raw(module_broker.url, sj.node_subject(identity), raw, forged.reply_to))
    assert reply.statuscode == p.StatusCode.ABORTED and "signature does not verify" in reply.statusmsg
    assert not (fleet.node_dir(identity) / "ssl" / "private.pem").exists()


def test_rpcutil_and_discovery_stay_open(fleet, module_broker):
    async def run():
        async with RpcClient([module_broker.url]) as client:
            found = await client.discover(timeout=10, expect=FLEET)
            inventory = await client.call(node_name(2), "rpcutil", "inventory", timeout=10)
            return found, inventory

    found, inventory = asyncio.run(run())
    assert found == fleet.identities and inventory.ok and inventory.data["facts"]["identity"] == node_name(2)


def test_a_stale_request_with_a_huge_ttl_and_a_wrong_token_are_refused(fleet, module_broker, site):
    identity = node_name(1)
    before = files_of(fleet.node_dir(identity))
    stale = asyncio.run(
        call(
            module_broker.url,
            identity,
            "gencsr",
            {"token": TOKEN},
            signer=site["provisioner"],
            ttl=100000,
            time=int(time.time()) - 600,
        )
    )
    assert stale.statuscode == p.StatusCode.ABORTED
    assert "request expired: sent 60" in stale.statusmsg and "ttl 300s (capped from the 100000s" in stale.statusmsg
    wrong = asyncio.run(call(module_broker.url, identity, "gencsr", {"token": "guess"}, signer=site["provisioner"]))
    assert (wrong.statuscode, wrong.statusmsg) == (p.StatusCode.ABORTED, "incorrect provisioning token")
    assert files_of(fleet.node_dir(identity)) == before


# ---------------------------------------------------------------------------------------------- replays


async def publish_raw(url, subject, raw: bytes, reply_to: str) -> p.Reply:
    nc = await connect([url], name="replayer")
    try:
        sub = await nc.subscribe(reply_to)
        await nc.publish(subject, raw)
        msg = await sub.next_msg(timeout=10)
        return p.decode_reply(msg.data)
    finally:
        await nc.close()


def test_a_captured_signed_gencsr_and_configure_replayed_are_refused(fleet, module_broker, site):
    identity = node_name(2)
    subject = sj.node_subject(identity)

    async def provision_by_hand():
        async with RpcClient([module_broker.url], callerid="site-a", signer=site["provisioner"]) as client:
            gencsr = await client.call(identity, "choria_provision", "gencsr", {"token": TOKEN}, timeout=10)
            assert gencsr.ok, gencsr.statusmsg
            configure = await client.call(
                identity,
                "choria_provision",
                "configure",
                {
                    "token": TOKEN,
                    "config": json.dumps(CONFIG_STAYING),
                    "certificate": site["ca"].sign_csr(gencsr.data["csr"]),
                    "ca": site["ca"].pem,
                },
                timeout=10,
            )
            assert configure.ok, configure.statusmsg

    with BusCapture(module_broker.url) as bus:
        asyncio.run(provision_by_hand())
    captured = {}
    for _received, sent_on, raw in bus.messages:
        if sent_on == subject:
            req = p.decode_request(raw)
            captured[req.action] = (raw, req.reply_to)
    assert set(captured) == {"gencsr", "configure"}
    before = files_of(fleet.node_dir(identity))
    for action in ("configure", "gencsr"):
        raw, reply_to = captured[action]
        reply = asyncio.run(publish_raw(module_broker.url, subject, raw, reply_to))
        assert reply.statuscode == p.StatusCode.ABORTED, action
        assert reply.statusmsg.startswith("replay refused: request ") and "was already accepted" in reply.statusmsg
    assert files_of(fleet.node_dir(identity)) == before  # no new key, the configuration not rewritten


# ---------------------------------------------------------------------------------------------- the JWT


def test_only_nodes_with_a_valid_jwt_get_a_certificate(fleet, module_broker, site, tmp_path):
    ca_cert, ca_key = str(tmp_path / "ca.pem"), str(tmp_path / "ca.key")
    CertificateAuthority.load_or_create(ca_cert, ca_key, common_name="site A CA (built-in signer)")
    wanted = [node_name(i) for i in (3, 5, 6, 7, 8)]
    before = {identity: files_of(fleet.node_dir(identity)) for identity in wanted}
    out = provision(
        ProvisionSettings(
            brokers=[module_broker.url],
            token=TOKEN,
            timeout=5.0,
            retries=1,
            discovery_timeout=3,
            identities=wanted,
            signer={"ca_cert": ca_cert, "ca_key": ca_key},
            configuration=dict(CONFIG_STAYING, **{"plugin.choria.server.provision": "false"}),
            signing_cert=site["provisioner_files"]["cert"],
            signing_key=site["provisioner_files"]["key"],
            jwt_verify_key=site["jwt_verify_key"],
        )
    )
    assert out["provisioned"] == [node_name(3)]
    reasons = {
        node_name(5): f"{node_name(5)}: the provisioning JWT",
        node_name(6): "JWT expired at",
        node_name(7): "JWT signature does not verify with the site's key",
        node_name(8): f"identity '{node_name(8)}' does not match the JWT's identity patterns *.other.example.net",
    }
    assert sorted(out["failed"]) == sorted(reasons)
    for identity, reason in reasons.items():
        assert out["failed"][identity].startswith("jwt") and reason in out["failed"][identity]
        assert files_of(fleet.node_dir(identity)) == before[identity]  # no key made, no certificate
        assert not (fleet.node_dir(identity) / "ssl" / "certificate.pem").exists()
    assert "does not exist" in out["failed"][node_name(5)]


def test_the_helper_gets_the_verified_jwt_claims_as_its_jwt_input(fleet, module_broker, site, tmp_path):
    """Choria's helper contract: the request on the helper's stdin carries the node's verified JWT claims."""
    identity = node_name(4)
    seen = tmp_path / "helper-request.json"
    helper = tmp_path / "helper.sh"
    helper.write_text(f'#!/bin/sh\ncat > "{seen}"\necho \'{{"defer": true, "msg": "held by the test"}}\'\n')
    helper.chmod(0o755)
    out = provision(
        ProvisionSettings(
            brokers=[module_broker.url],
            token=TOKEN,
            timeout=5.0,
            retries=1,
            discovery_timeout=3,
            identities=[identity],
            helper=str(helper),
            signing_cert=site["provisioner_files"]["cert"],
            signing_key=site["provisioner_files"]["key"],
            jwt_verify_key=site["jwt_verify_key"],
        )
    )
    assert out["deferred"] == {identity: "held by the test"}, out
    claims = json.loads(seen.read_text())["jwt"]
    assert (claims["purpose"], claims["cht"], claims["chu"]) == ("choria_provisioning", TOKEN, module_broker.url)
    assert claims["extensions"] == {"zeroinit_identity_patterns": [f"*.{DOMAIN}"]}
    assert not (fleet.node_dir(identity) / "ssl" / "certificate.pem").exists()


# ---------------------------------------------------------------------------------------------- the site lock


def test_another_sites_provisioner_cannot_move_a_locked_node(nats_broker, site, tmp_path):
    """A node locked to site A: an image swapped for site B's provisioning CA lets B's provisioner verify, and the
    lock still refuses it; site A's own provisioner is refused by that image (it no longer trusts A)."""
    identity = "locked.example.net"
    state = tmp_path / "node"
    site_b = Authority("site B provisioning CA")
    (tmp_path / "site-b-ca.pem").write_text(site_b.pem)
    provisioner_b = signer_of(site_b.issue("prov.b.example.net"))

    async def configure_under_a():
        async with RpcClient([nats_broker.url], callerid="site-a", signer=site["provisioner"]) as client:
            gencsr = await client.call(identity, "choria_provision", "gencsr", {"token": TOKEN}, timeout=10)
            cert = site["ca"].sign_csr(gencsr.data["csr"])
            payload = {"token": TOKEN, "config": json.dumps(CONFIG_STAYING), "certificate": cert, "ca": site["ca"].pem}
            return await client.call(identity, "choria_provision", "configure", payload, timeout=10)

    with AgentProcess(
        nats_broker.url, identity, state, token=TOKEN, extra_args=["--provisioning-ca", site["provisioning_ca"]]
    ):
        assert asyncio.run(configure_under_a()).ok
    before = files_of(state)
    with AgentProcess(
        nats_broker.url, identity, state, token=TOKEN, extra_args=["--provisioning-ca", str(tmp_path / "site-b-ca.pem")]
    ):
        by_b = asyncio.run(call(nats_broker.url, identity, "gencsr", {"token": TOKEN}, signer=provisioner_b))
        by_a = asyncio.run(call(nats_broker.url, identity, "gencsr", {"token": TOKEN}, signer=site["provisioner"]))
    assert by_b.statuscode == p.StatusCode.ABORTED
    assert (
        "node is locked to its site" in by_b.statusmsg and "gencsr signed under another CA is refused" in by_b.statusmsg
    )
    assert "CN=prov.b.example.net" in by_b.statusmsg
    assert by_a.statuscode == p.StatusCode.ABORTED and "is not issued by the provisioning CA" in by_a.statusmsg
    assert files_of(state) == before


def test_a_token_only_node_is_locked_on_first_configure_and_then_moves_only_for_its_site(nats_broker, site, tmp_path):
    """Without a provisioning CA the first configure pins the node (trust on first use); from then on the token
    alone is refused, another CA's provisioner is refused, and a provisioner certificate of the locked CA works."""
    identity = "tofu.example.net"
    state = tmp_path / "node"
    site_ca = site["ca"]
    stranger = TestCA("site B CA").provisioner_signer("prov.b.example.net")

    async def configure(signer=None):
        async with RpcClient([nats_broker.url], callerid="site-a", signer=signer) as client:
            gencsr = await client.call(identity, "choria_provision", "gencsr", {"token": TOKEN}, timeout=10)
            if not gencsr.ok:
                return gencsr
            cert = site_ca.sign_csr(gencsr.data["csr"])
            payload = {"token": TOKEN, "config": json.dumps(CONFIG_STAYING), "certificate": cert, "ca": site_ca.pem}
            return await client.call(identity, "choria_provision", "configure", payload, timeout=10)

    with AgentProcess(nats_broker.url, identity, state, token=TOKEN):
        assert asyncio.run(configure()).ok  # unlocked: the token decides, and the node is now locked
    before = files_of(state)
    with AgentProcess(nats_broker.url, identity, state, token=TOKEN) as agent:  # the lock survives the restart
        token_only = asyncio.run(configure())
        other = asyncio.run(configure(stranger))
        assert files_of(state) == before
        own = asyncio.run(configure(site_ca.provisioner_signer("prov.a.example.net")))
        assert agent.running()
    assert token_only.statuscode == p.StatusCode.ABORTED
    assert "node is locked to its site" in token_only.statusmsg and "the token alone is refused" in token_only.statusmsg
    assert other.statuscode == p.StatusCode.ABORTED
    assert "locked to its site" in other.statusmsg and "not issued by the site CA" in other.statusmsg
    assert own.ok, own.statusmsg


# ---------------------------------------------------------------------------------------------- interoperability


def test_a_provisioner_certificate_is_also_a_tls_client_certificate_nats_server_accepts(tmp_path):
    """nats-server is Go: its crypto/x509 must parse the provisioner usage OID (a 2.25.<uuid> arc it cannot), so
    one certificate can sign the requests and authenticate the provisioner to a broker that requires client TLS."""
    ca = TestCA("broker CA")
    server = ca.write_key_pair(tmp_path / "broker", "127.0.0.1", ips=["127.0.0.1"], server=True, client=False)
    provisioner = ca.write_key_pair(tmp_path / "prov", "prov.example.net", provisioner=True)
    with open(provisioner["cert"], "rb") as handle:
        from cryptography import x509

        usages = x509.load_pem_x509_certificate(handle.read()).extensions.get_extension_for_class(x509.ExtendedKeyUsage)
    assert PROVISIONER_USAGE in usages.value
    with EmbeddedBroker(tls={"cert": server["cert"], "key": server["key"], "ca": server["ca"], "verify": True}) as b:

        async def ping():
            tls = tls_context(provisioner["ca"], provisioner["cert"], provisioner["key"])
            signer = RequestSigner.from_files(provisioner["cert"], provisioner["key"])
            async with RpcClient([b.url], callerid="prov", tls=tls, signer=signer) as client:
                return await client.discover(timeout=0.5)

        assert asyncio.run(ping()) == []  # connected over TLS with that certificate, asked, nobody there
