"""The RPC client with a fake connection: replies are network input, so odd senders and odd statuses are contained."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from ansible_collections.zeroinit.bootstrap.plugins.module_utils.choria import protocol
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.provisioning import rpc


class AnsweringConnection:
    """Answers every request it is asked to publish with the replies ``answer(request)`` makes."""

    def __init__(self, answer):
        self.answer = answer
        self.callback = None

    async def subscribe(self, subject, cb):
        self.callback = cb
        return SimpleNamespace(unsubscribe=self._nothing)

    async def flush(self):
        return None

    async def _nothing(self):
        return None

    async def publish(self, subject, payload):
        request = protocol.decode_request(payload)
        for reply in self.answer(request):
            data = reply if isinstance(reply, bytes) else protocol.encode_reply(reply)
            asyncio.get_running_loop().call_soon(
                lambda data=data: asyncio.ensure_future(self.callback(SimpleNamespace(data=data)))
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
