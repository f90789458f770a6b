"""The one atomic writer: every way of writing leaves the old file or the new one, with its mode, never a link."""

from __future__ import annotations

import os
import stat

import pytest

from ansible_collections.zeroinit.bootstrap.plugins.module_utils.common import files


def write_one(path, data, mode):
    files.atomic_write(path, data, mode=mode)


def write_many(path, data, mode):
    files.atomic_write_many([(path, data, mode)])


def write_direct(path, data, mode):
    files.write_file(path, data, mode)


def create(path, data, mode):
    if not files.atomic_create(path, data, mode):
        raise FileExistsError(path)


WRITERS = [write_one, write_many, write_direct]


def leftovers(directory) -> list[str]:
    return sorted(name for name in os.listdir(directory) if name.endswith(".tmp"))


@pytest.mark.parametrize(
    "writer,existing,data,mode,outcome",
    [
        (write_one, None, "new", 0o600, "new"),
        (write_one, "old", b"new", 0o644, "new"),
        (write_one, "link", "new", 0o600, OSError),
        (write_many, None, "new", 0o640, "new"),
        (write_many, "old", "new", 0o600, "new"),
        (write_many, "link", "new", 0o600, OSError),
        (write_direct, None, "new", 0o600, "new"),
        (write_direct, "old", "new", 0o644, "new"),
        (write_direct, "link", "new", 0o600, OSError),
        (create, None, "new", 0o600, "new"),
        (create, "old", "new", 0o600, FileExistsError),
        (create, "link", "new", 0o600, FileExistsError),
    ],
)
def test_writers(tmp_path, writer, existing, data, mode, outcome):
    path = tmp_path / "target"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.write_text("untouched")
    if existing == "old":
        path.write_text("old")
    elif existing == "link":
        path.symlink_to(elsewhere)
    if isinstance(outcome, type):
        with pytest.raises(outcome):
            writer(str(path), data, mode)
        assert elsewhere.read_text() == "untouched"
    else:
        writer(str(path), data, mode)
        assert path.read_text() == outcome
        assert stat.S_IMODE(path.stat().st_mode) == mode
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("writer", [write_one, write_many])
def test_a_failed_rename_keeps_the_old_file_and_no_temp_file(tmp_path, monkeypatch, writer):
    path = tmp_path / "target"
    path.write_text("old")

    def broken_replace(src, dst):
        raise OSError("disk gone")

    monkeypatch.setattr(files.os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk gone"):
        writer(str(path), "new", 0o600)
    assert path.read_text() == "old" and leftovers(tmp_path) == []


def test_many_files_are_all_staged_before_any_is_renamed(tmp_path):
    first, second = tmp_path / "a", tmp_path / "b"
    first.write_text("old a")
    second.symlink_to(tmp_path / "elsewhere")
    with pytest.raises(OSError, match="symbolic link"):
        files.atomic_write_many([(str(first), "new a", 0o600), (str(second), "new b", 0o600)])
    assert first.read_text() == "old a" and leftovers(tmp_path) == []


def test_mode_is_set_before_the_name_appears(tmp_path, monkeypatch):
    path = tmp_path / "key.pem"
    seen = []
    real_replace = os.replace

    def replace(src, dst):
        seen.append(stat.S_IMODE(os.stat(src).st_mode))
        real_replace(src, dst)

    monkeypatch.setattr(files.os, "replace", replace)
    files.atomic_write(str(path), "secret", mode=0o600)
    files.atomic_write(str(path), "public", mode=0o644)
    assert seen == [0o600, 0o644]


def test_readers_return_the_default_for_a_missing_file(tmp_path):
    assert files.read_text(str(tmp_path / "absent"), default="d") == "d"
    assert files.read_bytes(str(tmp_path / "absent")) is None
    files.atomic_write(str(tmp_path / "present"), "text")
    assert files.read_text(str(tmp_path / "present")) == "text"
    assert files.read_bytes(str(tmp_path / "present")) == b"text"
