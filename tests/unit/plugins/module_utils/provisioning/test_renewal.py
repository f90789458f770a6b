"""The renewal responder without a network: each request as bytes in, the reply it would publish out.

Real X.509 throughout: a site CA with node certificates (tests/support/certificates.py), the collection's built-in
signer with its own CA behind the responder, requests signed by the node side's own code.
"""

from __future__ import annotations

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ansible_collections.zeroinit.bootstrap.plugins.module_utils.choria.protocol import (
    Request,
    StatusCode,
    decode_reply,
    encode_request,
    rpc_request_body,
)
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.choria.security import RequestSigner
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.pki.ca import CertificateAuthority
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.pki.policy import CsrPolicy
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.pki.signer import Signer
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.pki.x509 import PkiError
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.provisioning.renewal import RenewalResponder
from tests.support.certificates import NODE, Authority

IDENTITY = "web1.example.net"


@pytest.fixture(scope="module")
def site():
    return Authority("old site CA")


@pytest.fixture(scope="module")
def permanent():
    return Signer(CertificateAuthority.create("permanent CA"), CsrPolicy(max_valid_days=30))


def csr_for(identity: str = IDENTITY, key=None) -> str:
    key = key or ec.generate_private_key(ec.SECP256R1())
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, identity)])
    )
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM).decode("ascii")


def renewal(leaf, csr: str | None = None, identity: str = IDENTITY, signed: bool = True, **envelope) -> bytes:
    body = rpc_request_body("zeroinit_ca", envelope.pop("action", "renew"), {"csr": csr or csr_for(identity)})
    req = Request(
        agent="zeroinit_ca",
        body=body,
        callerid=envelope.pop("callerid", f"choria={identity}"),
        senderid=envelope.pop("senderid", identity),
        collective="members",
        **envelope,
    )
    return encode_request(req, RequestSigner(leaf.pem, leaf.key_pem) if signed else None)


def test_a_node_signing_with_its_current_certificate_gets_one_from_the_permanent_ca(site, permanent):
    responder = RenewalResponder(permanent, site.pem, valid_days=30)
    leaf = site.issue(IDENTITY, usages=NODE, dns=(IDENTITY,))
    key = ec.generate_private_key(ec.SECP256R1())
    answer = responder.answer(renewal(leaf, csr_for(key=key)))
    assert answer.renewed and answer.reply_subject.startswith("members.reply.")
    reply = decode_reply(answer.reply)
    assert reply.ok, reply.statusmsg
    cert = x509.load_pem_x509_certificate(reply.data["certificate"].encode("ascii"))
    assert cert.public_key() == key.public_key() and cert.issuer == permanent.ca.subject
    assert reply.data["ca"] == permanent.ca.chain_pem and reply.data["serial"] == f"{cert.serial_number:x}"
    assert responder.record.renewed == {IDENTITY: reply.data["serial"]} and responder.record.counts["renewed"] == 1


@pytest.mark.parametrize(
    "case,status,reason",
    [
        ("unsigned", StatusCode.ABORTED, "request is unsigned"),
        ("other node's certificate", StatusCode.ABORTED, "is not for 'web1.example.net'"),
        ("another CA", StatusCode.ABORTED, "not issued by the site CA"),
        ("expired certificate", StatusCode.ABORTED, "expired at"),
        ("same key", StatusCode.INVALID_DATA, "must be for a new key"),
        ("CSR for another name", StatusCode.INVALID_DATA, "cn_matches_identity"),
        ("CSR garbage", StatusCode.INVALID_DATA, "input 'csr'"),
        ("stale", StatusCode.ABORTED, "request expired"),
        ("unknown action", StatusCode.UNKNOWN_ACTION, "unknown action zeroinit_ca#sign"),
    ],
)
def test_refusals_name_the_reason(site, permanent, case, status, reason):
    import datetime
    import time

    responder = RenewalResponder(permanent, site.pem)
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = site.issue(IDENTITY, key=key, usages=NODE, dns=(IDENTITY,))
    raw = {
        "unsigned": lambda: renewal(leaf, signed=False),
        "other node's certificate": lambda: renewal(site.issue("web2.example.net", usages=NODE)),
        "another CA": lambda: renewal(Authority("rogue CA").issue(IDENTITY, usages=NODE)),
        "expired certificate": lambda: renewal(
            site.issue(
                IDENTITY,
                usages=NODE,
                not_before=datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=3),
                not_after=datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=1),
            )
        ),
        "same key": lambda: renewal(leaf, csr_for(key=key)),
        "CSR for another name": lambda: renewal(leaf, csr_for("web2.example.net")),
        "CSR garbage": lambda: renewal(leaf, "-----BEGIN CERTIFICATE REQUEST-----\nnope"),
        "stale": lambda: renewal(leaf, time=int(time.time()) - 600),
        "unknown action": lambda: renewal(leaf, action="sign"),
    }[case]()
    answer = responder.answer(raw)
    reply = decode_reply(answer.reply)
    assert not answer.renewed and reply.statuscode == status and reason in reply.statusmsg, reply.statusmsg
    assert responder.record.refused[IDENTITY] == reply.statusmsg and not responder.record.renewed


def test_a_replayed_request_is_refused_and_garbage_or_a_forged_caller_gets_no_reply(site, permanent):
    responder = RenewalResponder(permanent, site.pem)
    leaf = site.issue(IDENTITY, usages=NODE, dns=(IDENTITY,))
    raw = renewal(leaf)
    assert responder.answer(raw).renewed
    again = decode_reply(responder.answer(raw).reply)
    assert again.statuscode == StatusCode.ABORTED and "replay refused" in again.statusmsg
    for hostile in (b"\x00" * 64, b"{" * 5000, renewal(leaf, senderid="web2.example.net")):
        answer = responder.answer(hostile)
        assert answer.reply is None and not answer.renewed
    assert responder.record.counts["garbage"] == 2 and responder.record.counts["caller"] == 1


def test_a_signer_that_cannot_sign_is_a_retryable_error(site, permanent):
    class Unreachable:
        ca, policy = permanent.ca, permanent.policy

        def sign(self, *args, **kwargs):
            raise PkiError("cannot reach CFSSL at http://127.0.0.1:9 (authsign): Connection refused", field="cfssl_url")

    responder = RenewalResponder(Unreachable(), site.pem)
    reply = decode_reply(responder.answer(renewal(site.issue(IDENTITY, usages=NODE))).reply)
    assert reply.statuscode == StatusCode.UNKNOWN_ERROR
    assert reply.statusmsg.startswith("the signer cannot sign now: cannot reach CFSSL")
