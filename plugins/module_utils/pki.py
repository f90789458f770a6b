# Copyright: zeroinit.bootstrap contributors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)
"""The policy CA: a certificate authority, the policy a CSR must pass, and the signer that issues node certificates.

Used by the ``pki_sign`` module (one CSR) and in-process by the bulk provisioner (thousands of CSRs, maybe from worker
threads), so :meth:`Signer.sign` parses nothing of the CA per call and keeps no mutable state.

Policy, in the order it is checked (each refusal is a :class:`PolicyError` naming the rule and the value):

``csr_signature``       the CSR's own signature verifies (proof that the requester holds the private key),
                        and is not made with MD5 or SHA-1.
``identity``            the identity is a plain host name (letters, digits, ``-``, ``_``, dots; no wildcard).
``cn_matches_identity`` the CSR subject has exactly one CN and it equals the identity.
``san_types``           only DNS and IP address SANs are requested (no e-mail, URI, other names).
``deny``                no name (the identity and every SAN) matches a deny pattern (``re.search``, on the
                        lower-cased name). The built-in list :data:`DEFAULT_DENY` refuses wildcards, loopback and
                        unspecified addresses, ``localhost``, ``root``/``admin`` names, and names ending ``.choria`` or
                        ``.mcollective`` (Choria accepts those as *client* certificates, and ``*.privileged.choria``
                        as privileged users, so a node must never hold one).
``allowed_sans``        every name matches an allow pattern (``re.fullmatch``, on the lower-cased name). Without
                        patterns only the identity itself is allowed: a node may not name another node, so the safe
                        default is no extra SAN at all. ``{identity}`` in a pattern stands for the escaped identity.
``key_types``           key type allowed (``ec``, ``rsa``, ``ed25519``, ``ed448``); RSA at least ``min_rsa_bits``;
                        EC only on ``ec_curves``.
``valid_days``          at least 1 day, and not more than ``max_valid_days``: a longer request is refused, not capped,
                        so nobody gets a shorter certificate than they asked for without noticing. A certificate that
                        would outlive its CA is cut to the CA's end, with a warning.

The issued certificate is built from the policy, never copied from the CSR: subject ``CN=<identity>`` only (other
subject attributes such as O/OU can carry authority in some systems), SANs = identity + allowed requested SANs,
BasicConstraints CA:FALSE (critical), KeyUsage and ExtendedKeyUsage from ``profile``, SubjectKeyIdentifier,
AuthorityKeyIdentifier, a random positive 128-bit serial, ``not_before`` five minutes in the past for clock skew.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import hashlib
import ipaddress
import os
import re
import secrets
import stat
from dataclasses import dataclass, field
from typing import Iterable, Sequence

from .choria.subjects import valid_identity
from .common.deps import (
    HAS_CRYPTOGRAPHY,
    ExtendedKeyUsageOID,
    InvalidSignature,
    MissingDependency,
    NameOID,
    UnsupportedAlgorithm,
    ec,
    ed448,
    ed25519,
    hashes,
    require,
    rsa,
    serialization,
    x509,
)
from .common.files import atomic_write, atomic_write_many

KEY_TYPES = ("ec", "rsa", "ed25519", "ed448")
CA_KEY_TYPES = ("ec", "rsa", "ed25519")
PROFILES = ("server", "client", "both")
DEFAULT_KEY_TYPES = ("ec", "rsa", "ed25519")
DEFAULT_EC_CURVES = ("secp256r1", "secp384r1")
DEFAULT_MIN_RSA_BITS = 2048
DEFAULT_VALID_DAYS = 365
DEFAULT_MAX_VALID_DAYS = 365
DEFAULT_CA_COMMON_NAME = "zeroinit CA"
DEFAULT_CA_VALID_DAYS = 3650
CA_RSA_BITS = 3072
CLOCK_SKEW = datetime.timedelta(minutes=5)
IDENTITY_PLACEHOLDER = "{identity}"

# Names no node certificate may carry (re.search on the lower-cased name). Why each one: see the module docstring.
DEFAULT_DENY = (
    r"\*",  # wildcards: a node certificate names exactly its own host
    r"(^|\.)choria$",  # Choria client names, and *.privileged.choria (privileged users)
    r"(^|\.)mcollective$",  # the same for MCollective-style names
    r"(^|\.)privileged(\.|$)",  # anything that looks like a privileged-user certificate
    r"^localhost(\.localdomain)?$",  # loopback names: any TLS client would trust it for itself
    r"\.localhost$",
    r"^(root|admin|administrator)(\.|$)",  # privileged-looking account names
    r"^127\.",
    r"^0\.0\.0\.0$",
    r"^::1?$",  # loopback and unspecified addresses
    r"^::ffff:7f",  # IPv4-mapped loopback
)

_WEAK_CSR_HASHES = ("md5", "sha1")


class PkiError(Exception):
    """The CA or a file could not be used; ``field`` names the option at fault when there is one."""

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field


class PolicyError(PkiError):
    """A CSR refused by the policy; ``rule`` and ``value`` say which rule and what was refused."""

    def __init__(self, rule: str, value, message: str):
        super().__init__(f"CSR refused by policy '{rule}': {message}", field=rule)
        self.rule = rule
        self.value = value


def _require_cryptography() -> None:
    try:
        require("cryptography")
    except MissingDependency as exc:
        raise PkiError(str(exc)) from None


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)


def iso8601(moment: datetime.datetime) -> str:
    return moment.astimezone(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _to_bytes(data) -> bytes:
    return data.encode("utf-8") if isinstance(data, str) else bytes(data)


def _not_after(cert) -> datetime.datetime:
    return cert.not_valid_after_utc


def _not_before(cert) -> datetime.datetime:
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


def _signature_hash(private_key):
    """Hash for signing with the CA key: None for EdDSA, SHA-384 for P-384 and larger, SHA-256 otherwise."""
    if isinstance(private_key, (ed25519.Ed25519PrivateKey, ed448.Ed448PrivateKey)):
        return None
    if isinstance(private_key, ec.EllipticCurvePrivateKey) and private_key.curve.key_size >= 384:
        return hashes.SHA384()
    return hashes.SHA256()


def _san_strings(general_names: Iterable) -> list[str]:
    out = []
    for name in general_names:
        if isinstance(name, x509.DNSName):
            out.append(f"DNS:{name.value}")
        elif isinstance(name, x509.IPAddress):
            out.append(f"IP:{name.value}")
        else:
            out.append("{}:{}".format(type(name).__name__, getattr(name, "value", "")))
    return out


def load_csr(csr) -> x509.CertificateSigningRequest:
    """A CSR from PEM text/bytes (or an already-loaded CSR); PkiError(field='csr') when it is not one."""
    _require_cryptography()
    if isinstance(csr, x509.CertificateSigningRequest):
        return csr
    data = _to_bytes(csr or b"").strip()
    if not data:
        raise PkiError("csr is empty", field="csr")
    try:
        return x509.load_pem_x509_csr(data)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise PkiError(f"csr is not a PEM certificate signing request: {exc}", field="csr") from exc


def load_certificates(pem, what: str = "certificate", field_name: str | None = None) -> list:
    _require_cryptography()
    data = _to_bytes(pem or b"")
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise PkiError(f"{what} is not a PEM certificate: {exc}", field=field_name) from exc
    if not certs:
        raise PkiError(f"{what} contains no certificate", field=field_name)
    return certs


_EKU_NAMES = (
    {ExtendedKeyUsageOID.SERVER_AUTH: "serverAuth", ExtendedKeyUsageOID.CLIENT_AUTH: "clientAuth"}
    if HAS_CRYPTOGRAPHY
    else {}
)


def certificate_properties(cert) -> dict:
    """Parsed, non-secret properties of a certificate, for diffs and reports."""
    try:
        sans = _san_strings(cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)
    except x509.ExtensionNotFound:
        sans = []
    try:
        eku = sorted(
            _EKU_NAMES.get(oid, oid.dotted_string)
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
        "not_before": iso8601(_not_before(cert)),
        "not_after": iso8601(_not_after(cert)),
        "extended_key_usage": eku,
        "public_key": (f"{key_type} {key_detail}").strip(),
        "public_key_sha256": public_key_sha256(cert.public_key()),
    }


# --------------------------------------------------------------------------------------------------------------------
# The certificate authority
# --------------------------------------------------------------------------------------------------------------------


def _generate_key(key_type: str):
    if key_type == "ec":
        return ec.generate_private_key(ec.SECP256R1())
    if key_type == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=CA_RSA_BITS)
    if key_type == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    raise PkiError(
        "ca_key_type must be one of {}, not {!r}".format(", ".join(CA_KEY_TYPES), key_type), field="ca_key_type"
    )


class CertificateAuthority:
    """A CA certificate (plus the rest of its chain, if the file holds one) and its private key, checked to match."""

    def __init__(
        self,
        certificate,
        private_key,
        chain: Sequence | None = None,
        cert_path: str | None = None,
        key_path: str | None = None,
    ):
        _require_cryptography()
        if public_key_der(certificate.public_key()) != public_key_der(private_key.public_key()):
            raise PkiError(
                "ca_key{} does not match the CA certificate ca_cert{} (different public keys)".format(
                    f" {key_path}" if key_path else "", f" {cert_path}" if cert_path else ""
                ),
                field="ca_key",
            )
        try:
            constraints = certificate.extensions.get_extension_for_class(x509.BasicConstraints).value
            is_ca = constraints.ca
        except x509.ExtensionNotFound:
            is_ca = False
        if not is_ca:
            raise PkiError(
                "ca_cert%s is not a CA certificate (BasicConstraints CA:TRUE missing)"
                % (f" {cert_path}" if cert_path else ""),
                field="ca_cert",
            )
        try:
            may_sign = certificate.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign
        except x509.ExtensionNotFound:
            may_sign = True  # no KeyUsage: not restricted (RFC 5280 4.2.1.3)
        if not may_sign:
            raise PkiError(
                "ca_cert%s may not sign certificates (KeyUsage keyCertSign missing)"
                % (f" {cert_path}" if cert_path else ""),
                field="ca_cert",
            )
        self.certificate = certificate
        self.private_key = private_key
        self.chain = list(chain) if chain else [certificate]
        self.cert_path = cert_path
        self.key_path = key_path
        self.warnings: list[str] = []
        self.signature_hash = _signature_hash(private_key)
        self.issuer_string = certificate.subject.rfc4514_string()
        self.certificate_pem = certificate.public_bytes(serialization.Encoding.PEM).decode("ascii")
        self.chain_pem = "".join(c.public_bytes(serialization.Encoding.PEM).decode("ascii") for c in self.chain)
        try:
            ski = certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
            self.authority_key_identifier = x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)
        except x509.ExtensionNotFound:
            self.authority_key_identifier = x509.AuthorityKeyIdentifier.from_issuer_public_key(certificate.public_key())

    # -- properties ---------------------------------------------------------------------------------------------------
    @property
    def subject(self):
        return self.certificate.subject

    @property
    def not_after(self) -> datetime.datetime:
        return _not_after(self.certificate)

    @property
    def fingerprint_sha256(self) -> str:
        return self.certificate.fingerprint(hashes.SHA256()).hex()

    # -- making and loading -------------------------------------------------------------------------------------------
    @classmethod
    def create(
        cls,
        common_name: str = DEFAULT_CA_COMMON_NAME,
        key_type: str = "ec",
        valid_days: int = DEFAULT_CA_VALID_DAYS,
        private_key=None,
    ) -> CertificateAuthority:
        """A new self-signed CA in memory (nothing written). ``private_key`` reuses an existing key."""
        _require_cryptography()
        if not common_name:
            raise PkiError("ca_common_name must not be empty", field="ca_common_name")
        if int(valid_days) < 1:
            raise PkiError(f"ca_valid_days must be at least 1, not {valid_days}", field="ca_valid_days")
        key = private_key if private_key is not None else _generate_key(key_type)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        now = _now()
        ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(random_serial())
            .not_valid_before(now - CLOCK_SKEW)
            .not_valid_after(now + datetime.timedelta(days=int(valid_days)))
            # pathlen 0: this CA signs node certificates only, never another CA.
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(ski, critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
            .sign(key, _signature_hash(key))
        )
        return cls(cert, key)

    @classmethod
    def load(cls, cert_path: str, key_path: str, passphrase: str | bytes | None = None) -> CertificateAuthority:
        """Load and check a CA: PkiError naming ``ca_cert``/``ca_key``/``ca_passphrase`` when it cannot be used."""
        _require_cryptography()
        try:
            with open(cert_path, "rb") as handle:
                cert_data = handle.read()
        except OSError as exc:
            raise PkiError(f"ca_cert {cert_path} cannot be read: {exc.strerror or exc}", field="ca_cert") from exc
        chain = load_certificates(cert_data, f"ca_cert {cert_path}", "ca_cert")
        try:
            with open(key_path, "rb") as handle:
                key_data = handle.read()
                key_mode = stat.S_IMODE(os.fstat(handle.fileno()).st_mode)
        except OSError as exc:
            raise PkiError(f"ca_key {key_path} cannot be read: {exc.strerror or exc}", field="ca_key") from exc
        key = _load_private_key(key_data, passphrase, key_path)
        # A chain file may list the root before the intermediate: the signing certificate is the one the key matches.
        wanted = public_key_der(key.public_key())
        for index, candidate in enumerate(chain):
            if public_key_der(candidate.public_key()) == wanted:
                chain.insert(0, chain.pop(index))
                break
        ca = cls(chain[0], key, chain, cert_path=cert_path, key_path=key_path)
        if key_mode & 0o077:
            ca.warnings.append(
                f"ca_key {key_path} is accessible to group or others (mode {key_mode:04o}); it should be 0600"
            )
        if ca.not_after <= _now():
            raise PkiError(f"ca_cert {cert_path} expired on {iso8601(ca.not_after)}", field="ca_cert")
        return ca

    @classmethod
    def load_or_create(
        cls,
        cert_path: str,
        key_path: str,
        passphrase: str | bytes | None = None,
        common_name: str = DEFAULT_CA_COMMON_NAME,
        key_type: str = "ec",
        valid_days: int = DEFAULT_CA_VALID_DAYS,
        check_mode: bool = False,
    ) -> tuple[CertificateAuthority, bool]:
        """Load the CA, or create it when absent: key 0600, certificate 0644, each written atomically.

        A key without its certificate (a run killed between the two renames) gets a new certificate for that key.
        A certificate without its key is refused: it may already be trusted, and a new key could not match it.
        With ``check_mode`` a missing CA is made in memory only and nothing is written.
        """
        if os.path.lexists(cert_path) and os.path.lexists(key_path):
            return cls.load(cert_path, key_path, passphrase), False
        if check_mode:
            return cls._create_at(cert_path, key_path, passphrase, common_name, key_type, valid_days, check_mode)
        # Several runs may create the same CA at once (one task per node, delegated to the CA host, in parallel
        # forks): without the lock each would write its own CA and only the last one's certificates would verify.
        _require_directory(key_path, "ca_key")
        with _directory_lock(os.path.dirname(os.path.abspath(key_path))):
            return cls._create_at(cert_path, key_path, passphrase, common_name, key_type, valid_days, check_mode)

    @classmethod
    def _create_at(
        cls, cert_path, key_path, passphrase, common_name, key_type, valid_days, check_mode
    ) -> tuple[CertificateAuthority, bool]:
        cert_exists = os.path.lexists(cert_path)
        key_exists = os.path.lexists(key_path)
        if cert_exists and key_exists:
            return cls.load(cert_path, key_path, passphrase), False
        if cert_exists:
            raise PkiError(
                f"ca_cert {cert_path} exists but ca_key {key_path} does not; refusing to replace a CA certificate that may "
                "already be trusted",
                field="ca_key",
            )
        existing_key = None
        if key_exists:
            try:
                with open(key_path, "rb") as handle:
                    existing_key = _load_private_key(handle.read(), passphrase, key_path)
            except OSError as exc:
                raise PkiError(f"ca_key {key_path} cannot be read: {exc.strerror or exc}", field="ca_key") from exc
        for option, path in (("ca_cert", cert_path), ("ca_key", key_path)):
            _require_directory(path, option)
        ca = cls.create(common_name, key_type, valid_days, private_key=existing_key)
        ca.cert_path, ca.key_path = cert_path, key_path
        if not check_mode:
            ca.write(cert_path, key_path, passphrase, key_too=existing_key is None)
        return ca, True

    def write(self, cert_path: str, key_path: str, passphrase: str | bytes | None = None, key_too: bool = True) -> None:
        """Write the CA certificate (0644) and key (0600, encrypted when a passphrase is given), each atomically."""
        files = []
        if key_too:
            if passphrase:
                encryption = serialization.BestAvailableEncryption(_to_bytes(passphrase))
            else:
                encryption = serialization.NoEncryption()
            key_pem = self.private_key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
            )
            files.append((key_path, key_pem, 0o600))
        files.append((cert_path, self.chain_pem.encode("ascii"), 0o644))
        _require_directory(cert_path, "ca_cert")
        _require_directory(key_path, "ca_key")
        try:
            # Key first: if interrupted, a key without certificate is recoverable (load_or_create), the reverse is not.
            atomic_write_many(files)
        except OSError as exc:
            raise PkiError(f"cannot write the CA to {cert_path} / {key_path}: {exc}", field="ca_cert") from exc
        self.cert_path, self.key_path = cert_path, key_path


@contextlib.contextmanager
def _directory_lock(directory: str):
    """An exclusive flock on the directory itself (no lock file left behind), released on exit."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _require_directory(path: str, option: str) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise PkiError(f"{option}: directory {directory} does not exist", field=option)


def _load_private_key(data: bytes, passphrase, key_path: str):
    password = _to_bytes(passphrase) if passphrase else None
    try:
        return serialization.load_pem_private_key(data, password=password)
    except TypeError as exc:
        if password is None:
            raise PkiError(f"ca_key {key_path} is encrypted; ca_passphrase is required", field="ca_passphrase") from exc
        raise PkiError(
            f"ca_key {key_path} is not encrypted but ca_passphrase was given", field="ca_passphrase"
        ) from exc
    except (ValueError, UnsupportedAlgorithm) as exc:
        if password is not None and b"ENCRYPTED" in data:
            raise PkiError(
                f"ca_key {key_path} cannot be decrypted: wrong ca_passphrase?", field="ca_passphrase"
            ) from exc
        raise PkiError(f"ca_key {key_path} is not a PEM private key: {exc}", field="ca_key") from exc


def random_serial() -> int:
    """A random positive 128-bit serial (RFC 5280 allows up to 20 octets; CA/B asks for 64+ random bits)."""
    serial = 0
    while serial == 0:
        serial = secrets.randbits(128)
    return serial


# --------------------------------------------------------------------------------------------------------------------
# The policy
# --------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CsrFacts:
    """What the policy established about one CSR: the names and key the certificate will carry."""

    csr: object
    identity: str
    public_key: object
    key_type: str
    key_detail: str
    dns_names: tuple
    ip_addresses: tuple
    valid_days: int

    @property
    def subject_alt_names(self) -> list[str]:
        return [f"DNS:{n}" for n in self.dns_names] + [f"IP:{a}" for a in self.ip_addresses]


class CsrPolicy:
    """The rules a CSR must pass before the CA signs it (see the module docstring for each rule and why)."""

    def __init__(
        self,
        allowed_sans: Sequence[str] | None = None,
        deny: Sequence[str] | None = None,
        key_types: Sequence[str] = DEFAULT_KEY_TYPES,
        min_rsa_bits: int = DEFAULT_MIN_RSA_BITS,
        ec_curves: Sequence[str] = DEFAULT_EC_CURVES,
        max_valid_days: int = DEFAULT_MAX_VALID_DAYS,
        default_deny: bool = True,
    ):
        """``allowed_sans`` None or empty: only the identity. ``deny`` adds to :data:`DEFAULT_DENY` unless
        ``default_deny`` is false."""
        self.allowed_sans = tuple(allowed_sans or ())
        self.deny = tuple(DEFAULT_DENY if default_deny else ()) + tuple(deny or ())
        self.key_types = tuple(str(k).lower() for k in key_types)
        self.min_rsa_bits = int(min_rsa_bits)
        self.ec_curves = tuple(ec_curves)
        self.max_valid_days = int(max_valid_days)
        for kt in self.key_types:
            if kt not in KEY_TYPES:
                raise PkiError(
                    "allowed_key_types: unknown key type {!r} (known: {})".format(kt, ", ".join(KEY_TYPES)),
                    field="allowed_key_types",
                )
        if self.max_valid_days < 1:
            raise PkiError("max_valid_days must be at least 1, not %d" % self.max_valid_days, field="max_valid_days")
        self._deny = tuple(self._compile(p, "deny") for p in self.deny)
        # Patterns without {identity} are compiled once; the others per identity (cheap next to a signature).
        self._allow_static = tuple(
            self._compile(p, "allowed_sans") for p in self.allowed_sans if IDENTITY_PLACEHOLDER not in p
        )
        self._allow_templates = tuple(p for p in self.allowed_sans if IDENTITY_PLACEHOLDER in p)
        for template in self._allow_templates:
            self._compile(template.replace(IDENTITY_PLACEHOLDER, "x"), "allowed_sans")

    @staticmethod
    def _compile(pattern: str, option: str):
        try:
            return re.compile(pattern)
        except re.error as exc:
            raise PkiError(f"{option}: invalid regular expression {pattern!r}: {exc}", field=option) from exc

    # -- the rules ----------------------------------------------------------------------------------------------------
    def evaluate(self, csr, identity: str, valid_days: int = DEFAULT_VALID_DAYS) -> CsrFacts:
        """Check one CSR against every rule; returns the facts to issue from, or raises PolicyError/PkiError."""
        request = load_csr(csr)
        self._check_signature(request)
        identity = self._check_identity(identity)
        self._check_subject(request, identity)
        dns_names, ips = self._requested_names(request, identity)
        for name in list(dns_names) + [str(a) for a in ips]:
            self._check_name(name, identity)
        public_key = request.public_key()
        key_type, key_detail = self._check_key(public_key)
        days = self._check_validity(valid_days)
        return CsrFacts(request, identity, public_key, key_type, key_detail, tuple(dns_names), tuple(ips), days)

    @staticmethod
    def _check_signature(request) -> None:
        try:
            algorithm = request.signature_hash_algorithm
        except UnsupportedAlgorithm:
            algorithm = None  # EdDSA has no separate hash; an unknown algorithm fails the verification below
        if algorithm is not None and algorithm.name in _WEAK_CSR_HASHES:
            raise PolicyError(
                "csr_signature", algorithm.name, f"the CSR is signed with {algorithm.name}, which is too weak"
            )
        try:
            valid = request.is_signature_valid
        except (ValueError, UnsupportedAlgorithm) as exc:
            raise PolicyError("csr_signature", None, f"the CSR signature cannot be checked: {exc}") from exc
        if not valid:
            raise PolicyError(
                "csr_signature",
                None,
                "the CSR signature does not verify (altered or not made with the key it contains)",
            )

    @staticmethod
    def _check_identity(identity) -> str:
        if not isinstance(identity, str) or not identity:
            raise PolicyError("identity", identity, "identity must be a non-empty host name")
        if not valid_identity(identity):
            raise PolicyError(
                "identity",
                identity,
                f"identity {identity!r} is not a plain host name (letters, digits, '-', '_' and dots; no wildcards)",
            )
        return identity

    @staticmethod
    def _check_subject(request, identity: str) -> None:
        cns = request.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        if len(cns) != 1:
            raise PolicyError(
                "cn_matches_identity",
                len(cns),
                "the CSR subject has %d CN attributes, expected exactly "
                "one equal to the identity %r" % (len(cns), identity),
            )
        cn = cns[0].value
        if cn != identity:
            raise PolicyError("cn_matches_identity", cn, f"CN {cn!r} is not the identity {identity!r}")

    @staticmethod
    def _requested_names(request, identity: str):
        try:
            requested = list(request.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)
        except x509.ExtensionNotFound:
            requested = []
        except ValueError as exc:
            raise PolicyError("san_types", None, f"the CSR's extensions cannot be parsed: {exc}") from exc
        # The identity always comes first so TLS host name verification of the node works.
        try:
            identity_ip = ipaddress.ip_address(identity)
        except ValueError:
            identity_ip = None
        dns_names: list[str] = [] if identity_ip else [identity]
        ips: list = [identity_ip] if identity_ip else []
        for name in requested:
            if isinstance(name, x509.DNSName):
                if name.value.lower() not in (n.lower() for n in dns_names):
                    dns_names.append(name.value)
            elif isinstance(name, x509.IPAddress):
                if name.value not in ips:
                    ips.append(name.value)
            else:
                value = getattr(name, "value", name)
                raise PolicyError(
                    "san_types",
                    str(value),
                    f"SAN {type(name).__name__} {str(value)!r} is not allowed (only DNS names and IP addresses)",
                )
        for ip in ips:
            if isinstance(ip, (ipaddress.IPv4Network, ipaddress.IPv6Network)):
                raise PolicyError("san_types", str(ip), f"SAN IP {ip} is a network, not an address")
        return dns_names, ips

    def _check_name(self, name: str, identity: str) -> None:
        lowered = name.lower()
        for pattern in self._deny:
            if pattern.search(lowered):
                raise PolicyError("deny", name, f"name {name!r} matches the deny pattern {pattern.pattern!r}")
        if not self.allowed_sans:
            if lowered != identity.lower():
                raise PolicyError(
                    "allowed_sans",
                    name,
                    f"SAN {name!r} is not the identity {identity!r} and no allowed_sans patterns permit other names",
                )
            return
        for pattern in self._allow_static:
            if pattern.fullmatch(lowered):
                return
        escaped = re.escape(identity.lower())
        for template in self._allow_templates:
            if re.fullmatch(template.replace(IDENTITY_PLACEHOLDER, escaped), lowered):
                return
        raise PolicyError(
            "allowed_sans",
            name,
            "name {!r} matches none of the allowed_sans patterns {}".format(
                name, ", ".join(repr(p) for p in self.allowed_sans)
            ),
        )

    def _check_key(self, public_key) -> tuple[str, str]:
        key_type, detail = key_description(public_key)
        if key_type not in self.key_types:
            raise PolicyError(
                "key_types",
                key_type,
                "key type {!r} is not allowed (allowed: {})".format(key_type, ", ".join(self.key_types)),
            )
        if key_type == "rsa" and int(detail) < self.min_rsa_bits:
            raise PolicyError(
                "key_types",
                f"rsa-{detail}",
                "RSA key of %s bits is smaller than min_rsa_bits %d" % (detail, self.min_rsa_bits),
            )
        if key_type == "ec" and detail not in self.ec_curves:
            raise PolicyError(
                "key_types",
                detail,
                "EC curve {!r} is not allowed (allowed: {})".format(detail, ", ".join(self.ec_curves)),
            )
        return key_type, detail

    def _check_validity(self, valid_days) -> int:
        try:
            days = int(valid_days)
        except (TypeError, ValueError):
            raise PolicyError("valid_days", valid_days, f"valid_days {valid_days!r} is not a whole number") from None
        if days < 1:
            raise PolicyError("valid_days", days, "valid_days must be at least 1, not %d" % days)
        if days > self.max_valid_days:
            raise PolicyError(
                "max_valid_days", days, "valid_days %d is more than max_valid_days %d" % (days, self.max_valid_days)
            )
        return days


# --------------------------------------------------------------------------------------------------------------------
# Signing
# --------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class IssuedCertificate:
    """A certificate the signer issued (or found valid at a destination), with its parsed properties."""

    certificate: str
    ca: str
    serial: int
    not_after: datetime.datetime
    public_key_sha256: str
    not_before: datetime.datetime | None = None
    subject: str = ""
    issuer: str = ""
    subject_alt_names: tuple = ()
    warnings: tuple = field(default_factory=tuple)

    @property
    def serial_hex(self) -> str:
        return f"{self.serial:x}"

    @property
    def not_after_iso(self) -> str:
        return iso8601(self.not_after)

    def properties(self) -> dict:
        """Non-secret parsed properties (see :func:`certificate_properties`) for diffs and reports."""
        return certificate_properties(x509.load_pem_x509_certificate(self.certificate.encode("ascii")))

    @classmethod
    def from_certificate(cls, cert, ca_pem: str, warnings: Sequence[str] = ()) -> IssuedCertificate:
        props = certificate_properties(cert)
        return cls(
            certificate=cert.public_bytes(serialization.Encoding.PEM).decode("ascii"),
            ca=ca_pem,
            serial=cert.serial_number,
            not_after=_not_after(cert),
            not_before=_not_before(cert),
            public_key_sha256=props["public_key_sha256"],
            subject=props["subject"],
            issuer=props["issuer"],
            subject_alt_names=tuple(props["subject_alt_names"]),
            warnings=tuple(warnings),
        )


def _key_usage(profile: str, key_type: str):
    # keyEncipherment only for RSA: TLS RSA key transport; EC and EdDSA keys only sign.
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=key_type == "rsa",
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=False,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )


def _extended_key_usage(profile: str):
    usages = []
    if profile in ("server", "both"):
        usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
    if profile in ("client", "both"):
        usages.append(ExtendedKeyUsageOID.CLIENT_AUTH)
    return x509.ExtendedKeyUsage(usages)


class Signer:
    """Issues node certificates from a CA under a policy. Thread-safe: it holds only read-only state."""

    def __init__(self, ca: CertificateAuthority, policy: CsrPolicy | None = None):
        self.ca = ca
        self.policy = policy if policy is not None else CsrPolicy()

    def sign(
        self, csr, identity: str, valid_days: int = DEFAULT_VALID_DAYS, profile: str = "both"
    ) -> IssuedCertificate:
        """Check ``csr`` against the policy for ``identity`` and issue a certificate (PolicyError / PkiError)."""
        if profile not in PROFILES:
            raise PkiError("profile must be one of {}, not {!r}".format(", ".join(PROFILES), profile), field="profile")
        facts = self.policy.evaluate(csr, identity, valid_days)
        return self.issue(facts, profile)

    def plan(self, facts: CsrFacts, now: datetime.datetime | None = None) -> tuple[datetime.datetime, list[str]]:
        """(not_after, warnings) a certificate issued now for ``facts`` would get."""
        now = now or _now()
        not_after = now + datetime.timedelta(days=facts.valid_days)
        warnings = []
        ca_end = self.ca.not_after
        if ca_end <= now:
            raise PkiError(f"the CA certificate expired on {iso8601(ca_end)}", field="ca_cert")
        if not_after > ca_end:
            warnings.append(
                "certificate for %s ends on %s with its CA, not after the %d days asked for"
                % (facts.identity, iso8601(ca_end), facts.valid_days)
            )
            not_after = ca_end
        return not_after, warnings

    def issue(self, facts: CsrFacts, profile: str = "both") -> IssuedCertificate:
        """Issue a certificate for facts the policy already established (see :meth:`CsrPolicy.evaluate`)."""
        now = _now()
        not_after, warnings = self.plan(facts, now)
        names = [x509.DNSName(n) for n in facts.dns_names] + [x509.IPAddress(a) for a in facts.ip_addresses]
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, facts.identity)]))
            .issuer_name(self.ca.subject)
            .public_key(facts.public_key)
            .serial_number(random_serial())
            .not_valid_before(now - CLOCK_SKEW)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(profile, facts.key_type), critical=True)
            .add_extension(_extended_key_usage(profile), critical=False)
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(facts.public_key), critical=False)
            .add_extension(self.ca.authority_key_identifier, critical=False)
            .sign(self.ca.private_key, self.ca.signature_hash)
        )
        # Built from what is already known rather than by re-parsing the certificate: a fifth of the cost per CSR.
        return IssuedCertificate(
            certificate=cert.public_bytes(serialization.Encoding.PEM).decode("ascii"),
            ca=self.ca.chain_pem,
            serial=cert.serial_number,
            not_after=not_after,
            not_before=now - CLOCK_SKEW,
            public_key_sha256=public_key_sha256(facts.public_key),
            subject=f"CN={facts.identity}",
            issuer=self.ca.issuer_string,
            subject_alt_names=tuple(facts.subject_alt_names),
            warnings=tuple(warnings),
        )

    def verify_issued(self, cert) -> bool:
        """True when ``cert`` was signed by this CA's key and names it as issuer."""
        try:
            cert.verify_directly_issued_by(self.ca.certificate)
            return True
        except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
            return False

    def needs_renewal(
        self,
        cert_pem,
        csr_or_public_key_pem,
        renew_before_days: int = 30,
        identity: str | None = None,
        profile: str | None = None,
    ) -> tuple[bool, str]:
        """Whether an existing certificate must be replaced, and why (for idempotent ``dest`` handling).

        Kept only when it parses, was issued by this CA (signature verifies), certifies the same public key as the
        CSR (or public key), is already valid and does not end within ``renew_before_days``. With ``identity`` its CN
        must equal it; with a CSR its SANs must be the ones the CSR would get now; with ``profile`` its EKU must match.
        """
        try:
            cert = load_certificates(cert_pem, "existing certificate")[0]
        except PkiError as exc:
            return True, str(exc)
        if not self.verify_issued(cert):
            return True, f"the existing certificate was not issued by this CA (issuer {cert.issuer.rfc4514_string()})"
        wanted_key, csr = self._wanted_public_key(csr_or_public_key_pem)
        if public_key_der(cert.public_key()) != public_key_der(wanted_key):
            return True, "the existing certificate is for a different public key than the CSR"
        now = _now()
        if _not_before(cert) > now:
            return True, f"the existing certificate is not valid before {iso8601(_not_before(cert))}"
        if _not_after(cert) <= now:
            return True, f"the existing certificate expired on {iso8601(_not_after(cert))}"
        if _not_after(cert) - now <= datetime.timedelta(days=int(renew_before_days)):
            return True, (
                "the existing certificate ends on %s, within renew_before_days %d"
                % (iso8601(_not_after(cert)), int(renew_before_days))
            )
        cns = [a.value for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
        if identity is not None and cns != [identity]:
            return True, f"the existing certificate is for CN {cns}, not the identity {identity!r}"
        if csr is not None and identity is not None:
            try:
                dns_names, ips = CsrPolicy._requested_names(csr, identity)
            except PolicyError as exc:
                return True, str(exc)
            wanted = sorted([f"DNS:{n.lower()}" for n in dns_names] + [f"IP:{a}" for a in ips])
            have = sorted(
                "DNS:" + s[4:].lower() if s.startswith("DNS:") else s
                for s in certificate_properties(cert)["subject_alt_names"]
            )
            if wanted != have:
                return True, f"the existing certificate names {have}, the CSR asks for {wanted}"
        if profile is not None:
            try:
                have_eku = set(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
            except x509.ExtensionNotFound:
                have_eku = set()
            if have_eku != set(_extended_key_usage(profile)):
                return True, f"the existing certificate's extended key usage does not match profile {profile!r}"
        return False, f"the existing certificate is valid until {iso8601(_not_after(cert))}"

    @staticmethod
    def _wanted_public_key(csr_or_public_key_pem):
        if isinstance(csr_or_public_key_pem, x509.CertificateSigningRequest):
            return csr_or_public_key_pem.public_key(), csr_or_public_key_pem
        data = _to_bytes(csr_or_public_key_pem)
        if b"CERTIFICATE REQUEST" in data:
            csr = load_csr(data)
            return csr.public_key(), csr
        try:
            return serialization.load_pem_public_key(data), None
        except (ValueError, UnsupportedAlgorithm) as exc:
            raise PkiError(f"neither a CSR nor a public key: {exc}", field="csr") from exc


# --------------------------------------------------------------------------------------------------------------------
# Options shared by every caller of the built-in signer, and the flow of the pki_sign module
# --------------------------------------------------------------------------------------------------------------------


def signer_argument_spec() -> dict:
    """Options of the built-in signer (CA files, CA creation, policy): pki_sign's, and reusable as sub-options."""
    return dict(
        ca_cert=dict(type="path", required=True),
        ca_key=dict(type="path", required=True),
        ca_passphrase=dict(type="str", no_log=True),
        create_ca=dict(type="bool", default=False),
        ca_common_name=dict(type="str", default=DEFAULT_CA_COMMON_NAME),
        ca_key_type=dict(type="str", default="ec", choices=list(CA_KEY_TYPES)),
        ca_valid_days=dict(type="int", default=DEFAULT_CA_VALID_DAYS),
        allowed_sans=dict(type="list", elements="str"),
        deny=dict(type="list", elements="str", default=[]),
        default_deny=dict(type="bool", default=True),
        allowed_key_types=dict(type="list", elements="str", default=list(DEFAULT_KEY_TYPES), choices=list(KEY_TYPES)),
        min_rsa_bits=dict(type="int", default=DEFAULT_MIN_RSA_BITS),
        ec_curves=dict(type="list", elements="str", default=list(DEFAULT_EC_CURVES)),
        valid_days=dict(type="int", default=DEFAULT_VALID_DAYS),
        max_valid_days=dict(type="int", default=DEFAULT_MAX_VALID_DAYS),
        profile=dict(type="str", default="both", choices=list(PROFILES)),
    )


def policy_from_params(params: dict) -> CsrPolicy:
    """A CsrPolicy from options shaped like :func:`signer_argument_spec` (missing ones take the defaults)."""
    return CsrPolicy(
        allowed_sans=params.get("allowed_sans"),
        deny=params.get("deny") or (),
        default_deny=params.get("default_deny", True) is not False,
        key_types=params.get("allowed_key_types") or DEFAULT_KEY_TYPES,
        min_rsa_bits=params.get("min_rsa_bits") or DEFAULT_MIN_RSA_BITS,
        ec_curves=params.get("ec_curves") or DEFAULT_EC_CURVES,
        max_valid_days=params.get("max_valid_days") or DEFAULT_MAX_VALID_DAYS,
    )


def ca_from_params(params: dict, check_mode: bool = False) -> tuple[CertificateAuthority, bool]:
    """(CA, created) from options shaped like :func:`signer_argument_spec`; creates it only with ``create_ca``."""
    cert_path, key_path = params["ca_cert"], params["ca_key"]
    if params.get("create_ca"):
        return CertificateAuthority.load_or_create(
            cert_path,
            key_path,
            params.get("ca_passphrase"),
            common_name=params.get("ca_common_name") or DEFAULT_CA_COMMON_NAME,
            key_type=params.get("ca_key_type") or "ec",
            valid_days=params.get("ca_valid_days") or DEFAULT_CA_VALID_DAYS,
            check_mode=check_mode,
        )
    for option, path in (("ca_cert", cert_path), ("ca_key", key_path)):
        if not os.path.lexists(path):
            raise PkiError(f"{option} {path} does not exist (set create_ca to create the CA)", field=option)
    return CertificateAuthority.load(cert_path, key_path, params.get("ca_passphrase")), False


def signer_from_params(params: dict, check_mode: bool = False) -> tuple[Signer, bool]:
    """(Signer, CA created) from options shaped like :func:`signer_argument_spec`."""
    policy = policy_from_params(params)
    ca, created = ca_from_params(params, check_mode)
    return Signer(ca, policy), created


CERTIFICATE_MODE = 0o644


class CertificateIssuance:
    """One CSR signed for one identity, optionally kept at ``dest``; the whole flow of the ``pki_sign`` module.

    Load (or create) the CA → check the CSR against the policy → compare with what ``dest`` holds → sign → write.
    Check mode is handled here only: everything is computed, nothing is written (not even a new CA).
    """

    def __init__(self, params: dict):
        self.params = params

    def _csr_text(self) -> str:
        if self.params.get("csr"):
            return self.params["csr"]
        path = self.params.get("csr_path")
        if not path:
            raise PkiError("one of csr or csr_path is required", field="csr")
        try:
            with open(path, encoding="ascii") as handle:
                return handle.read()
        except (OSError, UnicodeDecodeError) as exc:
            raise PkiError(
                "csr_path {} cannot be read: {}".format(path, getattr(exc, "strerror", None) or exc), field="csr_path"
            ) from exc

    @staticmethod
    def _existing(path: str | None, option: str) -> str | None:
        if not path or not os.path.lexists(path):
            return None
        if os.path.islink(path) or not os.path.isfile(path):
            raise PkiError(f"{option} {path} exists and is not a regular file; refusing to replace it", field=option)
        try:
            with open(path, encoding="ascii", errors="replace") as handle:
                return handle.read()
        except OSError as exc:
            raise PkiError(f"{option} {path} cannot be read: {exc.strerror or exc}", field=option) from exc

    def run(self, check_mode: bool = False) -> dict:
        p = self.params
        identity = p["identity"]
        profile = p.get("profile") or "both"
        valid_days = p.get("valid_days") or DEFAULT_VALID_DAYS
        renew_before_days = int(p.get("renew_before_days", 30))
        dest, chain_dest = p.get("dest"), p.get("chain_dest")
        if dest and renew_before_days >= int(valid_days):
            raise PkiError(
                "renew_before_days %d must be smaller than valid_days %s, or every run would re-issue"
                % (renew_before_days, valid_days),
                field="renew_before_days",
            )
        csr_text = self._csr_text()
        for option, path in (("dest", dest), ("chain_dest", chain_dest)):
            if path:
                _require_directory(path, option)
        existing = self._existing(dest, "dest")
        existing_chain = self._existing(chain_dest, "chain_dest")
        policy = policy_from_params(p)
        facts = policy.evaluate(csr_text, identity, valid_days)  # refusals surface in check mode too
        ca, ca_created = ca_from_params(p, check_mode)
        signer = Signer(ca, policy)
        warnings = list(ca.warnings)

        before = {}
        keep, reason = False, "no certificate at dest" if dest else "no dest: a certificate is issued on every run"
        if existing is not None:
            try:
                before = certificate_properties(load_certificates(existing, "dest")[0])
            except PkiError:
                before = {"state": "not a PEM certificate"}
            need, reason = signer.needs_renewal(
                existing, facts.csr, renew_before_days, identity=identity, profile=profile
            )
            keep = not need

        changed = ca_created
        if keep:
            issued = IssuedCertificate.from_certificate(load_certificates(existing)[0], ca.chain_pem)
            if stat.S_IMODE(os.stat(dest).st_mode) != CERTIFICATE_MODE:
                changed = True
                if not check_mode:
                    os.chmod(dest, CERTIFICATE_MODE)
            after = dict(before)
        elif check_mode:
            changed = True
            issued = None
            not_after, plan_warnings = signer.plan(facts)
            warnings.extend(plan_warnings)
            after = {
                "subject": f"CN={identity}",
                "issuer": ca.subject.rfc4514_string(),
                "subject_alt_names": facts.subject_alt_names,
                "serial": "(assigned when signed)",
                "not_before": "(when signed)",
                "not_after": iso8601(not_after),
                "extended_key_usage": sorted(_EKU_NAMES[oid] for oid in _extended_key_usage(profile)),
                "public_key": (f"{facts.key_type} {facts.key_detail}").strip(),
                "public_key_sha256": public_key_sha256(facts.public_key),
            }
        else:
            changed = True
            issued = signer.issue(facts, profile)
            warnings.extend(issued.warnings)
            after = issued.properties()
            if dest:
                self._write(dest, issued.certificate, "dest")

        if chain_dest and existing_chain != ca.chain_pem:
            changed = True
            if not check_mode:
                self._write(chain_dest, ca.chain_pem, "chain_dest")

        result = {
            "changed": changed,
            "ca_created": ca_created,
            "certificate": issued.certificate if issued else None,
            "ca": ca.chain_pem,
            "serial": issued.serial_hex if issued else None,
            "not_after": issued.not_after_iso if issued else after.get("not_after"),
            "dest": dest,
            "chain_dest": chain_dest,
            "msg": (f"kept: {reason}") if keep else (f"issued: {reason}"),
            "warnings": warnings,
            "diff": {
                "before_header": dest or "certificate",
                "after_header": dest or "certificate",
                "before": before,
                "after": after,
            },
        }
        if ca_created:
            result["diff"]["before"] = dict(before, ca="absent")
            result["diff"]["after"] = dict(after, ca=ca.subject.rfc4514_string())
        return result

    @staticmethod
    def _write(path: str, data: str, option: str) -> None:
        _require_directory(path, option)
        owner = group = None
        if os.path.isfile(path) and not os.path.islink(path) and os.geteuid() == 0:
            # Replacing a file keeps its owner and group (a service may read its certificate as another user).
            info = os.stat(path)
            owner, group = info.st_uid, info.st_gid
        try:
            atomic_write(path, data, mode=CERTIFICATE_MODE, owner=owner, group=group)
        except OSError as exc:
            raise PkiError(f"{option} {path} cannot be written: {exc}", field=option) from exc
