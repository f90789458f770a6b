"""The CA with real X.509: its files, modes, passphrase, chains in any order and concurrent creation."""

from __future__ import annotations

import datetime
import os
import stat

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID
from cryptography.x509.verification import PolicyBuilder, Store

from ansible_collections.zeroinit.bootstrap.plugins.module_utils.pki.ca import CertificateAuthority
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.pki.policy import CsrPolicy
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.pki.signer import Signer
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.pki.x509 import PkiError
from tests.support.x509 import EC_KEY, IDENTITY, load, make_csr


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


def test_intermediate_ca_from_a_chain_file_in_any_order(tmp_path):
    """The CA file may hold root and intermediate (root first, as some tools write it); certificates chain to the root."""
    root_key = ec.generate_private_key(ec.SECP384R1())
    root_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "root CA")])
    now = datetime.datetime.now(datetime.UTC)
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
    now = datetime.datetime.now(datetime.UTC)
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
