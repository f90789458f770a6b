"""playbooks/first_boot.yaml run by each master on itself, as its first-boot hook would: network-namespace masters
with their own sshd trusting a bootstrap key, real mDNS between them, no controller.

Every run here starts the entry point inside the hosts (``nsenter``) with a local connection, all at once.
"""

from __future__ import annotations

import json
import os
import pathlib
import stat
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.support.ansible_run import PlayResult, run_playbook
from tests.support.netns import TestNetwork

pytestmark = pytest.mark.netns

ENTRY_POINT = "zeroinit.bootstrap.first_boot"
ROLE = "zeroinit.bootstrap.first_boot : "
ELECT = ROLE + "Elect the leader among the masters over mDNS"
ROTATE = "zeroinit.bootstrap.key_rotation : Install the new key, prove a fresh login with it, then revoke the old keys"
NEW_KEY = "/root/.ssh/zeroinit_fleet_ed25519"
RECORD = "/var/lib/zeroinit/first_boot.json"
MARKER = "/srv/next_marker"
SECRET = "first boot test secret"

# The next playbook: refuses to run until told it is fixed; then the collection's own bootstrap.yaml against the
# written inventory (it must find the new key and change nothing), and a mark on every member with what it was given.
NEXT_PLAYBOOK = """
- name: Refuse until fixed
  hosts: localhost
  gather_facts: false
  tasks:
    - name: Refuse until fixed
      ansible.builtin.assert:
        that: fixed | bool
        fail_msg: next playbook refuses to run, not fixed yet

- name: The masters as a controller would bootstrap them
  ansible.builtin.import_playbook: zeroinit.bootstrap.bootstrap

- name: Mark every member
  hosts: masters
  gather_facts: false
  tasks:
    - name: Mark the member
      ansible.builtin.copy:
        dest: /srv/next_marker
        content: "{{ marker }} {{ zeroinit_leader }} {{ zeroinit_members | join(',') }}\\n"
        mode: "0644"
"""


def boot(hosts, extra_vars: dict, check: bool = False) -> dict[str, PlayResult]:
    """Start the entry point on every host at the same moment and wait for all; results by host name."""
    with ThreadPoolExecutor(len(hosts)) as pool:
        futures = {
            host.name: pool.submit(
                run_playbook,
                ENTRY_POINT,
                inventory="localhost,",
                extra_vars=extra_vars,
                check=check,
                args=["--connection", "local"],
                wrap=host.nsenter([]),
                timeout=300,
            )
            for host in hosts
        }
        return {name: future.result() for name, future in futures.items()}


def read_record(host) -> dict:
    path = host.path(RECORD)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    with open(path) as handle:
        return json.load(handle)


def output(res: PlayResult) -> str:
    return res.stdout[-4000:] + res.stderr[-2000:]


@pytest.fixture
def masters(tmp_path):
    """Three masters booted from one image: sshd trusting the bootstrap key, its key pair in /etc/zeroinit."""
    bootstrap = tmp_path / "bootstrap_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "bootstrap", "-f", str(bootstrap)], check=True)
    net = TestNetwork.create("fboot", 3, authorized_keys=bootstrap.with_suffix(".pub").read_text())
    try:
        for host in net.hosts:
            for name in ("bootstrap_ed25519", "bootstrap_ed25519.pub"):
                host.run(["install", "-D", "-m", "0600", str(tmp_path / name), f"/etc/zeroinit/{name}"])
        next_playbook = tmp_path / "next.yml"
        next_playbook.write_text(NEXT_PLAYBOOK)
        yield net, bootstrap, next_playbook
    finally:
        net.destroy()


def test_leader_stops_before_next_playbook_until_every_member_rotated_then_resumes(masters):
    net, bootstrap, next_playbook = masters
    leader, second, third = sorted(net.hosts, key=lambda h: h.int_id)
    addresses = [h.address for h in (leader, second, third)]
    settings = {
        "first_boot_expect": 3,
        "first_boot_cluster": "fbtest",
        "first_boot_secret": SECRET,
        "first_boot_timeout": 60,
        "first_boot_ssh_wait": 3,
        "first_boot_next_playbook": str(next_playbook),
        "first_boot_next_vars": {"fixed": False, "marker": "first"},
    }

    # 1. The third master's sshd is not up yet: the leader must not run the next playbook, and nobody is locked out.
    third.stop_sshd()
    first = boot(net.hosts, settings)
    for host in (second, third):
        assert first[host.name].rc == 0, output(first[host.name])
        assert first[host.name].result(ELECT)["leader"] == leader.address
        record = read_record(host)
        assert (record["cluster"], record["leader"], record["members"]) == ("fbtest", leader.address, addresses)
        assert (record["address"], record["is_leader"], record["status"]) == (host.address, False, "follower")
        assert not os.path.exists(host.path(NEW_KEY))
    assert all(SECRET not in res.stdout + res.stderr for res in first.values()), "the election secret was logged"
    assert first[leader.name].rc != 0
    waited = first[leader.name].result("Wait for the member's sshd", third.address)
    assert waited.get("failed") and "timed out" in waited["msg"]
    assert read_record(leader)["status"] == "elected"
    assert first[leader.name].tasks(ROLE + "Run the next playbook") == []
    assert all(not os.path.exists(h.path(MARKER)) for h in net.hosts)
    net.start_sshd(third)
    for host in net.hosts:
        assert net.login(host, bootstrap).returncode == 0, f"bootstrap key no longer logs in to {host.name}"

    # Check mode on the leader previews the rotation it would resume, and writes nothing anywhere.
    recorded = read_record(leader)
    checked = boot([leader], settings, check=True)[leader.name]
    assert checked.rc == 0, output(checked)
    for host in net.hosts:
        preview = checked.result(ROTATE, host.address)
        assert preview["changed"] and preview["generated"] and preview["added"], preview
        assert net.login(host, bootstrap).returncode == 0
    assert checked.result(ROLE + "Say what check mode would run")["msg"].startswith(f"would run {next_playbook}")
    assert not os.path.exists(leader.path(NEW_KEY))
    assert read_record(leader) == recorded and recorded["status"] == "elected"
    assert "inventory.yml" not in os.listdir(leader.path("/var/lib/zeroinit"))

    # 2. Run again on the leader alone: no election; every member rotated; the next playbook's failure is its own.
    second_run = boot([leader], settings)[leader.name]
    assert second_run.rc != 0
    assert second_run.result(ELECT).get("skipped")
    for host in net.hosts:
        assert second_run.result(ROTATE, host.address)["verified"] is True
        assert net.login(host, bootstrap).returncode == 255, f"bootstrap key still logs in to {host.name}"
        assert net.login(host, leader.path(NEW_KEY), "hostname").stdout.strip() == host.name
    failed = second_run.result(ROLE + "Fail with the next playbook's error")
    assert "next playbook refuses to run, not fixed yet" in failed["msg"]
    assert str(next_playbook) in failed["msg"]
    assert read_record(leader)["status"] == "elected"
    assert not os.path.exists(leader.path("/var/lib/zeroinit/next_vars.json"))
    # accept-new: the members' host keys were learnt at the first login and are pinned.
    with open(leader.path("/var/lib/zeroinit/known_hosts")) as handle:
        assert len(handle.read().splitlines()) == 3

    # 3. Fixed: the rotation changes nothing, the next playbook runs with its variables (bootstrap.yaml inside it
    # logs in with the new key and changes no authorized_keys), the record says done.
    rotated = {host.name: pathlib.Path(host.path("/root/.ssh/authorized_keys")).read_text() for host in net.hosts}
    settings["first_boot_next_vars"] = {"fixed": True, "marker": "fixed"}
    third_run = boot([leader], settings)[leader.name]
    assert third_run.rc == 0, output(third_run)
    for host in net.hosts:
        assert third_run.result(ROTATE, host.address)["changed"] is False
        assert pathlib.Path(host.path("/root/.ssh/authorized_keys")).read_text() == rotated[host.name]
        with open(host.path(MARKER)) as handle:
            assert handle.read() == "fixed {} {}\n".format(leader.address, ",".join(addresses))
        assert not os.path.exists(host.path(NEW_KEY)) or host is leader
    assert stat.S_IMODE(os.stat(leader.path(NEW_KEY)).st_mode) == 0o600
    done = read_record(leader)
    assert done["status"] == "done" and done["next_playbook"] == str(next_playbook) and done["leader"] == leader.address
    with open(leader.path("/var/lib/zeroinit/inventory.yml")) as handle:
        inventory = handle.read()
    assert all(address in inventory for address in addresses) and NEW_KEY in inventory

    # 4. The leader and a follower again: nothing changes, nobody elects, the next playbook does not run again.
    last = boot([leader, third], settings)
    for host in (leader, third):
        res = last[host.name]
        assert res.rc == 0, output(res)
        assert res.result(ELECT).get("skipped")
        assert {name: stats["changed"] for name, stats in res.stats.items()} == dict.fromkeys(res.stats, 0)
    assert last[leader.name].tasks(ROLE + "Run the next playbook") == []


@pytest.fixture(scope="module")
def lone_master():
    """One master with no sshd: enough for what is decided before any election or login."""
    net = TestNetwork.create("fbsolo", 1, sshd=False)
    try:
        yield net.hosts[0]
    finally:
        net.destroy()


@pytest.fixture
def blank(lone_master):
    state = lone_master.path("/var/lib/zeroinit")
    for name in os.listdir(state):
        os.unlink(os.path.join(state, name))
    return lone_master


def test_master_of_one_cluster_refuses_an_election_of_another(blank):
    record = {
        "version": 1,
        "cluster": "alpha",
        "address": blank.address,
        "leader": "10.0.0.1",
        "members": ["10.0.0.1", blank.address],
        "is_leader": False,
        "status": "follower",
    }
    with open(blank.path(RECORD), "w") as handle:
        json.dump(record, handle)
    os.chmod(blank.path(RECORD), 0o600)
    before = time.monotonic()
    res = boot([blank], {"first_boot_expect": 2, "first_boot_cluster": "beta", "first_boot_timeout": 60})[blank.name]
    assert res.rc != 0
    refused = res.result(ROLE + "Refuse an election of another cluster")
    assert refused.get("failed")
    assert f'this master ({blank.address}) already belongs to cluster "alpha"' in refused["msg"]
    assert 'refuses to join an election of cluster "beta"' in refused["msg"]
    assert res.tasks(ELECT) == []
    assert time.monotonic() - before < 30, "the refusal waited for an election"
    with open(blank.path(RECORD)) as handle:
        assert json.load(handle) == record


def test_check_mode_announces_nothing_and_writes_nothing(blank):
    res = boot([blank], {"first_boot_expect": 2, "first_boot_cluster": "checked", "first_boot_timeout": 60}, check=True)
    res = res[blank.name]
    assert res.rc == 0, output(res)
    assert res.result(ELECT).get("skipped")
    said = res.result(ROLE + "Say what check mode would do on a master that has not been elected")["msg"]
    assert said.startswith("would join the election of cluster checked for 2 masters")
    assert os.listdir(blank.path("/var/lib/zeroinit")) == []
    assert not os.path.exists(blank.path(NEW_KEY))


@pytest.mark.parametrize(
    ("bad", "named"),
    [
        ({"first_boot_expect": 0}, "first_boot_expect must be at least 1 (got 0)"),
        (
            {"first_boot_cluster": "no spaces allowed"},
            "first_boot_cluster must be 1-40 letters, digits, - or _, "
            'starting with a letter or digit (got "no spaces allowed")',
        ),
    ],
    ids=["expect", "cluster"],
)
def test_bad_input_fails_naming_the_variable_before_anything_happens(blank, bad, named):
    res = boot([blank], dict({"first_boot_expect": 2, "first_boot_timeout": 60}, **bad))[blank.name]
    assert res.rc != 0
    assert res.result(ROLE + "Check the entry point's inputs")["msg"] == named
    assert res.tasks(ELECT) == []
    assert os.listdir(blank.path("/var/lib/zeroinit")) == []
