"""Control messages: sealed with a site key, refused when forged, stale, replayed, foreign or malformed."""

import hashlib
import hmac
import json
import os
import random

import pytest

from ansible_collections.zeroinit.bootstrap.plugins.module_utils.provisioning.service import control as ct


class FakeClock:
    def __init__(self):
        self.now = 1_800_000_000.0

    def __call__(self):
        return self.now


def codec(site="dc1", token="tok", clock=None):
    return ct.ControlCodec(site, ct.derive_control_key(site, token), clock=clock or FakeClock())


def test_round_trip_and_the_inner_document():
    clock = FakeClock()
    sender, receiver = codec(clock=clock), codec(clock=clock)
    data, nonce = sender.seal(ct.CONTROL_REQUEST, {"op": "pause", "sender": "ops"})
    inner = receiver.open(data, ct.CONTROL_REQUEST, ct.MAX_REQUEST)
    assert inner == {
        "op": "pause",
        "sender": "ops",
        "kind": "request",
        "site": "dc1",
        "time": clock.now,
        "nonce": nonce,
    }
    reply = receiver.seal(ct.CONTROL_REPLY, {"op": "pause", "request": nonce, "ok": True})[0]
    assert sender.open(reply, ct.CONTROL_REPLY, ct.MAX_REPLY)["request"] == nonce


def test_keys_differ_by_site_by_token_and_control_key_wins():
    assert ct.derive_control_key("dc1", "tok") != ct.derive_control_key("dc2", "tok")
    assert ct.derive_control_key("dc1", "tok") != ct.derive_control_key("dc1", "tok2")
    assert ct.derive_control_key("dc1", "tok", "ops-only") == ct.derive_control_key("dc1", "", "ops-only")
    assert ct.derive_control_key("dc1", "tok", "ops-only") != ct.derive_control_key("dc1", "tok")
    with pytest.raises(ct.ControlError, match="set token or control_key"):
        ct.derive_control_key("dc1")


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda c: codec(token="other", clock=c), "bad signature"),
        (lambda c: codec(site="dc2", clock=c), "bad signature"),  # another site's key
        (
            lambda c: ct.ControlCodec("dc2", ct.derive_control_key("dc1", "tok"), clock=c),
            "for another site",
        ),  # right key, wrong site field
    ],
)
def test_foreign_messages_are_refused(make, reason):
    clock = FakeClock()
    data = make(clock).seal(ct.CONTROL_REQUEST, {"op": "status"})[0]
    with pytest.raises(ct.ControlRejected, match=reason):
        codec(clock=clock).open(data, ct.CONTROL_REQUEST, ct.MAX_REQUEST)


def test_a_reply_is_not_a_request():
    clock = FakeClock()
    data = codec(clock=clock).seal(ct.CONTROL_REPLY, {"op": "pause"})[0]
    with pytest.raises(ct.ControlRejected, match="a 'reply' where a request was expected"):
        codec(clock=clock).open(data, ct.CONTROL_REQUEST, ct.MAX_REQUEST)


@pytest.mark.parametrize("shift", [-31, 31, 3600])
def test_stale_or_future_messages_are_refused(shift):
    clock = FakeClock()
    data = codec(clock=clock).seal(ct.CONTROL_REQUEST, {"op": "pause"})[0]
    clock.now += shift
    with pytest.raises(ct.ControlRejected, match="outside 30s"):
        codec(clock=clock).open(data, ct.CONTROL_REQUEST, ct.MAX_REQUEST)


def test_a_captured_request_cannot_be_replayed():
    clock = FakeClock()
    receiver = codec(clock=clock)
    data = codec(clock=clock).seal(ct.CONTROL_REQUEST, {"op": "pause"})[0]
    receiver.open(data, ct.CONTROL_REQUEST, ct.MAX_REQUEST)
    clock.now += 20
    with pytest.raises(ct.ControlRejected, match="replayed"):
        receiver.open(data, ct.CONTROL_REQUEST, ct.MAX_REQUEST)
    clock.now += 20  # past the window: refused for its age, the nonce may be forgotten
    with pytest.raises(ct.ControlRejected, match="outside"):
        receiver.open(data, ct.CONTROL_REQUEST, ct.MAX_REQUEST)


def test_nonce_memory_is_bounded():
    clock = FakeClock()
    receiver, sender = codec(clock=clock), codec(clock=clock)
    for _round in range(ct.NONCE_LIMIT + 50):
        receiver.open(sender.seal(ct.CONTROL_REQUEST, {"op": "status"})[0], ct.CONTROL_REQUEST, ct.MAX_REQUEST)
    assert len(receiver._nonces) <= ct.NONCE_LIMIT


def test_tampering_with_the_signed_text_is_refused():
    clock = FakeClock()
    data = codec(clock=clock).seal(ct.CONTROL_REQUEST, {"op": "status"})[0]
    outer = json.loads(data)
    outer["msg"] = outer["msg"].replace("status", "pause")
    with pytest.raises(ct.ControlRejected, match="bad signature"):
        codec(clock=clock).open(json.dumps(outer).encode(), ct.CONTROL_REQUEST, ct.MAX_REQUEST)


def signed(inner_text, key=None):
    key = key or ct.derive_control_key("dc1", "tok")
    mac = hmac.new(key, inner_text.encode("utf-8", "surrogatepass"), hashlib.sha256).hexdigest()
    return json.dumps({"v": 1, "msg": inner_text, "mac": mac}).encode()


HOSTILE = [
    b"",
    b"\x00\xff\xfe",
    b"[" * 3000,
    b'{"v": 1}',
    b'{"v": 1, "msg": 5, "mac": "00"}',
    b'{"v": 2, "msg": "{}", "mac": "' + b"0" * 64 + b'"}',
    b'{"v": 1, "msg": "{}", "mac": "' + b"z" * 64 + b'"}',
    b"null",
    b"1e999",
    b'"\\ud800"',
    b"x" * (ct.MAX_REQUEST + 1),
    signed("[" * 3000),
    signed("[]"),
    signed('{"kind": "request", "site": "dc1", "time": NaN, "nonce": "' + "0" * 32 + '"}'),
    signed('{"kind": "request", "site": "dc1", "time": true, "nonce": "' + "0" * 32 + '"}'),
    signed('{"kind": "request", "site": "dc1", "time": 1800000000, "nonce": "short"}'),
    signed('{"kind": "request", "site": "dc1", "time": 1800000000, "nonce": "\\ud800"}'),
    signed('{"kind": "request", "site": "dc1", "time": 1e400, "nonce": "' + "0" * 32 + '"}'),
]


@pytest.mark.parametrize("data", HOSTILE)
def test_hostile_bytes_are_refused_never_raised(data):
    with pytest.raises(ct.ControlRejected):
        codec().open(data, ct.CONTROL_REQUEST, ct.MAX_REQUEST)


def test_random_bytes_are_refused_never_raised():
    rng = random.Random(7)
    receiver = codec()
    valid = codec().seal(ct.CONTROL_REQUEST, {"op": "status"})[0]
    for _round in range(3000):
        if rng.random() < 0.5:
            data = os.urandom(rng.randrange(0, 200))
        else:  # a valid message with a few bytes flipped
            mutable = bytearray(valid)
            for _round in range(rng.randrange(1, 4)):
                mutable[rng.randrange(len(mutable))] = rng.randrange(256)
            data = bytes(mutable)
        try:
            receiver.open(data, ct.CONTROL_REQUEST, ct.MAX_REQUEST)
        except ct.ControlRejected:
            pass


def test_first_started_picks_the_earliest_other_instance():
    others = [
        {"instance": "b", "started": 100.0},
        {"instance": "a", "started": 100.0},
        {"instance": "c", "started": 300.0},
        {"instance": "x", "started": "soon"},
        {"instance": "y"},
    ]
    assert ct.first_started("me", 200.0, others)["instance"] == "a", "earliest; ties by name"
    assert ct.first_started("me", 50.0, others) is None
    assert ct.first_started("a", 100.0, [{"instance": "b", "started": 100.0}]) is None
    assert ct.first_started("b", 100.0, [{"instance": "a", "started": 100.0}])["instance"] == "a"


def test_control_subject_and_state_bucket_are_per_site():
    assert ct.control_subject("dc1") == "zeroinit.provisioner.dc1.control"
    assert ct.state_bucket_name("dc1") == "zeroinit_state_dc1"
