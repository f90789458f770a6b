"""After converge: what the leader of the first boot did, seen from outside.

The hosts come from the scenario's network state (ZMOL_DIR/netns.json). testinfra logs in to every master with the
leader's new private key alone (read where the leader keeps it), so every fact read from a host also proves that
the new key logs in there. Each host is read once, in one command (logins are slow on a loaded machine).
"""

import functools
import json
import os

import pytest
import testinfra

from tests.support.netns import PRIVATE_DIRS, TestNetwork

ZMOL_DIR = os.environ["ZMOL_DIR"]
NEW_KEY = "/root/.ssh/zeroinit_fleet_ed25519"
AUTHORIZED_KEYS = "/root/.ssh/authorized_keys"
RECORD = "/var/lib/zeroinit/first_boot.json"
MARKER = "/srv/first_boot_next"
NET = TestNetwork.load(os.path.join(ZMOL_DIR, "netns.json"))
HOSTS = sorted(NET.hosts, key=lambda h: h.int_id)
LEADER = HOSTS[0]
LEADER_KEY = LEADER.path(NEW_KEY)  # where the leader's private /root/.ssh is on the machine

# Run on each host: its name, the files' attributes and contents, and every file under the searched
# directories that holds the needle (a line of the new private key).
PROBE = r"""
import json, os, pwd, socket, stat, sys
paths, needle, roots = json.loads(sys.argv[1]), sys.argv[2].encode(), json.loads(sys.argv[3])
def describe(path):
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return None
    regular = stat.S_ISREG(info.st_mode) and not path.endswith("_ed25519")
    return {"mode": stat.S_IMODE(info.st_mode), "owner": pwd.getpwuid(info.st_uid).pw_name,
            "link": stat.S_ISLNK(info.st_mode), "content": open(path).read() if regular else None}
holders = []
for root in roots:
    for directory, _dirs, files in os.walk(root):
        for name in files:
            path = os.path.join(directory, name)
            try:
                with open(path, "rb") as handle:
                    if needle in handle.read():
                        holders.append(path)
            except OSError:
                pass
print(json.dumps({"hostname": socket.gethostname(), "uid": os.getuid(), "holders": sorted(holders),
                  "files": {path: describe(path) for path in paths}}))
"""


def read(name):
    with open(os.path.join(ZMOL_DIR, name)) as handle:
        return handle.read()


def write_ssh_config():
    path = os.path.join(ZMOL_DIR, "ssh_config.first_boot")
    with open(path, "w") as handle:
        handle.write(
            f"Host *\n  User root\n  IdentityFile {LEADER_KEY}\n  IdentitiesOnly yes\n  IdentityAgent none\n"
            f"  BatchMode yes\n  UserKnownHostsFile {ZMOL_DIR}/known_hosts\n  StrictHostKeyChecking yes\n"
        )
    return path


def private_key_line():
    with open(LEADER_KEY) as handle:
        # From the key's private part: the first lines are the same in every unencrypted Ed25519 key.
        return handle.read().splitlines()[3]


@functools.lru_cache(maxsize=None)
def facts(address):
    host = testinfra.get_host(f"ssh://root@{address}", ssh_config=write_ssh_config(), controlpersist=0)
    searched = [*PRIVATE_DIRS, "/root/.ansible"]
    out = host.check_output(
        "python3 -c %s %s %s %s",
        PROBE,
        json.dumps([NEW_KEY, AUTHORIZED_KEYS, RECORD, MARKER]),
        private_key_line(),
        json.dumps(searched),
    )
    return json.loads(out)


@pytest.fixture(params=HOSTS, ids=[h.name for h in HOSTS])
def master(request):
    return request.param, facts(request.param.address)


def test_the_new_key_logs_in_to_every_master_as_root(master):
    spec, seen = master
    assert seen["hostname"] == spec.name
    assert seen["uid"] == 0


def test_every_master_recorded_the_lowest_address_as_leader(master):
    spec, seen = master
    record_file = seen["files"][RECORD]
    assert record_file["mode"] == 0o600 and record_file["owner"] == "root"
    record = json.loads(record_file["content"])
    assert record["cluster"] == "molecule-first-boot"
    assert record["address"] == spec.address
    assert record["leader"] == LEADER.address
    assert record["members"] == [h.address for h in HOSTS]
    assert record["is_leader"] is (spec is LEADER)
    assert record["status"] == ("done" if spec is LEADER else "follower")


def test_only_the_leader_holds_the_new_private_key(master):
    spec, seen = master
    key = seen["files"][NEW_KEY]
    if spec is LEADER:
        assert key["mode"] == 0o600 and key["owner"] == "root" and not key["link"]
        assert seen["holders"] == [NEW_KEY]
    else:
        assert key is None
        assert seen["holders"] == []


def test_authorized_keys_holds_the_new_key_instead_of_the_bootstrap_key(master):
    _spec, seen = master
    keys = seen["files"][AUTHORIZED_KEYS]
    assert keys["mode"] == 0o600 and keys["owner"] == "root" and not keys["link"]
    with open(LEADER_KEY + ".pub") as handle:
        new_public = handle.read().strip()
    assert keys["content"] == read("authorized_keys.initial").replace(read("bootstrap_ed25519.pub").strip(), new_public)


def test_sshd_refuses_the_bootstrap_key(master):
    spec, _seen = master
    refused = NET.login(spec, os.path.join(ZMOL_DIR, "bootstrap_ed25519"))
    assert refused.returncode == 255
    assert "Permission denied (publickey)" in refused.stderr


def test_the_next_playbook_ran_on_every_master(master):
    _spec, seen = master
    assert seen["files"][MARKER]["content"] == f"{LEADER.address} {LEADER.name}\n"
