"""ssh_key_rotate against real sshd on network-namespace hosts: rotation, check mode, idempotence, faults.

Every host trusts a bootstrap key at first; its authorized_keys also holds a hand-written comment, an unrelated
key and a line that is not a key, which must all survive byte for byte.
"""

from __future__ import annotations

import json
import os
import pathlib
import stat
import subprocess

import pytest

from ansible_collections.zeroinit.bootstrap.plugins.module_utils.ssh.keys import PublicKey
from tests.support import netns
from tests.support.ansible_run import run_playbook

UNRELATED = "# operators' own keys below\n%s\nthis line is not a key but must stay\n"


def keygen(directory, name):
    path = os.path.join(directory, name)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", path], check=True)
    with open(path + ".pub") as handle:
        return path, handle.read().strip()


@pytest.fixture
def fleet(tmp_path):
    """Three namespace hosts trusting the bootstrap key, an inventory for them, and the keys' paths."""
    bootstrap, bootstrap_pub = keygen(str(tmp_path), "bootstrap")
    _unrelated, unrelated_pub = keygen(str(tmp_path), "unrelated")
    initial = UNRELATED % unrelated_pub + bootstrap_pub + "\n"
    net = netns.TestNetwork.create("rotint", 3, authorized_keys=initial)
    try:
        inventory = tmp_path / "inventory.json"
        inventory.write_text(
            json.dumps(
                {
                    "members": {
                        "hosts": {
                            name: dict(entry, test_sshd_pid=host.sshd_pid)
                            for host, (name, entry) in zip(net.hosts, net.ansible_hosts(bootstrap).items())
                        }
                    }
                }
            )
        )
        yield {
            "net": net,
            "inventory": str(inventory),
            "bootstrap": bootstrap,
            "bootstrap_pub": bootstrap_pub,
            "initial": initial,
            "new": str(tmp_path / "controller" / "fleet_ed25519"),
            "tmp": tmp_path,
        }
    finally:
        net.destroy()


ROTATE = """
- name: Rotate
  hosts: members
  gather_facts: false
  tasks:
    - name: rotate
      zeroinit.bootstrap.ssh_key_rotate:
        private_key: "{{ new_key }}"
        revoke: "{{ revoke_keys }}"
"""


def authorized_keys(host) -> tuple[str, int]:
    path = host.path("/root/.ssh/authorized_keys")
    return pathlib.Path(path).read_text(), stat.S_IMODE(os.lstat(path).st_mode)


def test_check_real_check_real(fleet):
    net = fleet["net"]
    extra = {"new_key": fleet["new"], "revoke_keys": [fleet["bootstrap_pub"]]}

    check = run_playbook(ROTATE, fleet["inventory"], extra, check=True, diff=True)
    assert check.rc == 0, check.stdout[-3000:]
    assert not os.path.exists(fleet["new"]), "check mode generated a key"
    for host in net.hosts:
        out = check.result("rotate", host.name)
        assert out["changed"] and out["generated"] and out["added"]
        assert "would generate" in out["msg"]
        assert out["diff"]["before"] == fleet["initial"] and out["diff"]["before_header"].endswith("(before)")
        assert "generated when the task runs" in out["diff"]["after"]
        assert fleet["bootstrap_pub"] not in out["diff"]["after"]
        assert out["revoked"] == [PublicKey.parse(fleet["bootstrap_pub"]).fingerprint]
        assert authorized_keys(host)[0] == fleet["initial"]

    real = run_playbook(ROTATE, fleet["inventory"], extra, diff=True)
    assert real.rc == 0, real.stdout[-3000:]
    new_pub = pathlib.Path(fleet["new"] + ".pub").read_text().strip()
    assert stat.S_IMODE(os.stat(fleet["new"]).st_mode) == 0o600
    fingerprints = set()
    for host in net.hosts:
        out = real.result("rotate", host.name)
        assert out["changed"] and out["added"] and out["verified"], out
        fingerprints.add(out["fingerprint"])
        content, mode = authorized_keys(host)
        assert content == fleet["initial"].replace(fleet["bootstrap_pub"], new_pub)
        assert mode == 0o600
        assert out["diff"]["before"] == fleet["initial"] and out["diff"]["after"] == content
        assert net.login(host, fleet["new"], "hostname").stdout.strip() == host.name
        refused = net.login(host, fleet["bootstrap"], "hostname")
        assert refused.returncode != 0 and "Permission denied" in refused.stderr
    assert len(fingerprints) == 1, "hosts got different keys"

    # From now on only the new key logs in.
    extra["ansible_ssh_private_key_file"] = fleet["new"]
    for mode in ("check", "real"):
        again = run_playbook(ROTATE, fleet["inventory"], extra, check=mode == "check")
        assert again.rc == 0, again.stdout[-3000:]
        for host in net.hosts:
            out = again.result("rotate", host.name)
            assert out["changed"] is False and out["revoked"] == [] and out["added"] is False, (mode, out)
            assert out["verified"] is (mode == "real")


FAULT = """
- name: Rotate while one host's sshd is gone
  hosts: members
  gather_facts: false
  tasks:
    - name: connect (keeps a multiplexed connection to every host)
      ansible.builtin.ping:
    - name: stop sshd on the victim; the existing connection survives, new logins are refused
      ansible.builtin.command: kill {{ test_sshd_pid }}
      when: inventory_hostname == victim
      changed_when: true
    - name: rotate
      zeroinit.bootstrap.ssh_key_rotate:
        private_key: "{{ new_key }}"
        revoke_login_key: true
"""


def test_host_whose_sshd_stops_keeps_bootstrap_key_others_rotate(fleet):
    net = fleet["net"]
    victim = net.hosts[1]
    res = run_playbook(FAULT, fleet["inventory"], {"new_key": fleet["new"], "victim": victim.name})
    assert res.rc != 0
    failed = res.result("rotate", victim.name)
    assert failed.get("failed") is True
    assert failed["msg"].startswith(f"new key did not log in to {victim.name}: ssh exited 255"), failed["msg"]
    assert failed["msg"].endswith("the new key was removed again and the old keys were left in place")
    assert authorized_keys(victim)[0] == fleet["initial"]

    new_pub = pathlib.Path(fleet["new"] + ".pub").read_text().strip()
    for host in (net.hosts[0], net.hosts[2]):
        out = res.result("rotate", host.name)
        assert out["verified"] and out["revoked"] == [PublicKey.parse(fleet["bootstrap_pub"]).fingerprint]
        assert authorized_keys(host)[0] == fleet["initial"].replace(fleet["bootstrap_pub"], new_pub)
        assert net.login(host, fleet["bootstrap"], "hostname").returncode != 0

    victim.sshd_pid = 0  # killed by the play
    net.start_sshd(victim)
    assert net.login(victim, fleet["bootstrap"], "hostname").stdout.strip() == victim.name
    assert net.login(victim, fleet["new"], "hostname").returncode != 0

    # Fixed: the role, run again, logs in with the rotated key where it works and with the bootstrap key on the
    # victim, rotates the victim and changes nothing on the others.
    again = run_playbook(ROLE_PLAY, fleet["inventory"], {"key_rotation_private_key": fleet["new"]})
    assert again.rc == 0, again.stdout[-3000:]
    for host in net.hosts:
        out = role_result(again, host.name)
        assert out["verified"] and out["changed"] is (host is victim), (host.name, out)
        assert authorized_keys(host)[0] == fleet["initial"].replace(fleet["bootstrap_pub"], new_pub)
    assert net.login(victim, fleet["bootstrap"], "hostname").returncode != 0


ROLE_PLAY = """
- name: Rotate with the role, as playbooks/bootstrap.yaml does
  hosts: members
  gather_facts: false
  pre_tasks:
    - name: Log in with the rotated key where it already works
      ansible.builtin.include_role:
        name: zeroinit.bootstrap.key_rotation
        tasks_from: connect
  roles:
    - role: zeroinit.bootstrap.key_rotation
"""


def role_result(res, host: str) -> dict:
    found = [
        t["hosts"][host]
        for t in res.tasks()
        if t["task"]["name"].endswith("Install the new key, prove a fresh login with it, then revoke the old keys")
        and host in t["hosts"]
    ]
    assert found, res.stdout[-3000:]
    return found[-1]


def test_symlinked_authorized_keys_is_refused_on_the_host(fleet):
    net = fleet["net"]
    host = net.hosts[0]
    link = host.path("/root/.ssh/authorized_keys")
    real = host.path("/root/.ssh/real_keys")
    os.rename(link, real)
    os.symlink("/root/.ssh/real_keys", link)  # resolved inside the host, where sshd still follows it
    res = run_playbook(
        ROTATE, fleet["inventory"], {"new_key": fleet["new"], "revoke_keys": [fleet["bootstrap_pub"]]}, limit=host.name
    )
    out = res.result("rotate", host.name)
    assert out.get("failed") and "symbolic link" in out["msg"] and host.name in out["msg"]
    assert os.path.islink(link) and pathlib.Path(real).read_text() == fleet["initial"]
    assert net.login(host, fleet["bootstrap"], "hostname").stdout.strip() == host.name


def test_revoking_the_new_key_is_refused_before_any_host_changes(fleet):
    os.makedirs(os.path.dirname(fleet["new"]))
    _path, new_pub = keygen(os.path.dirname(fleet["new"]), os.path.basename(fleet["new"]))
    extra = {"new_key": fleet["new"], "revoke_keys": [fleet["bootstrap_pub"], new_pub]}
    res = run_playbook(ROTATE, fleet["inventory"], extra)
    assert res.rc != 0
    for host in fleet["net"].hosts:
        out = res.result("rotate", host.name)
        assert out.get("failed") and "is the new key" in out["msg"] and "revoke" in out["msg"], out
        assert authorized_keys(host)[0] == fleet["initial"]
