"""Announcements on the wire: TXT encoding, signatures, freshness, names."""

from __future__ import annotations

import dataclasses

import pytest

from ansible_collections.zeroinit.bootstrap.plugins.module_utils.election.codec import (
    FOLLOWER,
    LEADER,
    MAX_CLOCK_SKEW_MS,
    InvalidAnnouncement,
    canonical,
    decode_txt,
    encode_txt,
    instance_name,
    sign_announcement,
    txt_from_wire,
    txt_to_wire,
    validate_cluster,
    verify_announcement,
)
from tests.support.election import SECRET, ann


def test_sign_and_verify_cover_every_field():
    props = encode_txt(ann("10.0.0.1", state=LEADER, leader="10.0.0.1", members=("10.0.0.1", "10.0.0.2")), SECRET)
    assert verify_announcement(props, SECRET)
    assert not verify_announcement(props, "other secret")
    for key in [k for k in props if k != "h"]:
        tampered = dict(props, **{key: props[key] + "0"})
        assert not verify_announcement(tampered, SECRET), key
    assert not verify_announcement({k: v for k, v in props.items() if k != "h"}, SECRET)


def test_signature_is_over_canonical_sorted_content():
    props = {"b": "2", "a": "1"}
    assert canonical(props) == b"a=1\nb=2"
    assert sign_announcement(props, SECRET) == sign_announcement(dict(reversed(list(props.items()))), SECRET)


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
    members = tuple(f"10.0.{i // 200}.{100 + i % 100}" for i in range(40))
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
    stale = dataclasses.replace(fresh, timestamp=fresh.timestamp - MAX_CLOCK_SKEW_MS - 1000)
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
        validate_cluster(cluster)
