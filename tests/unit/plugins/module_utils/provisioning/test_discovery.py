"""Discovery bookkeeping without a network: which nodes a run keeps, from pongs, lifecycle events and
registration data, and when it has seen enough."""

from __future__ import annotations

import asyncio
import json
import random
import re
from types import SimpleNamespace

import pytest

from ansible_collections.zeroinit.bootstrap.plugins.module_utils.choria import events, protocol, subjects
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.provisioning import discovery
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.provisioning.discovery import FleetDiscovery
from tests.support.rules import BROKER_URLS, IDENTITIES


def message(doc) -> SimpleNamespace:
    return SimpleNamespace(data=json.dumps(doc).encode("utf-8"))


def event(event_type, identity, component=subjects.LIFECYCLE_COMPONENT):
    return message(events.lifecycle_event(event_type, identity, component=component, version="1.0"))


def pong(identity):
    return protocol.Reply(requestid="0" * 32, senderid=identity, agent="discovery", body=protocol.DISCOVERY_PONG)


def records(run: FleetDiscovery) -> dict:
    """What run() returns, for the nodes handled so far (no inventory was asked for)."""
    return {identity: node.record() for identity, node in sorted(run.nodes.items()) if not node.departed}


def feed(steps, **options):
    """Feed handler calls to a FleetDiscovery inside an event loop; returns it and the warnings it gave."""
    warnings: list[str] = []
    run = FleetDiscovery(["nats://127.0.0.1:4222"], warn=warnings.append, **options)

    async def go():
        run._enough = asyncio.Event()
        for handler, arg in steps:
            # pongs come from the RPC client, events and registration data through the listener
            await getattr(run.listener if handler.startswith("on_") else run, handler)(arg)
        return run._enough.is_set()

    enough = asyncio.run(go())
    return run, warnings, enough


def test_nodes_found_by_pong_event_or_registration_carry_how_they_were_found():
    registration = events.registration_document("c.example.net", {"role": "db"})
    run, warnings, _enough = feed(
        [
            ("_on_pong", pong("a.example.net")),
            ("on_lifecycle", event("startup", "b.example.net")),
            ("on_registration", message(registration)),
            ("on_registration", message(registration)),  # the same data on the per-node subject: one node
            ("on_lifecycle", event("startup", "a.example.net")),
        ]
    )
    found = records(run)
    assert sorted(found) == ["a.example.net", "b.example.net", "c.example.net"]
    assert found["a.example.net"]["sources"] == ["discovery", "lifecycle"]
    assert found["b.example.net"]["events"][0]["type"] == "startup"
    # Without an inventory reply, the registration facts are the facts.
    assert found["c.example.net"]["facts"] == {"role": "db"} and found["c.example.net"]["sources"] == ["registration"]
    assert warnings == []


def test_shutdown_and_provisioned_nodes_are_gone_until_they_come_back():
    run, _warnings, _enough = feed(
        [
            ("_on_pong", pong("a.example.net")),
            ("_on_pong", pong("b.example.net")),
            ("_on_pong", pong("c.example.net")),
            ("on_lifecycle", event("shutdown", "a.example.net")),
            ("on_lifecycle", event("provisioned", "b.example.net")),
            ("on_lifecycle", event("shutdown", "a.example.net")),
            ("on_lifecycle", event("startup", "a.example.net")),  # restarted: waiting again
            ("on_lifecycle", event("shutdown", "stranger.example.net")),
            ("_on_pong", pong("stranger.example.net")),  # its pong, handled after its shutdown: still gone
            ("on_registration", message(events.registration_document("b.example.net", {}))),  # older data, late
        ]
    )
    assert sorted(records(run)) == ["a.example.net", "c.example.net"]
    assert run._known() == 2


@pytest.mark.parametrize("seed", range(20))
def test_the_count_of_nodes_here_follows_every_arrival_and_departure(seed):
    """The running count ``expect`` is checked against equals a walk over every node, whatever the order."""
    rng = random.Random(seed)
    names = [f"n{i}.example.net" for i in range(5)]
    steps = []
    for _step in range(40):
        name, kind = rng.choice(names), rng.choice(["pong", "startup", "shutdown", "provisioned", "registration"])
        if kind == "pong":
            steps.append(("_on_pong", pong(name)))
        elif kind == "registration":
            steps.append(("on_registration", message(events.registration_document(name, {}))))
        else:
            steps.append(("on_lifecycle", event(kind, name)))
    run, _warnings, _enough = feed(steps)
    assert run._known() == sum(1 for node in run.nodes.values() if not node.departed) == len(records(run))


def test_events_of_other_components_are_not_provisioning_nodes():
    run, _warnings, _enough = feed([("on_lifecycle", event("startup", "member.example.net", component="server"))])
    assert records(run) == {}


def test_bad_identities_are_refused_once_with_a_warning():
    run, warnings, _enough = feed(
        [
            ("_on_pong", pong("web.*")),
            ("_on_pong", pong("web.*")),
            ("on_lifecycle", event("startup", "a..b")),
            ("on_registration", message({"identity": "x y", "facts": {}})),
            ("on_registration", SimpleNamespace(data=b"\x00 not json")),
        ]
    )
    assert records(run) == {}
    assert len(warnings) == 3 and "'web.*'" in warnings[0] and "discovery" in warnings[0]
    assert run.undecodable == 1


def test_expect_counts_nodes_still_waiting():
    _run, _warnings, enough = feed([("_on_pong", pong("a.example.net")), ("_on_pong", pong("b.example.net"))], expect=3)
    assert enough is False
    _run, _warnings, enough = feed(
        [
            ("_on_pong", pong("a.example.net")),
            ("_on_pong", pong("b.example.net")),
            ("on_lifecycle", event("shutdown", "a.example.net")),
            ("_on_pong", pong("c.example.net")),
        ],
        expect=3,
    )
    assert enough is False  # a left: two are waiting
    _run, _warnings, enough = feed([("_on_pong", pong(n + ".example.net")) for n in "abc"], expect=3)
    assert enough is True


@pytest.mark.parametrize("value,expected", BROKER_URLS)
def test_discovery_reads_brokers_with_the_one_rule(value, expected):
    if isinstance(expected, list):
        assert discovery.FleetDiscovery(value).brokers == expected
    else:
        with pytest.raises(discovery.DiscoveryError, match=re.escape(expected)):
            discovery.FleetDiscovery(value)


@pytest.mark.parametrize("identity,valid", IDENTITIES)
def test_identities_must_be_subject_tokens_and_host_names(identity, valid):
    warnings = []
    run = discovery.FleetDiscovery(["nats://127.0.0.1:4222"], warn=warnings.append)
    assert (run._seen(identity, "discovery") is not None) is valid
    assert len(warnings) == (0 if valid else 1)


def test_settings_are_checked_naming_the_option():
    with pytest.raises(discovery.DiscoveryError, match="discovery_timeout"):
        discovery.check_settings(0, 0, None, 10)
    with pytest.raises(discovery.DiscoveryError, match="listen"):
        discovery.check_settings(2, -1, None, 10)
    with pytest.raises(discovery.DiscoveryError, match="expect"):
        discovery.check_settings(2, 0, 0, 10)
    with pytest.raises(discovery.DiscoveryError, match="inventory_timeout"):
        discovery.check_settings(2, 0, None, "soon")
    discovery.check_settings(2, 0, 5, 10)


def test_inventory_summary_keeps_everything_but_the_facts():
    data = {"facts": {"a": 1}, "agents": ["rpcutil"], "version": "1", "collectives": ["provisioning"]}
    assert discovery.inventory_summary(data) == {"agents": ["rpcutil"], "version": "1", "collectives": ["provisioning"]}
