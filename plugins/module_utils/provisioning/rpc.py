# Copyright: zeroinit.bootstrap contributors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)
"""The controller's side of the provisioning network: an asyncio Choria RPC client over nats-py.

One subscription to ``<collective>.reply.<md5(callerid)>.>`` carries every reply; replies are routed to the
waiting request by request id, so thousands of requests can be in flight on one connection.

Several provisioner instances of one site share a caller id (a node's provisioning lock is per caller, so one
instance can take over another's node). Each then names itself in every request's ``senderid`` and gives its
requests a reply subject of its own, ``<collective>.reply.<md5(callerid)>.<reply_scope>.<requestid>`` (servers
answer on the transport's ``reply-to``; brokers let them publish anywhere under ``<collective>.reply.``), so no
instance receives the others' replies. Whatever still arrives for a request id that is not waiting is dropped by
its subject's last token before it is decoded, and counted in ``foreign_replies``.

Replies are network input: one that does not decode is counted (``undecodable``) and dropped, a sender that is
not a valid identity never counts as a discovered node, and a request keeps at most :data:`MAX_REPLIES` replies,
so a flood of answers to one broadcast cannot fill the controller's memory.
"""

from __future__ import annotations

import asyncio
import re
import ssl
import time
from typing import Any, Awaitable, Callable, Optional

from ..choria.filters import empty_filter, identity_filter
from ..choria.protocol import (
    DEFAULT_TTL,
    DISCOVERY_PING,
    ProtocolError,
    Reply,
    Request,
    StatusCode,
    caller_id,
    decode_reply,
    encode_request,
    new_request_id,
)
from ..choria.subjects import (
    PROVISIONING_COLLECTIVE,
    broadcast_subject,
    node_subject,
    reply_inbox_prefix,
    reply_subject,
    valid_identity,
)
from ..choria.transport import connect
from ..common.deps import NatsError
from ..common.text import printable

MAX_REPLIES = 200_000  # per request: more than any fleet this controller drives at once

REPLY_SCOPE = re.compile(r"^[A-Za-z0-9_-]{1,128}$")


class RpcError(RuntimeError):
    """A request that could not be completed; ``step`` names what was being done."""

    def __init__(self, message: str, identity: str = "", step: str = ""):
        super().__init__(message)
        self.identity = identity
        self.step = step


class RpcTimeout(RpcError):
    pass


def _finish(done: asyncio.Future) -> None:
    if not done.done():
        done.set_result(None)


async def _until(done: asyncio.Future, timeout: float) -> None:
    """Wait until ``done`` is resolved or ``timeout`` seconds passed, whichever comes first.

    A timer that resolves the future costs one handle per request; ``wait_for(shield(done))`` costs two tasks.
    """
    if done.done():
        return
    timer = asyncio.get_running_loop().call_later(timeout, _finish, done)
    try:
        await done
    finally:
        timer.cancel()


# Called after each attempt of ``call``: (``agent#action``, seconds, the node's reply or None when it was silent).
CallObserver = Callable[[str, float, Optional[Reply]], None]


class RpcClient:
    """Send Choria requests and collect replies.

    ``async with RpcClient(["nats://127.0.0.1:4222"]) as client:`` then ``await client.discover()``,
    ``await client.call(identity, agent, action, data)`` or ``await client.request(...)`` for many nodes.

    ``senderid`` (default: the caller id's name) is put in every request; ``reply_scope`` (a subject token)
    gives this client reply subjects of its own under the caller's; ``observer`` sees every attempt of ``call``.
    """

    def __init__(
        self,
        brokers: list[str],
        callerid: str = "zeroinit",
        collective: str = PROVISIONING_COLLECTIVE,
        tls: ssl.SSLContext | None = None,
        ttl: int = DEFAULT_TTL,
        connection=None,
        signer=None,
        senderid: str = "",
        reply_scope: str = "",
        observer: CallObserver | None = None,
    ):
        if reply_scope and not REPLY_SCOPE.match(reply_scope):
            raise ValueError(f"reply_scope {reply_scope!r} is not a subject token of letters, digits, '_' and '-'")
        self.brokers = list(brokers)
        self.callerid = caller_id(callerid)
        self.senderid = senderid or self.callerid.split("=", 1)[-1]
        self.reply_scope = reply_scope
        self.observer = observer
        self.collective = collective
        self.tls = tls
        self.ttl = ttl
        self.signer = signer  # choria.security.RequestSigner: sign every request (Choria's x509 security)
        self.nc = connection
        self._own_connection = connection is None
        self._waiters: dict[str, Callable[[Reply], None]] = {}
        self._sub = None
        self.undecodable = 0
        self.foreign_replies = 0
        self._callbacks: set[asyncio.Task] = set()

    async def __aenter__(self) -> RpcClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def connect(self) -> None:
        if self.nc is None:
            self.nc = await connect(self.brokers, name=self.callerid, tls=self.tls)
        self._sub = await self.nc.subscribe(self._reply_prefix() + ".>", cb=self._on_reply)
        await self.nc.flush()

    async def close(self) -> None:
        if self._sub is not None:
            try:
                await self._sub.unsubscribe()
            except NatsError:
                pass
            self._sub = None
        if self.nc is not None and self._own_connection:
            try:
                await self.nc.drain()
            except (NatsError, asyncio.TimeoutError):
                await self.nc.close()
        self.nc = None

    def _reply_prefix(self) -> str:
        prefix = reply_inbox_prefix(self.callerid, self.collective)
        return f"{prefix}.{self.reply_scope}" if self.reply_scope else prefix

    async def _on_reply(self, msg) -> None:
        # The reply subject ends in the request id: a reply nobody here waits for is not worth decoding.
        requestid = msg.subject.rsplit(".", 1)[-1]
        waiter = self._waiters.get(requestid)
        if waiter is None:
            self.foreign_replies += 1
            return
        try:
            reply = decode_reply(msg.data)
        except ProtocolError:
            self.undecodable += 1
            return
        if reply.requestid == requestid:
            waiter(reply)

    def new_request(self, agent: str, body: Any, identities: list[str] | None = None) -> Request:
        requestid = new_request_id()
        return Request(
            agent=agent,
            body=body,
            callerid=self.callerid,
            senderid=self.senderid,
            collective=self.collective,
            requestid=requestid,
            ttl=self.ttl,
            filter=identity_filter(identities) if identities else empty_filter(),
            reply_to=f"{self._reply_prefix()}.{requestid}"
            if self.reply_scope
            else reply_subject(self.callerid, requestid, self.collective),
        )

    async def publish_request(self, req: Request, identities: list[str] | None = None) -> None:
        """Node-directed when ``identities`` are given (one publish each), else broadcast to the agent."""
        payload = encode_request(req, self.signer)
        if identities:
            for identity in identities:
                await self.nc.publish(node_subject(identity, self.collective), payload)
        else:
            await self.nc.publish(broadcast_subject(req.agent, self.collective), payload)

    async def _exchange(
        self,
        req: Request,
        collect: Callable[[Reply], None],
        done: asyncio.Future,
        timeout: float,
        identities: list[str] | None = None,
    ) -> None:
        """Route replies to ``req`` into ``collect`` from publishing until ``done`` or ``timeout``."""
        self._waiters[req.requestid] = collect
        try:
            await self.publish_request(req, identities)
            await _until(done, timeout)
        finally:
            self._waiters.pop(req.requestid, None)

    async def request(
        self,
        agent: str,
        body: Any,
        identities: list[str] | None = None,
        timeout: float = 10.0,
        expect: int | None = None,
        on_reply: Callable[[Reply], Awaitable[None] | None] | None = None,
    ) -> list[Reply]:
        """Send one request and gather replies until ``timeout`` or until ``expect`` replies have come."""
        req = self.new_request(agent, body, identities)
        replies: list[Reply] = []
        done = asyncio.get_running_loop().create_future()
        wanted = expect if expect is not None else (len(identities) if identities else None)

        def collect(reply: Reply) -> None:
            if len(replies) >= MAX_REPLIES:
                return
            replies.append(reply)
            if on_reply is not None:
                result = on_reply(reply)
                if asyncio.iscoroutine(result):
                    task = asyncio.ensure_future(result)
                    self._callbacks.add(task)  # referenced until done: the loop keeps only weak references
                    task.add_done_callback(self._callbacks.discard)
            if wanted is not None and len(replies) >= wanted and not done.done():
                done.set_result(None)

        await self._exchange(req, collect, done, timeout, identities)
        return replies

    async def call(
        self,
        identity: str,
        agent: str,
        action: str,
        data: dict | None = None,
        timeout: float = 10.0,
        retries: int = 0,
        step: str = "",
    ) -> Reply:
        """One RPC to one node; retried with backoff on timeout. Raises RpcTimeout naming the step."""
        step = step or f"{agent}#{action}"
        delay = 0.5
        rpc = f"{agent}#{action}"
        for attempt in range(retries + 1):
            started = time.monotonic()
            replies = await self.request(
                agent,
                {"agent": agent, "action": action, "data": data or {}},
                identities=[identity],
                timeout=timeout,
                expect=1,
            )
            answer = next((reply for reply in replies if reply.senderid == identity), None)
            if self.observer is not None:
                self.observer(rpc, time.monotonic() - started, answer)
            if answer is not None:
                return answer
            if attempt < retries:
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
        raise RpcTimeout(
            f"{step}: no reply from {identity} within {timeout:.1f}s ({retries + 1} attempt{'' if retries == 0 else 's'})",
            identity=identity,
            step=step,
        )

    async def discover(self, timeout: float = 2.0, expect: int | None = None, flt: dict | None = None) -> list[str]:
        """Broadcast discovery: every node that answers ``ping`` with ``pong``; sorted identities."""
        req = self.new_request("discovery", DISCOVERY_PING)
        if flt:
            req.filter = flt
        seen: set[str] = set()
        done = asyncio.get_running_loop().create_future()

        def collect(reply: Reply) -> None:
            if not valid_identity(reply.senderid) or len(seen) >= MAX_REPLIES:
                self.undecodable += 1
                return
            seen.add(reply.senderid)
            if expect is not None and len(seen) >= expect and not done.done():
                done.set_result(None)

        await self._exchange(req, collect, done, timeout)
        return sorted(seen)


def reply_error(reply: Reply, step: str) -> str:
    """A human sentence for a failed mcorpc reply."""
    status = f"statuscode {reply.statuscode} {StatusCode.NAMES.get(reply.statuscode, '?')}"
    message = printable(reply.statusmsg, 500) or "no message"
    return f"{step} refused by {printable(reply.senderid, 260)}: {message} ({status})"
