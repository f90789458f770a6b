"""The leader_election role over SSH on three network-namespace hosts (each its own sshd), real mDNS between them."""

from __future__ import annotations

import json
import subprocess

import pytest

from tests.support.ansible_run import run_playbook
from tests.support.netns import TestNetwork

pytestmark = pytest.mark.netns
ROLE = "zeroinit.bootstrap.leader_election : "

PLAY = """
- name: Elect the leader among the masters
  hosts: masters
  gather_facts: false
  roles:
    - role: zeroinit.bootstrap.leader_election
      vars:
        leader_election_cluster: roletest
        leader_election_timeout: 10
        leader_election_secret: role test secret

- name: Act on the leader only
  hosts: zeroinit_leader
  gather_facts: false
  tasks:
    - name: Leader play
      ansible.builtin.debug:
        msg: "{{ inventory_hostname }} leads {{ zeroinit_members | join(',') }}"
"""


@pytest.fixture(scope="module")
def masters(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("election-role")
    key = tmp / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "election-test", "-f", str(key)], check=True)
    net = TestNetwork.create("electrole", 3, sshd=True, authorized_keys=(tmp / "id_ed25519.pub").read_text())
    try:
        inventory = tmp / "inventory.json"
        inventory.write_text(json.dumps({"masters": {"hosts": net.ansible_hosts(key)}}))
        yield net, str(inventory)
    finally:
        net.destroy()


@pytest.mark.parametrize("check", [False, True], ids=["run", "check_mode"])
def test_role_elects_lowest_address_and_all_hosts_agree(masters, check):
    net, inventory = masters
    res = run_playbook(PLAY, inventory=inventory, check=check)
    assert res.rc == 0, res.stdout[-3000:] + res.stderr[-3000:]
    leader = net.hosts[0]
    members = [h.address for h in net.hosts]
    for host in net.hosts:
        facts = res.result(ROLE + "Publish the election result as facts", host.name)["ansible_facts"]
        assert facts["zeroinit_leader"] == leader.address
        assert facts["zeroinit_members"] == members
        assert facts["zeroinit_is_leader"] is (host is leader)
        named = res.result(ROLE + "Name the leader's inventory host", host.name)["ansible_facts"]
        assert named["zeroinit_leader_host"] == leader.name
        assert res.changed(host.name) == 0
    # Only the leader is in the in-memory group the next play targets.
    ran = res.tasks("Leader play")[0]["hosts"]
    assert list(ran) == [leader.name]
    assert ran[leader.name]["msg"] == "{} leads {}".format(leader.name, ",".join(members))


def test_role_fails_clearly_when_a_master_is_missing(masters):
    net, inventory = masters
    play = PLAY.replace("leader_election_timeout: 10", "leader_election_timeout: 2\n        leader_election_expect: 4")
    res = run_playbook(play, inventory=inventory)
    assert res.rc != 0
    for host in net.hosts:
        result = res.result(ROLE + "Elect a leader over mDNS", host.name)
        assert result.get("failed")
        assert "saw 3 of 4 expected members" in result["msg"]
        assert all(h.address in result["msg"] for h in net.hosts)
    assert res.tasks("Leader play") == [] or not res.tasks("Leader play")[0]["hosts"]


def test_role_refuses_to_start_when_masters_cannot_run_in_parallel(masters):
    net, inventory = masters
    res = run_playbook(PLAY, inventory=inventory, args=["--forks", "2"])
    assert res.rc != 0
    result = res.result(ROLE + "Check that every master can run the election at the same time", net.hosts[0].name)
    assert "set forks to at least 3 (now 2)" in result["msg"]
    assert res.tasks(ROLE + "Elect a leader over mDNS") == []
