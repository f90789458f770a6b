# Copyright: zeroinit.bootstrap contributors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)
"""Atomic file writes: a temp file opened 0600 in the destination's directory, fsync, then rename.

A process killed at any point leaves either the old file or the new one, never a mix. Used for node
configuration, certificates, keys and authorized_keys alike.
"""

from __future__ import annotations

import os
import tempfile


def atomic_write(
    path: str,
    data: bytes | str,
    mode: int = 0o600,
    owner: int | None = None,
    group: int | None = None,
    follow_symlinks: bool = False,
) -> None:
    """Replace ``path`` with ``data`` atomically; mode and ownership are set before the rename.

    With ``follow_symlinks`` false (the default) a symlink at ``path`` is refused rather than written through:
    root writing into a user's directory must not be steered elsewhere by a link.
    """
    if isinstance(data, str):
        data = data.encode("utf-8")
    directory = os.path.dirname(os.path.abspath(path))
    if not follow_symlinks and os.path.islink(path):
        raise OSError(f"refusing to write {path}: it is a symbolic link")
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        if owner is not None or group is not None:
            os.chown(tmp, -1 if owner is None else owner, -1 if group is None else group, follow_symlinks=False)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    fsync_directory(directory)


def atomic_write_many(files: list[tuple[str, bytes | str, int]]) -> None:
    """Write several files, each atomically: all temp files are written and synced first, then renamed.

    A crash during the writing phase leaves every old file; during the renames, each file is whole.
    """
    staged = []
    try:
        for path, data, mode in files:
            if isinstance(data, str):
                data = data.encode("utf-8")
            directory = os.path.dirname(os.path.abspath(path))
            if os.path.islink(path):
                raise OSError(f"refusing to write {path}: it is a symbolic link")
            fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
            staged.append((tmp, path))
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.chmod(tmp, mode)
        for tmp, path in staged:
            os.replace(tmp, path)
    except BaseException:
        for tmp, _path in staged:
            try:
                os.unlink(tmp)
            except OSError:
                pass
        raise
    for directory in {os.path.dirname(os.path.abspath(p)) for _t, p in staged}:
        fsync_directory(directory)


def fsync_directory(directory: str) -> None:
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


def read_text(path: str, default: str | None = None) -> str | None:
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except FileNotFoundError:
        return default
