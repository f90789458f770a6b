"""Leader election over real mDNS between network-namespace hosts: one python-zeroconf process per member.

Each member is ``python -m ...module_utils.election.member`` inside its host, started at one wall-clock instant
(``--start-at``) so that "members starting together" really is together. Timeouts are a few seconds.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.support.netns import TestNetwork

pytestmark = pytest.mark.netns

ELECTION = "ansible_collections.zeroinit.bootstrap.plugins.module_utils.election.member"
SECRET = "correct horse battery staple"


@pytest.fixture(scope="module")
def net():
    """Five hosts on one bridge (no sshd): .10 … .14."""
    network = TestNetwork.create("elect", 5, sshd=False)
    try:
        yield network
    finally:
        network.destroy()


class Member:
    """One election process inside a host; always reaped."""

    def __init__(
        self,
        host,
        expect: int,
        start_at: float,
        timeout: float = 4,
        cluster: str = "zeroinit",
        secret: str | None = None,
        election_id: int | None = None,
    ) -> None:
        argv = [
            sys.executable,
            "-m",
            ELECTION,
            "--expect",
            str(expect),
            "--timeout",
            str(timeout),
            "--cluster",
            cluster,
            "--start-at",
            repr(start_at),
            "--verbose",
        ]
        if election_id is not None:
            argv += ["--election-id", str(election_id)]
        env = dict(os.environ)
        env.pop("ZEROINIT_ELECTION_SECRET", None)
        if secret is not None:
            env["ZEROINIT_ELECTION_SECRET"] = secret
        self.host = host
        self.proc = host.popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        self.rc = None
        self.result: dict = {}
        self.stderr = ""

    def wait(self, limit: float = 30) -> dict:
        try:
            out, self.stderr = self.proc.communicate(timeout=limit)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.communicate()
        self.rc = self.proc.returncode
        lines = [line for line in out.splitlines() if line.startswith("{")]
        self.result = json.loads(lines[-1]) if lines else {"failed": True, "msg": f"no output: {self.stderr}"}
        return self.result

    def wait_for_log(self, text: str, limit: float) -> bool:
        """Read the member's log until a line contains ``text`` (bounded: the member's own timeout ends it)."""
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            line = self.proc.stderr.readline()
            if not line:
                return False
            if text in line:
                return True
        return False

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)


def run_all(members: list[Member]) -> list[dict]:
    try:
        return [m.wait() for m in members]
    finally:
        for m in members:
            m.kill()
            m.proc.wait()


def soon(seconds: float = 1.5) -> float:
    """A start instant far enough ahead for every process to be imported and waiting."""
    return time.time() + seconds


def assert_one_agreed_leader(results: list[dict], leader: str, members: list[str]) -> None:
    assert all(not r.get("failed") for r in results), results
    assert {r["leader"] for r in results} == {leader}
    assert [r["address"] for r in results if r["is_leader"]] == [leader]
    assert all(r["members"] == members for r in results), results


def test_three_hosts_elect_the_lowest_address(net):
    hosts = net.hosts[:3]
    start = soon()
    results = run_all([Member(h, 3, start) for h in hosts])
    assert_one_agreed_leader(results, hosts[0].address, [h.address for h in hosts])
    assert all(r["leader_id"] == hosts[0].int_id for r in results)
    assert [r["election_id"] for r in results] == [h.int_id for h in hosts]


def test_a_late_member_completes_the_election(net):
    """Two members wait; the third starts later and learns about them from its queries."""
    hosts = net.hosts[1:4]
    early = [Member(h, 3, soon(), timeout=8) for h in hosts[1:]]
    time.sleep(2.0)
    late = Member(hosts[0], 3, soon(0.5), timeout=8)
    results = run_all([*early, late])
    assert_one_agreed_leader(results, hosts[0].address, [h.address for h in hosts])


def test_explicit_ids_choose_the_leader_not_addresses(net):
    hosts = net.hosts[:3]
    start = soon()
    ids = [30, 20, 10]
    results = run_all([Member(h, 3, start, election_id=i) for h, i in zip(hosts, ids)])
    assert_one_agreed_leader(results, hosts[2].address, [h.address for h in hosts])
    assert all(r["leader_id"] == 10 for r in results)


@pytest.mark.parametrize("stranger_secret", ["not the secret", None], ids=["wrong_secret", "unsigned"])
def test_a_stranger_with_a_lower_address_cannot_win(net, stranger_secret):
    """.10 (the lowest address) announces without the right secret: the members ignore it and .11 leads."""
    legit = net.hosts[1:4]
    start = soon()
    members = [Member(h, 3, start, secret=SECRET) for h in legit]
    stranger = Member(net.hosts[0], 3, start, secret=stranger_secret, timeout=3)
    results = run_all([*members, stranger])
    assert_one_agreed_leader(results[:3], legit[0].address, [h.address for h in legit])
    assert all(net.hosts[0].address not in r["members"] for r in results[:3])
    # The stranger gets no result either: with a wrong secret it is alone; unsigned, it sees the members but
    # none of them accepts it (too many members, or they follow .11).
    assert results[3]["failed"]
    if stranger_secret:
        assert "saw 1 of 3" in results[3]["msg"]


def test_timeout_names_the_announcements_it_ignored(net):
    """Operators see why a member did not count: here a wrong secret (a clock far off would say so too)."""
    legit = net.hosts[1:3]
    start = soon()
    results = run_all(
        [Member(h, 3, start, secret=SECRET, timeout=2) for h in legit]
        + [Member(net.hosts[0], 3, start, secret="not the secret", timeout=2)]
    )
    for result in results[:2]:
        assert result["failed"] and "saw 2 of 3 expected members" in result["msg"]
        assert f"ignored announcements: {net.hosts[0].address} (bad signature)" in result["msg"]


def test_two_clusters_on_one_bridge_each_get_their_leader(net):
    red = [net.hosts[0], net.hosts[2], net.hosts[4]]
    blue = [net.hosts[1], net.hosts[3]]
    start = soon()
    members = [Member(h, 3, start, cluster="red") for h in red] + [Member(h, 2, start, cluster="blue") for h in blue]
    results = run_all(members)
    assert_one_agreed_leader(results[:3], red[0].address, [h.address for h in red])
    assert_one_agreed_leader(results[3:], blue[0].address, [h.address for h in blue])
    assert {r["cluster"] for r in results[:3]} == {"red"} and {r["cluster"] for r in results[3:]} == {"blue"}


def test_duplicate_ids_fail_naming_both_addresses(net):
    hosts = net.hosts[:2]
    start = soon()
    results = run_all([Member(h, 2, start, election_id=7) for h in hosts])
    for result in results:
        assert result["failed"], result
        assert "duplicate election ID 7" in result["msg"]
        assert hosts[0].address in result["msg"] and hosts[1].address in result["msg"]


def test_more_members_than_expected_fails_naming_them(net):
    hosts = net.hosts[:3]
    start = soon()
    results = run_all([Member(h, 2, start) for h in hosts])
    for result in results:
        assert result["failed"], result
        assert "more members than expected: 3 seen, 2 expected" in result["msg"]
        assert all(h.address in result["msg"] for h in hosts)


def test_a_single_member_leads_itself(net):
    result = run_all([Member(net.hosts[2], 1, soon(), cluster="solo")])[0]
    assert_one_agreed_leader([result], net.hosts[2].address, [net.hosts[2].address])


def test_members_expecting_different_counts_fail_naming_them(net):
    hosts = net.hosts[:2]
    start = soon()
    results = run_all([Member(hosts[0], 2, start), Member(hosts[1], 3, start)])
    for result in results:
        assert result["failed"], result
        assert "expect a different number of members" in result["msg"]
    assert f"{hosts[1].address} expects 3" in results[0]["msg"]
    assert f"{hosts[0].address} expects 2" in results[1]["msg"]


def test_too_few_members_time_out_naming_who_was_seen(net):
    hosts = net.hosts[:2]
    start = soon()
    results = run_all([Member(h, 3, start, timeout=2) for h in hosts])
    for result in results:
        assert result["failed"], result
        assert "timed out after 2s" in result["msg"] and "of 3 expected members" in result["msg"]
        assert hosts[0].address in result["msg"] and hosts[1].address in result["msg"]


@pytest.mark.parametrize("kill_after", [0.0, 0.1, 0.2, 0.3])
def test_member_killed_mid_election_never_gives_two_leaders(net, kill_after):
    """.11 is killed (no goodbye) this long after it announced itself: a clear timeout or one agreed leader."""
    hosts = net.hosts[:3]
    victim_host = hosts[1]
    start = soon(2.5)  # the kill is timed from the victim's announcement: all members must be up by then
    members = [Member(h, 3, start, timeout=3) for h in hosts]
    victim = members[1]
    assert victim.wait_for_log(f"announced {victim_host.address} as candidate", 10)
    time.sleep(kill_after)
    victim.kill()
    results = run_all(members)
    survivors = [r for i, r in enumerate(results) if i != 1]
    winners = [r for r in survivors if not r.get("failed")]
    assert len({r["leader"] for r in winners}) <= 1, winners
    assert len([r for r in winners if r["is_leader"]]) <= 1, winners
    for result in survivors:
        if result.get("failed"):
            # Its own timeout, or (the leader) a member that timed out first and left without accepting it.
            assert "timed out" in result["msg"] or "gave up (withdrew as a candidate" in result["msg"], result
        else:
            assert result["leader"] == hosts[0].address
    leader_result = results[0]
    if leader_result.get("failed") and "this host leads" in leader_result["msg"]:
        # The leader names the member that never withdrew.
        assert victim_host.address in leader_result["msg"]
