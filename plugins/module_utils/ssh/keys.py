# Copyright: zeroinit.bootstrap contributors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)
"""OpenSSH public keys: parsed, compared by their key blob (never by comment), fingerprinted as ssh-keygen does;
and what ``revoke`` may name (a whole key or its ``SHA256:`` fingerprint)."""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import struct
from dataclasses import dataclass

SSH_KEY_TYPES = (
    "ssh-ed25519",
    "ssh-rsa",
    "ssh-dss",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
    "ssh-ed25519-cert-v01@openssh.com",
    "ssh-rsa-cert-v01@openssh.com",
    "ssh-dss-cert-v01@openssh.com",
    "ecdsa-sha2-nistp256-cert-v01@openssh.com",
    "ecdsa-sha2-nistp384-cert-v01@openssh.com",
    "ecdsa-sha2-nistp521-cert-v01@openssh.com",
    "sk-ssh-ed25519-cert-v01@openssh.com",
    "sk-ecdsa-sha2-nistp256-cert-v01@openssh.com",
)
RSA_SIZES = (3072, 4096)
_FINGERPRINT = re.compile(r"^SHA256:[A-Za-z0-9+/]{43}$")


class SshKeyError(ValueError):
    """A key, fingerprint or key file that cannot be used; the message names what and why."""


@dataclass(frozen=True)
class PublicKey:
    """One OpenSSH public key: its type, its blob (the identity) and a comment (not part of the identity)."""

    key_type: str
    blob: bytes
    comment: str = ""

    @classmethod
    def parse(cls, text: str) -> PublicKey:
        """Parse ``type base64 [comment]`` (one line, as in a ``.pub`` file); raises SshKeyError."""
        fields = text.strip().split(None, 2)
        if len(fields) < 2:
            raise SshKeyError(f"not an OpenSSH public key (expected 'TYPE BASE64 [COMMENT]'): {_short(text)!r}")
        key = decode_key(fields[0], fields[1])
        if key is None:
            raise SshKeyError(f"not an OpenSSH public key (unknown type or damaged base64): {_short(text)!r}")
        return cls(key[0], key[1], fields[2].strip() if len(fields) > 2 else "")

    @property
    def fingerprint(self) -> str:
        """``SHA256:...`` exactly as ``ssh-keygen -l`` and sshd's log print it."""
        return fingerprint_of_blob(self.blob)

    @property
    def line(self) -> str:
        encoded = base64.b64encode(self.blob).decode("ascii")
        return (f"{self.key_type} {encoded} {self.comment}").strip()

    def same_key(self, other: PublicKey) -> bool:
        return self.blob == other.blob


def fingerprint_of_blob(blob: bytes) -> str:
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode("ascii").rstrip("=")


def decode_key(key_type: str, encoded: str) -> tuple[str, bytes] | None:
    """(type, blob) when ``encoded`` is a blob of ``key_type`` (the blob starts with its own type name)."""
    if key_type not in SSH_KEY_TYPES:
        return None
    try:
        blob = base64.b64decode(encoded.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        return None
    if len(blob) < 4:
        return None
    (length,) = struct.unpack(">I", blob[:4])
    if blob[4 : 4 + length] != key_type.encode("ascii"):
        return None
    return key_type, blob


def _short(text: str) -> str:
    text = text.strip()
    return text if len(text) <= 60 else text[:57] + "..."


@dataclass(frozen=True)
class RevokeSelector:
    """One entry of ``revoke``: a whole public key or its ``SHA256:`` fingerprint."""

    fingerprint: str
    source: str

    @classmethod
    def parse(cls, entry: str) -> RevokeSelector:
        entry = (entry or "").strip()
        if _FINGERPRINT.match(entry):
            return cls(entry, entry)
        return cls(PublicKey.parse(entry).fingerprint, entry)


def parse_revoke(entries: list | None) -> list[RevokeSelector]:
    """``revoke`` entries as selectors; the error names the entry (``revoke[2]``)."""
    selectors = []
    for index, entry in enumerate(entries or []):
        try:
            selectors.append(RevokeSelector.parse(entry))
        except SshKeyError as exc:
            raise SshKeyError(f"revoke[{index}]: {exc}") from None
    return selectors
