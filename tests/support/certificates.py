"""Real X.509 for tests: CAs, intermediates and leaf certificates with any property a test needs to get wrong.

::

    root = Authority("site CA")
    issuing = root.intermediate("issuing CA")
    provisioner = issuing.issue("prov1.example.net", usages=PROVISIONER)      # a Leaf: .cert .key .pem .key_pem
    provisioner.pem + issuing.pem                                               # what a pubcert with its chain holds

Keys are EC P-256 unless a test passes one (``rsa_key(bits)`` caches one RSA key per size, RSA keys are slow to
make). Made with ``cryptography`` directly, not with the collection's pki code, so the code under test is not
checked against itself.
"""

from __future__ import annotations

import datetime
import functools
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ansible_collections.zeroinit.bootstrap.plugins.module_utils.choria.security import PROVISIONER_USAGE

PROVISIONER = (PROVISIONER_USAGE, ExtendedKeyUsageOID.CLIENT_AUTH)
NODE = (ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH)

UTC = datetime.UTC


def utcnow() -> datetime.datetime:
    return datetime.datetime.now(UTC).replace(microsecond=0)


@functools.cache
def rsa_key(bits: int = 2048):
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


def ec_key(curve=None):
    return ec.generate_private_key(curve or ec.SECP256R1())


def key_pem(key, passphrase: bytes | None = None) -> str:
    encryption = serialization.BestAvailableEncryption(passphrase) if passphrase else serialization.NoEncryption()
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption).decode("ascii")


def pem(cert) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode("ascii")


def _sign_hash(key, algorithm):
    if isinstance(key, (ed25519.Ed25519PrivateKey, ed448.Ed448PrivateKey)):
        return None
    return algorithm or hashes.SHA256()


def _name(common_name: str | None) -> x509.Name:
    if common_name is None:
        return x509.Name([])
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


@dataclass
class Leaf:
    cert: object
    key: object

    @property
    def pem(self) -> str:
        return pem(self.cert)

    @property
    def key_pem(self) -> str:
        return key_pem(self.key)


class Authority:
    """A CA (self-signed, or an intermediate under ``parent``) that issues whatever a test asks for."""

    def __init__(
        self,
        name: str = "test CA",
        key=None,
        parent: Authority | None = None,
        path_length: int | None = None,
        not_before: datetime.datetime | None = None,
        not_after: datetime.datetime | None = None,
        ca: bool = True,
        key_cert_sign: bool = True,
        extensions: tuple = (),
        algorithm=None,
    ):
        self.key = key if key is not None else ec_key()
        self.parent = parent
        now = utcnow()
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(name))
            .issuer_name(parent.cert.subject if parent else _name(name))
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before or now - datetime.timedelta(days=1))
            .not_valid_after(not_after or now + datetime.timedelta(days=365))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=path_length if ca else None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=key_cert_sign,
                    crl_sign=key_cert_sign,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(self.key.public_key()), critical=False)
        )
        for extension, critical in extensions:
            builder = builder.add_extension(extension, critical=critical)
        signing_key = parent.key if parent else self.key
        self.cert = builder.sign(signing_key, _sign_hash(signing_key, algorithm))

    @classmethod
    def from_files(cls, cert_path, key_path, passphrase: bytes | None = None) -> Authority:
        """An existing CA (e.g. one pki_sign made) that issues what a test asks for."""
        authority = cls.__new__(cls)
        with open(cert_path, "rb") as handle:
            authority.cert = x509.load_pem_x509_certificate(handle.read())
        with open(key_path, "rb") as handle:
            authority.key = serialization.load_pem_private_key(handle.read(), password=passphrase)
        authority.parent = None
        return authority

    @property
    def pem(self) -> str:
        return pem(self.cert)

    def write_leaf(self, directory, common_name: str = "prov1.example.net", **options) -> dict:
        """A certificate of this CA (a provisioner's unless ``usages`` says otherwise) written as ``<cn>.pem`` and
        ``<cn>.key`` (0600) in ``directory``: {"cert", "key"} paths."""
        import os
        import pathlib

        leaf = self.issue(common_name, **options)
        directory = pathlib.Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        paths = {"cert": directory / f"{common_name}.pem", "key": directory / f"{common_name}.key"}
        paths["cert"].write_text(leaf.pem)
        paths["key"].write_text(leaf.key_pem)
        os.chmod(paths["key"], 0o600)
        return {name: str(path) for name, path in paths.items()}

    def intermediate(self, name: str, **options) -> Authority:
        return Authority(name, parent=self, **options)

    def issue(
        self,
        common_name: str | None = "prov1.example.net",
        key=None,
        usages: tuple | None = PROVISIONER,
        dns: tuple = (),
        not_before: datetime.datetime | None = None,
        not_after: datetime.datetime | None = None,
        ca: bool | None = False,
        digital_signature: bool = True,
        extensions: tuple = (),
        algorithm=None,
    ) -> Leaf:
        """A certificate under this CA; ``usages`` None leaves out the ExtendedKeyUsage, ``ca`` None the
        BasicConstraints; ``extensions`` are extra (extension, critical) pairs."""
        key = key if key is not None else ec_key()
        now = utcnow()
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before or now - datetime.timedelta(hours=1))
            .not_valid_after(not_after or now + datetime.timedelta(days=30))
            .add_extension(
                x509.KeyUsage(
                    digital_signature=digital_signature,
                    content_commitment=False,
                    key_encipherment=not digital_signature,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=bool(ca),
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
        )
        if ca is not None:
            builder = builder.add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        if usages is not None:
            builder = builder.add_extension(x509.ExtendedKeyUsage(list(usages)), critical=False)
        if dns:
            builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(d) for d in dns]), critical=False)
        for extension, critical in extensions:
            builder = builder.add_extension(extension, critical=critical)
        return Leaf(builder.sign(self.key, _sign_hash(self.key, algorithm)), key)


# ---------------------------------------------------------------------------------------------- SHA-1, by hand

# cryptography refuses to sign with SHA-1, so the one test input that needs it is re-signed here: the signature
# algorithm OIDs sha256WithRSAEncryption and sha1WithRSAEncryption have the same length, so the signed part keeps
# its layout and only the outer SEQUENCE is written anew.
_SHA256_WITH_RSA = bytes.fromhex("06092a864886f70d01010b")
_SHA1_WITH_RSA = bytes.fromhex("06092a864886f70d010105")


def _der(tag: int, body: bytes) -> bytes:
    size = len(body)
    if size < 0x80:
        return bytes([tag, size]) + body
    length = size.to_bytes((size.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(length)]) + length + body


def sha1_resigned(signed_part: bytes, rsa_signing_key) -> bytes:
    """DER of a certificate or CSR whose signed part (``tbs_certificate_bytes``/``tbs_certrequest_bytes``, made
    with SHA-256 and an RSA key) is signed again with SHA-1 by ``rsa_signing_key``."""
    from cryptography.hazmat.primitives.asymmetric import padding

    if _SHA256_WITH_RSA in signed_part:  # certificates name the algorithm inside the signed part; CSRs do not
        signed_part = signed_part.replace(_SHA256_WITH_RSA, _SHA1_WITH_RSA, 1)
    signature = rsa_signing_key.sign(signed_part, padding.PKCS1v15(), hashes.SHA1())
    algorithm = _der(0x30, _SHA1_WITH_RSA + b"\x05\x00")
    return _der(0x30, signed_part + algorithm + _der(0x03, b"\x00" + signature))


# ---------------------------------------------------------------------------------------------- provisioners


def signer_of(leaf: Leaf):
    """The RequestSigner of a certificate and its key."""
    from ansible_collections.zeroinit.bootstrap.plugins.module_utils.choria.security import RequestSigner

    return RequestSigner(leaf.pem, leaf.key_pem)


def provisioner_signers(provisioning: Authority) -> dict:
    """Signers against a node that pins ``provisioning``: ``provisioner`` (one it accepts) and what a hostile network
    has instead: ``other_site`` (a provisioner of another CA, ``other_site_ca``), ``expired`` (a provisioner
    certificate of this CA that expired), ``no_usage`` (a node certificate of this CA: no provisioner usage)."""
    other = Authority("site B provisioning CA")
    now = utcnow()
    expired = provisioning.issue(
        "prov.a.example.net", not_before=now - datetime.timedelta(days=30), not_after=now - datetime.timedelta(days=1)
    )
    return {
        "provisioner": signer_of(provisioning.issue("prov.a.example.net")),
        "other_site": signer_of(other.issue("prov.b.example.net")),
        "other_site_ca": other,
        "expired": signer_of(expired),
        "no_usage": signer_of(provisioning.issue("node9.a.example.net", usages=NODE)),
    }


# The hostile signers of provisioner_signers (None: unsigned) and the reason a node pinning the CA gives for each.
UNTRUSTED_SIGNERS = [
    (None, "request is unsigned (insecure)"),
    ("other_site", "is not issued by the provisioning CA"),
    ("expired", "expired at"),
    ("no_usage", "lacks the provisioner extended key usage"),
]
