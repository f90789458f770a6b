"""The member's bookkeeping of what it hears, and its refusals of bad arguments."""

from __future__ import annotations

import dataclasses

import pytest

from ansible_collections.zeroinit.bootstrap.plugins.module_utils.election.codec import (
    CANDIDATE,
    FOLLOWER,
    LEADER,
    Announcement,
    encode_txt,
    instance_name,
    txt_to_wire,
)
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.election.member import (
    MAX_IGNORED_REPORTED,
    LeaderElection,
)
from tests.support.election import SECRET, ann


def member(address="10.0.0.2", expect=3, secret=None, **kw) -> LeaderElection:
    return LeaderElection(address, expect, "prod", timeout=5, secret=secret, **kw)


def feed(election: LeaderElection, announcement: Announcement, goodbye=False, secret=None, name=None):
    props = encode_txt(announcement, secret)
    election.peers.on_txt(name or instance_name("prod", announcement.address), txt_to_wire(props), goodbye)


def test_member_ignores_other_clusters_and_unsigned_with_secret():
    election = member(secret=SECRET)
    feed(election, dataclasses.replace(ann("10.0.0.1"), cluster="staging"))
    feed(election, ann("10.0.0.1"))  # unsigned
    feed(election, ann("10.0.0.3"), secret="wrong")
    feed(election, ann("10.0.0.4"), secret=SECRET)
    assert [a.address for a in election.peers.view()] == ["10.0.0.2", "10.0.0.4"]
    assert election.peers.ignored == {"10.0.0.1": "unsigned", "10.0.0.3": "bad signature"}


def test_member_keeps_the_newest_announcement_of_each_peer():
    election = member()
    old = ann("10.0.0.1", sequence=1)
    new = dataclasses.replace(old, state=LEADER, leader="10.0.0.1", members=("10.0.0.1", "10.0.0.2"), sequence=2)
    feed(election, new)
    feed(election, old)  # a late repeat of the earlier candidate announcement
    assert election.peers.peers["10.0.0.1"].announcement.state == LEADER


def test_withdrawn_followers_stay_in_the_view_withdrawn_candidates_do_not():
    election = member()
    feed(
        election,
        ann("10.0.0.3", state=FOLLOWER, leader="10.0.0.1", members=("10.0.0.1", "10.0.0.2", "10.0.0.3")),
        goodbye=True,
    )
    feed(election, ann("10.0.0.4"), goodbye=True)
    assert [a.address for a in election.peers.view()] == ["10.0.0.2", "10.0.0.3"]


def test_ptr_goodbye_withdraws_the_named_member():
    election = member()
    feed(election, ann("10.0.0.1"))
    election.peers.on_withdrawn(instance_name("prod", "10.0.0.1").upper())
    assert election.peers.peers["10.0.0.1"].withdrawn


def test_someone_else_with_this_address_is_a_conflict():
    election = member()
    feed(election, dataclasses.replace(election.me, nonce="f00d"), name=election.own.name)
    assert "another member announces this host's address 10.0.0.2" in election.peers.conflict
    quiet = member()
    feed(quiet, quiet.me, name=quiet.own.name)  # our own packet looped back
    assert quiet.peers.conflict is None


def test_with_a_secret_only_a_signed_announcement_of_this_address_is_a_conflict():
    election = member(secret=SECRET)
    feed(election, dataclasses.replace(election.me, nonce="f00d"), name=election.own.name)  # a stranger, unsigned
    feed(election, dataclasses.replace(election.me, nonce="f00e"), name=election.own.name, secret="wrong")
    assert election.peers.conflict is None
    feed(election, dataclasses.replace(election.me, nonce="f00f"), name=election.own.name, secret=SECRET)
    assert "another member announces" in election.peers.conflict


def test_ignored_announcements_kept_for_the_message_are_bounded():
    election = member(secret=SECRET)
    for index in range(100):
        feed(election, ann(f"10.0.1.{index}"))
    assert len(election.peers.ignored) == MAX_IGNORED_REPORTED


def test_service_name_must_match_the_signed_address():
    election = member()
    feed(election, ann("10.0.0.1"), name=instance_name("prod", "10.0.0.9"))
    assert "10.0.0.1" not in election.peers.peers and "does not match" in election.peers.ignored["10.0.0.1"]


def test_leader_waits_for_every_member_to_withdraw_as_its_follower():
    election = member(address="10.0.0.1")
    members = ("10.0.0.1", "10.0.0.2", "10.0.0.3")
    election.own.announce(LEADER, "10.0.0.1", members)
    feed(election, ann("10.0.0.2", state=FOLLOWER, leader="10.0.0.1", members=members))
    feed(election, ann("10.0.0.3"))
    pending = election.peers.unconfirmed()
    assert pending == {"10.0.0.2": "accepted but has not withdrawn", "10.0.0.3": "still announcing as candidate"}
    feed(election, ann("10.0.0.2", state=FOLLOWER, leader="10.0.0.1", members=members, sequence=9), goodbye=True)
    # A PTR goodbye alone: this member may have missed its last update, so it waits (and the timeout says so).
    election.peers.on_withdrawn(instance_name("prod", "10.0.0.3"))
    assert election.peers.unconfirmed() == {"10.0.0.3": "withdrew without accepting this leader"}
    assert "10.0.0.3 withdrew without accepting" in election._timeout_message()
    # The TXT goodbye says for certain that it left as a candidate: the leader gives up at once.
    feed(election, ann("10.0.0.3", state=CANDIDATE, sequence=9), goodbye=True)
    assert election.peers.unconfirmed()["10.0.0.3"].startswith("gave up")


def test_member_rejects_bad_arguments():
    with pytest.raises(ValueError, match="expect"):
        member(expect=0)
    with pytest.raises(ValueError, match="cluster"):
        LeaderElection("10.0.0.1", 2, "bad cluster")
