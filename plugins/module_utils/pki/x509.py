# Copyright: zeroinit.bootstrap contributors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)
"""X.509 helpers shared by the node and the CA: loading, parsed properties, and THE certificate-key match.

``certificate_matches_key`` and ``certificate_matches_csr`` compare DER SubjectPublicKeyInfo, the one way this
collection decides that a certificate certifies a key: the node before it accepts a certificate (configure),
the provisioner before it sends a helper's certificate, the CA before it keeps a certificate (pki_sign's
idempotency) or uses a key with its certificate. The node side may import this file and nothing else of pki/.
"""

from __future__ import annotations

import datetime
import hashlib
from typing import Any, Iterable

from ..common.deps import (
    HAS_CRYPTOGRAPHY,
    ExtendedKeyUsageOID,
    InvalidSignature,
    MissingDependency,
    UnsupportedAlgorithm,
    ec,
    ed448,
    ed25519,
    require,
    rsa,
    serialization,
    x509,
)


class PkiError(Exception):
    """The CA or a file could not be used; ``field`` names the option at fault when there is one."""

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field


def require_cryptography() -> None:
    try:
        require("cryptography")
    except MissingDependency as exc:
        raise PkiError(str(exc)) from None


def utc_now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)


def iso8601(moment: datetime.datetime) -> str:
    return moment.astimezone(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def to_bytes(data) -> bytes:
    return data.encode("utf-8") if isinstance(data, str) else bytes(data)


def not_after(cert) -> datetime.datetime:
    return cert.not_valid_after_utc


def not_before(cert) -> datetime.datetime:
    return cert.not_valid_before_utc


def key_description(public_key) -> tuple[str, str]:
    """(key type, detail) of a public key: ('ec', 'secp256r1'), ('rsa', '2048'), ('ed25519', '')."""
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        return "ec", public_key.curve.name
    if isinstance(public_key, rsa.RSAPublicKey):
        return "rsa", str(public_key.key_size)
    if isinstance(public_key, ed25519.Ed25519PublicKey):
        return "ed25519", ""
    if isinstance(public_key, ed448.Ed448PublicKey):
        return "ed448", ""
    return type(public_key).__name__.replace("PublicKey", "").lower().lstrip("_"), ""


def public_key_der(public_key) -> bytes:
    return public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def public_key_sha256(public_key) -> str:
    """SHA-256 of the DER SubjectPublicKeyInfo, hex: identifies a key pair without revealing anything."""
    return hashlib.sha256(public_key_der(public_key)).hexdigest()


def san_strings(general_names: Iterable) -> list[str]:
    """Subject alternative names as ``DNS:name`` (lower case: DNS is) and ``IP:address``, in their order; any other
    kind as ``Kind:value``, its value made printable and capped (it can come from a hostile CSR)."""
    out = []
    for name in general_names:
        if isinstance(name, x509.DNSName):
            out.append(f"DNS:{name.value.lower()}")
        elif isinstance(name, x509.IPAddress):
            out.append(f"IP:{name.value}")
        else:
            value = str(getattr(name, "value", ""))
            value = "".join(c if c.isprintable() else repr(c)[1:-1] for c in value)
            out.append(f"{type(name).__name__}:{value[:80]}{'...' if len(value) > 80 else ''}")
    return out


def load_csr(csr) -> x509.CertificateSigningRequest:
    """A CSR from PEM text/bytes (or an already-loaded CSR); PkiError(field='csr') when it is not one."""
    require_cryptography()
    if isinstance(csr, x509.CertificateSigningRequest):
        return csr
    data = to_bytes(csr or b"").strip()
    if not data:
        raise PkiError("csr is empty", field="csr")
    try:
        return x509.load_pem_x509_csr(data)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise PkiError(f"csr is not a PEM certificate signing request: {exc}", field="csr") from exc


def load_certificates(pem, what: str = "certificate", field_name: str | None = None) -> list:
    require_cryptography()
    data = to_bytes(pem or b"")
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise PkiError(f"{what} is not a PEM certificate: {exc}", field=field_name) from exc
    if not certs:
        raise PkiError(f"{what} contains no certificate", field=field_name)
    return certs


EKU_NAMES = (
    {
        ExtendedKeyUsageOID.SERVER_AUTH: "serverAuth",
        ExtendedKeyUsageOID.CLIENT_AUTH: "clientAuth",
        ExtendedKeyUsageOID.OCSP_SIGNING: "OCSPSigning",
    }
    if HAS_CRYPTOGRAPHY
    else {}
)


def certificate_properties(cert) -> dict:
    """Parsed, non-secret properties of a certificate, for diffs and reports."""
    try:
        sans = san_strings(cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)
    except x509.ExtensionNotFound:
        sans = []
    try:
        eku = sorted(
            EKU_NAMES.get(oid, oid.dotted_string)
            for oid in cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        )
    except x509.ExtensionNotFound:
        eku = []
    key_type, key_detail = key_description(cert.public_key())
    return {
        "subject": cert.subject.rfc4514_string(),
        "issuer": cert.issuer.rfc4514_string(),
        "subject_alt_names": sans,
        "serial": f"{cert.serial_number:x}",
        "not_before": iso8601(not_before(cert)),
        "not_after": iso8601(not_after(cert)),
        "extended_key_usage": eku,
        "public_key": (f"{key_type} {key_detail}").strip(),
        "public_key_sha256": public_key_sha256(cert.public_key()),
    }


def _as_certificate(certificate: Any):
    if isinstance(certificate, (str, bytes, bytearray)):
        return x509.load_pem_x509_certificate(to_bytes(certificate))
    return certificate


def _as_public_key(key: Any):
    """The public key of a public or private key object, or of an unencrypted PEM private key."""
    if isinstance(key, (str, bytes, bytearray)):
        key = serialization.load_pem_private_key(to_bytes(key), password=None)
    return key.public_key() if hasattr(key, "private_bytes") else key


def certificate_matches_key(certificate: Any, key: Any) -> bool:
    """THE certificate-key match: whether ``certificate`` certifies ``key``.

    ``certificate`` is a loaded certificate or PEM; ``key`` a private or public key object, or an unencrypted
    PEM private key. Unparseable PEM raises ValueError.
    """
    require_cryptography()
    return public_key_der(_as_certificate(certificate).public_key()) == public_key_der(_as_public_key(key))


def certificate_matches_csr(certificate: Any, csr: Any) -> bool:
    """Whether ``certificate`` certifies the key of ``csr`` (each a loaded object or PEM)."""
    require_cryptography()
    request = x509.load_pem_x509_csr(to_bytes(csr)) if isinstance(csr, (str, bytes, bytearray)) else csr
    return certificate_matches_key(certificate, request.public_key())


def is_issued_by(certificate: Any, issuer: Any) -> bool:
    """Whether ``issuer``'s key signed ``certificate`` and ``certificate`` names it as issuer."""
    cert, issuing = _as_certificate(certificate), _as_certificate(issuer)
    if cert.issuer != issuing.subject:
        return False
    try:
        cert.verify_directly_issued_by(issuing)
        return True
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        return False
