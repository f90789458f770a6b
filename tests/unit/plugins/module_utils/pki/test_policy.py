"""The CSR policy with real X.509: every refusal names its rule and the value refused."""

from __future__ import annotations

import datetime

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from cryptography.x509.oid import NameOID

from ansible_collections.zeroinit.bootstrap.plugins.module_utils.pki.ca import CertificateAuthority
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.pki.policy import CsrPolicy, PolicyError
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.pki.signer import Signer
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.pki.x509 import PkiError
from tests.support.rules import IDENTITIES
from tests.support.x509 import EC_KEY, IDENTITY, load, make_csr, refusal


def test_cn_not_the_identity_is_refused_naming_rule_and_both_names(signer):
    err = refusal(signer, make_csr("evil.example.net"), IDENTITY)
    assert err.rule == "cn_matches_identity" and err.value == "evil.example.net"
    assert str(err) == (
        "CSR refused by policy 'cn_matches_identity': CN 'evil.example.net' is not the identity 'node1.example.net'"
    )


def test_a_hostile_long_name_is_refused_and_shown_cut(signer):
    """A 10,240-character CN (or identity) is named in the refusal, cut at 100 characters: a log line, not a dump."""
    long_cn = "a" * 10240
    with pytest.warns(UserWarning):  # cryptography builds it only when told not to validate, as a hostile node can
        attribute = x509.NameAttribute(NameOID.COMMON_NAME, long_cn, _validate=False)
    csr = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([attribute])).sign(EC_KEY, hashes.SHA256())
    with pytest.warns(UserWarning):  # cryptography's warning on parsing the subject; the policy still decides
        err = refusal(signer, csr.public_bytes(serialization.Encoding.PEM).decode("ascii"))
    assert err.rule == "cn_matches_identity" and err.value == long_cn
    assert (
        str(err) == f"CSR refused by policy 'cn_matches_identity': CN '{'a' * 100}...' is not the identity '{IDENTITY}'"
    )
    err = refusal(signer, make_csr(), "b" * 10240)
    assert err.rule == "identity" and len(str(err)) < 300


def test_csr_with_two_common_names_is_refused(signer):
    err = refusal(signer, make_csr(cn_count=2))
    assert err.rule == "cn_matches_identity" and "2 CN attributes" in str(err)


@pytest.mark.parametrize(
    "name",
    [
        "*.example.net",
        "admin.example.net",
        "root",
        "ops.privileged.choria",
        "bob.choria",
        "bob.mcollective",
        "localhost",
        "foo.localhost",
    ],
)
def test_default_deny_list_refuses_privileged_looking_sans(name):
    permissive = Signer(CertificateAuthority.create(), CsrPolicy(allowed_sans=[r".*"]))
    err = refusal(permissive, make_csr(dns=[name]))
    assert err.rule == "deny" and err.value == name and repr(name) in str(err)


def test_default_deny_applies_to_the_identity_itself(signer):
    err = refusal(signer, make_csr("admin.privileged.choria"), "admin.privileged.choria")
    assert err.rule == "deny" and err.value == "admin.privileged.choria"


def test_loopback_ip_san_is_denied_even_when_allowed_by_pattern(ca):
    err = refusal(Signer(ca, CsrPolicy(allowed_sans=[r".*"])), make_csr(ips=["127.0.0.1"]))
    assert err.rule == "deny" and err.value == "127.0.0.1"


def test_deny_patterns_add_to_the_defaults_and_can_replace_them(ca):
    policy = CsrPolicy(allowed_sans=[r".*"], deny=[r"^vault\."])
    assert refusal(Signer(ca, policy), make_csr(dns=["vault.example.net"])).rule == "deny"
    assert refusal(Signer(ca, policy), make_csr(dns=["*.example.net"])).rule == "deny"
    issued = Signer(ca, CsrPolicy(allowed_sans=[r".*"], default_deny=False)).sign(
        make_csr(dns=["bob.choria"]), IDENTITY
    )
    assert "DNS:bob.choria" in issued.subject_alt_names


def test_by_default_a_node_may_not_name_another_node(signer):
    err = refusal(signer, make_csr(dns=["node2.example.net"]))
    assert err.rule == "allowed_sans" and err.value == "node2.example.net"


def test_san_outside_the_allow_list_is_refused_and_patterns_match_whole_names(ca):
    policy = CsrPolicy(allowed_sans=[r"[a-z0-9.-]+\.example\.net"])
    err = refusal(Signer(ca, policy), make_csr(dns=["node1.example.net.evil.org"]))
    assert err.rule == "allowed_sans" and err.value == "node1.example.net.evil.org"
    assert "[a-z0-9.-]+\\\\.example\\\\.net" in str(err)


@pytest.mark.parametrize(
    "name,needle",
    [
        ("a" * 64 + ".svc.example.net", "label of 64 characters (at most 63)"),
        (".".join(["a" * 60] * 4) + ".svc.example.net", "is 259 characters (at most 253)"),
    ],
)
def test_dns_names_an_allow_pattern_matches_must_still_fit_dns(ca, name, needle):
    signer = Signer(ca, CsrPolicy(allowed_sans=["{identity}", r"[a-z0-9.-]+\.svc\.example\.net"]))
    err = refusal(signer, make_csr(dns=[name]))
    assert err.rule == "dns_lengths" and err.value == name and needle in str(err)
    longest_allowed = "a" * 63 + ".svc.example.net"
    assert signer.sign(make_csr(dns=[longest_allowed]), IDENTITY).subject_alt_names[-1] == f"DNS:{longest_allowed}"


def test_identity_outside_the_allow_list_is_refused(ca):
    policy = CsrPolicy(allowed_sans=[r"[a-z0-9-]+\.prod\.example\.net"])
    err = refusal(Signer(ca, policy), make_csr())
    assert err.rule == "allowed_sans" and err.value == IDENTITY


def test_identity_placeholder_allows_names_under_the_node_only(ca):
    signer = Signer(ca, CsrPolicy(allowed_sans=["{identity}", r"[a-z0-9-]+\.{identity}"]))
    issued = signer.sign(make_csr(dns=["api.node1.example.net"]), IDENTITY)
    assert issued.subject_alt_names == ("DNS:node1.example.net", "DNS:api.node1.example.net")
    assert refusal(signer, make_csr(dns=["api.node2.example.net"])).rule == "allowed_sans"


def test_email_and_uri_sans_are_refused(signer):
    err = refusal(signer, make_csr(extra_names=[x509.RFC822Name("root@example.net")]))
    assert err.rule == "san_types" and err.value == "root@example.net"
    err = refusal(signer, make_csr(extra_names=[x509.UniformResourceIdentifier("spiffe://example.net/admin")]))
    assert err.rule == "san_types"


def test_wildcard_identity_is_refused(signer):
    err = refusal(signer, make_csr("*.example.net"), "*.example.net")
    assert err.rule == "identity" and err.value == "*.example.net"


def test_rsa_1024_is_refused(signer):
    err = refusal(signer, make_csr(key=rsa.generate_private_key(65537, 1024)))
    assert err.rule == "key_types" and err.value == "rsa-1024" and "min_rsa_bits 2048" in str(err)


@pytest.mark.parametrize("curve", [ec.SECP192R1(), ec.SECP256K1(), ec.SECP521R1()])
def test_curves_outside_the_list_are_refused(signer, curve):
    err = refusal(signer, make_csr(key=ec.generate_private_key(curve)))
    assert err.rule == "key_types" and err.value == curve.name


def test_ed448_and_dsa_are_refused_unless_allowed(ca, signer):
    err = refusal(signer, make_csr(key=ed448.Ed448PrivateKey.generate()))
    assert err.rule == "key_types" and err.value == "ed448"
    assert refusal(signer, make_csr(key=dsa.generate_private_key(2048))).rule == "key_types"
    allowed = Signer(ca, CsrPolicy(key_types=("ed448",)))
    assert allowed.sign(make_csr(key=ed448.Ed448PrivateKey.generate()), IDENTITY).serial > 0


def test_valid_days_over_the_maximum_is_refused_not_capped(ca):
    signer = Signer(ca, CsrPolicy(max_valid_days=90))
    err = refusal(signer, make_csr(), valid_days=91)
    assert err.rule == "max_valid_days" and err.value == 91 and "max_valid_days 90" in str(err)
    assert refusal(signer, make_csr(), valid_days=0).rule == "valid_days"


def test_tampered_csr_subject_is_refused():
    """An attacker rewrites the CN of someone's CSR (same length, so the DER stays well-formed)."""
    signer = Signer(CertificateAuthority.create(), CsrPolicy())
    csr = x509.load_pem_x509_csr(make_csr("node2.example.net").encode())
    der = csr.public_bytes(serialization.Encoding.DER).replace(b"node2.example.net", IDENTITY.encode())
    tampered = x509.load_der_x509_csr(der).public_bytes(serialization.Encoding.PEM)
    err = refusal(signer, tampered)
    assert err.rule == "csr_signature" and "does not verify" in str(err)


def test_csr_with_flipped_signature_bits_is_refused(signer):
    csr = x509.load_pem_x509_csr(make_csr(key=rsa.generate_private_key(65537, 2048)).encode())
    der = bytearray(csr.public_bytes(serialization.Encoding.DER))
    der[-10] ^= 0xFF  # inside the RSA signature BIT STRING
    err = refusal(signer, x509.load_der_x509_csr(bytes(der)).public_bytes(serialization.Encoding.PEM))
    assert err.rule == "csr_signature"


SHA1_CSR = """-----BEGIN CERTIFICATE REQUEST-----
MIHWMH4CAQAwHDEaMBgGA1UEAwwRbm9kZTEuZXhhbXBsZS5uZXQwWTATBgcqhkjO
PQIBBggqhkjOPQMBBwNCAAR8dUUy8+//JtISpbWserEADBxfv8mDQftt2sfxJwWg
yAnFmUlClnG4lUYheBTZsNHVsaByyIl1A7dqmT5HtK3qoAAwCQYHKoZIzj0EAQNJ
ADBGAiEA/MEHnM76Qnx6M4xW6x+6hM81tSdSSNJOoYPtpPVC2lsCIQCtwUnAxpIl
WBrf2SALTgV83hnHVHfutPW80PH8cb8Oug==
-----END CERTIFICATE REQUEST-----
"""


def test_csr_signed_with_sha1_is_refused_as_weak(signer):
    err = refusal(signer, SHA1_CSR)
    assert err.rule == "csr_signature" and err.value == "sha1" and "too weak" in str(err)


def test_garbage_is_a_pki_error_naming_csr(signer):
    with pytest.raises(PkiError) as info:
        signer.sign("-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n", IDENTITY)
    assert info.value.field == "csr" and not isinstance(info.value, PolicyError)


@pytest.mark.parametrize(
    "key",
    [
        ec.generate_private_key(ec.SECP256R1()),
        ec.generate_private_key(ec.SECP384R1()),
        rsa.generate_private_key(65537, 2048),
        ed25519.Ed25519PrivateKey.generate(),
    ],
    ids=["ec-p256", "ec-p384", "rsa-2048", "ed25519"],
)
def test_issued_certificate_is_built_by_policy_and_chains_to_the_ca(ca, signer, key):
    before = datetime.datetime.now(datetime.UTC)
    issued = signer.sign(make_csr(key=key), IDENTITY, valid_days=30, profile="both")
    cert = load(issued.certificate)
    cert.verify_directly_issued_by(ca.certificate)  # raises unless the CA key signed it
    assert issued.ca == ca.chain_pem
    # Subject is the identity only: the CSR's O=system:masters is not copied.
    assert cert.subject == x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, IDENTITY)])
    assert cert.issuer == ca.certificate.subject
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == [IDENTITY]
    bc = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca is False
    ski = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert ski == x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    assert (
        aki.key_identifier == ca.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    )
    assert cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ) == key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    # Backdated for clock skew, and the validity asked for.
    assert cert.not_valid_before_utc <= before - datetime.timedelta(minutes=4)
    assert abs(cert.not_valid_after_utc - (before + datetime.timedelta(days=30))) < datetime.timedelta(minutes=1)
    assert issued.not_after == cert.not_valid_after_utc and issued.not_after_iso.endswith("Z")
    assert issued.serial == cert.serial_number and issued.serial_hex == f"{cert.serial_number:x}"


def test_invalid_policy_patterns_name_the_option():
    with pytest.raises(PkiError) as info:
        CsrPolicy(allowed_sans=["(unclosed"])
    assert info.value.field == "allowed_sans"
    with pytest.raises(PkiError) as info:
        CsrPolicy(key_types=("dsa",))
    assert info.value.field == "allowed_key_types"


@pytest.mark.parametrize("identity,valid", IDENTITIES)
def test_identity_rule_is_the_one_of_the_protocol(signer, identity, valid):
    err = refusal(signer, make_csr("placeholder.example.net"), identity=identity)
    assert err.rule == ("cn_matches_identity" if valid else "identity")
