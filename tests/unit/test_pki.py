"""The policy CA with real X.509: every policy refusal, issued certificates that chain, the CA files, renewal."""

from __future__ import annotations

import datetime
import ipaddress
import os
import stat
import threading

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from cryptography.x509.verification import PolicyBuilder, Store

from ansible_collections.zeroinit.bootstrap.plugins.module_utils.pki import (
    CertificateAuthority,
    CsrPolicy,
    IssuedCertificate,
    PkiError,
    PolicyError,
    Signer,
)
from tests.support.rules import IDENTITIES

IDENTITY = "node1.example.net"
EC_KEY = ec.generate_private_key(ec.SECP256R1())  # one node key for the tests that do not care which


def make_csr(identity: str = IDENTITY, key=None, dns=(), ips=(), extra_names=(), cn_count: int = 1) -> str:
    key = key if key is not None else EC_KEY
    attributes = [x509.NameAttribute(NameOID.COMMON_NAME, identity) for _index in range(cn_count)]
    attributes.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, "system:masters"))
    builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name(attributes))
    names = [x509.DNSName(n) for n in dns] + [x509.IPAddress(ipaddress.ip_address(a)) for a in ips] + list(extra_names)
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    algorithm = None if isinstance(key, (ed25519.Ed25519PrivateKey, ed448.Ed448PrivateKey)) else hashes.SHA256()
    return builder.sign(key, algorithm).public_bytes(serialization.Encoding.PEM).decode("ascii")


def load(pem: str):
    return x509.load_pem_x509_certificate(pem.encode("ascii"))


@pytest.fixture(scope="module")
def ca():
    return CertificateAuthority.create("test CA")


@pytest.fixture(scope="module")
def signer(ca):
    return Signer(ca, CsrPolicy())


def refusal(signer, csr, identity=IDENTITY, **kwargs) -> PolicyError:
    with pytest.raises(PolicyError) as info:
        signer.sign(csr, identity, **kwargs)
    return info.value


# ---------------------------------------------------------------------------------------------------------- refusals


def test_cn_not_the_identity_is_refused_naming_rule_and_both_names(signer):
    err = refusal(signer, make_csr("evil.example.net"), IDENTITY)
    assert err.rule == "cn_matches_identity" and err.value == "evil.example.net"
    assert str(err) == (
        "CSR refused by policy 'cn_matches_identity': CN 'evil.example.net' is not the identity 'node1.example.net'"
    )


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


# Made with `openssl req -new -sha1` (cryptography itself refuses to sign with SHA-1).
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


def test_ca_key_that_does_not_match_the_certificate_is_refused(tmp_path):
    ca, _created = CertificateAuthority.load_or_create(str(tmp_path / "ca.crt"), str(tmp_path / "ca.key"))
    other, _created = CertificateAuthority.load_or_create(str(tmp_path / "other.crt"), str(tmp_path / "other.key"))
    with pytest.raises(PkiError) as info:
        CertificateAuthority.load(str(tmp_path / "ca.crt"), str(tmp_path / "other.key"))
    assert info.value.field == "ca_key" and "does not match" in str(info.value)
    with pytest.raises(PkiError):
        CertificateAuthority(ca.certificate, other.private_key)


def test_a_leaf_certificate_is_refused_as_ca(ca, signer, tmp_path):
    leaf = signer.sign(make_csr(), IDENTITY)
    (tmp_path / "leaf.crt").write_text(leaf.certificate)
    (tmp_path / "leaf.key").write_bytes(
        EC_KEY.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    with pytest.raises(PkiError) as info:
        CertificateAuthority.load(str(tmp_path / "leaf.crt"), str(tmp_path / "leaf.key"))
    assert info.value.field == "ca_cert" and "not a CA certificate" in str(info.value)


# ------------------------------------------------------------------------------------------------------ success paths


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
    before = datetime.datetime.now(datetime.timezone.utc)
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


@pytest.mark.parametrize(
    "key", [ec.generate_private_key(ec.SECP256R1()), rsa.generate_private_key(65537, 2048)], ids=["ec", "rsa"]
)
def test_issued_certificate_passes_rfc5280_path_validation(ca, signer, key):
    cert = load(signer.sign(make_csr(key=key), IDENTITY).certificate)
    store = Store([ca.certificate])
    chain = PolicyBuilder().store(store).build_server_verifier(x509.DNSName(IDENTITY)).verify(cert, [])
    assert chain[-1] == ca.certificate
    client = PolicyBuilder().store(store).build_client_verifier().verify(cert, [])
    assert client.subjects == [x509.DNSName(IDENTITY)]


def test_server_profile_is_not_accepted_as_client_and_hostname_is_checked(ca, signer):
    cert = load(signer.sign(make_csr(), IDENTITY, profile="server").certificate)
    store = Store([ca.certificate])
    with pytest.raises(Exception):
        PolicyBuilder().store(store).build_client_verifier().verify(cert, [])
    with pytest.raises(Exception):
        PolicyBuilder().store(store).build_server_verifier(x509.DNSName("node2.example.net")).verify(cert, [])


@pytest.mark.parametrize(
    "profile,usages",
    [
        ("server", [ExtendedKeyUsageOID.SERVER_AUTH]),
        ("client", [ExtendedKeyUsageOID.CLIENT_AUTH]),
        ("both", [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
    ],
)
def test_profile_sets_extended_key_usage(signer, profile, usages):
    cert = load(signer.sign(make_csr(), IDENTITY, profile=profile).certificate)
    assert list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == usages


@pytest.mark.parametrize(
    "key,encipherment",
    [(EC_KEY, False), (rsa.generate_private_key(65537, 2048), True), (ed25519.Ed25519PrivateKey.generate(), False)],
    ids=["ec", "rsa", "ed25519"],
)
def test_key_usage_is_critical_with_key_encipherment_only_for_rsa(signer, key, encipherment):
    ku = load(signer.sign(make_csr(key=key), IDENTITY).certificate).extensions.get_extension_for_class(x509.KeyUsage)
    assert ku.critical and ku.value.digital_signature and not ku.value.key_cert_sign
    assert ku.value.key_encipherment is encipherment


def test_unknown_profile_is_an_error_naming_profile(signer):
    with pytest.raises(PkiError) as info:
        signer.sign(make_csr(), IDENTITY, profile="ca")
    assert info.value.field == "profile"


def test_allowed_ip_and_dns_sans_are_carried_after_the_identity(ca):
    signer = Signer(ca, CsrPolicy(allowed_sans=["{identity}", r"node1\.example\.org", r"10\.20\.\d+\.\d+"]))
    issued = signer.sign(make_csr(dns=["node1.example.org"], ips=["10.20.0.7"]), IDENTITY)
    assert issued.subject_alt_names == ("DNS:node1.example.net", "DNS:node1.example.org", "IP:10.20.0.7")


def test_serials_are_random_positive_and_at_most_128_bits(signer):
    serials = {signer.sign(make_csr(), IDENTITY).serial for _attempt in range(50)}
    assert len(serials) == 50
    assert all(0 < s < 2**128 for s in serials)


def test_certificate_never_outlives_its_ca_and_a_warning_says_so():
    short_ca = CertificateAuthority.create("short CA", valid_days=10)
    issued = Signer(short_ca, CsrPolicy()).sign(make_csr(), IDENTITY, valid_days=365)
    assert issued.not_after == short_ca.not_after
    assert issued.warnings and "ends on" in issued.warnings[0]


def test_signing_from_many_threads_gives_valid_distinct_certificates(ca, signer):
    csrs = [make_csr("node%d.example.net" % i, key=ec.generate_private_key(ec.SECP256R1())) for i in range(40)]
    issued: list[IssuedCertificate] = []
    errors = []
    lock = threading.Lock()

    def work(chunk):
        for i, csr in chunk:
            try:
                result = signer.sign(csr, "node%d.example.net" % i)
            except Exception as exc:  # collected and asserted below
                errors.append(exc)
                continue
            with lock:
                issued.append(result)

    items = list(enumerate(csrs))
    threads = [threading.Thread(target=work, args=(items[n::4],)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors and len(issued) == 40
    assert len({i.serial for i in issued}) == 40
    for result in issued:
        load(result.certificate).verify_directly_issued_by(ca.certificate)
    assert sorted(i.subject for i in issued) == sorted("CN=node%d.example.net" % i for i in range(40))


# -------------------------------------------------------------------------------------------------------- CA files


def test_load_or_create_writes_key_0600_and_cert_0644_then_loads_the_same_ca(tmp_path):
    cert_path, key_path = str(tmp_path / "ca.crt"), str(tmp_path / "ca.key")
    ca, created = CertificateAuthority.load_or_create(cert_path, key_path, common_name="site CA")
    assert created
    assert stat.S_IMODE(os.stat(key_path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(cert_path).st_mode) == 0o644
    again, created_again = CertificateAuthority.load_or_create(cert_path, key_path)
    assert not created_again and again.fingerprint_sha256 == ca.fingerprint_sha256
    assert again.certificate.subject.rfc4514_string() == "CN=site CA"
    bc = again.certificate.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca and bc.value.path_length == 0
    assert not again.warnings


def test_check_mode_creation_writes_nothing(tmp_path):
    ca, created = CertificateAuthority.load_or_create(
        str(tmp_path / "ca.crt"), str(tmp_path / "ca.key"), check_mode=True
    )
    assert created and ca.certificate is not None
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize(
    "key_type,key_class",
    [("ec", ec.EllipticCurvePrivateKey), ("rsa", rsa.RSAPrivateKey), ("ed25519", ed25519.Ed25519PrivateKey)],
)
def test_each_ca_key_type_signs_verifiable_certificates(tmp_path, key_type, key_class):
    ca, _created = CertificateAuthority.load_or_create(
        str(tmp_path / "ca.crt"), str(tmp_path / "ca.key"), key_type=key_type
    )
    assert isinstance(ca.private_key, key_class)
    loaded = CertificateAuthority.load(str(tmp_path / "ca.crt"), str(tmp_path / "ca.key"))
    issued = Signer(loaded, CsrPolicy()).sign(make_csr(), IDENTITY)
    load(issued.certificate).verify_directly_issued_by(ca.certificate)


def test_passphrase_encrypts_the_key_and_is_required_to_load(tmp_path):
    cert_path, key_path = str(tmp_path / "ca.crt"), str(tmp_path / "ca.key")
    CertificateAuthority.load_or_create(cert_path, key_path, passphrase="s3cret")
    assert b"ENCRYPTED" in (tmp_path / "ca.key").read_bytes()
    assert CertificateAuthority.load(cert_path, key_path, "s3cret").private_key is not None
    with pytest.raises(PkiError) as info:
        CertificateAuthority.load(cert_path, key_path)
    assert info.value.field == "ca_passphrase" and "required" in str(info.value)
    with pytest.raises(PkiError) as info:
        CertificateAuthority.load(cert_path, key_path, "wrong")
    assert info.value.field == "ca_passphrase"


def test_key_without_certificate_gets_a_certificate_and_the_reverse_is_refused(tmp_path):
    cert_path, key_path = str(tmp_path / "ca.crt"), str(tmp_path / "ca.key")
    first, _created = CertificateAuthority.load_or_create(cert_path, key_path)
    os.unlink(cert_path)
    recovered, created = CertificateAuthority.load_or_create(cert_path, key_path)
    assert created
    assert recovered.private_key.private_numbers() == first.private_key.private_numbers()
    os.unlink(key_path)
    with pytest.raises(PkiError) as info:
        CertificateAuthority.load_or_create(cert_path, key_path)
    assert info.value.field == "ca_key" and "refusing" in str(info.value)
    assert os.path.exists(cert_path) and not os.path.exists(key_path)


def test_world_readable_ca_key_is_reported(tmp_path):
    cert_path, key_path = str(tmp_path / "ca.crt"), str(tmp_path / "ca.key")
    CertificateAuthority.load_or_create(cert_path, key_path)
    os.chmod(key_path, 0o644)
    ca = CertificateAuthority.load(cert_path, key_path)
    assert any("0644" in w for w in ca.warnings)


def test_invalid_policy_patterns_name_the_option():
    with pytest.raises(PkiError) as info:
        CsrPolicy(allowed_sans=["(unclosed"])
    assert info.value.field == "allowed_sans"
    with pytest.raises(PkiError) as info:
        CsrPolicy(key_types=("dsa",))
    assert info.value.field == "allowed_key_types"


# ----------------------------------------------------------------------------------------------------------- renewal


def test_fresh_certificate_for_the_same_key_needs_no_renewal(signer):
    csr = make_csr()
    issued = signer.sign(csr, IDENTITY, valid_days=365)
    need, reason = signer.needs_renewal(issued.certificate, csr, 30, identity=IDENTITY, profile="both")
    assert not need and "valid until" in reason
    public_pem = EC_KEY.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert signer.needs_renewal(issued.certificate, public_pem, 30) == (False, reason)


def test_renewal_is_needed_inside_the_window(signer):
    csr = make_csr()
    issued = signer.sign(csr, IDENTITY, valid_days=20)
    need, reason = signer.needs_renewal(issued.certificate, csr, 30)
    assert need and "renew_before_days 30" in reason


def test_renewal_is_needed_for_another_key_another_ca_identity_sans_or_profile(ca, signer):
    csr = make_csr()
    issued = signer.sign(csr, IDENTITY, profile="server")
    other_key_csr = make_csr(key=ec.generate_private_key(ec.SECP256R1()))
    assert signer.needs_renewal(issued.certificate, other_key_csr, 30)[0]
    other_ca = Signer(CertificateAuthority.create("other CA"), CsrPolicy())
    need, reason = other_ca.needs_renewal(issued.certificate, csr, 30)
    assert need and "not issued by this CA" in reason
    assert signer.needs_renewal(issued.certificate, csr, 30, identity=IDENTITY, profile="both")[0]
    assert not signer.needs_renewal(issued.certificate, csr, 30, identity=IDENTITY, profile="server")[0]
    wider = make_csr(dns=["api.node1.example.net"])
    assert signer.needs_renewal(issued.certificate, wider, 30, identity=IDENTITY)[0]


def test_expired_and_garbage_certificates_need_renewal(ca, signer):
    now = datetime.datetime.now(datetime.timezone.utc)
    expired = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, IDENTITY)]))
        .issuer_name(ca.subject)
        .public_key(EC_KEY.public_key())
        .serial_number(7)
        .not_valid_before(now - datetime.timedelta(days=400))
        .not_valid_after(now - datetime.timedelta(days=1))
        .sign(ca.private_key, hashes.SHA256())
    ).public_bytes(serialization.Encoding.PEM)
    need, reason = signer.needs_renewal(expired, make_csr(), 30)
    assert need and "expired" in reason
    assert signer.needs_renewal("not a certificate", make_csr(), 30)[0]


def test_issued_fields_agree_with_the_certificate_itself(ca):
    signer = Signer(ca, CsrPolicy(allowed_sans=["{identity}", r"10\.0\.0\.\d+"]))
    issued = signer.sign(make_csr(ips=["10.0.0.9"]), IDENTITY, valid_days=7)
    parsed = issued.properties()
    assert parsed["subject"] == issued.subject and parsed["issuer"] == issued.issuer == "CN=test CA"
    assert parsed["subject_alt_names"] == list(issued.subject_alt_names) == [f"DNS:{IDENTITY}", "IP:10.0.0.9"]
    assert parsed["serial"] == issued.serial_hex and parsed["not_after"] == issued.not_after_iso
    assert parsed["public_key_sha256"] == issued.public_key_sha256
    assert load(issued.certificate).not_valid_before_utc == issued.not_before


def test_intermediate_ca_from_a_chain_file_in_any_order(tmp_path):
    """The CA file may hold root and intermediate (root first, as some tools write it); certificates chain to the root."""
    root_key = ec.generate_private_key(ec.SECP384R1())
    root_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "root CA")])
    now = datetime.datetime.now(datetime.timezone.utc)
    root_ski = x509.SubjectKeyIdentifier.from_public_key(root_key.public_key())
    root = (
        x509.CertificateBuilder()
        .subject_name(root_name)
        .issuer_name(root_name)
        .public_key(root_key.public_key())
        .serial_number(1)
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=900))
        .add_extension(x509.BasicConstraints(ca=True, path_length=1), critical=True)
        .add_extension(x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True)
        .add_extension(root_ski, critical=False)
        .sign(root_key, hashes.SHA384())
    )
    mid_key = ec.generate_private_key(ec.SECP256R1())
    mid = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "issuing CA")]))
        .issuer_name(root_name)
        .public_key(mid_key.public_key())
        .serial_number(2)
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=800))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(mid_key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(root_ski), critical=False)
        .sign(root_key, hashes.SHA384())
    )

    def pem(cert) -> bytes:
        return cert.public_bytes(serialization.Encoding.PEM)

    (tmp_path / "chain.pem").write_bytes(pem(root) + pem(mid))
    (tmp_path / "mid.key").write_bytes(
        mid_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    ca = CertificateAuthority.load(str(tmp_path / "chain.pem"), str(tmp_path / "mid.key"))
    assert ca.certificate == mid and ca.chain == [mid, root]
    issued = Signer(ca, CsrPolicy()).sign(make_csr(), IDENTITY)
    assert issued.ca == (pem(mid) + pem(root)).decode("ascii")
    leaf = load(issued.certificate)
    chain = PolicyBuilder().store(Store([root])).build_server_verifier(x509.DNSName(IDENTITY)).verify(leaf, [mid])
    assert chain == [leaf, mid, root]


def _create_in_child(cert_path: str, key_path: str, queue) -> None:
    try:
        ca, created = CertificateAuthority.load_or_create(cert_path, key_path)
        queue.put((ca.fingerprint_sha256, created))
    except Exception as exc:  # reported to the parent, which fails the test with it
        queue.put((f"error: {exc}", False))


def test_concurrent_creation_makes_one_ca_that_every_process_uses(tmp_path):
    """Parallel forks each running pki_sign with create_ca against one CA directory must agree on one CA."""
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    cert_path, key_path = str(tmp_path / "ca.crt"), str(tmp_path / "ca.key")
    procs = [ctx.Process(target=_create_in_child, args=(cert_path, key_path, queue)) for _index in range(6)]
    for proc in procs:
        proc.start()
    results = [queue.get(timeout=60) for _index in range(6)]
    for proc in procs:
        proc.join(timeout=60)
    on_disk = CertificateAuthority.load(cert_path, key_path).fingerprint_sha256
    assert {fingerprint for fingerprint, _created in results} == {on_disk}
    assert sum(1 for _fingerprint, created in results if created) == 1


def test_ca_certificate_without_key_cert_sign_is_refused():
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "crl-only CA")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(3)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, False, True, False, False), critical=True)
        .sign(key, hashes.SHA256())
    )
    with pytest.raises(PkiError) as info:
        CertificateAuthority(cert, key)
    assert info.value.field == "ca_cert" and "keyCertSign" in str(info.value)


@pytest.mark.parametrize("identity,valid", IDENTITIES)
def test_identity_rule_is_the_one_of_the_protocol(signer, identity, valid):
    err = refusal(signer, make_csr("placeholder.example.net"), identity=identity)
    assert err.rule == ("cn_matches_identity" if valid else "identity")
