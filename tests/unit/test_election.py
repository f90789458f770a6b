"""Pure parts of the leader election: decide, signatures, TXT encoding, the member's bookkeeping of announcements."""

from __future__ import annotations

import dataclasses
import time

import pytest

from ansible_collections.zeroinit.bootstrap.plugins.module_utils import election as el
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.election import (
    CANDIDATE,
    FOLLOWER,
    LEADER,
    Announcement,
    DuplicateElectionId,
    InvalidAnnouncement,
    LeaderElection,
    TooManyMembers,
    decide,
    decode_txt,
    encode_txt,
    instance_name,
    parse_route_table,
    sign,
    sort_addresses,
    txt_from_wire,
    txt_to_wire,
    verify,
)

SECRET = "s3cret"


def ann(address: str, election_id: int | None = None, **kw) -> Announcement:
    kw.setdefault("timestamp", int(time.time() * 1000))
    return Announcement("prod", el.address_key(address) if election_id is None else election_id, address, **kw)


# ----------------------------------------------------------------------------------------------- decide
def test_decide_waits_until_expected_count():
    decision = decide([ann("10.0.0.11"), ann("10.0.0.10")], 3)
    assert not decision.complete and decision.leader is None
    assert decision.members == ("10.0.0.10", "10.0.0.11")


def test_decide_lowest_id_leads_and_members_sort_numerically():
    members = [ann("10.0.0.10"), ann("10.0.0.9"), ann("10.0.0.100")]
    decision = decide(members, 3)
    assert decision.complete
    assert decision.leader.address == "10.0.0.9"
    assert decision.members == ("10.0.0.9", "10.0.0.10", "10.0.0.100")


def test_decide_explicit_ids_beat_addresses():
    decision = decide([ann("10.0.0.1", 50), ann("10.0.0.2", 5), ann("10.0.0.3", 7)], 3)
    assert decision.leader.address == "10.0.0.2"


def test_decide_duplicate_ids_name_both_addresses():
    with pytest.raises(DuplicateElectionId, match=r"duplicate election ID 4: announced by 10.0.0.1 and by 10.0.0.2"):
        decide([ann("10.0.0.2", 4), ann("10.0.0.1", 4)], 2)


def test_decide_too_many_names_them():
    with pytest.raises(TooManyMembers) as info:
        decide([ann("10.0.0.%d" % i) for i in (1, 2, 3)], 2)
    assert "3 seen, 2 expected" in str(info.value)
    assert all("10.0.0.%d" % i in str(info.value) for i in (1, 2, 3))


def test_decide_refuses_members_expecting_another_count():
    with pytest.raises(el.MismatchedExpect, match="this host expects 2, 10.0.0.2 expects 3"):
        decide([ann("10.0.0.1", expect=2), ann("10.0.0.2", expect=3)], 2)
    assert decide([ann("10.0.0.1", expect=2), ann("10.0.0.2")], 2).complete  # not said: not judged


def test_decide_counts_an_address_once():
    decision = decide([ann("10.0.0.1"), ann("10.0.0.1"), ann("10.0.0.2")], 2)
    assert decision.complete and decision.members == ("10.0.0.1", "10.0.0.2")


def test_sort_addresses_numeric_and_unique():
    assert sort_addresses(["10.0.0.10", "10.0.0.9", "10.0.0.10"]) == ["10.0.0.9", "10.0.0.10"]


# ----------------------------------------------------------------------------------------------- signatures, TXT
def test_sign_and_verify_cover_every_field():
    props = encode_txt(ann("10.0.0.1", state=LEADER, leader="10.0.0.1", members=("10.0.0.1", "10.0.0.2")), SECRET)
    assert verify(props, SECRET)
    assert not verify(props, "other secret")
    for key in [k for k in props if k != "h"]:
        tampered = dict(props, **{key: props[key] + "0"})
        assert not verify(tampered, SECRET), key
    assert not verify({k: v for k, v in props.items() if k != "h"}, SECRET)


def test_signature_is_over_canonical_sorted_content():
    props = {"b": "2", "a": "1"}
    assert el.canonical(props) == b"a=1\nb=2"
    assert sign(props, SECRET) == sign(dict(reversed(list(props.items()))), SECRET)


def test_encode_decode_round_trip_with_secret():
    original = ann(
        "10.1.2.3",
        state=FOLLOWER,
        leader="10.1.2.1",
        members=("10.1.2.1", "10.1.2.3"),
        sequence=4,
        nonce="abcd",
        expect=2,
    )
    decoded = decode_txt(encode_txt(original, SECRET), "prod", SECRET)
    assert decoded == original


def test_long_member_lists_split_under_txt_limit():
    members = tuple("10.0.%d.%d" % (i // 200, 100 + i % 100) for i in range(40))
    props = encode_txt(ann("10.0.0.100", state=LEADER, leader="10.0.0.100", members=members))
    assert all(len("{}={}".format(*item)) <= 255 for item in props.items())
    assert len([k for k in props if k.startswith("m")]) > 1
    assert decode_txt(txt_from_wire(txt_to_wire(props)), "prod").members == members


def test_txt_wire_round_trip_and_first_key_wins():
    props = {"a": "10.0.0.1", "v": "1", "empty": ""}
    assert txt_from_wire(txt_to_wire(props)) == props
    assert txt_from_wire(b"\x03a=1\x03a=2\x04flag") == {"a": "1", "flag": ""}
    with pytest.raises(InvalidAnnouncement):
        txt_from_wire(b"\x09a=1")


@pytest.mark.parametrize(
    "change, secret, reason",
    [
        ({"c": "staging"}, None, "cluster"),
        ({"v": "2"}, None, "protocol version"),
        ({"s": "king"}, None, "unknown state"),
        ({"a": "not-an-address"}, None, "malformed"),
        ({"s": LEADER}, None, "without leader or members"),
    ],
)
def test_decode_refuses_foreign_or_malformed(change, secret, reason):
    props = dict(encode_txt(ann("10.0.0.1")), **change)
    with pytest.raises(InvalidAnnouncement, match=reason):
        decode_txt(props, "prod", secret)


def test_decode_with_secret_refuses_unsigned_wrongly_signed_and_stale():
    fresh = ann("10.0.0.1")
    with pytest.raises(InvalidAnnouncement, match="unsigned"):
        decode_txt(encode_txt(fresh), "prod", SECRET)
    with pytest.raises(InvalidAnnouncement, match="bad signature"):
        decode_txt(encode_txt(fresh, "guess"), "prod", SECRET)
    stale = dataclasses.replace(fresh, timestamp=fresh.timestamp - el.MAX_CLOCK_SKEW_MS - 1000)
    with pytest.raises(InvalidAnnouncement, match="timestamp"):
        decode_txt(encode_txt(stale, SECRET), "prod", SECRET)
    assert decode_txt(encode_txt(fresh, SECRET), "prod", SECRET).address == "10.0.0.1"


def test_instance_name_is_one_label_per_cluster_and_address():
    name = instance_name("prod", "10.0.0.1")
    assert name == "prod-10-0-0-1._zeroinit-elect._udp.local."
    assert instance_name("staging", "10.0.0.1") != name


@pytest.mark.parametrize("cluster", ["", "-x", "a b", "x" * 41, "ünï"])
def test_bad_cluster_names_are_refused(cluster):
    with pytest.raises(ValueError, match="cluster"):
        el.validate_cluster(cluster)


ROUTES = """Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT
wlan0\t00000000\t0101A8C0\t0003\t0\t0\t600\t00000000\t0\t0\t0
eth0\t00000000\t0100000A\t0003\t0\t0\t100\t00000000\t0\t0\t0
eth0\t0000000A\t00000000\t0001\t0\t0\t100\t00FFFFFF\t0\t0\t0
"""


def test_default_interface_is_lowest_metric_default_route():
    assert parse_route_table(ROUTES) == "eth0"
    assert parse_route_table(ROUTES.splitlines()[0] + "\n" + ROUTES.splitlines()[3]) is None


def test_default_interface_address_of_loopback():
    assert el.interface_address("lo") == "127.0.0.1"
    with pytest.raises(el.ElectionError, match="no-such-if0"):
        el.interface_address("no-such-if0")


# ----------------------------------------------------------------------------------------------- bookkeeping
def member(address="10.0.0.2", expect=3, secret=None, **kw) -> LeaderElection:
    return LeaderElection(address, expect, "prod", timeout=5, secret=secret, **kw)


def feed(election: LeaderElection, announcement: Announcement, goodbye=False, secret=None, name=None):
    props = encode_txt(announcement, secret)
    election.on_txt(name or instance_name("prod", announcement.address), txt_to_wire(props), goodbye)


def test_member_ignores_other_clusters_and_unsigned_with_secret():
    election = member(secret=SECRET)
    feed(election, dataclasses.replace(ann("10.0.0.1"), cluster="staging"))
    feed(election, ann("10.0.0.1"))  # unsigned
    feed(election, ann("10.0.0.3"), secret="wrong")
    feed(election, ann("10.0.0.4"), secret=SECRET)
    assert [a.address for a in election.view()] == ["10.0.0.2", "10.0.0.4"]
    assert election._ignored == {"10.0.0.1": "unsigned", "10.0.0.3": "bad signature"}


def test_member_keeps_the_newest_announcement_of_each_peer():
    election = member()
    old = ann("10.0.0.1", sequence=1)
    new = dataclasses.replace(old, state=LEADER, leader="10.0.0.1", members=("10.0.0.1", "10.0.0.2"), sequence=2)
    feed(election, new)
    feed(election, old)  # a late repeat of the earlier candidate announcement
    assert election._peers["10.0.0.1"].announcement.state == LEADER


def test_withdrawn_followers_stay_in_the_view_withdrawn_candidates_do_not():
    election = member()
    feed(
        election,
        ann("10.0.0.3", state=FOLLOWER, leader="10.0.0.1", members=("10.0.0.1", "10.0.0.2", "10.0.0.3")),
        goodbye=True,
    )
    feed(election, ann("10.0.0.4"), goodbye=True)
    assert [a.address for a in election.view()] == ["10.0.0.2", "10.0.0.3"]


def test_ptr_goodbye_withdraws_the_named_member():
    election = member()
    feed(election, ann("10.0.0.1"))
    election.on_withdrawn(instance_name("prod", "10.0.0.1").upper())
    assert election._peers["10.0.0.1"].withdrawn


def test_someone_else_with_this_address_is_a_conflict():
    election = member()
    feed(election, dataclasses.replace(election.me, nonce="f00d"), name=election.name)
    assert "another member announces this host's address 10.0.0.2" in election._conflict
    quiet = member()
    feed(quiet, quiet.me, name=quiet.name)  # our own packet looped back
    assert quiet._conflict is None


def test_with_a_secret_only_a_signed_announcement_of_this_address_is_a_conflict():
    election = member(secret=SECRET)
    feed(election, dataclasses.replace(election.me, nonce="f00d"), name=election.name)  # a stranger, unsigned
    feed(election, dataclasses.replace(election.me, nonce="f00e"), name=election.name, secret="wrong")
    assert election._conflict is None
    feed(election, dataclasses.replace(election.me, nonce="f00f"), name=election.name, secret=SECRET)
    assert "another member announces" in election._conflict


def test_ignored_announcements_kept_for_the_message_are_bounded():
    election = member(secret=SECRET)
    for index in range(100):
        feed(election, ann("10.0.1.%d" % index))
    assert len(election._ignored) == el.MAX_IGNORED_REPORTED


def test_service_name_must_match_the_signed_address():
    election = member()
    feed(election, ann("10.0.0.1"), name=instance_name("prod", "10.0.0.9"))
    assert "10.0.0.1" not in election._peers and "does not match" in election._ignored["10.0.0.1"]


def test_leader_waits_for_every_member_to_withdraw_as_its_follower():
    election = member(address="10.0.0.1")
    members = ("10.0.0.1", "10.0.0.2", "10.0.0.3")
    election.me = election._announce(LEADER, "10.0.0.1", members)
    feed(election, ann("10.0.0.2", state=FOLLOWER, leader="10.0.0.1", members=members))
    feed(election, ann("10.0.0.3"))
    pending = election._unconfirmed()
    assert pending == {"10.0.0.2": "accepted but has not withdrawn", "10.0.0.3": "still announcing as candidate"}
    feed(election, ann("10.0.0.2", state=FOLLOWER, leader="10.0.0.1", members=members, sequence=9), goodbye=True)
    # A PTR goodbye alone: this member may have missed its last update, so it waits (and the timeout says so).
    election.on_withdrawn(instance_name("prod", "10.0.0.3"))
    assert election._unconfirmed() == {"10.0.0.3": "withdrew without accepting this leader"}
    assert "10.0.0.3 withdrew without accepting" in election._timeout_message()
    # The TXT goodbye says for certain that it left as a candidate: the leader gives up at once.
    feed(election, ann("10.0.0.3", state=CANDIDATE, sequence=9), goodbye=True)
    assert election._unconfirmed()["10.0.0.3"].startswith("gave up")


def test_member_rejects_bad_arguments():
    with pytest.raises(ValueError, match="expect"):
        member(expect=0)
    with pytest.raises(ValueError, match="cluster"):
        LeaderElection("10.0.0.1", 2, "bad cluster")
