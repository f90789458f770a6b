"""Broadcast filters cost the fleet a bounded time: pathological regular expressions against a 1,000-node fleet
process do not delay anyone else's request, and ordinary filters still reach every node.

Before the bound, each node ran the sender's regular expression on the event loop: ``^(([a-z])+.)+[A-Z]([a-z])+$``
against ``web123.filter.example.net`` backtracks about a million steps, once per node.
"""

from __future__ import annotations

import asyncio
import collections
import time

import pytest

from ansible_collections.zeroinit.bootstrap.plugins.module_utils.choria.filters import empty_filter, identity_filter
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.choria.protocol import DISCOVERY_PING
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.provisioning.rpc import RpcClient
from tests.support.fleet import AgentFleet

FLEET = 1000
PROMPT = 2.0  # seconds: a ping or a discovery of the whole fleet behind a pathological request (machine under load)


def fact_filter(pattern: str) -> dict:
    flt = empty_filter()
    flt["fact"] = [{"fact": "role", "operator": "=~", "value": f"/{pattern}/"}]
    return flt


PATHOLOGICAL = {
    "nested repetition": identity_filter(["/^(([a-z])+.)+[A-Z]([a-z])+$/"]),
    "repeated overlapping alternation": identity_filter(["/(w|we|web|[a-z0-9.])+X/"]),
    "three unbounded repetitions": identity_filter(["/.*.*.*X/"]),
    "exponential alternatives": identity_filter(["/" + "(.|[a-z0-9])" * 24 + "X/"]),
    "fact regex": fact_filter("^(w+|e+|b+|[a-z]+)+X$"),
    "many patterns": identity_filter([f"/^web{index}X/" for index in range(200)]),
}


@pytest.mark.timeout(240)
def test_pathological_filters_do_not_delay_other_requests(nats_broker, tmp_path, figures):
    facts = {"role": "webwebwebwebwebwebwebwebwebwebwebweb"}
    with AgentFleet(
        nats_broker.url, FLEET, tmp_path / "fleet", prefix="web", domain="filter.example.net", facts=facts
    ) as fleet:

        async def run():
            latencies = {}
            async with (
                RpcClient([nats_broker.url], callerid="filter-attacker") as attacker,
                RpcClient([nats_broker.url], callerid="bystander") as bystander,
            ):
                for name, flt in PATHOLOGICAL.items():
                    req = attacker.new_request("discovery", DISCOVERY_PING)
                    req.filter = flt
                    await attacker.publish_request(req)
                    await attacker.nc.flush()
                    started = time.monotonic()
                    reply = await bystander.call(fleet.identities[-1], "rpcutil", "ping", timeout=PROMPT)
                    pinged = time.monotonic() - started
                    found = await bystander.discover(timeout=10, expect=FLEET)
                    latencies[name] = (pinged, time.monotonic() - started, len(found), reply.ok)
                # An ordinary regular expression still reaches every node within the budget.
                everyone = await bystander.discover(
                    timeout=10, expect=FLEET, flt=identity_filter([r"/^web\d+\.filter\.example\.net$/"])
                )
            return latencies, everyone

        latencies, everyone = asyncio.run(run())
        log = fleet.log_tail(200_000)
    figures.send("pathological filters", len(PATHOLOGICAL))
    figures.refuse("agent", collections.Counter({"ignored, filter or filter budget": log.count("ignoring a message")}))
    figures.crash("filter cost", log.count("Traceback"))
    assert everyone == fleet.identities
    for name, (pinged, discovered, found, ok) in latencies.items():
        assert ok and found == FLEET, name
        assert pinged < PROMPT and discovered < PROMPT + 2.0, (name, pinged, discovered)
    assert "Traceback" not in log
    figures.line(
        f"filters against {FLEET} nodes in one process: ping / discovery of all right after each pathological one"
    )
    for name, (pinged, discovered, _found, _ok) in latencies.items():
        figures.line(f"  {name:34} {pinged * 1000:6.0f} ms / {discovered * 1000:6.0f} ms")
