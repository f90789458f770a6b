# Copyright: zeroinit.bootstrap contributors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)
"""SSH keys for the no-lockout rotation: authorized_keys parsing and editing, key pairs, login verification.

Three parts, each plain Python:

* ``AuthorizedKeys`` / ``AuthorizedKeysFile`` (target side, used by the ``ssh_key_rotate`` module): the whole
  file is read, the new content computed, and written once atomically. Lines that are not keys (comments,
  blanks, anything unparseable) are kept verbatim; keys are compared by their key blob, never by comment.
* ``ControllerKeyPair`` (controller side): the rotated key pair, generated once (Ed25519 or RSA) and never sent
  anywhere; concurrent forks generating the same path agree on one key.
* ``LoginProbe`` (controller side): a fresh ``ssh`` process with only the new key, which proves by the server's
  own acceptance of that key (not by any existing connection) that it logs in.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import pwd
import re
import shlex
import stat
import struct
import subprocess
from dataclasses import dataclass, field

from .common.deps import HAS_CRYPTOGRAPHY, ed25519, rsa, serialization
from .common.files import atomic_create, atomic_write

KEY_TYPES = (
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


def rotation_options() -> dict:
    """The options a user gives ssh_key_rotate: the action plugin validates them, the module documents them."""
    return dict(
        user=dict(type="str"),
        private_key=dict(type="path"),
        key_type=dict(type="str", choices=["ed25519", "rsa"], default="ed25519"),
        key_size=dict(type="int", choices=list(RSA_SIZES), default=3072),
        comment=dict(type="str"),
        revoke=dict(type="list", elements="str", default=[]),
        revoke_login_key=dict(type="bool", default=False),
        verify=dict(type="bool", default=True),
        verify_timeout=dict(type="int", default=10),
        path=dict(type="str"),  # not "path": "~" must expand to the home of ``user``, not of the module's user
    )


class SshKeyError(ValueError):
    """A key, fingerprint or key file that cannot be used; the message names what and why."""


# ---------------------------------------------------------------------------------------------- public keys
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
        key = _decode_key(fields[0], fields[1])
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


def _decode_key(key_type: str, encoded: str) -> tuple[str, bytes] | None:
    """(type, blob) when ``encoded`` is a blob of ``key_type`` (the blob starts with its own type name)."""
    if key_type not in KEY_TYPES:
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


# ---------------------------------------------------------------------------------------------- authorized_keys
def _split_options(line: str) -> list[str]:
    """Split on unquoted whitespace; options such as ``command="a b"`` stay one token."""
    tokens, current, quoted, escaped = [], [], False, False
    for char in line:
        if escaped:
            current.append(char)
            escaped = False
        elif char == "\\":
            current.append(char)
            escaped = True
        elif char == '"':
            current.append(char)
            quoted = not quoted
        elif char in " \t" and not quoted:
            if current:
                tokens.append("".join(current))
                current = []
        else:
            current.append(char)
    if current:
        tokens.append("".join(current))
    return tokens


@dataclass
class AuthorizedKeyLine:
    """A line of authorized_keys as found: its exact text, and the key when it is one."""

    text: str
    key: PublicKey | None = None
    options: str = ""

    @classmethod
    def parse(cls, text: str) -> AuthorizedKeyLine:
        stripped = text.strip()
        if not stripped or stripped.startswith("#"):
            return cls(text)
        tokens = _split_options(stripped)
        # Without options the key type is the first token; with options it is the second.
        for index in (0, 1):
            if len(tokens) > index + 1:
                key = _decode_key(tokens[index], tokens[index + 1])
                if key is not None:
                    comment = " ".join(tokens[index + 2 :])
                    return cls(text, PublicKey(key[0], key[1], comment), tokens[0] if index == 1 else "")
        return cls(text)


@dataclass
class AuthorizedKeys:
    """The content of one authorized_keys file, edited as parsed lines and rendered back verbatim."""

    lines: list = field(default_factory=list)
    trailing_newline: bool = True

    @classmethod
    def parse(cls, content: str) -> AuthorizedKeys:
        if not content:
            return cls([], True)
        raw = content.split("\n")
        trailing = raw[-1] == ""
        if trailing:
            raw = raw[:-1]
        return cls([AuthorizedKeyLine.parse(line) for line in raw], trailing)

    def render(self) -> str:
        if not self.lines:
            return ""
        # A file we add to always ends with a newline: sshd needs it before the next appended key.
        return "\n".join(line.text for line in self.lines) + ("\n" if self.trailing_newline else "")

    def keys(self) -> list[PublicKey]:
        return [line.key for line in self.lines if line.key is not None]

    def contains(self, key: PublicKey) -> bool:
        return any(k.same_key(key) for k in self.keys())

    def fingerprints(self) -> list[str]:
        return [k.fingerprint for k in self.keys()]

    def add(self, key: PublicKey) -> bool:
        """Append ``key`` unless the same key (any comment, any options) is already there."""
        if self.contains(key):
            return False
        self.trailing_newline = True
        self.lines.append(AuthorizedKeyLine(key.line, key))
        return True

    def remove(self, selectors: list[RevokeSelector], keep: PublicKey | None = None) -> list[str]:
        """Drop every line whose key matches a selector; returns the fingerprints removed (each once, in order).

        ``keep`` is the key that must survive: selecting it is refused, and so is a result without it.
        """
        wanted = {s.fingerprint for s in selectors}
        if keep is not None:
            if keep.fingerprint in wanted:
                raise SshKeyError(f"refusing to revoke {keep.fingerprint}: it is the new key")
            if not self.contains(keep):
                raise SshKeyError(
                    f"refusing to revoke: the new key {keep.fingerprint} is not in the file, so revoking would leave "
                    "no key that is known to log in"
                )
        removed, kept = [], []
        for line in self.lines:
            if line.key is not None and line.key.fingerprint in wanted:
                if line.key.fingerprint not in removed:
                    removed.append(line.key.fingerprint)
                continue
            kept.append(line)
        self.lines = kept
        return removed

    def present(self, selectors: list[RevokeSelector]) -> list[str]:
        wanted = {s.fingerprint for s in selectors}
        found = []
        for fp in self.fingerprints():
            if fp in wanted and fp not in found:
                found.append(fp)
        return found


@dataclass
class FileState:
    path: str
    exists: bool
    content: str
    mode: int | None = None
    uid: int | None = None
    gid: int | None = None


class AuthorizedKeysFile:
    """One user's authorized_keys on the target: read without following links, written once atomically.

    Root edits a file inside another user's home here, so a symlink at the file is refused (it could point
    anywhere), the temp file is created in the same directory and renamed over it, and ownership is set with
    ``chown(follow_symlinks=False)``.
    """

    def __init__(self, user: str, path: str | None = None):
        try:
            self.account = pwd.getpwnam(user)
        except KeyError:
            raise SshKeyError(f"user {user!r} does not exist on this host") from None
        self.user = user
        home = self.account.pw_dir
        if path and (path == "~" or path.startswith("~/")):
            path = os.path.join(home, path[2:])  # "~" is the home of ``user``, not of the module's own user
        elif path and path.startswith("~"):
            path = os.path.expanduser(path)
        elif path and not os.path.isabs(path):
            path = os.path.join(home, path)  # relative to the home directory, as sshd's AuthorizedKeysFile is
        self.path = path or os.path.join(home, ".ssh", "authorized_keys")

    def read(self) -> FileState:
        try:
            info = os.lstat(self.path)
        except FileNotFoundError:
            return FileState(self.path, False, "")
        if stat.S_ISLNK(info.st_mode):
            raise SshKeyError(
                f"refusing to use {self.path}: it is a symbolic link (a link lets a write as root land "
                "anywhere); replace it with a regular file"
            )
        if not stat.S_ISREG(info.st_mode):
            raise SshKeyError(f"refusing to use {self.path}: it is not a regular file")
        fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW)
        with os.fdopen(fd, "rb") as handle:
            data = handle.read()
        return FileState(
            self.path,
            True,
            data.decode("utf-8", "surrogateescape"),
            stat.S_IMODE(info.st_mode),
            info.st_uid,
            info.st_gid,
        )

    def needs_attributes(self, state: FileState) -> bool:
        return state.exists and (
            state.mode != 0o600 or state.uid != self.account.pw_uid or state.gid != self.account.pw_gid
        )

    def write(self, content: str) -> None:
        directory = os.path.dirname(self.path)
        if not os.path.lexists(directory):
            os.makedirs(os.path.dirname(directory) or "/", exist_ok=True)
            os.mkdir(directory, 0o700)
            os.chown(directory, self.account.pw_uid, self.account.pw_gid, follow_symlinks=False)
            os.chmod(directory, 0o700)
        atomic_write(
            self.path,
            content.encode("utf-8", "surrogateescape"),
            mode=0o600,
            owner=self.account.pw_uid,
            group=self.account.pw_gid,
        )


@dataclass
class EditResult:
    changed: bool
    path: str
    before: str
    after: str
    added: bool = False
    revoked: list = field(default_factory=list)

    def diff(self) -> dict:
        return {
            "before": self.before,
            "after": self.after,
            "before_header": f"{self.path} (before)",
            "after_header": f"{self.path} (after)",
        }


class AuthorizedKeysEditor:
    """The target-side steps of a rotation, each one read → compute → write once (or not at all in check mode)."""

    def __init__(self, target: AuthorizedKeysFile, check_mode: bool = False):
        self.target = target
        self.check_mode = check_mode

    def _apply(self, state: FileState, keys: AuthorizedKeys, **extra) -> EditResult:
        after = keys.render()
        changed = after != state.content or self.target.needs_attributes(state)
        if changed and not self.check_mode:
            self.target.write(after)
        return EditResult(changed, self.target.path, state.content, after, **extra)

    def add(self, key: PublicKey) -> EditResult:
        state = self.target.read()
        keys = AuthorizedKeys.parse(state.content)
        added = keys.add(key)
        return self._apply(state, keys, added=added)

    def revoke(self, selectors: list[RevokeSelector], keep: PublicKey) -> EditResult:
        state = self.target.read()
        keys = AuthorizedKeys.parse(state.content)
        removed = keys.remove(selectors, keep=keep)
        if not removed:
            return EditResult(False, self.target.path, state.content, state.content)
        return self._apply(state, keys, revoked=removed)

    def take_back(self, key: PublicKey) -> EditResult:
        """Remove the key this run added (verification failed); nothing else changes."""
        state = self.target.read()
        keys = AuthorizedKeys.parse(state.content)
        removed = keys.remove([RevokeSelector(key.fingerprint, key.fingerprint)])
        if not removed:
            return EditResult(False, self.target.path, state.content, state.content)
        return self._apply(state, keys, revoked=removed)


# ---------------------------------------------------------------------------------------------- controller key pair
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
                raise SshKeyError(
                    "key_size {} is not allowed for rsa (one of {})".format(size, ", ".join(map(str, RSA_SIZES)))
                )
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


# ---------------------------------------------------------------------------------------------- login verification
_ACCEPTED = re.compile(r"Server accepts key: .*?(SHA256:[A-Za-z0-9+/]{43})")
_PROOF = "zeroinit-key-rotation-verified"


@dataclass
class LoginTarget:
    """Where and how the controller's connection reaches a host (from the task's connection variables)."""

    host: str
    user: str
    port: int | None = None
    common_args: str = ""
    extra_args: str = ""
    ssh_executable: str = "ssh"
    host_key_checking: bool = True


@dataclass
class ProbeResult:
    ok: bool
    error: str = ""
    accepted: str = ""


class LoginProbe:
    """A fresh ``ssh`` login with only ``private_key``: no agent, no control master, batch mode.

    Success needs all of: exit status 0, the remote command's output, and the server having accepted exactly
    the new key (read from ssh's own debug log), so a config-file identity or an agent cannot stand in for it.
    """

    def __init__(self, private_key: str, expect: PublicKey, timeout: int = 10):
        self.private_key = private_key
        self.expect = expect
        self.timeout = timeout

    def argv(self, target: LoginTarget) -> list[str]:
        # ssh keeps the first value of an option, so ours come before the operator's own arguments.
        argv = [
            target.ssh_executable,
            "-v",
            "-o",
            "BatchMode=yes",
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "IdentityAgent=none",
            "-o",
            "ControlMaster=no",
            "-o",
            "ControlPath=none",
            "-o",
            "ControlPersist=no",
            "-o",
            "PreferredAuthentications=publickey",
            "-o",
            "PasswordAuthentication=no",
            "-o",
            "KbdInteractiveAuthentication=no",
            "-o",
            "ConnectTimeout=%d" % self.timeout,
            "-o",
            "ConnectionAttempts=1",
            "-i",
            self.private_key,
        ]
        if not target.host_key_checking:
            argv += ["-o", "StrictHostKeyChecking=no"]
        if target.port:
            argv += ["-p", str(target.port)]
        argv += ["-l", target.user]
        for extra in (target.common_args, target.extra_args):
            if extra:
                argv += shlex.split(extra)
        argv += ["--", target.host, f"echo {_PROOF}"]
        return argv

    def run(self, target: LoginTarget) -> ProbeResult:
        try:
            proc = subprocess.run(
                self.argv(target),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                timeout=self.timeout + 20,
                check=False,
            )
        except subprocess.TimeoutExpired:
            return ProbeResult(False, "ssh did not finish within %d s" % (self.timeout + 20))
        except OSError as exc:
            return ProbeResult(False, f"cannot run {target.ssh_executable}: {exc}")
        stderr = proc.stderr.decode("utf-8", "replace")
        accepted = _ACCEPTED.findall(stderr)
        if proc.returncode != 0:
            return ProbeResult(False, _ssh_error(stderr, proc.returncode))
        if self.expect.fingerprint not in accepted:
            return ProbeResult(
                False,
                "the server accepted {}, not the new key {}".format(
                    ", ".join(accepted) or "no public key", self.expect.fingerprint
                ),
            )
        if _PROOF not in proc.stdout.decode("utf-8", "replace"):
            return ProbeResult(False, "logged in, but the remote command did not run (forced command?)")
        return ProbeResult(True, accepted=self.expect.fingerprint)


def _ssh_error(stderr: str, rc: int) -> str:
    """The lines a human needs from ``ssh -v`` output: the non-debug ones, else the last debug line."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    plain = [line for line in lines if not line.startswith(("debug", "OpenSSH_", "Transferred:"))]
    message = "; ".join(plain[-3:]) if plain else (lines[-1] if lines else "")
    return "ssh exited %d: %s" % (rc, message or "no output")


# ---------------------------------------------------------------------------------------------- the module's steps
def parse_revoke(entries: list | None) -> list[RevokeSelector]:
    """``revoke`` entries as selectors; the error names the entry (``revoke[2]``)."""
    selectors = []
    for index, entry in enumerate(entries or []):
        try:
            selectors.append(RevokeSelector.parse(entry))
        except SshKeyError as exc:
            raise SshKeyError("revoke[%d]: %s" % (index, exc)) from None
    return selectors


def default_user() -> str:
    return pwd.getpwuid(os.getuid()).pw_name


def target_step(params: dict, check_mode: bool = False) -> dict:
    """One step of a rotation on the target (``params`` as the module received them); returns the result."""
    target = AuthorizedKeysFile(params.get("user") or default_user(), params.get("path"))
    step = params.get("step") or "read"
    if step == "read":
        state = target.read()
        return {
            "changed": False,
            "authorized_keys": target.path,
            "exists": state.exists,
            "content": state.content,
            "attributes_ok": not target.needs_attributes(state),
        }
    try:
        public = PublicKey.parse(params.get("public_key") or "")
    except SshKeyError as exc:
        raise SshKeyError(f"public_key: {exc}") from None
    editor = AuthorizedKeysEditor(target, check_mode=check_mode)
    if step == "add":
        result = editor.add(public)
    elif step == "revoke":
        result = editor.revoke(parse_revoke(params.get("revoke")), keep=public)
    elif step == "take_back":
        result = editor.take_back(public)
    else:
        raise SshKeyError(f"step: unknown step {step!r}")
    return {
        "changed": result.changed,
        "authorized_keys": result.path,
        "added": result.added,
        "revoked": result.revoked,
        "fingerprint": public.fingerprint,
        "diff": result.diff(),
    }
