"""Message routing without NATS: what is dropped and counted, which nodes a broadcast reaches, replies published."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import pytest

from ansible_collections.zeroinit.bootstrap.plugins.module_utils.choria import protocol
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.choria.filters import identity_filter
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.choria.subjects import (
    broadcast_subject,
    node_subject,
)
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
