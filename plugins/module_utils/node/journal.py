# Copyright: zeroinit.bootstrap contributors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)
"""A node's files written as one set: after the process dies at any point the node has the old set or the new.

Each file is staged beside its destination with the one low-level writer (``common/files.py``); once all are on
disk a journal naming them is written, the renames follow, then the journal goes. A node that finds a journal
at start finishes the renames (:func:`recover_configure`); staged files without a journal are an unfinished
staging and are deleted. With ``durable`` every file and directory is also fsynced (power loss); renames alone
already make the set safe against a killed process.
"""

from __future__ import annotations

import json
import os
import time

from ..common.files import fsync_directory, read_text, remove_quietly, write_file

JOURNAL = ".configure.journal"
STAGED_SUFFIX = ".staged"
# Test-only: seconds to sleep between the renames of configure, so a test can kill the process midway.
SLOW_WRITES_ENV = "ZEROINIT_AGENT_TEST_SLOW_WRITES"


def write_set(
    node_dir: str, files: list[tuple[str, bytes | str, int]], durable: bool = True, journal: bool = True
) -> None:
    """Write ``(path, data, mode)`` files as one set under ``node_dir`` (see the module docstring).

    Without ``journal`` each file is still whole, but a crash may leave some new files beside old ones.
    """
    staged: list[tuple[str, str]] = []
    slow = float(os.environ.get(SLOW_WRITES_ENV, "0") or 0)
    journal_path = os.path.join(node_dir, JOURNAL)
    try:
        for path, data, mode in files:
            if os.path.islink(path):
                raise OSError(f"refusing to write {path}: it is a symbolic link")
            tmp = path + STAGED_SUFFIX
            write_file(tmp, data, mode, durable)
            staged.append((tmp, path))
        if journal:
            write_file(journal_path + STAGED_SUFFIX, json.dumps(staged), 0o600, durable)
            os.replace(journal_path + STAGED_SUFFIX, journal_path)
            if durable:
                fsync_directory(node_dir)
    except BaseException:
        for tmp, _path in staged:
            remove_quietly(tmp)
        raise
    for tmp, path in staged:
        if slow:
            time.sleep(slow)
        os.replace(tmp, path)
    if durable:
        for directory in sorted({os.path.dirname(p) for _t, p in staged}):
            fsync_directory(directory)
    if journal:
        os.unlink(journal_path)


def recover_configure(node_dir: str) -> str:
    """Finish or discard an interrupted :func:`write_set`; returns "rolled forward", "discarded" or ""."""
    journal = os.path.join(node_dir, JOURNAL)
    text = read_text(journal)
    outcome = ""
    if text is not None:
        try:
            staged = [(str(t), str(p)) for t, p in json.loads(text)]
        except (ValueError, TypeError):
            staged = []
        for tmp, path in staged:
            if os.path.dirname(os.path.abspath(path)).startswith(os.path.abspath(node_dir)) and os.path.exists(tmp):
                os.replace(tmp, path)
        for directory in sorted({os.path.dirname(p) for _t, p in staged}):
            fsync_directory(directory)
        os.unlink(journal)
        fsync_directory(node_dir)
        outcome = "rolled forward"
    for directory in (node_dir, os.path.join(node_dir, "ssl")):
        try:
            names = os.listdir(directory)
        except OSError:
            continue
        for name in names:
            if name.endswith(STAGED_SUFFIX):
                remove_quietly(os.path.join(directory, name))
                outcome = outcome or "discarded"
    return outcome
