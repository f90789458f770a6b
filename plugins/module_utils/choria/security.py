# Copyright: zeroinit.bootstrap contributors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)
"""Signed Choria protocol v1 secure requests: the one implementation of signing and verifying them.

Wire form, as go-choria's x509 security writes it (``protocol/v1/security_request.go``, ``filesec``)::

    choria:secure:request:1  {protocol, message, signature, pubcert}
        message    the choria:request:1 JSON, as a string
        signature  base64 (standard alphabet, padded) of a signature over the UTF-8 bytes of ``message``:
                   RSA PKCS#1 v1.5 with SHA-256 (what Choria makes), or ECDSA P-256 with SHA-256, DER encoded
        pubcert    the signer's certificate as PEM text (not base64), optionally followed by intermediates

Two users, one implementation:

* the provisioner proves itself to a node: :class:`RequestSigner` on the provisioner, and on the node a
  :class:`RequestVerifier` over the provisioning CA with :data:`PROVISIONER_POLICY` (the certificate must carry
  the provisioner extended key usage :data:`PROVISIONER_USAGE_OID`);
* a configured node signs its certificate-renewal request with its current certificate: the node holds a
  :class:`RequestSigner`, the provisioner a :class:`RequestVerifier` over the site CA with
  :data:`RENEWAL_POLICY` and ``required_name`` = the node's identity.

What :meth:`RequestVerifier.verify` checks, in this order; the first failure raises :class:`RequestTrustError`
whose message names it (``code`` is a short tag for tests and statistics):

``unsigned``    ``signature``/``pubcert`` are ``insecure`` or empty: "request is unsigned (insecure)".
``message``     (or ``signature``, ``pubcert``) that field is not a string.
``pubcert``     a string of at most :data:`MAX_PUBCERT_BYTES` bytes holding 1 to :data:`MAX_PUBCERT_CERTIFICATES`
                PEM certificates that parse (the first is the signer's).
``certificate`` the signer's certificate is an end-entity certificate (not CA:TRUE), signed with neither MD5
                nor SHA-1, carries no critical extension this code does not process, allows digital signatures
                if it has a KeyUsage, and has an RSA key of 2048 to 8192 bits or an EC P-256 key.
``validity``    it is valid at the verifier's clock, give or take ``clock_skew`` seconds.
``chain``       it chains to a certificate of the CA bundle (see "Chains" below).
``usage``       it carries the policy's extended key usage (:data:`PROVISIONER_USAGE_OID` for provisioners;
                ``anyExtendedKeyUsage`` does not count).
``name``        with ``required_name``: its CN or one of its DNS SANs equals that name exactly.
``signature``   ``signature`` is base64 of a valid signature over ``message`` by the certificate's key.

Chains. Trust anchors are the certificates of the CA bundle the verifier was made with (all of them, self-signed or
not, as Go's ``x509.VerifyOptions.Roots``); each must be a CA and may carry no critical extension this code does
not process (name constraints are refused when the bundle is loaded rather than silently ignored). Intermediates
come only from the ``pubcert`` PEM after the signer's certificate, as Choria takes them (``VerifyCertificate``
uses the pubcert as the intermediates pool): never from anything the node fetched or remembered. A path holds at
most ``max_intermediates`` intermediates (default 2); each issuer on it must be a CA allowed to sign certificates
(BasicConstraints CA:TRUE, its path length respected, KeyUsage keyCertSign when present), every certificate on it
must be valid at the verifier's clock (anchors included, as Go does), and no certificate other than the anchor may
be signed with MD5 or SHA-1. At most :data:`MAX_ISSUER_CHECKS` signatures are tried per path search, so a bundle
of many CAs with the same name cannot make one request expensive.

Time. Validity is judged at the verifier's own clock (``at``, default now), not at the request's ``time``: the
sender chooses that field, and the node already refuses a request whose ``time`` is outside its capped ttl window.

Cost. The parsed certificate and the path found for it are cached per ``pubcert`` (least recently used,
``cache_size`` entries), so a fleet verifying the same provisioner certificate thousands of times builds its
path once; the path's validity window is compared with the clock on every call, and the request signature is
checked on every call. Refusals of the certificate itself (not of its path, which depends on the time) are cached
too.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import hashlib
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import NamedTuple

from ..common.deps import (
    CRYPTOGRAPHY_IMPORT_ERROR,
    HAS_CRYPTOGRAPHY,
    ExtendedKeyUsageOID,
    ExtensionOID,
    InvalidSignature,
    NameOID,
    UnsupportedAlgorithm,
    ec,
    hashes,
    padding,
    rsa,
    serialization,
    x509,
)
from ..common.text import iso_utc, printable
from ..pki.x509 import certificate_matches_key, public_key_sha256

# The provisioner extended key usage, made for this purpose from the random UUID
# e7781b89-e0ef-4c27-89fd-d4c772f4d889. Why an own OID: a provisioner may reconfigure nodes, so its certificate must
# be told apart from every node, broker and TLS client certificate of the same CA; those carry serverAuth/clientAuth,
# which is why neither can serve. Where: the arc 1.2.840.113556.1.8000.2554, set aside for OIDs made from a GUID
# without registration (the GUID's 16-, 16-, 16-, 16-, 16-, 24- and 24-bit pieces, in that order, as arcs). Not the
# UUID arc 2.25 (ITU-T X.667): its one 128-bit arc is more than Go's crypto/x509 parses (arcs up to 31 bits), so
# nats-server refused a provisioner certificate carrying 2.25.<uuid> in the TLS handshake, and a go-choria server
# could not read such a pubcert at all.
PROVISIONER_USAGE_OID = "1.2.840.113556.1.8000.2554.59256.7049.57583.19495.35325.13944690.16046217"
PROVISIONER_USAGE = x509.ObjectIdentifier(PROVISIONER_USAGE_OID) if HAS_CRYPTOGRAPHY else None

# What go-choria writes into signature/pubcert when it does not sign.
INSECURE_MARKERS = ("insecure", "insecure registration")

MAX_PUBCERT_BYTES = 16 * 1024
# In every refusal of a node locked to its site (a locked action without its site's signature, or under another
# CA): the words a provisioner recognises it by (``refused_as_site_locked``).
SITE_LOCKED = "is locked to"
MAX_PUBCERT_CERTIFICATES = 4
MAX_CA_BUNDLE_CERTIFICATES = 64
MAX_SIGNATURE_CHARS = 1400  # base64 of an RSA-8192 signature (1,024 bytes) is 1,368 characters
MAX_ISSUER_CHECKS = 16
MIN_RSA_BITS = 2048
MAX_RSA_BITS = 8192
DEFAULT_CLOCK_SKEW = 300
DEFAULT_MAX_INTERMEDIATES = 2
DEFAULT_VERIFIER_CACHE_SIZE = 256

_WEAK_HASHES = ("md5", "sha1")
_UTC = datetime.timezone.utc


class RequestTrustError(Exception):
    """A signed request refused: the message names the reason; ``code`` is a short tag (see the module doc)."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


class TrustConfigError(ValueError):
    """A signer or verifier cannot be made from what it was given (certificate, key, CA bundle)."""


class SecureRequestFields(NamedTuple):
    """What the encoder writes into the secure request next to ``message``."""

    signature: str
    pubcert: str


@dataclass(frozen=True)
class SignedRequestPolicy:
    """What a verifier demands beyond a valid chain and signature."""

    required_usage: str | None  # dotted OID the signer's certificate must carry in its extended key usage
    ca_label: str  # how refusals name the CA bundle: "not issued by the <ca_label>"
    clock_skew: int = DEFAULT_CLOCK_SKEW
    max_intermediates: int = DEFAULT_MAX_INTERMEDIATES


PROVISIONER_POLICY = SignedRequestPolicy(required_usage=PROVISIONER_USAGE_OID, ca_label="provisioning CA")
RENEWAL_POLICY = SignedRequestPolicy(required_usage=None, ca_label="site CA")


@dataclass(frozen=True)
class VerifiedSigner:
    """Who signed a request that verified."""

    subject: str  # RFC 4514 subject of the signer's certificate
    names: tuple  # its CN values and DNS SANs
    certificate_sha256: str  # hex SHA-256 of the signer's certificate (DER)
    ca_subject: str  # RFC 4514 subject of the trust anchor the path ended at
    ca_key_sha256: str  # hex SHA-256 of that anchor's public key (DER SubjectPublicKeyInfo): what a site lock pins
    not_after: str  # the earliest end of validity on the path, ISO 8601 UTC


def _require_cryptography() -> None:
    if not HAS_CRYPTOGRAPHY:
        raise TrustConfigError(f"the Python library 'cryptography' is required: {CRYPTOGRAPHY_IMPORT_ERROR}")


def refused_as_site_locked(message: str) -> bool:
    """Whether a node's refusal says it is locked to its site (see :data:`SITE_LOCKED`)."""
    return f" {SITE_LOCKED} " in message


def is_unsigned(signature, pubcert) -> bool:
    """Whether a secure request carries no signature (go-choria's ``insecure`` markers, or nothing)."""
    return signature in INSECURE_MARKERS or pubcert in INSECURE_MARKERS or not signature or not pubcert


def add_provisioner_usage(builder, *also) -> object:
    """A certificate builder with the extended key usage of a provisioner: :data:`PROVISIONER_USAGE` plus ``also``.

    ``also`` defaults to clientAuth, which the provisioner needs to connect to a TLS broker with the same
    certificate. The builder must not have an ExtendedKeyUsage extension yet.
    """
    _require_cryptography()
    usages = [PROVISIONER_USAGE, *(also or (ExtendedKeyUsageOID.CLIENT_AUTH,))]
    return builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False)


# ---------------------------------------------------------------------------------------------- certificate facts


def _utc_bounds(cert) -> tuple[float, float]:
    """(not_before, not_after) as UNIX times; ``*_utc`` properties exist from cryptography 42 on."""
    try:
        return cert.not_valid_before_utc.timestamp(), cert.not_valid_after_utc.timestamp()
    except AttributeError:  # pragma: no cover - cryptography 40/41 on a node
        before, after = cert.not_valid_before, cert.not_valid_after
        return before.replace(tzinfo=_UTC).timestamp(), after.replace(tzinfo=_UTC).timestamp()


def _subject(cert) -> str:
    try:
        return printable(cert.subject.rfc4514_string()) or "(empty subject)"
    except ValueError:
        return "(unreadable subject)"


def _extension(cert, extension_class):
    try:
        return cert.extensions.get_extension_for_class(extension_class).value
    except x509.ExtensionNotFound:
        return None


_PROCESSED_EXTENSIONS = (
    frozenset(
        {
            ExtensionOID.BASIC_CONSTRAINTS,
            ExtensionOID.KEY_USAGE,
            ExtensionOID.EXTENDED_KEY_USAGE,
            ExtensionOID.SUBJECT_ALTERNATIVE_NAME,
            ExtensionOID.SUBJECT_KEY_IDENTIFIER,
            ExtensionOID.AUTHORITY_KEY_IDENTIFIER,
        }
    )
    if HAS_CRYPTOGRAPHY
    else frozenset()
)


def _unprocessed_critical(cert) -> str | None:
    for extension in cert.extensions:
        if extension.critical and extension.oid not in _PROCESSED_EXTENSIONS:
            name = getattr(extension.oid, "_name", "")
            return extension.oid.dotted_string if not name or name == "Unknown OID" else name
    return None


def _parse_fully(cert) -> None:
    """Make cryptography parse every field it parses lazily, so a malformed one fails here and not midway."""
    cert.subject.public_bytes()
    cert.issuer.public_bytes()
    len(cert.extensions)
    cert.public_key()
    _utc_bounds(cert)


def _weak_signature(cert) -> str | None:
    try:
        algorithm = cert.signature_hash_algorithm
    except UnsupportedAlgorithm:
        return "an unsupported algorithm"
    if algorithm is not None and algorithm.name in _WEAK_HASHES:
        return algorithm.name
    return None


def _signature_or_extension_problem(cert) -> str | None:
    """What disqualifies a certificate on a path whatever its role: a weak signature, an unknown critical extension."""
    weak = _weak_signature(cert)
    if weak:
        return f"is signed with {weak}, which is too weak"
    unprocessed = _unprocessed_critical(cert)
    if unprocessed:
        return f"carries the critical extension {unprocessed}, not supported"
    return None


def _ca_constraints(cert) -> tuple[bool, int | None, bool]:
    """(is a CA, path length limit, may sign certificates) of a would-be issuer."""
    constraints = _extension(cert, x509.BasicConstraints)
    usage = _extension(cert, x509.KeyUsage)
    may_sign = usage is None or usage.key_cert_sign
    if constraints is None or not constraints.ca:
        return False, None, may_sign
    return True, constraints.path_length, may_sign


@dataclass(frozen=True)
class _Anchor:
    certificate: object
    subject: str
    key_sha256: str
    not_before: float
    not_after: float
    path_length: int | None


@dataclass(frozen=True)
class _Leaf:
    """What the verifier established about one pubcert, independent of the time and the path."""

    certificate: object
    public_key: object
    intermediates: tuple
    subject: str
    names: tuple
    certificate_sha256: str
    has_required_usage: bool
    not_before: float
    not_after: float


@dataclass(frozen=True)
class _Path:
    """A path from a leaf to an anchor and the window in which every certificate on it is valid."""

    anchor: _Anchor
    valid_from: float
    valid_until: float


class _CachedPubcert:
    __slots__ = ("leaf", "path", "refusal")

    def __init__(self, leaf: _Leaf | None = None, refusal: RequestTrustError | None = None):
        self.leaf = leaf
        self.refusal = refusal
        self.path: _Path | None = None


# ---------------------------------------------------------------------------------------------- signing


class RequestSigner:
    """Signs secure requests with one certificate and its private key (a provisioner's, or a node's for renewal).

    Thread-safe: it holds only the key and the certificate text.
    """

    def __init__(self, certificate_pem, private_key_pem, passphrase=None):
        _require_cryptography()
        cert_bytes = certificate_pem.encode("utf-8") if isinstance(certificate_pem, str) else bytes(certificate_pem)
        key_bytes = private_key_pem.encode("utf-8") if isinstance(private_key_pem, str) else bytes(private_key_pem)
        try:
            certificates = x509.load_pem_x509_certificates(cert_bytes)
        except ValueError as exc:
            raise TrustConfigError(f"the signing certificate is not PEM: {exc}") from None
        if len(certificates) > MAX_PUBCERT_CERTIFICATES:
            raise TrustConfigError(
                f"the signing certificate file holds {len(certificates)} certificates; a verifier accepts at most "
                f"{MAX_PUBCERT_CERTIFICATES} (the certificate and its intermediates, without the root)"
            )
        password = passphrase.encode("utf-8") if isinstance(passphrase, str) else passphrase
        try:
            key = serialization.load_pem_private_key(key_bytes, password=password or None)
        except TypeError:
            if password:
                raise TrustConfigError("the signing key is not encrypted but a passphrase was given") from None
            raise TrustConfigError("the signing key is encrypted; a passphrase is required") from None
        except (ValueError, UnsupportedAlgorithm) as exc:
            raise TrustConfigError(f"the signing key is not a usable PEM private key: {exc}") from None
        if isinstance(key, rsa.RSAPrivateKey):
            if not MIN_RSA_BITS <= key.key_size <= MAX_RSA_BITS:
                raise TrustConfigError(
                    f"the signing key is RSA-{key.key_size}; verifiers accept {MIN_RSA_BITS} to {MAX_RSA_BITS} bits"
                )
        elif not (isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp256r1"):
            raise TrustConfigError(
                f"the signing key is {type(key).__name__}; signed requests use RSA (as Choria) or EC P-256 keys"
            )
        if not certificate_matches_key(certificates[0], key):
            raise TrustConfigError("the signing key does not belong to the signing certificate (different public keys)")
        self._key = key
        self._rsa = isinstance(key, rsa.RSAPrivateKey)
        # Normalised PEM: no comments or bag attributes travel, and the size is what the verifier will count.
        self.pubcert = "".join(c.public_bytes(serialization.Encoding.PEM).decode("ascii") for c in certificates)
        if len(self.pubcert) > MAX_PUBCERT_BYTES:
            raise TrustConfigError(
                f"the signing certificates take {len(self.pubcert)} bytes of PEM; verifiers accept {MAX_PUBCERT_BYTES}"
            )
        self.subject = _subject(certificates[0])

    @classmethod
    def from_files(cls, cert_path: str, key_path: str, passphrase=None) -> RequestSigner:
        contents = []
        for what, path in (("certificate", cert_path), ("key", key_path)):
            try:
                with open(path, "rb") as handle:
                    contents.append(handle.read(1024 * 1024))
            except OSError as exc:
                raise TrustConfigError(f"the signing {what} {path} cannot be read: {exc.strerror or exc}") from None
        return cls(contents[0], contents[1], passphrase)

    def sign(self, message: str) -> SecureRequestFields:
        """The ``signature`` and ``pubcert`` of a secure request whose ``message`` is this string."""
        data = message.encode("utf-8")
        if self._rsa:
            raw = self._key.sign(data, padding.PKCS1v15(), hashes.SHA256())
        else:
            raw = self._key.sign(data, ec.ECDSA(hashes.SHA256()))
        return SecureRequestFields(base64.b64encode(raw).decode("ascii"), self.pubcert)


# ---------------------------------------------------------------------------------------------- verifying


def _parse_bundle(ca_bundle_pem) -> list:
    _require_cryptography()
    data = ca_bundle_pem.encode("utf-8") if isinstance(ca_bundle_pem, str) else bytes(ca_bundle_pem or b"")
    if data.count(b"-----BEGIN CERTIFICATE-----") > MAX_CA_BUNDLE_CERTIFICATES:
        raise TrustConfigError(f"the CA bundle holds more than {MAX_CA_BUNDLE_CERTIFICATES} certificates")
    try:
        certificates = x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise TrustConfigError(f"the CA bundle is not PEM certificates: {exc}") from None
    return certificates


def ca_key_fingerprints(ca_bundle_pem) -> tuple:
    """Hex SHA-256 of each bundle certificate's public key (what :attr:`VerifiedSigner.ca_key_sha256` reports)."""
    return tuple(public_key_sha256(cert.public_key()) for cert in _parse_bundle(ca_bundle_pem))


class RequestVerifier:
    """Verifies signed secure requests against one CA bundle under one :class:`SignedRequestPolicy`.

    Thread-safe; share one per CA bundle (a fleet process: one for all its nodes) so the cache serves them all.
    """

    def __init__(
        self,
        ca_bundle_pem,
        policy: SignedRequestPolicy = PROVISIONER_POLICY,
        cache_size: int = DEFAULT_VERIFIER_CACHE_SIZE,
        clock=time.time,
    ):
        certificates = _parse_bundle(ca_bundle_pem)
        self.policy = policy
        self._required_usage = x509.ObjectIdentifier(policy.required_usage) if policy.required_usage else None
        self._clock = clock
        self._anchors: dict[bytes, list[_Anchor]] = {}
        for index, cert in enumerate(certificates, 1):
            where = f"{policy.ca_label} bundle certificate {index} ({_subject(cert)})"
            try:
                is_ca, path_length, may_sign = _ca_constraints(cert)
                unprocessed = _unprocessed_critical(cert)
            except ValueError as exc:
                raise TrustConfigError(f"{where}: its extensions do not parse: {exc}") from None
            if not is_ca or not may_sign:
                raise TrustConfigError(f"{where} is not a CA certificate that may sign certificates")
            if unprocessed:
                raise TrustConfigError(f"{where} carries the critical extension {unprocessed}, which is not supported")
            not_before, not_after = _utc_bounds(cert)
            anchor = _Anchor(
                cert, _subject(cert), public_key_sha256(cert.public_key()), not_before, not_after, path_length
            )
            self._anchors.setdefault(cert.subject.public_bytes(), []).append(anchor)
        self.ca_key_sha256s = tuple(a.key_sha256 for anchors in self._anchors.values() for a in anchors)
        self._cache: OrderedDict[bytes, _CachedPubcert] = OrderedDict()
        self._cache_size = max(1, int(cache_size))
        self._lock = threading.Lock()

    @classmethod
    def from_file(cls, path: str, policy: SignedRequestPolicy = PROVISIONER_POLICY, **options) -> RequestVerifier:
        try:
            with open(path, "rb") as handle:
                data = handle.read(MAX_CA_BUNDLE_CERTIFICATES * 8192)
        except OSError as exc:
            raise TrustConfigError(f"the {policy.ca_label} file {path} cannot be read: {exc.strerror or exc}") from None
        try:
            return cls(data, policy, **options)
        except TrustConfigError as exc:
            raise TrustConfigError(f"{path}: {exc}") from None

    # -- the one entry point ------------------------------------------------------------------------------------------
    def verify(
        self, message, signature, pubcert, at: float | None = None, required_name: str | None = None
    ) -> VerifiedSigner:
        """Who signed this secure request, or :class:`RequestTrustError` naming why it is not trusted.

        ``message``, ``signature`` and ``pubcert`` are the secure request's fields as decoded (any type: they came
        from the network). ``at`` is the verifier's clock (default now). ``required_name``: the signer's CN or a DNS
        SAN must equal it (renewal: the node's identity).
        """
        if is_unsigned(signature, pubcert):
            raise RequestTrustError("unsigned", "request is unsigned (insecure)")
        for field_name, value in (("message", message), ("signature", signature), ("pubcert", pubcert)):
            if not isinstance(value, str):
                raise RequestTrustError(field_name, f"secure request field {field_name!r} is not a string")
        at = self._clock() if at is None else float(at)
        try:
            leaf, path = self._trusted_path(pubcert, at)
        except RequestTrustError:
            raise
        except Exception as exc:  # network input: a refusal, never a traceback, whatever cryptography raises
            raise RequestTrustError("pubcert", f"pubcert cannot be checked: {type(exc).__name__}: {exc}") from None
        if self._required_usage is not None and not leaf.has_required_usage:
            which = "the provisioner" if self.policy.required_usage == PROVISIONER_USAGE_OID else "the required"
            raise RequestTrustError(
                "usage", f"certificate {leaf.subject} lacks {which} extended key usage {self.policy.required_usage}"
            )
        if required_name is not None and required_name not in leaf.names:
            raise RequestTrustError(
                "name",
                f"certificate {leaf.subject} is not for {required_name!r} "
                f"(it names {printable(', '.join(leaf.names)) or 'nothing'})",
            )
        self._check_signature(leaf, message, signature)
        return VerifiedSigner(
            subject=leaf.subject,
            names=leaf.names,
            certificate_sha256=leaf.certificate_sha256,
            ca_subject=path.anchor.subject,
            ca_key_sha256=path.anchor.key_sha256,
            not_after=iso_utc(path.valid_until),
        )

    # -- pubcert, cached ----------------------------------------------------------------------------------------------
    def _trusted_path(self, pubcert: str, at: float) -> tuple[_Leaf, _Path]:
        if len(pubcert) > MAX_PUBCERT_BYTES:  # characters >= bytes/4: a cheap bound before encoding
            raise RequestTrustError(
                "pubcert", f"pubcert of {len(pubcert)} characters is larger than {MAX_PUBCERT_BYTES}"
            )
        try:
            raw = pubcert.encode("utf-8")
        except UnicodeEncodeError:
            raise RequestTrustError("pubcert", "pubcert does not parse: it is not UTF-8 text") from None
        if len(raw) > MAX_PUBCERT_BYTES:
            raise RequestTrustError("pubcert", f"pubcert of {len(raw)} bytes is larger than {MAX_PUBCERT_BYTES}")
        key = hashlib.sha256(raw).digest()
        with self._lock:
            entry = self._cache.get(key)
            if entry is not None:
                self._cache.move_to_end(key)
        if entry is None:
            entry = self._examine(raw)
            with self._lock:
                self._cache[key] = entry
                while len(self._cache) > self._cache_size:
                    self._cache.popitem(last=False)
        if entry.refusal is not None:
            raise entry.refusal
        leaf = entry.leaf
        skew = self.policy.clock_skew
        path = entry.path
        if path is not None and path.valid_from - skew <= at <= path.valid_until + skew:
            return leaf, path
        self._check_time(leaf.subject, "certificate", leaf.not_before, leaf.not_after, at)
        path = self._find_path(leaf, at)
        entry.path = path  # a plain attribute store: the worst race is one extra path search
        return leaf, path

    def _examine(self, raw: bytes) -> _CachedPubcert:
        """Parse a pubcert and judge the signer's certificate alone; the result is cached either way."""
        try:
            return _CachedPubcert(leaf=self._leaf(raw))
        except RequestTrustError as refusal:
            return _CachedPubcert(refusal=refusal)

    def _leaf(self, raw: bytes) -> _Leaf:
        count = raw.count(b"-----BEGIN CERTIFICATE-----")
        if count > MAX_PUBCERT_CERTIFICATES:
            raise RequestTrustError(
                "pubcert", f"pubcert holds {count} certificates; at most {MAX_PUBCERT_CERTIFICATES} are accepted"
            )
        try:
            certificates = x509.load_pem_x509_certificates(raw)
        except ValueError as exc:
            raise RequestTrustError("pubcert", f"pubcert does not parse: {exc}") from None
        for position, cert in enumerate(certificates):
            try:
                _parse_fully(cert)
            except (ValueError, UnsupportedAlgorithm) as exc:
                what = "the signer's certificate" if position == 0 else f"certificate {position + 1}"
                raise RequestTrustError("pubcert", f"pubcert does not parse: {what}: {exc}") from None
        return self._judge_leaf(certificates[0], _subject(certificates[0]), tuple(certificates[1:]))

    def _judge_leaf(self, cert, subject: str, intermediates: tuple) -> _Leaf:
        constraints = _extension(cert, x509.BasicConstraints)
        if constraints is not None and constraints.ca:
            raise RequestTrustError(
                "certificate",
                f"certificate {subject} is a CA certificate; requests must be signed with an end-entity certificate",
            )
        problem = _signature_or_extension_problem(cert)
        if problem:
            raise RequestTrustError("certificate", f"certificate {subject} {problem}")
        usage = _extension(cert, x509.KeyUsage)
        if usage is not None and not usage.digital_signature:
            raise RequestTrustError(
                "certificate", f"certificate {subject} may not make signatures (KeyUsage lacks digitalSignature)"
            )
        public_key = cert.public_key()
        if isinstance(public_key, rsa.RSAPublicKey):
            if not MIN_RSA_BITS <= public_key.key_size <= MAX_RSA_BITS:
                raise RequestTrustError(
                    "certificate",
                    f"certificate {subject} has an RSA-{public_key.key_size} key; "
                    f"{MIN_RSA_BITS} to {MAX_RSA_BITS} bits are accepted",
                )
        elif not (isinstance(public_key, ec.EllipticCurvePublicKey) and public_key.curve.name == "secp256r1"):
            if isinstance(public_key, ec.EllipticCurvePublicKey):
                kind = f"EC {public_key.curve.name}"
            else:
                kind = type(public_key).__name__.lstrip("_").replace("PublicKey", "")
            raise RequestTrustError(
                "certificate", f"certificate {subject} has a {kind} key; signed requests use RSA or EC P-256 keys"
            )
        extended = _extension(cert, x509.ExtendedKeyUsage)
        has_usage = self._required_usage is not None and extended is not None and self._required_usage in extended
        names = [a.value for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME) if isinstance(a.value, str)]
        sans = _extension(cert, x509.SubjectAlternativeName)
        if sans is not None:
            names.extend(n for n in sans.get_values_for_type(x509.DNSName) if n not in names)
        not_before, not_after = _utc_bounds(cert)
        return _Leaf(
            certificate=cert,
            public_key=public_key,
            intermediates=intermediates,
            subject=subject,
            names=tuple(names),
            certificate_sha256=cert.fingerprint(hashes.SHA256()).hex(),
            has_required_usage=has_usage,
            not_before=not_before,
            not_after=not_after,
        )

    # -- chains ---------------------------------------------------------------------------------------------------------
    def _check_time(self, subject: str, what: str, not_before: float, not_after: float, at: float) -> None:
        skew = self.policy.clock_skew
        if at + skew < not_before:
            raise RequestTrustError("validity", f"{what} {subject} is not valid before {iso_utc(not_before)}")
        if at - skew > not_after:
            raise RequestTrustError("validity", f"{what} {subject} expired at {iso_utc(not_after)}")

    def _find_path(self, leaf: _Leaf, at: float) -> _Path:
        """A path from the leaf to an anchor, valid at ``at``; or the most telling reason there is none."""
        problems: list[RequestTrustError] = []
        budget = [MAX_ISSUER_CHECKS]
        found = self._extend(leaf.certificate, [], leaf, at, problems, budget)
        if found is not None:
            return found
        if problems:
            raise problems[0]
        raise RequestTrustError(
            "chain",
            f"certificate {leaf.subject} is not issued by the {self.policy.ca_label} "
            f"(its issuer {_issuer(leaf.certificate)} is not in the {self.policy.ca_label} bundle)",
        )

    def _extend(self, cert, path: list, leaf: _Leaf, at: float, problems: list, budget: list) -> _Path | None:
        issuer_name = cert.issuer.public_bytes()
        for anchor in self._anchors.get(issuer_name, ()):
            if not self._issued(cert, anchor.certificate, anchor.subject, problems, budget):
                continue
            if anchor.path_length is not None and len(path) > anchor.path_length:
                problems.append(_path_length_refusal(anchor.subject, anchor.path_length, len(path)))
                continue
            try:
                self._check_time(
                    anchor.subject, f"{self.policy.ca_label} certificate", anchor.not_before, anchor.not_after, at
                )
            except RequestTrustError as refusal:
                problems.append(refusal)
                continue
            window = [leaf.not_before, leaf.not_after]
            for step in [*path, anchor.certificate]:
                not_before, not_after = _utc_bounds(step)
                window = [max(window[0], not_before), min(window[1], not_after)]
            return _Path(anchor, window[0], window[1])
        if len(path) >= self.policy.max_intermediates:
            if any(c.subject.public_bytes() == issuer_name for c in leaf.intermediates):
                problems.append(
                    RequestTrustError(
                        "chain",
                        f"certificate {leaf.subject}: the path to the {self.policy.ca_label} needs more than "
                        f"{self.policy.max_intermediates} intermediates",
                    )
                )
            return None
        for candidate in leaf.intermediates:
            if candidate.subject.public_bytes() != issuer_name or candidate in path or candidate is cert:
                continue
            subject = _subject(candidate)
            if not self._issued(cert, candidate, subject, problems, budget):
                continue
            refusal = self._intermediate_refusal(candidate, subject, len(path), at)
            if refusal is not None:
                problems.append(refusal)
                continue
            found = self._extend(candidate, [*path, candidate], leaf, at, problems, budget)
            if found is not None:
                return found
        return None

    def _issued(self, cert, issuer, issuer_subject: str, problems: list, budget: list) -> bool:
        if budget[0] <= 0:
            return False
        budget[0] -= 1
        try:
            cert.verify_directly_issued_by(issuer)
            return True
        except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
            problems.append(
                RequestTrustError(
                    "chain",
                    f"certificate {_subject(cert)} is not issued by the {self.policy.ca_label}: "
                    f"its signature does not verify with the key of {issuer_subject}",
                )
            )
            return False

    def _intermediate_refusal(self, cert, subject: str, below: int, at: float) -> RequestTrustError | None:
        is_ca, path_length, may_sign = _ca_constraints(cert)
        if not is_ca or not may_sign:
            return RequestTrustError("chain", f"intermediate {subject} is not a CA that may sign certificates")
        if path_length is not None and below > path_length:
            return _path_length_refusal(subject, path_length, below)
        problem = _signature_or_extension_problem(cert)
        if problem:
            return RequestTrustError("chain", f"intermediate {subject} {problem}")
        try:
            self._check_time(subject, "intermediate", *_utc_bounds(cert), at)
        except RequestTrustError as refusal:
            return refusal
        return None

    # -- the request signature ----------------------------------------------------------------------------------------
    @staticmethod
    def _check_signature(leaf: _Leaf, message: str, signature: str) -> None:
        if len(signature) > MAX_SIGNATURE_CHARS:
            raise RequestTrustError(
                "signature", f"signature of {len(signature)} characters is longer than {MAX_SIGNATURE_CHARS}"
            )
        try:
            raw = base64.b64decode(signature.encode("ascii"), validate=True)
        except (UnicodeEncodeError, binascii.Error, ValueError):
            raise RequestTrustError("signature", "signature is not base64") from None
        try:
            data = message.encode("utf-8")
        except UnicodeEncodeError:
            raise RequestTrustError("signature", "signature does not verify: the message is not UTF-8 text") from None
        try:
            if isinstance(leaf.public_key, rsa.RSAPublicKey):
                leaf.public_key.verify(raw, data, padding.PKCS1v15(), hashes.SHA256())
            else:
                leaf.public_key.verify(raw, data, ec.ECDSA(hashes.SHA256()))
        except (InvalidSignature, ValueError):
            raise RequestTrustError(
                "signature", f"signature does not verify with the key of certificate {leaf.subject}"
            ) from None


def _issuer(cert) -> str:
    try:
        return printable(cert.issuer.rfc4514_string()) or "(empty)"
    except ValueError:
        return "(unreadable)"


def _path_length_refusal(subject: str, path_length: int, below: int) -> RequestTrustError:
    return RequestTrustError("chain", f"CA {subject} allows {path_length} intermediates below it, the path has {below}")


__all__ = [
    "PROVISIONER_POLICY",
    "PROVISIONER_USAGE",
    "PROVISIONER_USAGE_OID",
    "RENEWAL_POLICY",
    "RequestSigner",
    "RequestTrustError",
    "RequestVerifier",
    "SecureRequestFields",
    "SignedRequestPolicy",
    "TrustConfigError",
    "VerifiedSigner",
    "add_provisioner_usage",
    "ca_key_fingerprints",
    "is_unsigned",
]
