"""Signed secure requests with real X.509: what verifies, every refusal and its reason, the cache, the signer."""

from __future__ import annotations

import base64
import datetime
import random
import time
import uuid

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding
from cryptography.x509.oid import ExtendedKeyUsageOID

from ansible_collections.zeroinit.bootstrap.plugins.module_utils.choria.security import (
    MAX_PUBCERT_BYTES,
    PROVISIONER_POLICY,
    PROVISIONER_USAGE,
    PROVISIONER_USAGE_OID,
    RENEWAL_POLICY,
    RequestSigner,
    RequestTrustError,
    RequestVerifier,
    SignedRequestPolicy,
    TrustConfigError,
    add_provisioner_usage,
    ca_key_fingerprints,
    is_unsigned,
)
from tests.support.certificates import (
    NODE,
    PROVISIONER,
    Authority,
    Leaf,
    ec_key,
    key_pem,
    rsa_key,
    sha1_resigned,
    utcnow,
)

MESSAGE = '{"protocol":"choria:request:1","message":"{\\"agent\\":\\"choria_provision\\"}","envelope":{}}'
HOUR = datetime.timedelta(hours=1)
DAY = datetime.timedelta(days=1)


@pytest.fixture(scope="module")
def root():
    return Authority("provisioning CA")


@pytest.fixture(scope="module")
def verifier(root):
    return RequestVerifier(root.pem)


def signed(leaf, chain: str = "", message: str = MESSAGE):
    """(message, signature, pubcert) of a request signed by ``leaf`` (pubcert = its PEM plus ``chain``)."""
    signer = RequestSigner(leaf.pem + chain, leaf.key_pem)
    fields = signer.sign(message)
    return message, fields.signature, fields.pubcert


GUID_ARC = "1.2.840.113556.1.8000.2554"


def refusal(verifier, message, signature, pubcert, **options) -> RequestTrustError:
    with pytest.raises(RequestTrustError) as info:
        verifier.verify(message, signature, pubcert, **options)
    return info.value


# ---------------------------------------------------------------------------------------------- accepted


def test_the_provisioner_eku_is_this_projects_guid_under_the_guid_arc_with_arcs_go_can_parse():
    arc, pieces = PROVISIONER_USAGE_OID[: len(GUID_ARC)], PROVISIONER_USAGE_OID[len(GUID_ARC) + 1 :].split(".")
    assert arc == GUID_ARC
    widths = (4, 4, 4, 4, 4, 6, 6)  # hex digits of each piece of the GUID
    assert uuid.UUID("".join(f"{int(p):0{w}x}" for p, w in zip(pieces, widths))) == uuid.UUID(
        "e7781b89-e0ef-4c27-89fd-d4c772f4d889"
    )
    assert all(int(p) < 2**31 for p in PROVISIONER_USAGE_OID.split("."))  # Go's crypto/x509 reads 31-bit arcs
    assert PROVISIONER_USAGE.dotted_string == PROVISIONER_USAGE_OID


@pytest.mark.parametrize("key_kind", ["ec-p256", "rsa-2048", "rsa-3072"])
def test_a_provisioner_certificate_from_the_ca_verifies_and_names_the_signer(root, verifier, key_kind):
    key = ec_key() if key_kind == "ec-p256" else rsa_key(int(key_kind.split("-")[1]))
    leaf = root.issue("prov1.example.net", key=key)
    signer = verifier.verify(*signed(leaf))
    assert signer.subject == "CN=prov1.example.net"
    assert signer.names == ("prov1.example.net",)
    assert signer.certificate_sha256 == leaf.cert.fingerprint(hashes.SHA256()).hex()
    assert signer.ca_subject == "CN=provisioning CA"
    assert signer.ca_key_sha256 == ca_key_fingerprints(root.pem)[0]
    assert signer.not_after.endswith("Z")


def test_rsa_signatures_are_choria_s_pkcs1_v15_sha256_over_the_message_bytes():
    key = rsa_key(2048)
    leaf = Authority("any").issue(key=key)
    fields = RequestSigner(leaf.pem, leaf.key_pem).sign(MESSAGE)
    # Independently of the verifier: what go-choria's VerifySignatureBytes checks.
    key.public_key().verify(base64.b64decode(fields.signature), MESSAGE.encode(), padding.PKCS1v15(), hashes.SHA256())
    assert fields.pubcert == leaf.pem


def test_ec_signatures_are_der_ecdsa_sha256():
    key = ec_key()
    leaf = Authority("any").issue(key=key)
    fields = RequestSigner(leaf.pem, leaf.key_pem).sign("ünïcode message ✓")
    key.public_key().verify(base64.b64decode(fields.signature), "ünïcode message ✓".encode(), ec.ECDSA(hashes.SHA256()))


def test_intermediates_travel_in_the_pubcert(root, verifier):
    issuing = root.intermediate("issuing CA")
    leaf = issuing.issue()
    assert verifier.verify(*signed(leaf, issuing.pem)).ca_subject == "CN=provisioning CA"
    # Without the intermediate nothing connects the certificate to the CA.
    assert refusal(verifier, *signed(leaf)).code == "chain"


def test_a_bundle_of_several_cas_accepts_each(root):
    other = Authority("second site CA")
    verifier = RequestVerifier(root.pem + other.pem)
    assert verifier.verify(*signed(other.issue())).ca_subject == "CN=second site CA"
    assert verifier.verify(*signed(root.issue())).ca_subject == "CN=provisioning CA"
    assert verifier.ca_key_sha256s == ca_key_fingerprints(root.pem + other.pem)


def test_a_certificate_that_expired_within_the_clock_skew_still_verifies(root):
    now = utcnow()
    leaf = root.issue(not_before=now - DAY, not_after=now - datetime.timedelta(seconds=60))
    verifier = RequestVerifier(root.pem, SignedRequestPolicy(PROVISIONER_USAGE_OID, "provisioning CA", clock_skew=300))
    assert verifier.verify(*signed(leaf)).subject == "CN=prov1.example.net"


def test_renewal_requires_the_node_s_identity_as_cn_or_dns_san():
    site = Authority("site CA")
    verifier = RequestVerifier(site.pem, RENEWAL_POLICY)
    node = site.issue("node1.example.net", usages=NODE, dns=("node1.example.net", "node1-alias.example.net"))
    request = signed(node)
    assert verifier.verify(*request, required_name="node1.example.net").names == (
        "node1.example.net",
        "node1-alias.example.net",
    )
    assert verifier.verify(*request, required_name="node1-alias.example.net")
    wrong = refusal(verifier, *request, required_name="node2.example.net")
    assert wrong.code == "name"
    assert "is not for 'node2.example.net'" in str(wrong)


# ---------------------------------------------------------------------------------------------- refused


def _expired(root):
    now = utcnow()
    return signed(root.issue(not_before=now - 3 * DAY, not_after=now - DAY))


def _future(root):
    now = utcnow()
    return signed(root.issue(not_before=now + DAY, not_after=now + 3 * DAY))


def _stranger(root):
    return signed(Authority("stranger CA").issue())


def _impostor(root):
    # Same CA name, different key: the name matches, the signature cannot.
    return signed(Authority("provisioning CA").issue())


def _node_certificate(root):
    return signed(root.issue("node1.example.net", usages=NODE))


def _any_usage(root):
    return signed(root.issue(usages=(ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE,)))


def _no_usage(root):
    return signed(root.issue(usages=None))


def _the_ca_itself(root):
    message = MESSAGE
    signature = base64.b64encode(root.key.sign(message.encode(), ec.ECDSA(hashes.SHA256()))).decode()
    return message, signature, root.pem


def _weak_rsa(root):
    weak = root.issue(key=rsa_key(1024))
    signature = weak.key.sign(MESSAGE.encode(), padding.PKCS1v15(), hashes.SHA256())
    return MESSAGE, base64.b64encode(signature).decode(), weak.pem


def _ed25519(root):
    key = ed25519.Ed25519PrivateKey.generate()
    leaf = root.issue(key=key)
    return MESSAGE, base64.b64encode(key.sign(MESSAGE.encode())).decode(), leaf.pem


def _p384(root):
    key = ec.generate_private_key(ec.SECP384R1())
    leaf = root.issue(key=key)
    return MESSAGE, base64.b64encode(key.sign(MESSAGE.encode(), ec.ECDSA(hashes.SHA256()))).decode(), leaf.pem


def _sha1_signed(root):
    rsa_ca = Authority("RSA CA", key=rsa_key(2048))
    leaf = rsa_ca.issue()
    weak = x509.load_der_x509_certificate(sha1_resigned(leaf.cert.tbs_certificate_bytes, rsa_ca.key))
    return signed(Leaf(weak, leaf.key))


def _critical_unknown(root):
    extension = x509.UnrecognizedExtension(x509.ObjectIdentifier("1.3.6.1.4.1.55555.1"), b"\x05\x00")
    return signed(root.issue(extensions=((extension, True),)))


def _no_digital_signature(root):
    return signed(root.issue(digital_signature=False))


def _intermediate_not_a_ca(root):
    fake = root.intermediate("fake issuing CA", ca=False)
    return signed(fake.issue(), fake.pem)


def _intermediate_critical_unknown(root):
    extension = x509.UnrecognizedExtension(x509.ObjectIdentifier("1.3.6.1.4.1.55555.2"), b"\x05\x00")
    issuing = root.intermediate("odd issuing CA", extensions=((extension, True),))
    return signed(issuing.issue(), issuing.pem)


def _intermediate_expired(root):
    now = utcnow()
    issuing = root.intermediate("old issuing CA", not_before=now - 10 * DAY, not_after=now - DAY)
    return signed(issuing.issue(not_before=now - 2 * DAY), issuing.pem)


def _path_length(root):
    issuing = root.intermediate("issuing CA pathlen 0", path_length=0)
    sub = issuing.intermediate("sub CA")
    return signed(sub.issue(), sub.pem + issuing.pem)


def _too_many_intermediates(root):
    chain, authority = [], root
    for depth in range(3):
        authority = authority.intermediate(f"level {depth} CA")
        chain.insert(0, authority.pem)
    return signed(authority.issue(), "".join(chain))


def _tampered_message(root):
    message, signature, pubcert = signed(root.issue())
    return message.replace("choria_provision", "choria_provisioN"), signature, pubcert


def _other_key(root):
    leaf = root.issue()
    _message, signature, _pubcert = signed(root.issue())
    return MESSAGE, signature, leaf.pem


def _not_base64(root):
    message, _signature, pubcert = signed(root.issue())
    return message, "not*base64!", pubcert


def _huge_signature(root):
    message, _signature, pubcert = signed(root.issue())
    return message, "A" * 4000, pubcert


def _lone_surrogate(root):
    message, signature, pubcert = signed(root.issue())
    return "\ud800" + message, signature, pubcert


def _garbage_pem(root):
    return MESSAGE, "c2ln", "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n"


def _not_pem(root):
    return MESSAGE, "c2ln", "hello"


def _huge_pubcert(root):
    return MESSAGE, "c2ln", "A" * (MAX_PUBCERT_BYTES + 1)


def _five_certificates(root):
    leaf = root.issue()
    return MESSAGE, "c2ln", leaf.pem * 5


def _pubcert_not_a_string(root):
    return MESSAGE, "c2ln", ["-----BEGIN CERTIFICATE-----"]


def _signature_not_a_string(root):
    _message, _signature, pubcert = signed(root.issue())
    return MESSAGE, 12345, pubcert


def _message_not_a_string(root):
    _message, signature, pubcert = signed(root.issue())
    return {"agent": "x"}, signature, pubcert


REFUSALS = [
    # (case, code, words the reason must contain)
    (lambda root: (MESSAGE, "insecure", "insecure"), "unsigned", "request is unsigned (insecure)"),
    (lambda root: (MESSAGE, "", ""), "unsigned", "request is unsigned (insecure)"),
    (lambda root: (MESSAGE, "c2ln", "insecure"), "unsigned", "request is unsigned (insecure)"),
    (lambda root: (MESSAGE, None, None), "unsigned", "request is unsigned (insecure)"),
    (_garbage_pem, "pubcert", "pubcert does not parse"),
    (_not_pem, "pubcert", "pubcert does not parse"),
    (_huge_pubcert, "pubcert", f"larger than {MAX_PUBCERT_BYTES}"),
    (_five_certificates, "pubcert", "holds 5 certificates; at most 4"),
    (_pubcert_not_a_string, "pubcert", "field 'pubcert' is not a string"),
    (_signature_not_a_string, "signature", "field 'signature' is not a string"),
    (_message_not_a_string, "message", "field 'message' is not a string"),
    (_expired, "validity", "certificate CN=prov1.example.net expired at "),
    (_future, "validity", "certificate CN=prov1.example.net is not valid before "),
    (_stranger, "chain", "is not issued by the provisioning CA (its issuer CN=stranger CA is not in"),
    (_impostor, "chain", "is not issued by the provisioning CA: its signature does not verify"),
    (_node_certificate, "usage", "lacks the provisioner extended key usage"),
    (_any_usage, "usage", "lacks the provisioner extended key usage"),
    (_no_usage, "usage", "lacks the provisioner extended key usage"),
    (_the_ca_itself, "certificate", "is a CA certificate; requests must be signed with an end-entity certificate"),
    (_weak_rsa, "certificate", "has an RSA-1024 key"),
    (_ed25519, "certificate", "has a Ed25519 key; signed requests use RSA or EC P-256 keys"),
    (_p384, "certificate", "has a EC secp384r1 key"),
    (_sha1_signed, "certificate", "is signed with sha1, which is too weak"),
    (_critical_unknown, "certificate", "carries the critical extension 1.3.6.1.4.1.55555.1"),
    (_no_digital_signature, "certificate", "KeyUsage lacks digitalSignature"),
    (_intermediate_not_a_ca, "chain", "intermediate CN=fake issuing CA is not a CA"),
    (_intermediate_critical_unknown, "chain", "intermediate CN=odd issuing CA carries the critical extension 1.3.6"),
    (_intermediate_expired, "validity", "intermediate CN=old issuing CA expired at"),
    (_path_length, "chain", "CA CN=issuing CA pathlen 0 allows 0 intermediates below it, the path has 1"),
    (_too_many_intermediates, "chain", "needs more than 2 intermediates"),
    (_tampered_message, "signature", "signature does not verify with the key of certificate CN=prov1.example.net"),
    (_other_key, "signature", "signature does not verify"),
    (_not_base64, "signature", "signature is not base64"),
    (_huge_signature, "signature", "longer than 1400"),
    (_lone_surrogate, "signature", "the message is not UTF-8 text"),
]


@pytest.mark.parametrize(("case", "code", "reason"), REFUSALS, ids=[r[2][:60] for r in REFUSALS])
def test_refusals_name_the_reason(root, verifier, case, code, reason):
    error = refusal(verifier, *case(root))
    assert error.code == code
    assert reason in str(error)


def test_names_from_a_certificate_cannot_forge_log_lines(root, verifier):
    leaf = root.issue("evil\nINFO provisioned node1", usages=NODE, dns=("x" * 300,))
    error = refusal(verifier, *signed(leaf))
    assert "\n" not in str(error)
    assert "certificate CN=evil\\nINFO provisioned node1 lacks the provisioner" in str(error)
    renewal = refusal(RequestVerifier(root.pem, RENEWAL_POLICY), *signed(leaf), required_name="node1")
    assert "\n" not in str(renewal)
    assert len(str(renewal)) < 500


def test_an_expired_or_future_ca_is_refused_naming_the_ca():
    now = utcnow()
    for window, words in (
        ((now - 10 * DAY, now - DAY), "provisioning CA certificate CN=old CA expired at"),
        ((now + DAY, now + 10 * DAY), "provisioning CA certificate CN=old CA is not valid before"),
    ):
        ca = Authority("old CA", not_before=window[0], not_after=window[1])
        leaf = ca.issue(not_before=now - DAY, not_after=now + DAY)
        error = refusal(RequestVerifier(ca.pem), *signed(leaf))
        assert error.code == "validity"
        assert words in str(error)


def test_the_ca_path_length_zero_refuses_an_intermediate():
    root = Authority("strict CA", path_length=0)
    issuing = root.intermediate("issuing CA")
    error = refusal(RequestVerifier(root.pem), *signed(issuing.issue(), issuing.pem))
    assert "CA CN=strict CA allows 0 intermediates below it" in str(error)


def test_a_renewal_verifier_needs_no_provisioner_usage_but_a_provisioner_verifier_does():
    site = Authority("site CA")
    request = signed(site.issue("node1.example.net", usages=NODE))
    assert RequestVerifier(site.pem, RENEWAL_POLICY).verify(*request, required_name="node1.example.net")
    assert refusal(RequestVerifier(site.pem, PROVISIONER_POLICY), *request).code == "usage"


def _damaged_pem(pem_text: str, rng: random.Random) -> str:
    """The PEM with a few bytes of one certificate's DER changed: ASN.1 the parser has to survive."""
    blocks = [b for b in pem_text.split("-----END CERTIFICATE-----\n") if b]
    index = rng.randrange(len(blocks))
    body = "".join(blocks[index].splitlines()[1:])
    der = bytearray(base64.b64decode(body))
    for _hit in range(rng.randint(1, 3)):
        der[rng.randrange(len(der))] ^= rng.randrange(1, 256)
    if rng.random() < 0.2:
        der = der[: rng.randrange(len(der))]
    blocks[index] = "-----BEGIN CERTIFICATE-----\n" + base64.encodebytes(bytes(der)).decode()
    return "".join(b + "-----END CERTIFICATE-----\n" for b in blocks)


def test_no_input_gives_anything_but_a_refusal(root, verifier):
    """Random damage to every field and to the certificates' DER: only RequestTrustError, never another exception,
    and a damaged message, signature or certificate is never accepted."""
    issuing = root.intermediate("fuzz issuing CA")
    message, signature, pubcert = signed(issuing.issue(), issuing.pem)
    rng = random.Random(7)
    accepted_with_damaged_pem_text = 0
    for round_number in range(600):
        fields = [message, signature, pubcert]
        index = round_number % 4
        if index == 3:
            fields[2] = _damaged_pem(pubcert, rng)
        else:
            text = list(fields[index])
            for _hit in range(rng.randint(1, 4)):
                position = rng.randrange(len(text))
                text[position] = chr(rng.choice([0, 0x0A, 0x2D, 0x41, 0x7A, 0xFF, 0xD800, 0x1F600, rng.randrange(128)]))
            fields[index] = "".join(text)
            if fields[index] == [message, signature, pubcert][index]:
                continue
        try:
            verifier.verify(*fields)
        except RequestTrustError:
            continue
        assert index == 2, f"a damaged {['message', 'signature', '', 'certificate DER'][index]} was accepted"
        accepted_with_damaged_pem_text += 1
    # Damage to a PEM's line breaks may leave the certificate intact.
    assert accepted_with_damaged_pem_text < 30


# ---------------------------------------------------------------------------------------------- cache


def test_one_path_search_per_certificate_but_a_signature_check_per_request(root, monkeypatch):
    verifier = RequestVerifier(root.pem)
    searches = []
    original = verifier._find_path
    monkeypatch.setattr(verifier, "_find_path", lambda leaf, at: searches.append(1) or original(leaf, at))
    leaf = root.issue()
    message, signature, pubcert = signed(leaf)
    for _request in range(200):
        verifier.verify(message, signature, pubcert)
    assert len(searches) == 1
    # The cached path never stands in for the signature.
    assert refusal(verifier, message + " ", signature, pubcert).code == "signature"
    assert len(searches) == 1


def test_the_cached_path_is_not_trusted_past_its_validity(root):
    now = time.time()
    leaf = root.issue(not_after=utcnow() + HOUR)
    verifier = RequestVerifier(root.pem)
    request = signed(leaf)
    assert verifier.verify(*request, at=now)
    error = refusal(verifier, *request, at=now + 2 * 3600)
    assert error.code == "validity"
    assert "expired at" in str(error)


def test_a_refused_certificate_is_remembered_as_refused(root):
    verifier = RequestVerifier(root.pem)
    request = _ed25519(root)
    first = refusal(verifier, *request)
    assert refusal(verifier, *request) is first


def test_the_cache_is_bounded(root):
    verifier = RequestVerifier(root.pem, cache_size=3)
    for _leaf in range(6):
        verifier.verify(*signed(root.issue()))
    assert len(verifier._cache) == 3


# ---------------------------------------------------------------------------------------------- configuration


def test_a_bundle_must_hold_only_cas_that_may_sign(root):
    leaf = root.issue()
    with pytest.raises(TrustConfigError, match=r"bundle certificate 2 .* is not a CA certificate"):
        RequestVerifier(root.pem + leaf.pem)
    no_sign = Authority("no-sign CA", key_cert_sign=False)
    with pytest.raises(TrustConfigError, match="is not a CA certificate that may sign"):
        RequestVerifier(no_sign.pem)
    with pytest.raises(TrustConfigError, match="not PEM certificates"):
        RequestVerifier("garbage")


def test_a_ca_with_name_constraints_is_refused_rather_than_half_checked():
    constraints = x509.NameConstraints(permitted_subtrees=[x509.DNSName("example.net")], excluded_subtrees=None)
    constrained = Authority("constrained CA", extensions=((constraints, True),))
    with pytest.raises(TrustConfigError, match="critical extension nameConstraints"):
        RequestVerifier(constrained.pem)


def test_verifier_from_file(tmp_path, root):
    path = tmp_path / "provisioning-ca.pem"
    path.write_text(root.pem)
    assert RequestVerifier.from_file(str(path)).verify(*signed(root.issue()))
    with pytest.raises(TrustConfigError, match="cannot be read"):
        RequestVerifier.from_file(str(tmp_path / "missing.pem"))


def test_signer_refuses_a_key_that_is_not_the_certificate_s(root):
    leaf = root.issue()
    with pytest.raises(TrustConfigError, match="does not belong to the signing certificate"):
        RequestSigner(leaf.pem, key_pem(ec_key()))


@pytest.mark.parametrize(
    ("key", "words"),
    [
        (ed25519.Ed25519PrivateKey.generate(), "signed requests use RSA"),
        (ec.generate_private_key(ec.SECP384R1()), "signed requests use RSA"),
    ],
)
def test_signer_refuses_key_types_verifiers_do_not_accept(root, key, words):
    leaf = root.issue(key=key)
    with pytest.raises(TrustConfigError, match=words):
        RequestSigner(leaf.pem, leaf.key_pem)


def test_signer_with_an_encrypted_key(tmp_path, root):
    leaf = root.issue()
    encrypted = key_pem(leaf.key, passphrase=b"correct horse")
    with pytest.raises(TrustConfigError, match="passphrase is required"):
        RequestSigner(leaf.pem, encrypted)
    cert_path, key_path = tmp_path / "prov.crt", tmp_path / "prov.key"
    cert_path.write_text(leaf.pem)
    key_path.write_text(encrypted)
    signer = RequestSigner.from_files(str(cert_path), str(key_path), passphrase="correct horse")
    fields = signer.sign(MESSAGE)
    assert RequestVerifier(root.pem).verify(MESSAGE, fields.signature, fields.pubcert).subject == signer.subject


def test_add_provisioner_usage_gives_the_oid_and_client_auth(root):
    key = ec_key()
    now = utcnow()
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "prov9")]))
        .issuer_name(root.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - HOUR)
        .not_valid_after(now + DAY)
    )
    cert = add_provisioner_usage(builder).sign(root.key, hashes.SHA256())
    usages = list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
    assert usages == list(PROVISIONER)
    assert add_provisioner_usage(builder, ExtendedKeyUsageOID.CODE_SIGNING).sign(root.key, hashes.SHA256())


def test_is_unsigned():
    assert is_unsigned("insecure", "insecure")
    assert is_unsigned("insecure registration", "x")
    assert is_unsigned("", "pem")
    assert not is_unsigned("c2ln", "pem")
