"""Which announcements are a node entering provisioning mode, and the event source's arguments."""

from __future__ import annotations

import asyncio

import pytest

from ansible_collections.zeroinit.bootstrap.plugins.module_utils.provisioning.arrivals import (
    ArrivalFeed,
    ArrivalFilter,
    arrival_record,
)
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.provisioning.listener import NodeEvent


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def offered(arrivals, *kinds, identity="n1.example.net"):
    return [arrivals.offer(NodeEvent(identity, kind)) for kind in kinds]


def test_a_boot_is_recorded_once_although_the_node_announces_itself_several_times():
    clock = Clock()
    arrivals = ArrivalFilter(window=600, clock=clock)
    assert offered(arrivals, "startup", "registration", "registration") == [True, False, False]
    clock.now += 60
    assert offered(arrivals, "registration", "alive") == [False, False]
    clock.now += 600
    assert offered(arrivals, "registration") == [True], "still waiting after the window: recorded again"


def test_a_new_startup_is_a_new_boot_but_the_same_boots_late_startup_is_not():
    clock = Clock()
    arrivals = ArrivalFilter(window=600, clock=clock)
    assert offered(arrivals, "registration") == [True]
    clock.now += 0.5
    assert offered(arrivals, "startup") == [False], "delivered after its registration data"
    clock.now += 30
    assert offered(arrivals, "startup") == [True], "rebooted"


def test_a_node_that_leaves_is_recorded_again_when_it_comes_back():
    clock = Clock()
    arrivals = ArrivalFilter(window=600, clock=clock)
    assert offered(arrivals, "registration", "provisioned", "registration") == [True, False, True]
    assert offered(arrivals, "shutdown", "alive") == [False, True]
    assert offered(arrivals, "unknown") == [False]


def test_nodes_are_independent_and_the_memory_is_bounded():
    arrivals = ArrivalFilter(window=600, limit=3, clock=Clock())
    for index in range(5):
        assert offered(arrivals, "registration", identity=f"n{index}") == [True]
    assert len(arrivals) == 3
    assert offered(arrivals, "registration", identity="n0") == [True], "the oldest were forgotten"
    assert offered(arrivals, "registration", identity="n4") == [False]


def test_the_record_is_what_the_rulebook_matches_on():
    assert arrival_record("n1", {"a": 1}, "startup") == {
        "zeroinit": {"identity": "n1", "facts": {"a": 1}, "source": "startup"}
    }


async def emit(_record):
    return None


def test_arguments_are_checked_and_named():
    feed = ArrivalFeed.from_args(emit, {"brokers": ["10.0.0.1"], "dedupe_window": 60, "queue_size": 5})
    assert feed.brokers == ["nats://10.0.0.1:4222"]
    assert feed.filter.window == 60 and feed.pending.maxsize == 5
    with pytest.raises(ValueError, match="brokers: expected a list"):
        ArrivalFeed.from_args(emit, {})
    with pytest.raises(ValueError, match=r"brokers: .*http://x"):
        ArrivalFeed.from_args(emit, {"brokers": ["http://x"]})
    with pytest.raises(ValueError, match="dedupe_window: expected a number"):
        ArrivalFeed.from_args(emit, {"brokers": ["b"], "dedupe_window": "1h"})
    with pytest.raises(ValueError, match=r"unknown argument.*broker"):
        ArrivalFeed.from_args(emit, {"broker": ["b"]})


def test_a_full_queue_drops_and_counts_instead_of_growing():
    async def main():
        feed = ArrivalFeed.from_args(emit, {"brokers": ["b"], "queue_size": 2})
        for index in range(4):
            feed.on_event(NodeEvent(f"n{index}", "registration", facts={}))
        return feed.pending.qsize(), feed.dropped

    assert asyncio.run(main()) == (2, 2)
