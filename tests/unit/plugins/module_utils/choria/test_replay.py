"""The ttl window with its cap, and the node's memory of accepted request ids: replays, expiry, a full memory."""

from __future__ import annotations

import pytest

from ansible_collections.zeroinit.bootstrap.plugins.module_utils.choria.replay import (
    DEFAULT_MAX_TTL,
    ReplayGuard,
    accepted_ttl,
    request_window_refusal,
)

NOW = 1_800_000_000


@pytest.mark.parametrize(
    ("sent", "ttl", "max_ttl", "refusal"),
    [
        (NOW, 60, 300, None),
        (NOW - 60, 60, 300, None),
        (NOW + 60, 60, 300, None),
        (NOW - 61, 60, 300, "request expired: sent 61s ago, ttl 60s"),
        (NOW + 61, 60, 300, "request too far in the future: sent 61s ahead, ttl 60s"),
        # The case: ten minutes old, asking for a day and more.
        (NOW - 600, 100000, 300, "request expired: sent 600s ago, ttl 300s (capped from the 100000s it asked for)"),
        (NOW + 600, 100000, 300, "request too far in the future: sent 600s ahead, ttl 300s (capped from the"),
        (NOW - 300, 100000, 300, None),
        (NOW - 600, 100000, 900, None),
        (NOW, 0, 300, "request ttl 0s is not positive"),
        (NOW, -5, 300, "request ttl -5s is not positive"),
    ],
)
def test_the_window_judges_with_the_capped_ttl(sent, ttl, max_ttl, refusal):
    outcome = request_window_refusal(sent, ttl, NOW + 0.9, max_ttl)
    if refusal is None:
        assert outcome is None
    else:
        assert outcome.startswith(refusal)


def test_accepted_ttl_is_the_smaller_of_the_two():
    assert accepted_ttl(60) == 60
    assert accepted_ttl(100000) == DEFAULT_MAX_TTL
    assert accepted_ttl(100000, 900) == 900


def test_a_repeat_is_refused_as_a_replay_until_its_window_has_closed():
    guard = ReplayGuard(max_ttl=300, slack=2)
    assert guard.admit("a" * 32, NOW, 60, NOW) is None
    refusal = guard.admit("a" * 32, NOW, 60, NOW + 30)
    assert refusal.startswith(f"replay refused: request {'a' * 32} was already accepted")
    assert guard.admit("a" * 32, NOW, 60, NOW + 61.5) is not None  # window + slack still covered
    # Past time + ttl + slack the window refuses the copy; the guard has forgotten it.
    assert guard.admit("a" * 32, NOW, 60, NOW + 62) is None


def test_the_memory_lasts_for_the_capped_ttl_not_the_asked_one():
    guard = ReplayGuard(max_ttl=300, slack=2)
    guard.admit("b" * 32, NOW, 100000, NOW)
    assert guard.admit("c" * 32, NOW + 303, 60, NOW + 303) is None
    assert len(guard) == 1  # b expired at NOW + 302 and was dropped


def test_scopes_keep_nodes_apart():
    guard = ReplayGuard()
    assert guard.admit("d" * 32, NOW, 60, NOW, scope="node1") is None
    assert guard.admit("d" * 32, NOW, 60, NOW, scope="node2") is None
    assert guard.admit("d" * 32, NOW, 60, NOW, scope="node1") is not None


def test_a_full_memory_refuses_new_requests_rather_than_forgetting_one():
    guard = ReplayGuard(capacity=3, max_ttl=300, slack=0)
    for index in range(3):
        assert guard.admit(f"{index:032x}", NOW, 60, NOW) is None
    refusal = guard.admit(f"{9:032x}", NOW, 60, NOW + 10)
    assert refusal.startswith(
        "replay memory full: 3 requests accepted within the ttl window; refusing new ones for 50s"
    )
    # Every remembered id is still refused as a replay meanwhile.
    assert guard.admit(f"{0:032x}", NOW, 60, NOW + 10).startswith("replay refused")
    # Once the window moved on, new requests are admitted again.
    assert guard.admit(f"{9:032x}", NOW + 61, 60, NOW + 61) is None


def test_a_sweep_frees_expired_ids_stuck_behind_a_long_lived_one():
    guard = ReplayGuard(capacity=3, max_ttl=300, slack=0)
    guard.admit("long".ljust(32, "0"), NOW, 300, NOW)  # first in line, expires at NOW + 300
    guard.admit("short1".ljust(32, "0"), NOW, 30, NOW)
    guard.admit("short2".ljust(32, "0"), NOW, 30, NOW)
    assert guard.admit("new".ljust(32, "0"), NOW + 40, 30, NOW + 40) is None
    assert len(guard) == 2


def test_a_full_guard_does_not_sweep_again_until_the_earliest_id_expires(monkeypatch):
    guard = ReplayGuard(capacity=2, max_ttl=300, slack=0)
    guard.admit("x".ljust(32, "0"), NOW, 100, NOW)
    guard.admit("y".ljust(32, "0"), NOW, 200, NOW)
    sweeps = []
    original = guard._sweep
    monkeypatch.setattr(guard, "_sweep", lambda now: sweeps.append(now) or original(now))
    for second in range(1, 50):
        assert guard.admit(f"{second:032x}", NOW + second, 60, NOW + second).startswith("replay memory full")
    assert len(sweeps) == 1
    assert guard.admit("z".ljust(32, "0"), NOW + 101, 60, NOW + 101) is None


def test_the_insertion_order_stays_bounded_with_superseded_entries():
    guard = ReplayGuard(capacity=4, max_ttl=300, slack=0)
    guard.admit("anchor".ljust(32, "0"), NOW, 300, NOW)
    for second in range(1, 200):
        # An authenticated sender reusing an id with a new time: each admission supersedes the last one.
        guard.admit("reused".ljust(32, "0"), NOW + second, 1, NOW + second + 5)
    assert len(guard._order) <= 2 * guard.capacity
    assert len(guard) == 2


def test_capacity_must_be_positive():
    with pytest.raises(ValueError, match="at least 1"):
        ReplayGuard(capacity=0)
