"""After converge: on every master only the new key logs in, and authorized_keys is exactly what it should be.

testinfra connects with the new key alone (ssh_config written by verify.yml), so every test passing on a host
also proves the new key logs in there. ZMOL_DIR is molecule's ephemeral directory with the keys.
"""

import os

from tests.support.netns import TestNetwork

ZMOL_DIR = os.environ["ZMOL_DIR"]
NET = TestNetwork.load(os.path.join(ZMOL_DIR, "netns.json"))


def read(name):
    with open(os.path.join(ZMOL_DIR, name)) as handle:
        return handle.read()


def spec_of(host):
    """The namespace host testinfra is connected to (its name carries ZEROINIT_NET_TAG)."""
    return next(h for h in NET.hosts if h.address == host.backend.hostname)


def test_new_key_logs_in_as_root(host):
    assert host.run("id -u").stdout.strip() == "0"
    assert host.run("hostname").stdout.strip() == spec_of(host).name


def test_authorized_keys_holds_new_key_and_unrelated_lines_only(host):
    keys = host.file("/root/.ssh/authorized_keys")
    assert keys.is_file and not keys.is_symlink
    assert keys.mode == 0o600 and keys.user == "root"
    bootstrap = read("bootstrap_ed25519.pub").strip()
    expected = read("authorized_keys.initial").replace(bootstrap, read("fleet_ed25519.pub").strip())
    assert keys.content_string == expected


def test_sshd_refuses_the_bootstrap_key(host):
    proc = NET.login(spec_of(host), os.path.join(ZMOL_DIR, "bootstrap_ed25519"))
    assert proc.returncode == 255
    assert "Permission denied (publickey)" in proc.stderr
