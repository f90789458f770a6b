"""OpenSSH public keys and revoke entries, checked against ssh-keygen."""

from __future__ import annotations

import pytest

from ansible_collections.zeroinit.bootstrap.plugins.module_utils.ssh.keys import (
    PublicKey,
    SshKeyError,
    parse_revoke,
)
from tests.support.ssh import keygen, ssh_keygen_fingerprint


def test_fingerprint_matches_ssh_keygen(tmp_path, keys):
    for kind in ("rsa", "ecdsa"):
        keys[kind] = keygen(tmp_path, kind, kind)
    for name, (path, line) in keys.items():
        assert PublicKey.parse(line).fingerprint == ssh_keygen_fingerprint(str(path) + ".pub"), name


def test_bad_revoke_entry_is_named():
    with pytest.raises(SshKeyError, match=r"revoke\[1\]"):
        parse_revoke(["SHA256:" + "A" * 43, "not-a-key"])
