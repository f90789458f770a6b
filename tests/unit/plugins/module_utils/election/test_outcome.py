"""The pure decision: who leads the members seen, and the errors that name them."""

from __future__ import annotations

import pytest

from ansible_collections.zeroinit.bootstrap.plugins.module_utils.election.outcome import (
    DuplicateElectionId,
    MismatchedExpect,
    TooManyMembers,
    decide,
    sort_addresses,
)
from tests.support.election import ann


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
        decide([ann(f"10.0.0.{i}") for i in (1, 2, 3)], 2)
    assert "3 seen, 2 expected" in str(info.value)
    assert all(f"10.0.0.{i}" in str(info.value) for i in (1, 2, 3))


def test_decide_refuses_members_expecting_another_count():
    with pytest.raises(MismatchedExpect, match=r"this host expects 2, 10\.0\.0\.2 expects 3"):
        decide([ann("10.0.0.1", expect=2), ann("10.0.0.2", expect=3)], 2)
    assert decide([ann("10.0.0.1", expect=2), ann("10.0.0.2")], 2).complete  # not said: not judged


def test_decide_counts_an_address_once():
    decision = decide([ann("10.0.0.1"), ann("10.0.0.1"), ann("10.0.0.2")], 2)
    assert decision.complete and decision.members == ("10.0.0.1", "10.0.0.2")


def test_sort_addresses_numeric_and_unique():
    assert sort_addresses(["10.0.0.10", "10.0.0.9", "10.0.0.10"]) == ["10.0.0.9", "10.0.0.10"]
