"""The RPC client's request envelope and reply routing, over a connection that only records (no broker).

Instances of one provisioner site share a caller id: each names itself in ``senderid``, asks for replies on a
subject of its own, and drops a reply for a request it does not wait for without decoding it. Replies are network input, so odd
senders and odd statuses are contained.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from ansible_collections.zeroinit.bootstrap.plugins.module_utils.choria import protocol
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.choria.protocol import (
    Reply,
    decode_request,
    encode_reply,
    rpc_reply_body,
)
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.choria.subjects import reply_inbox_prefix
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.provisioning import rpc
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.provisioning.rpc import RpcClient


class RecordingConnection:
    """A nats-py connection stand-in: subscriptions and publications are recorded; ``answer`` replies to a
    request as a node would, on the request's reply-to."""

    def __init__(self):
        self.subscriptions = {}
        self.published = []

    async def subscribe(self, subject, cb):
        self.subscriptions[subject] = cb
        return SimpleNamespace(unsubscribe=self._nothing)

    async def flush(self):
        return None

    async def _nothing(self):
        return None

    async def publish(self, subject, payload):
        self.published.append((subject, decode_request(payload)))

    async def deliver(self, subject, data):
        for pattern, cb in self.subscriptions.items():
            if subject.startswith(pattern[:-1]):
                await cb(SimpleNamespace(subject=subject, data=data))


def reply_to(request, sender="n1", requestid=None):
    body = rpc_reply_body("ping", 0, "OK", {"pong": 1})
    return encode_reply(Reply(requestid or request.requestid, sender, request.agent, body))


def test_instances_of_a_site_share_the_caller_but_not_the_sender_or_the_reply_subject():
    async def scenario():
        nc = RecordingConnection()
        first = RpcClient([], callerid="dc1.provisioner", connection=nc, senderid="prov-a", reply_scope="prov-a")
        second = RpcClient([], callerid="dc1.provisioner", connection=nc, senderid="prov-b", reply_scope="prov-b")
        await first.connect()
        await second.connect()
        prefix = reply_inbox_prefix("choria=dc1.provisioner")
        assert sorted(nc.subscriptions) == [f"{prefix}.prov-a.>", f"{prefix}.prov-b.>"]
        await first.publish_request(first.new_request("rpcutil", {}, ["n1"]), ["n1"])
        subject, request = nc.published[0]
        assert subject == "provisioning.node.n1"
        assert (request.callerid, request.senderid) == ("choria=dc1.provisioner", "prov-a")
        assert request.reply_to == f"{prefix}.prov-a.{request.requestid}"

    asyncio.run(scenario())


def test_a_reply_nobody_waits_for_is_dropped_before_it_is_decoded():
    async def scenario():
        nc = RecordingConnection()
        client = RpcClient([], callerid="dc1.provisioner", connection=nc, senderid="prov-a")
        await client.connect()
        prefix = reply_inbox_prefix("choria=dc1.provisioner")
        call = asyncio.ensure_future(client.call("n1", "rpcutil", "ping", timeout=5))
        while not nc.published:
            await asyncio.sleep(0)
        request = nc.published[0][1]
        # Another instance's replies on the shared subject: not ours, not decoded (garbage would count otherwise).
        await nc.deliver(f"{prefix}.{'f' * 32}", b"not even JSON")
        await nc.deliver(f"{prefix}.{'e' * 32}", reply_to(request, requestid="e" * 32))
        assert (client.foreign_replies, client.undecodable) == (2, 0)
        # A reply on our request's subject whose envelope names another request is not taken for ours.
        await nc.deliver(f"{prefix}.{request.requestid}", reply_to(request, requestid="d" * 32))
        assert not call.done()
        await nc.deliver(f"{prefix}.{request.requestid}", reply_to(request))
        reply = await call
        assert reply.senderid == "n1" and reply.data == {"pong": 1}

    asyncio.run(scenario())


def test_every_attempt_of_a_call_is_observed_with_its_outcome():
    seen = []

    async def scenario():
        nc = RecordingConnection()
        client = RpcClient([], connection=nc, observer=lambda rpc, seconds, reply: seen.append((rpc, reply)))
        await client.connect()
        prefix = reply_inbox_prefix(client.callerid)
        call = asyncio.ensure_future(client.call("n1", "choria_provision", "gencsr", timeout=0.05, retries=1))
        while len(nc.published) < 2:  # the first attempt times out unanswered, the second is answered
            await asyncio.sleep(0.01)
        request = nc.published[1][1]
        await nc.deliver(f"{prefix}.{request.requestid}", reply_to(request))
        await call

    asyncio.run(scenario())
    assert [(rpc, reply is None) for rpc, reply in seen] == [
        ("choria_provision#gencsr", True),
        ("choria_provision#gencsr", False),
    ]


def test_a_reply_scope_must_be_one_subject_token():
    with pytest.raises(ValueError, match="subject token"):
        RpcClient([], reply_scope="a.b")


class AnsweringConnection(RecordingConnection):
    """Answers every request it is asked to publish with the replies ``answer(request)`` makes."""

    def __init__(self, answer):
        super().__init__()
        self.answer = answer

    async def publish(self, subject, payload):
        await super().publish(subject, payload)
        request = self.published[-1][1]
        for reply in self.answer(request):
            data = reply if isinstance(reply, bytes) else protocol.encode_reply(reply)
            asyncio.get_running_loop().call_soon(
                lambda data=data: asyncio.ensure_future(self.deliver(request.reply_to, data))
            )


def pong(request, senderid):
    return protocol.Reply(requestid=request.requestid, senderid=senderid, agent="discovery", body="pong")


def test_discovery_counts_only_senders_that_are_identities():
    def answer(request):
        yield pong(request, "n1.example.net")
        yield pong(request, "n2.example.net")
        for bad in ("*", "a b", "x" * 300, "n1.example.net\n", ""):
            yield pong(request, bad)
        yield b"garbage"

    async def run():
        client = rpc.RpcClient([], connection=AnsweringConnection(answer))
        await client.connect()
        found = await client.discover(timeout=0.3)
        return found, client.undecodable

    found, undecodable = asyncio.run(run())
    assert found == ["n1.example.net", "n2.example.net"]
    assert undecodable == 6


def test_a_reply_with_an_odd_status_is_a_refusal_with_a_readable_reason():
    odd = protocol.Reply(
        requestid="r" * 32,
        senderid="n1\x1b[2J",
        agent="rpcutil",
        body={"statuscode": [0], "statusmsg": "line one\nFORGED line two", "data": {}},
    )
    assert not odd.ok and odd.statuscode == protocol.StatusCode.UNKNOWN_ERROR
    assert rpc.reply_error(odd, "rpcutil#ping") == (
        "rpcutil#ping refused by n1\\x1b[2J: line one\\nFORGED line two (statuscode 5 Unknown Error)"
    )


def test_a_request_keeps_at_most_max_replies(monkeypatch):
    monkeypatch.setattr(rpc, "MAX_REPLIES", 3)

    def answer(request):
        for index in range(10):
            yield protocol.Reply(
                requestid=request.requestid, senderid=f"n{index}", agent="rpcutil", body=protocol.rpc_reply_body("ping")
            )

    async def run():
        client = rpc.RpcClient([], connection=AnsweringConnection(answer))
        await client.connect()
        return await client.request("rpcutil", protocol.rpc_request_body("rpcutil", "ping"), timeout=0.3)

    assert len(asyncio.run(run())) == 3
