"""A hostile network against a real agent fleet: 100,000 malformed messages (tests/support/hostile.py, every class
on node and broadcast subjects) and NATS-level garbage into a 20-node fleet on a real nats-server.

The fleet must stay up, every node must keep answering (a liveness probe pings all of them every 5,000 messages),
its memory must not grow past twice what it was, and its log must hold no traceback and no lost connection. The
figures (messages, refusals by reason, ignored messages by kind, probe latency, RSS, time) go to the suite's
summary (conftest.py).
"""

from __future__ import annotations

import asyncio
import collections
import re
import time

import pytest

from ansible_collections.zeroinit.bootstrap.plugins.module_utils.choria.protocol import (
    ProtocolError,
    StatusCode,
    decode_reply,
    rpc_request_body,
)
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.choria.subjects import broadcast_subject, node_subject
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.choria.transport import connect
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.provisioning.rpc import RpcClient
from tests.support.fleet import AgentFleet, discover
from tests.support.hostile import MESSAGE_CLASS_NAMES, MESSAGE_CLASSES, hostile_messages
from tests.support.process import rss_bytes

MESSAGES = 100_000
CHUNK = 10_000  # messages generated with one clock reading, so the ttl window does not close on the later ones
HEAVY = sum(1 for _name, heavy, _make in MESSAGE_CLASSES if heavy)  # 1 MB strings, deep nesting: each class once,
HEAVY_LATER = 4  # then a few more per chunk
FLEET = 20
PROBE_EVERY = 5_000
PROBE_TIMEOUT = 10.0
TOKEN = "hostile-suite-token"
SEED = 11

# NATS-level garbage plain nats-py stops reading after (choria/transport.py): a reply subject that is not UTF-8,
# headers that do not start NATS/1.0, a status that is not text.
RAW = (
    b"PUB {subject} r\xff\xfe 2\r\nhi\r\n",
    b"HPUB {subject} 8 10\r\nXXXX\r\n\r\nhi\r\n",
    b"HPUB {subject} 15 17\r\nNATS/1.0 \xff\xff\r\n\r\nhi\r\n",
)


def reason_of(statusmsg: str) -> str:
    """A refusal's reason without the parts that vary per message (numbers, names, paths, quoted values)."""
    reason = re.sub(r"'[^']*'|\"[^\"]*\"", "'…'", statusmsg)
    reason = re.sub(r"(unknown action|held by) \S+|/\S+", lambda match: f"{match.group(1) or ''} …".strip(), reason)
    return re.sub(r"\d+", "N", reason)[:100]


class Attack:
    """Publishes the hostile messages, watches every reply on the bus, probes the fleet; keeps the figures."""

    def __init__(self, broker, fleet: AgentFleet):
        self.broker, self.fleet = broker, fleet
        self.sent = self.bytes = self.raw_sent = 0
        self.by_class: collections.Counter = collections.Counter()
        self.refusals: collections.Counter = collections.Counter()
        self.statuscodes: collections.Counter = collections.Counter()
        self.replies = 0
        self.probe_latencies: list[float] = []
        self.rss: list[int] = []

    async def on_reply(self, msg) -> None:
        try:
            reply = decode_reply(msg.data)
        except ProtocolError:
            self.refusals["(a reply that does not decode)"] += 1
            return
        self.replies += 1
        self.statuscodes[StatusCode.NAMES.get(reply.statuscode, reply.statuscode)] += 1
        if reply.statuscode != StatusCode.OK:
            self.refusals[reason_of(reply.statusmsg)] += 1

    async def probe(self, client: RpcClient) -> None:
        """Every node answers a ping addressed to it, behind whatever is still queued."""
        started = time.monotonic()
        replies = await client.request(
            "rpcutil",
            rpc_request_body("rpcutil", "ping"),
            identities=self.fleet.identities,
            timeout=PROBE_TIMEOUT,
        )
        answered = sorted({r.senderid for r in replies if r.ok})
        assert answered == self.fleet.identities, (
            f"after {self.sent} messages only {len(answered)} of {FLEET} nodes answered a ping within "
            f"{PROBE_TIMEOUT:.0f}s\n{self.fleet.log_tail()}"
        )
        self.probe_latencies.append(time.monotonic() - started)
        self.rss.append(rss_bytes(self.fleet.process.pid))

    async def inject_raw(self) -> None:
        loop = asyncio.get_running_loop()
        for subject in (node_subject(self.fleet.identities[0]), broadcast_subject("rpcutil")):
            for template in RAW:
                answer = await loop.run_in_executor(
                    None, self.broker.send_raw, template.replace(b"{subject}", subject.encode())
                )
                assert b"-ERR" not in answer, answer
                self.raw_sent += 1

    async def run(self) -> None:
        hostile = await connect([self.broker.url], name="hostile")
        watch = await connect([self.broker.url], name="watch")
        try:
            await watch.subscribe("provisioning.reply.>", cb=self.on_reply, pending_bytes_limit=256 * 1024 * 1024)
            await watch.flush()
            async with RpcClient([self.broker.url], callerid="liveness-probe") as client:
                await self.probe(client)
                for chunk in range(MESSAGES // CHUNK):
                    messages = hostile_messages(
                        CHUNK,
                        seed=SEED * 1000 + chunk,
                        identities=tuple(self.fleet.identities),
                        now=int(time.time()),
                        token=TOKEN,
                        heavy_limit=HEAVY if chunk == 0 else HEAVY_LATER,
                    )
                    for message in messages:
                        if message.subject_kind == "node":
                            subject = node_subject(message.identity)
                        else:
                            subject = broadcast_subject(message.agent)
                        await hostile.publish(subject, message.payload, reply=message.reply_to)
                        self.sent += 1
                        self.bytes += len(message.payload)
                        self.by_class[message.class_name] += 1
                        if self.sent % 500 == 0:
                            await hostile.flush()
                        if self.sent % PROBE_EVERY == 0:
                            await self.inject_raw()
                            await self.probe(client)
                await watch.flush()
        finally:
            await hostile.close()
            await watch.close()


def agent_figures(log: str) -> str:
    stopped = re.findall(r"stopped: (.*)", log)
    assert stopped, f"the agent did not log its summary:\n{log[-3000:]}"
    return stopped[-1]


def ignored_by_kind(summary: str) -> collections.Counter:
    """The agent's ignored messages by kind, from its last line ("... ignored (12 filter, 3 undecodable)")."""
    kinds = re.search(r"ignored \((.*)\)", summary)
    pairs = re.findall(r"(\d+) ([^,]+)", kinds.group(1) if kinds else "")
    return collections.Counter({f"ignored, {kind.strip()}": int(count) for count, kind in pairs})


@pytest.mark.timeout(300)
def test_a_fleet_stays_up_and_answers_through_100k_malformed_messages(nats_broker, tmp_path, figures):
    started = time.monotonic()
    fleet = AgentFleet(
        nats_broker.url, FLEET, tmp_path / "fleet", token=TOKEN, prefix="node-", domain="hostile.example.net"
    )
    with fleet:
        attack = Attack(nats_broker, fleet)
        asyncio.run(attack.run())
        assert asyncio.run(discover(nats_broker.url, fleet.identities, 10)) == fleet.identities
        rss_after = rss_bytes(fleet.process.pid)
        exit_code = fleet.stop()
    log = fleet.log_path.read_text(errors="replace")
    elapsed = time.monotonic() - started
    rss_before = attack.rss[0]
    summary = agent_figures(log)
    figures.send("malformed messages", attack.sent)
    figures.send("NATS-level garbage", attack.raw_sent)
    figures.refuse("agent (reply)", attack.refusals)
    figures.refuse("agent", ignored_by_kind(summary))
    crashes = log.count("Traceback") + (exit_code != 0) + attack.statuscodes[StatusCode.NAMES[StatusCode.UNKNOWN_ERROR]]
    figures.crash("hostile messages", crashes)
    assert exit_code == 0, log[-5000:]

    assert attack.sent == MESSAGES and set(attack.by_class) == set(MESSAGE_CLASS_NAMES)
    assert log.count("Traceback") == 0, log[-5000:]
    assert "lost the connection" not in log, "a hostile message cost the fleet its connection"
    assert rss_after <= 2 * rss_before, f"RSS grew from {rss_before} to {rss_after} bytes"
    # No hostile message reached an action's unexpected-failure path.
    assert attack.statuscodes[StatusCode.NAMES[StatusCode.UNKNOWN_ERROR]] == 0, attack.refusals
    figures.line(
        f"hostile messages: {attack.sent:,} ({attack.bytes / 1e6:.0f} MB, {len(attack.by_class)} classes) and "
        f"{attack.raw_sent} NATS-level ones into {FLEET} nodes in {elapsed:.0f}s "
        f"({attack.sent / elapsed:,.0f}/s); {attack.replies:,} replies {dict(attack.statuscodes)}"
    )
    figures.line(f"  agent: {summary}; tracebacks: 0; lost connections: 0")
    figures.line(
        f"  liveness probes: {len(attack.probe_latencies)}, all {FLEET} nodes each time, slowest "
        f"{max(attack.probe_latencies):.2f}s; RSS {rss_before / 2**20:.1f} MiB before, peak "
        f"{max(attack.rss) / 2**20:.1f}, {rss_after / 2**20:.1f} after"
    )
