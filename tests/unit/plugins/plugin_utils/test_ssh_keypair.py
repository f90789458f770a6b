"""The controller's key pair: made once, 0600, readable by ssh-keygen; racing forks agree."""

from __future__ import annotations

import os
import pathlib
import stat
import subprocess
import threading

import pytest

from ansible_collections.zeroinit.bootstrap.plugins.module_utils.ssh.keys import (
    PublicKey,
    SshKeyError,
)
from ansible_collections.zeroinit.bootstrap.plugins.plugin_utils.ssh_keypair import ControllerKeyPair


@pytest.mark.parametrize("kind,size,prefix", [("ed25519", None, "ssh-ed25519"), ("rsa", 3072, "ssh-rsa")])
def test_keypair_generated_once_0600_and_readable_by_ssh_keygen(tmp_path, kind, size, prefix):
    pair = ControllerKeyPair(str(tmp_path / "keys" / "fleet"), kind, size, "fleet@test")
    first = pair.ensure()
    assert first.generated and first.public_key.key_type == prefix
    assert stat.S_IMODE(os.stat(pair.path).st_mode) == 0o600
    derived = subprocess.run(["ssh-keygen", "-y", "-f", pair.path], check=True, capture_output=True, text=True)
    assert PublicKey.parse(derived.stdout).same_key(first.public_key)
    assert pathlib.Path(pair.public_path).read_text() == first.public_key.line + "\n"
    again = ControllerKeyPair(pair.path, kind, size).ensure()
    assert not again.generated and again.public_key.same_key(first.public_key)


def test_concurrent_generation_agrees_on_one_key(tmp_path):
    path = str(tmp_path / "fleet")
    results = []
    threads = [threading.Thread(target=lambda: results.append(ControllerKeyPair(path).ensure())) for _index in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(results) == 6
    assert len({r.public_key.fingerprint for r in results}) == 1
    assert sum(r.generated for r in results) == 1
    assert [n for n in os.listdir(tmp_path) if n.startswith(".")] == []


def test_mismatched_pub_file_is_refused(tmp_path, keys):
    pub = tmp_path / "new.pub"
    pub.write_text(keys["other"][1] + "\n")
    with pytest.raises(SshKeyError, match="does not belong"):
        ControllerKeyPair(str(tmp_path / "new")).ensure()
