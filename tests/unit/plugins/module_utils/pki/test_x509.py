"""THE certificate-key match, for every form a caller holds: objects or PEM, private or public keys, CSRs."""

from __future__ import annotations

import datetime

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID

from ansible_collections.zeroinit.bootstrap.plugins.module_utils.pki import x509 as px

KEYS = {
    "ec": ec.generate_private_key(ec.SECP256R1()),
    "ec-other": ec.generate_private_key(ec.SECP256R1()),
    "rsa": rsa.generate_private_key(65537, 2048),
    "ed25519": ed25519.Ed25519PrivateKey.generate(),
}
NAME = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "n1.example.net")])


def certificate(key, issuer_key=None, issuer_name=NAME):
    now = datetime.datetime.now(datetime.UTC)
    signing = issuer_key or KEYS["ec-other"]
    return (
        x509.CertificateBuilder()
        .subject_name(NAME)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(signing, None if isinstance(signing, ed25519.Ed25519PrivateKey) else hashes.SHA256())
    )


def csr(key):
    algorithm = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    return x509.CertificateSigningRequestBuilder().subject_name(NAME).sign(key, algorithm)


def pem(obj) -> str:
    if hasattr(obj, "private_bytes"):
        data = obj.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    else:
        data = obj.public_bytes(serialization.Encoding.PEM)
    return data.decode("ascii")


FORMS = {
    "private": lambda key: key,
    "public": lambda key: key.public_key(),
    "private-pem": pem,
    "private-pem-bytes": lambda key: pem(key).encode("ascii"),
}


@pytest.mark.parametrize(
    "cert_key,key,form,cert_as_pem,matches",
    [
        ("ec", "ec", "private", False, True),
        ("ec", "ec", "public", False, True),
        ("ec", "ec", "private-pem", True, True),
        ("ec", "ec", "private-pem-bytes", True, True),
        ("ec", "ec-other", "private", False, False),
        ("ec", "ec-other", "private-pem", True, False),
        ("rsa", "rsa", "public", True, True),
        ("rsa", "ec", "public", False, False),
        ("ed25519", "ed25519", "private", True, True),
        ("ed25519", "rsa", "private-pem", False, False),
    ],
)
def test_certificate_matches_key(cert_key, key, form, cert_as_pem, matches):
    cert = certificate(KEYS[cert_key])
    given = pem(cert) if cert_as_pem else cert
    assert px.certificate_matches_key(given, FORMS[form](KEYS[key])) is matches


@pytest.mark.parametrize(
    "cert_key,csr_key,as_pem,matches",
    [
        ("ec", "ec", False, True),
        ("ec", "ec", True, True),
        ("ec", "ec-other", True, False),
        ("rsa", "ed25519", False, False),
    ],
)
def test_certificate_matches_csr(cert_key, csr_key, as_pem, matches):
    cert, request = certificate(KEYS[cert_key]), csr(KEYS[csr_key])
    if as_pem:
        cert, request = pem(cert), pem(request)
    assert px.certificate_matches_csr(cert, request) is matches


def test_unparseable_pem_is_a_value_error():
    with pytest.raises(ValueError):
        px.certificate_matches_key("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n", KEYS["ec"])


def test_issued_by_needs_the_issuers_name_and_signature():
    issuer_key = KEYS["rsa"]
    issuer = certificate(issuer_key, issuer_key)  # self-signed, named NAME
    assert px.is_issued_by(certificate(KEYS["ec"], issuer_key), issuer)
    assert not px.is_issued_by(certificate(KEYS["ec"], KEYS["ec-other"]), issuer)  # same name, other key
    other_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "other CA")])
    assert not px.is_issued_by(certificate(KEYS["ec"], issuer_key, other_name), issuer)
    assert px.is_issued_by(pem(certificate(KEYS["ec"], issuer_key)), pem(issuer))
