# Copyright: zeroinit.bootstrap contributors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)
"""File writes that never leave a half-written file, and small readers.

``write_file`` is the one low-level writer: it opens without following a link (``O_NOFOLLOW``), creates the
file 0600, sets the final mode (and owner) on the open descriptor before anyone can see the content under its
name, and fsyncs when asked. ``atomic_write`` and ``atomic_write_many`` stage through it into a temp file in
the destination's directory and rename, so a process killed at any point leaves the old file or the new one;
``atomic_create`` makes a file only when it does not exist yet. The node's journalled set of files
(``node/journal.py``), the CA's files, authorized_keys and the controller's key pair all build on these.
"""

from __future__ import annotations

import os
import secrets


def write_file(
    path: str,
    data: bytes | str,
    mode: int = 0o600,
    durable: bool = True,
    exclusive: bool = False,
    owner: int | None = None,
    group: int | None = None,
) -> None:
    """Write ``data`` to ``path`` itself (not atomically: callers rename the result into place).

    A symbolic link at ``path`` is never followed (the open fails); ``exclusive`` refuses an existing file.
    The file is created 0600 and gets ``mode`` and ownership on the descriptor; ``durable`` fsyncs it.
    """
    if isinstance(data, str):
        data = data.encode("utf-8")
    flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
    flags |= os.O_EXCL if exclusive else os.O_TRUNC
    fd = os.open(path, flags, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fchmod(fd, mode)
        if owner is not None or group is not None:
            os.fchown(fd, -1 if owner is None else owner, -1 if group is None else group)
        if durable:
            os.fsync(fd)
    finally:
        os.close(fd)


def _stage(path: str, data: bytes | str, mode: int, durable: bool, owner=None, group=None) -> str:
    """``data`` in a new temp file beside ``path``; returns the temp file's path."""
    directory = os.path.dirname(os.path.abspath(path))
    while True:
        tmp = os.path.join(directory, f".{os.path.basename(path)}.{secrets.token_hex(4)}.tmp")
        try:
            write_file(tmp, data, mode, durable, exclusive=True, owner=owner, group=group)
            return tmp
        except FileExistsError:
            continue  # a name clash with another writer: pick another name
        except BaseException:
            remove_quietly(tmp)
            raise


def _refuse_link(path: str) -> None:
    if os.path.islink(path):
        raise OSError(f"refusing to write {path}: it is a symbolic link")


def atomic_write(
    path: str,
    data: bytes | str,
    mode: int = 0o600,
    owner: int | None = None,
    group: int | None = None,
    follow_symlinks: bool = False,
    durable: bool = True,
) -> None:
    """Replace ``path`` with ``data`` atomically; mode and ownership are set before the rename.

    With ``follow_symlinks`` false (the default) a symlink at ``path`` is refused rather than written through:
    root writing into a user's directory must not be steered elsewhere by a link.
    """
    if not follow_symlinks:
        _refuse_link(path)
    tmp = _stage(path, data, mode, durable, owner, group)
    try:
        os.replace(tmp, path)
    except BaseException:
        remove_quietly(tmp)
        raise
    if durable:
        fsync_directory(os.path.dirname(os.path.abspath(path)))


def atomic_write_many(files: list[tuple[str, bytes | str, int]], durable: bool = True) -> None:
    """Write several files, each atomically: all temp files are written and synced first, then renamed.

    A crash during the writing phase leaves every old file; during the renames, each file is whole.
    """
    staged: list[tuple[str, str]] = []
    try:
        for path, data, mode in files:
            _refuse_link(path)
            staged.append((_stage(path, data, mode, durable), path))
        for tmp, path in staged:
            os.replace(tmp, path)
    except BaseException:
        for tmp, _path in staged:
            remove_quietly(tmp)
        raise
    if durable:
        for directory in sorted({os.path.dirname(os.path.abspath(p)) for _t, p in staged}):
            fsync_directory(directory)


def atomic_create(path: str, data: bytes | str, mode: int = 0o600) -> bool:
    """Create ``path`` with ``data`` unless it exists; False when another writer created it first.

    The content is complete before the name appears (a hard link of a synced temp file), so a reader never
    sees a partial file, and of several processes racing for one path exactly one wins.
    """
    tmp = _stage(path, data, mode, durable=True)
    try:
        os.link(tmp, path)
    except FileExistsError:
        return False
    finally:
        remove_quietly(tmp)
    fsync_directory(os.path.dirname(os.path.abspath(path)))
    return True


def fsync_directory(directory: str) -> None:
    """fsync a directory so the renames in it survive a power loss (best effort: some filesystems refuse)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def remove_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def read_text(path: str, default: str | None = None) -> str | None:
    """The file's UTF-8 text with line ends made ``\\n`` (as text-mode ``open`` reads it), or ``default``."""
    data = read_bytes(path)
    if data is None:
        return default
    text = data.decode("utf-8")
    return text.replace("\r\n", "\n").replace("\r", "\n") if "\r" in text else text


def read_bytes(path: str) -> bytes | None:
    """The file's bytes, or None when it does not exist.

    Plain descriptor reads: a buffered ``open`` adds a seek, a terminal check and a wrapper object to every read,
    which a node agent serving a simulated fleet pays several times per node.
    """
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        return None
    try:
        chunks = []
        while True:
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)
    finally:
        os.close(fd)
