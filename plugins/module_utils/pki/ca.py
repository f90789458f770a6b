# Copyright: zeroinit.bootstrap contributors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)
"""The certificate authority: a CA certificate and its key, checked to belong together, made, loaded and written.

Creation writes the key (0600) before the certificate (0644), each atomically, under a lock on the directory so
that parallel runs agree on one CA.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import os
import secrets
import stat
from typing import Sequence

from ..common.deps import NameOID, UnsupportedAlgorithm, ec, ed448, ed25519, hashes, rsa, serialization, x509
from ..common.files import atomic_write_many
from .x509 import (
    PkiError,
    certificate_matches_key,
    iso8601,
    load_certificates,
    not_after,
    require_cryptography,
    to_bytes,
    utc_now,
)

CA_KEY_TYPES = ("ec", "rsa", "ed25519")
DEFAULT_CA_COMMON_NAME = "zeroinit CA"
DEFAULT_CA_VALID_DAYS = 3650
CA_RSA_BITS = 3072
CLOCK_SKEW = datetime.timedelta(minutes=5)


def _signature_hash(private_key):
    """Hash for signing with the CA key: None for EdDSA, SHA-384 for P-384 and larger, SHA-256 otherwise."""
    if isinstance(private_key, (ed25519.Ed25519PrivateKey, ed448.Ed448PrivateKey)):
        return None
    if isinstance(private_key, ec.EllipticCurvePrivateKey) and private_key.curve.key_size >= 384:
        return hashes.SHA384()
    return hashes.SHA256()


def new_private_key(key_type: str):
    """A new private key of ``key_type`` (ec: P-256, rsa: 3072 bits, ed25519)."""
    if key_type == "ec":
        return ec.generate_private_key(ec.SECP256R1())
    if key_type == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=CA_RSA_BITS)
    if key_type == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    raise PkiError(f"ca_key_type must be one of {', '.join(CA_KEY_TYPES)}, not {key_type!r}", field="ca_key_type")


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
        require_cryptography()
        if not certificate_matches_key(certificate, private_key):
            raise PkiError(
                f"ca_key{' ' + str(key_path) if key_path else ''} does not match the CA certificate "
                f"ca_cert{' ' + str(cert_path) if cert_path else ''} (different public keys)",
                field="ca_key",
            )
        try:
            constraints = certificate.extensions.get_extension_for_class(x509.BasicConstraints).value
            is_ca = constraints.ca
        except x509.ExtensionNotFound:
            is_ca = False
        if not is_ca:
            raise PkiError(
                f"ca_cert{' ' + str(cert_path) if cert_path else ''} "
                "is not a CA certificate (BasicConstraints CA:TRUE missing)",
                field="ca_cert",
            )
        try:
            may_sign = certificate.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign
        except x509.ExtensionNotFound:
            may_sign = True  # no KeyUsage: not restricted (RFC 5280 4.2.1.3)
        if not may_sign:
            raise PkiError(
                f"ca_cert{' ' + str(cert_path) if cert_path else ''} "
                "may not sign certificates (KeyUsage keyCertSign missing)",
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
        return not_after(self.certificate)

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
        require_cryptography()
        if not common_name:
            raise PkiError("ca_common_name must not be empty", field="ca_common_name")
        if int(valid_days) < 1:
            raise PkiError(f"ca_valid_days must be at least 1, not {valid_days}", field="ca_valid_days")
        key = private_key if private_key is not None else new_private_key(key_type)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        now = utc_now()
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
        require_cryptography()
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
        for index, candidate in enumerate(chain):
            if certificate_matches_key(candidate, key):
                chain.insert(0, chain.pop(index))
                break
        ca = cls(chain[0], key, chain, cert_path=cert_path, key_path=key_path)
        if key_mode & 0o077:
            ca.warnings.append(
                f"ca_key {key_path} is accessible to group or others (mode {key_mode:04o}); it should be 0600"
            )
        if ca.not_after <= utc_now():
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
        require_directory(key_path, "ca_key")
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
            require_directory(path, option)
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
                encryption = serialization.BestAvailableEncryption(to_bytes(passphrase))
            else:
                encryption = serialization.NoEncryption()
            key_pem = self.private_key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
            )
            files.append((key_path, key_pem, 0o600))
        files.append((cert_path, self.chain_pem.encode("ascii"), 0o644))
        require_directory(cert_path, "ca_cert")
        require_directory(key_path, "ca_key")
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


def require_directory(path: str, option: str) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise PkiError(f"{option}: directory {directory} does not exist", field=option)


def _load_private_key(data: bytes, passphrase, key_path: str):
    password = to_bytes(passphrase) if passphrase else None
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
