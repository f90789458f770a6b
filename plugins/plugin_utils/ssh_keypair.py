# Copyright: zeroinit.bootstrap contributors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)
"""The rotated SSH key pair on the controller (the ``ssh_key_rotate`` action plugin's side).

Generated once (Ed25519 or RSA) and never sent anywhere; concurrent forks generating the same path agree on one
key (``atomic_create``: the first complete key to appear wins, the others read it).
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field

from ansible_collections.zeroinit.bootstrap.plugins.module_utils.common.deps import (
    HAS_CRYPTOGRAPHY,
    ed25519,
    rsa,
    serialization,
)
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.common.files import atomic_create, atomic_write
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.ssh.keys import RSA_SIZES, PublicKey, SshKeyError


@dataclass
class KeyPairResult:
    public_key: PublicKey
    generated: bool
    path: str
    warnings: list = field(default_factory=list)


class ControllerKeyPair:
    """The rotated key pair on the controller: ``path`` (private, 0600) and ``path.pub``.

    Generated when ``path`` is absent. Several forks may ask at once for the same path: each writes a complete
    key to a temp file and hard-links it into place; the link fails for all but the first, which then read the
    winner. So every host of a run gets the same key, and no reader ever sees a half-written file.
    """

    def __init__(self, path: str, key_type: str = "ed25519", key_size: int | None = None, comment: str = ""):
        self.path = os.path.abspath(os.path.expanduser(path))
        self.key_type = key_type
        self.key_size = key_size
        self.comment = comment

    @property
    def public_path(self) -> str:
        return self.path + ".pub"

    def exists(self) -> bool:
        return os.path.lexists(self.path)

    def load(self) -> KeyPairResult:
        """The public key of the existing pair (derived from the private key; ``.pub`` written if missing)."""
        if os.path.islink(self.path) and not os.path.exists(self.path):
            raise SshKeyError(f"private_key {self.path} is a dangling symbolic link")
        info = os.stat(self.path)
        warnings = []
        if stat.S_IMODE(info.st_mode) & 0o077:
            warnings.append(
                f"private_key {self.path} is readable by others (mode {stat.S_IMODE(info.st_mode):o}); ssh refuses such keys"
            )
        public = self._public_from_private()
        if public is None:
            if not os.path.exists(self.public_path):
                raise SshKeyError(
                    f"private_key {self.path} cannot be read without a passphrase and {self.public_path} is missing"
                )
            with open(self.public_path, encoding="utf-8") as handle:
                public = PublicKey.parse(handle.read())
        elif os.path.exists(self.public_path):
            with open(self.public_path, encoding="utf-8") as handle:
                on_disk = PublicKey.parse(handle.read())
            if not on_disk.same_key(public):
                raise SshKeyError(
                    f"{self.public_path} does not belong to private_key {self.path} (fingerprints {on_disk.fingerprint} and {public.fingerprint})"
                )
            public = on_disk
        else:
            public = PublicKey(public.key_type, public.blob, self.comment)
            atomic_write(self.public_path, public.line + "\n", mode=0o644)
        wanted = "ssh-ed25519" if self.key_type == "ed25519" else "ssh-rsa"
        if public.key_type != wanted:
            warnings.append(
                f"private_key {self.path} exists and is {public.key_type}, not {self.key_type} as key_type asks; it is used as it is"
            )
        return KeyPairResult(public, False, self.path, warnings)

    def _public_from_private(self) -> PublicKey | None:
        if not HAS_CRYPTOGRAPHY:
            return None
        with open(self.path, "rb") as handle:
            data = handle.read()
        try:
            private = serialization.load_ssh_private_key(data, password=None)
        except (ValueError, TypeError):
            try:
                private = serialization.load_pem_private_key(data, password=None)
            except (ValueError, TypeError):
                return None
        return _public_of(private, self.comment)

    def ensure(self) -> KeyPairResult:
        if self.exists():
            return self.load()
        if not HAS_CRYPTOGRAPHY:
            raise SshKeyError(
                f"generating private_key {self.path} needs the Python library cryptography on the controller"
            )
        if self.key_type == "ed25519":
            private = ed25519.Ed25519PrivateKey.generate()
        elif self.key_type == "rsa":
            size = self.key_size or 3072
            if size not in RSA_SIZES:
                raise SshKeyError(f"key_size {size} is not allowed for rsa (one of {', '.join(map(str, RSA_SIZES))})")
            private = rsa.generate_private_key(public_exponent=65537, key_size=size)
        else:
            raise SshKeyError(f"key_type {self.key_type!r} is not supported (ed25519 or rsa)")
        pem = private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
        )
        directory = os.path.dirname(self.path)
        if not os.path.isdir(directory):
            os.makedirs(directory, mode=0o700, exist_ok=True)
        if not atomic_create(self.path, pem, 0o600):
            return self.load()  # another fork won the race: its key is the key of this run
        public = _public_of(private, self.comment)
        atomic_write(self.public_path, public.line + "\n", mode=0o644)
        return KeyPairResult(public, True, self.path)


def _public_of(private, comment: str) -> PublicKey:
    line = (
        private.public_key()
        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        .decode("ascii")
    )
    parsed = PublicKey.parse(line)
    return PublicKey(parsed.key_type, parsed.blob, comment)


def public_key_of_private_key_file(path: str) -> PublicKey:
    """The public key of an existing private key file (the login key to revoke); ``.pub`` beside it is used
    when the private key cannot be read (encrypted, other format)."""
    pair = ControllerKeyPair(path)
    if not os.path.exists(pair.path):
        raise SshKeyError(f"private key {pair.path} does not exist on the controller")
    public = pair._public_from_private()
    if public is not None:
        return public
    if os.path.exists(pair.public_path):
        with open(pair.public_path, encoding="utf-8") as handle:
            return PublicKey.parse(handle.read())
    raise SshKeyError(f"cannot read the public key of {pair.path} (no {pair.public_path} beside it)")
