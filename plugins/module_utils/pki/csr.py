# Copyright: zeroinit.bootstrap contributors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)
"""A private key made on the host that uses it, and a CSR for it: the whole flow of the ``pki_csr`` module.

For services that are not node agents (the broker's TLS key, its OCSP responder's signing key): the key is made
once (mode 0600, written atomically) and kept; the CSR (``CN=<identity>`` and the requested SANs) is kept while it
still asks for the same key and names, else written anew (0644). The CA signs it elsewhere (``pki_sign``); the
key never leaves the host.
"""

from __future__ import annotations

import ipaddress
import os

from ..common.deps import NameOID, hashes, serialization, x509
from ..common.files import atomic_write, read_bytes
from .ca import CA_KEY_TYPES, new_private_key, require_directory
from .x509 import PkiError, key_description, load_csr, public_key_der, public_key_sha256, san_strings

KEY_MODE = 0o600
CSR_MODE = 0o644


def requested_names(names) -> list:
    """``DNS:name``, ``IP:address`` or a bare name (an address when it parses as one) to x509 general names."""
    general = []
    for name in names or ():
        text = str(name).strip()
        kind, sep, value = text.partition(":")
        if sep and kind.upper() in ("DNS", "IP"):
            text = value.strip()
        else:
            kind = ""
        try:
            address = ipaddress.ip_address(text)
        except ValueError:
            address = None
        if kind.upper() == "IP" and address is None:
            raise PkiError(f"subject_alt_names: {name!r} is not an IP address", field="subject_alt_names")
        if address is not None and kind.upper() != "DNS":
            general.append(x509.IPAddress(address))
        elif text:
            general.append(x509.DNSName(text))
        else:
            raise PkiError(f"subject_alt_names: {name!r} names nothing", field="subject_alt_names")
    return general


class KeyAndCsr:
    """Make (or keep) the key at ``path`` and a CSR for it; check mode writes nothing."""

    def __init__(self, params: dict):
        self.params = params

    def _load_key(self, path: str):
        data = read_bytes(path)
        try:
            key = serialization.load_pem_private_key(data or b"", password=None)
        except (ValueError, TypeError) as exc:
            raise PkiError(f"path {path} does not hold an unencrypted PEM private key: {exc}", field="path") from None
        wanted = self.params.get("key_type") or "ec"
        have = key_description(key.public_key())[0]
        if have != wanted:
            raise PkiError(
                f"path {path} holds a {have} key, not the {wanted} key asked for; the key is never replaced (remove it "
                "to make a new one)",
                field="key_type",
            )
        return key

    def _csr(self, key, identity: str, general: list) -> str:
        builder = x509.CertificateSigningRequestBuilder().subject_name(
            x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, identity)])
        )
        if general:
            builder = builder.add_extension(x509.SubjectAlternativeName(general), critical=False)
        algorithm = None if key_description(key.public_key())[0] == "ed25519" else hashes.SHA256()
        return builder.sign(key, algorithm).public_bytes(serialization.Encoding.PEM).decode("ascii")

    @staticmethod
    def _csr_matches(pem: str, key, identity: str, general: list) -> bool:
        try:
            csr = load_csr(pem)
        except PkiError:
            return False
        try:
            names = list(csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)
        except x509.ExtensionNotFound:
            names = []
        cns = [a.value for a in csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
        return (
            csr.is_signature_valid
            and public_key_der(csr.public_key()) == public_key_der(key.public_key())
            and cns == [identity]
            and len(csr.subject) == 1
            and sorted(san_strings(names)) == sorted(san_strings(general))
        )

    def run(self, check_mode: bool = False) -> dict:
        p = self.params
        path, csr_path, identity = p["path"], p.get("csr_path"), p["identity"]
        key_type = p.get("key_type") or "ec"
        if key_type not in CA_KEY_TYPES:
            raise PkiError(f"key_type must be one of {', '.join(CA_KEY_TYPES)}", field="key_type")
        if not identity:
            raise PkiError("identity must not be empty", field="identity")
        general = requested_names(p.get("subject_alt_names"))
        require_directory(path, "path")
        if csr_path:
            require_directory(csr_path, "csr_path")
        for option, target in (("path", path), ("csr_path", csr_path)):
            if target and os.path.lexists(target) and (os.path.islink(target) or not os.path.isfile(target)):
                raise PkiError(f"{option} {target} is not a regular file; refusing to use it", field=option)
        changed = key_created = False
        if os.path.exists(path):
            key = self._load_key(path)
            if os.stat(path).st_mode & 0o777 != KEY_MODE:
                changed = True
                if not check_mode:
                    os.chmod(path, KEY_MODE)
        else:
            key, key_created, changed = new_private_key(key_type), True, True
            if not check_mode:
                pem = key.private_bytes(
                    serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
                )
                atomic_write(path, pem, mode=KEY_MODE)
        existing = (read_bytes(csr_path) or b"").decode("ascii", "replace") if csr_path else ""
        if existing and not key_created and self._csr_matches(existing, key, identity, general):
            csr = existing
        else:
            csr = self._csr(key, identity, general)
            if csr_path:
                changed = True
                if not check_mode:
                    atomic_write(csr_path, csr, mode=CSR_MODE)
        return {
            "changed": changed,
            "key_created": key_created,
            # A CSR for a key check mode did not write would sign nothing anyone holds.
            "csr": None if check_mode and key_created else csr,
            "path": path,
            "csr_path": csr_path,
            "identity": identity,
            "subject_alt_names": sorted(san_strings(general)),
            "public_key_sha256": public_key_sha256(key.public_key()),
            "msg": "key made" if key_created else "key kept",
        }
