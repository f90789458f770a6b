# Copyright: zeroinit.bootstrap contributors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)
"""authorized_keys on the target, for the no-lockout rotation (the ``ssh_key_rotate`` module's side).

The whole file is read, the new content computed, and written once atomically. Lines that are not keys
(comments, blanks, anything unparseable) are kept verbatim; keys are compared by their key blob. Root edits a
file in another user's home here, so a link at the file is refused and ownership is set without following links.
"""

from __future__ import annotations

import os
import pwd
import stat
from dataclasses import dataclass, field

from ..common.files import atomic_write
from .keys import RSA_SIZES, PublicKey, RevokeSelector, SshKeyError, decode_key, parse_revoke


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
                key = decode_key(tokens[index], tokens[index + 1])
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

    def public_keys(self) -> list[PublicKey]:
        return [line.key for line in self.lines if line.key is not None]

    def contains(self, key: PublicKey) -> bool:
        return any(k.same_key(key) for k in self.public_keys())

    def fingerprints(self) -> list[str]:
        return [k.fingerprint for k in self.public_keys()]

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
