"""Message routing without NATS: what is dropped and counted, which nodes a broadcast reaches, replies published."""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import pytest

from ansible_collections.zeroinit.bootstrap.plugins.module_utils.choria import protocol
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.choria.filters import FilterBudget, identity_filter
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.choria.subjects import (
    broadcast_subject,
    node_subject,
)
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.node import router as router_module
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.node.router import MessageRouter
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.node.state import NodeState


class FakeLink:
    """A link's routing tables and what it published; no connection."""

    def __init__(self, nodes):
        self.by_subject = {node_subject(n.identity): n for n in nodes}
        self.members = {"provisioning": {n.identity: n for n in nodes}}
        self.published = []

    async def publish(self, subject, payload):
        self.published.append((subject, protocol.decode_reply(payload)))


@pytest.fixture
def nodes(tmp_path):
    made = []
    for name in ("a.example.net", "b.example.net"):
        node = NodeState(name, str(tmp_path / name), "tok", durable=False)
        node.load()
        made.append(node)
    return made


def route(nodes, *messages):
    link = FakeLink(nodes)
    with ThreadPoolExecutor(1) as executor:
        router = MessageRouter(executor, asyncio.ensure_future, lambda node, result: None)

        async def go():
            for subject, data in messages:
                await router.route(link, SimpleNamespace(subject=subject, data=data))

        asyncio.run(go())
    return router, link


def ping(**kw) -> bytes:
    return protocol.encode_request(
        protocol.Request(agent="discovery", body="ping", callerid="choria=c", senderid="c", **kw)
    )


def test_a_node_subject_reaches_its_node_and_the_reply_goes_to_the_caller(nodes):
    _router, link = route(nodes, (node_subject("b.example.net"), ping()))
    assert [(reply.senderid, reply.body) for _subject, reply in link.published] == [("b.example.net", "pong")]
    assert link.published[0][0].startswith("provisioning.reply.")


def test_a_broadcast_reaches_the_members_its_filter_matches(nodes):
    _router, link = route(
        nodes,
        (broadcast_subject("discovery"), ping()),
        (broadcast_subject("discovery"), ping(filter=identity_filter(["a.example.net"]))),
    )
    assert sorted(reply.senderid for _subject, reply in link.published) == [
        "a.example.net",
        "a.example.net",
        "b.example.net",
    ]


@pytest.mark.parametrize(
    "subject,data",
    [
        (node_subject("a.example.net"), b"\x00 not a message"),
        (node_subject("a.example.net"), ping(collective="other")),  # another collective's request
        (broadcast_subject("rpcutil"), ping()),  # a discovery request on the rpcutil subject
    ],
)
def test_undecodable_or_misaddressed_messages_are_counted_and_dropped(nodes, subject, data):
    router, link = route(nodes, (subject, data))
    assert router.garbage == 1 and link.published == []


def _with_reply_to(reply_to: str) -> bytes:
    req = protocol.Request(agent="discovery", body="ping", callerid="choria=c", senderid="c", reply_to=reply_to)
    return protocol.encode_request(req)


@pytest.mark.parametrize(
    "reply_to",
    [
        "provisioning.reply." + "r" * 65_536,
        "provisioning.reply.>",
        "choria.lifecycle.event.startup.provision_mode_server",
        "provisioning.reply.a b",
    ],
)
def test_a_request_with_a_reply_subject_a_node_may_not_publish_to_gets_no_reply(nodes, reply_to, caplog):
    caplog.set_level(logging.INFO, "zeroinit.agent")
    router, link = route(nodes, (node_subject("a.example.net"), _with_reply_to(reply_to)))
    assert link.published == [] and router.garbage == 1
    (line,) = [r.getMessage() for r in caplog.records]
    assert "is not a subject under provisioning.reply" in line and len(line) < 400


def test_a_body_with_a_list_for_the_action_is_refused_with_a_reply(nodes):
    body = {"agent": "rpcutil", "action": ["ping"], "data": {}}
    req = protocol.Request(agent="rpcutil", body=body, callerid="choria=c", senderid="c")
    _router, link = route(nodes, (node_subject("a.example.net"), protocol.encode_request(req)))
    ((_subject, reply),) = link.published
    assert reply.statuscode == protocol.StatusCode.INVALID_DATA
    assert reply.statusmsg == "request body: field 'action' must be a string, got list"


def test_a_filter_outside_the_bounds_is_dropped_with_its_reason(nodes, caplog):
    caplog.set_level(logging.INFO, "zeroinit.agent")
    router, link = route(nodes, (broadcast_subject("discovery"), ping(filter=identity_filter(["/(a|aa)+$/"]))))
    assert link.published == [] and router.garbage == 1
    assert "filter not evaluated: identity: regular expression /(a|aa)+$/ repeats a group" in caplog.text


def test_nodes_past_the_filter_budget_do_not_act_on_the_request(tmp_path, monkeypatch):
    many = []
    for index in range(50):
        node = NodeState(f"n{index}.example.net", str(tmp_path / str(index)), "tok", durable=False)
        node.load()
        many.append(node)
    monkeypatch.setattr(router_module, "FilterBudget", lambda nodes: FilterBudget(nodes, base=0.0, per_node=0.0))
    router, link = route(many, (broadcast_subject("discovery"), ping(filter=identity_filter(["/^n\\d+\\./"]))))
    assert len(link.published) == 1 and router.garbage == 1  # the first node used up the (zero) budget


def test_dropped_messages_are_logged_at_most_a_burst_per_interval(nodes, caplog):
    caplog.set_level(logging.INFO, "zeroinit.agent")
    router, _link = route(nodes, *[(node_subject("a.example.net"), b"garbage")] * 100)
    assert router.garbage == 100
    assert len(caplog.records) == router.dropped_log.burst
    router.dropped_log.window_start -= router.dropped_log.interval
    router.drop("provisioning.node.a", "undecodable", "one more")
    assert router.summary() == "0 refused request(s), 101 message(s) ignored (101 undecodable)"
    assert caplog.records[-1].getMessage().endswith("one more (80 more like this held back)")
