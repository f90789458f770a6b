# Copyright: zeroinit.bootstrap contributors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)
"""The agent's connections: a Link is one NATS connection and the nodes served on it; the LinkPool owns them all.

Per link there is ONE subscription per broadcast subject and one reader task for every node on it; node subjects
are individual subscriptions whose messages are routed into that shared reader, so 10,000 nodes cost 10,000
small subscription objects and no idle task each.

The pool keeps the provisioning links (``--connections K`` of them, nodes spread round-robin) and the links of
configured nodes: one per broker set for plain connections, one per node when it presents its own client
certificate. Opening a link, and reading a broker's INFO line, is shared by every node asking at the same
moment: nodes restart by the thousand at once.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from typing import Awaitable, Callable

from ..choria.brokers import normalize_brokers, parse_broker
from ..choria.config import (
    MIDDLEWARE_KEY,
    SECURITY_CA_KEY,
    SECURITY_CERT_KEY,
    SECURITY_KEY_KEY,
    SECURITY_PROVIDER_KEY,
)
from ..choria.subjects import broadcast_subject, node_subject, valid_publish_subject
from ..choria.transport import ConnectError, connect, tls_context
from ..common.text import printable
from .state import MODE_PROVISIONING, NodeState

log = logging.getLogger("zeroinit.agent")
# Nodes moving to a new connection at once (a renewal wave, a new trust bundle): each opening is a TLS handshake on
# the event loop every node of the process shares, so a thousand at once would hold every node's answers back.
RECONNECT_CONCURRENCY = 8

MessageHandler = Callable[["Link", object], Awaitable[None]]


class Link:
    """One NATS connection and the nodes served on it, per collective."""

    def __init__(
        self,
        brokers: list[str],
        name: str,
        on_message: MessageHandler,
        tls=None,
        dedicated: bool = False,
        on_close: Callable[[Link], None] | None = None,
        auth: dict | None = None,
    ):
        self.brokers = brokers
        self.auth = dict(auth or {})  # user and password, as connect() takes them
        self.name = name
        self.on_message = on_message
        self.on_close = on_close
        self.tls = tls
        self.dedicated = dedicated  # closed once its last node leaves
        self.nc = None
        self.inbox: asyncio.Queue | None = None
        self.reader: asyncio.Task | None = None
        self.by_subject: dict[str, NodeState] = {}
        self.node_subs: dict[str, object] = {}
        self.members: dict[str, dict[str, NodeState]] = {}
        self.broadcast_subs: dict[str, object] = {}
        self.closed = False

    async def open(self) -> Link:
        self.nc = await connect(
            self.brokers,
            name=self.name,
            tls=self.tls,
            disconnected_cb=self._disconnected,
            reconnected_cb=self._reconnected,
            **self.auth,
        )
        self.inbox = asyncio.Queue()
        self.reader = asyncio.create_task(self._read())
        return self

    async def _disconnected(self) -> None:
        if not self.closed:
            log.warning("%s: lost the connection to the broker; reconnecting", self.name)

    async def _reconnected(self) -> None:
        url = getattr(self.nc, "connected_url", None)
        log.warning("%s: connected again to %s", self.name, getattr(url, "netloc", "") or "the broker")

    async def _subscribe(self, subject: str):
        """A subscription whose messages land in this link's shared inbox (no task per subscription).

        nats-py gives every callback subscription its own task; a subscription without a callback only has a
        queue, which is replaced here by the link's inbox. Without that attribute (another nats-py), fall back
        to a callback subscription.
        """
        sub = await self.nc.subscribe(subject, pending_bytes_limit=0)
        own = getattr(sub, "_pending_queue", None)
        if isinstance(own, asyncio.Queue):
            sub._pending_queue = self.inbox
            while not own.empty():  # anything that arrived before the swap
                self.inbox.put_nowait(own.get_nowait())
            return sub
        await sub.unsubscribe()
        return await self.nc.subscribe(subject, cb=self._enqueue)

    async def _enqueue(self, msg) -> None:
        self.inbox.put_nowait(msg)

    async def _read(self) -> None:
        while True:
            msg = await self.inbox.get()
            try:
                await self.on_message(self, msg)
            except asyncio.CancelledError:
                raise
            except Exception:  # one bad message must never stop the reader
                log.exception("error handling a message on %s", msg.subject)
            finally:
                self.inbox.task_done()  # nats-py's drain waits for the queue to be processed

    async def attach(self, node: NodeState, collectives: list[str], agents) -> None:
        node.link = self
        for collective in collectives:
            subject = node_subject(node.identity, collective)
            self.by_subject[subject] = node
            self.node_subs[subject] = await self._subscribe(subject)
            self.members.setdefault(collective, {})[node.identity] = node
            for agent in agents:
                bsubject = broadcast_subject(agent, collective)
                if bsubject not in self.broadcast_subs:
                    self.broadcast_subs[bsubject] = await self._subscribe(bsubject)

    async def detach(self, node: NodeState) -> None:
        subjects = [node_subject(node.identity, c) for c, members in self.members.items() if node.identity in members]
        for subject in subjects:
            if self.by_subject.get(subject) is not node:
                continue
            self.by_subject.pop(subject, None)
            sub = self.node_subs.pop(subject, None)
            if sub is not None and not self.closed:
                try:
                    await sub.unsubscribe()
                except Exception:  # the connection may be gone already
                    pass
        for members in self.members.values():
            members.pop(node.identity, None)
        if node.link is self:
            node.link = None
        if self.dedicated and not any(self.members.values()):
            await self.close()

    async def publish(self, subject: str, payload: bytes) -> None:
        if self.closed or self.nc is None:
            return
        # A subject or size the server refuses would cost the connection (and every node on it) a reconnect.
        limit = getattr(self.nc, "max_payload", 0) or 0
        if not valid_publish_subject(subject) or (limit and len(payload) > limit):
            log.warning(
                "not publishing %d bytes to %s: not a subject or size the broker takes",
                len(payload),
                printable(subject, 80),
            )
            return
        try:
            await self.nc.publish(subject, payload)
        except Exception as exc:  # a lost connection reconnects; the message is lost as on any bus
            log.debug("could not publish to %s: %s", subject, exc)

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.nc is not None:
            try:
                await asyncio.wait_for(self.nc.drain(), 10)
            except Exception:
                try:
                    await self.nc.close()
                except Exception:
                    pass
        if self.reader is not None:
            self.reader.cancel()
            try:
                await self.reader
            except (asyncio.CancelledError, Exception):
                pass
        if self.on_close is not None:
            self.on_close(self)


class LinkPool:
    """Every link of the agent: where each node is served, by its mode and its configuration."""

    def __init__(
        self,
        brokers: list[str],
        connections: int,
        on_message: MessageHandler,
        stopping: asyncio.Event,
        tls=None,
        auth: dict | None = None,
    ):
        self.brokers = brokers
        self.tls = tls  # of the provisioning links; configured links take theirs from the node's configuration
        self.auth = dict(auth or {})
        self.connections = max(1, connections)
        self.on_message = on_message
        self.stopping = stopping
        self.provisioning: list[Link] = []
        self.configured: dict[tuple, Link] = {}
        self._next = 0
        self._broker_info: dict[str, dict] = {}
        # In-progress INFO reads and link opens, shared by every node asking meanwhile: nodes restart by the
        # thousand at once, and each opening its own connection to the same broker costs a connect apiece.
        self._broker_info_pending: dict[str, asyncio.Future] = {}
        self._opening: dict[tuple, asyncio.Future] = {}
        self._reconnecting: asyncio.Semaphore | None = None

    # -------------------------------------------------------------------------------------- provisioning

    async def open_provisioning(self) -> bool:
        """Connect to the provisioning brokers, retrying while they are unreachable (they may start later)."""
        if not self.brokers:
            return False
        delay = 0.5
        while not self.stopping.is_set():
            try:
                for index in range(len(self.provisioning), self.connections):
                    name = f"zeroinit-agent-{os.getpid()}-{index}"
                    link = Link(self.brokers, name, self.on_message, tls=self.tls, auth=self.auth)
                    self.provisioning.append(await link.open())
                return True
            except ConnectError as exc:
                log.warning("%s; retrying in %.1fs", exc, delay)
                try:
                    await asyncio.wait_for(self.stopping.wait(), delay)
                except asyncio.TimeoutError:
                    pass
                delay = min(delay * 2, 30.0)
        return False

    async def _provisioning_link(self) -> Link:
        if not self.provisioning and not await self.open_provisioning():
            raise ConnectError("no provisioning connection")
        link = self.provisioning[self._next % len(self.provisioning)]
        self._next += 1
        return link

    # -------------------------------------------------------------------------------------- configured

    def _forget(self, link: Link) -> None:
        for key, value in list(self.configured.items()):
            if value is link:
                del self.configured[key]

    async def _configured_link(self, node: NodeState) -> Link:
        config = node.config
        brokers = normalize_brokers(config.get(MIDDLEWARE_KEY), allow_empty=True)
        files = [config.get(k, "") for k in (SECURITY_CERT_KEY, SECURITY_KEY_KEY, SECURITY_CA_KEY)]
        uses_files = config.get(SECURITY_PROVIDER_KEY, "file") == "file" and all(f and os.path.exists(f) for f in files)
        if uses_files and not any(url.startswith("tls://") for url in brokers):
            # nats:// may still be a TLS broker: its INFO line says so. Asked once per broker, not per node.
            infos = [await self.broker_info(url) for url in brokers]
            uses_files = any(info.get("tls_required") for info in infos)
        if uses_files:
            # A client certificate is per node, so is its connection; nats-py upgrades to TLS with it.
            key: tuple = ("tls", node.identity)
            tls = tls_context(ca=files[2], cert=files[0], key=files[1])
        else:
            key, tls = ("plain", *brokers), None
        link = self.configured.get(key)
        if link is None or link.closed:
            opening = self._opening.get(key)
            if opening is None:
                name = node.identity if uses_files else f"zeroinit-agent-{os.getpid()}-configured"
                link = Link(brokers, name, self.on_message, tls=tls, dedicated=uses_files, on_close=self._forget)
                opening = asyncio.ensure_future(link.open())
                self._opening[key] = opening
                opening.add_done_callback(lambda done, key=key: self._link_opened(key, done))
            link = await asyncio.shield(opening)
        return link

    def _link_opened(self, key: tuple, done: asyncio.Future) -> None:
        # Runs before the waiters resume (first callback), so they and later callers find the link stored.
        if self._opening.get(key) is done:
            del self._opening[key]
        if not done.cancelled() and done.exception() is None:
            self.configured[key] = done.result()

    async def broker_info(self, url: str) -> dict:
        """The INFO a nats-server sends first (tls_required, tls_verify), cached; {} when unreachable."""
        if url in self._broker_info:
            return self._broker_info[url]
        pending = self._broker_info_pending.get(url)
        if pending is None:
            pending = asyncio.ensure_future(self._read_broker_info(url))
            self._broker_info_pending[url] = pending
            pending.add_done_callback(lambda _done, url=url: self._broker_info_pending.pop(url, None))
        return await asyncio.shield(pending)

    async def _read_broker_info(self, url: str) -> dict:
        info: dict = {}
        try:
            broker = parse_broker(url)
            reader, writer = await asyncio.wait_for(asyncio.open_connection(broker.host, broker.port), 5)
            try:
                line = await asyncio.wait_for(reader.readline(), 5)
            finally:
                writer.close()
            if line.startswith(b"INFO "):
                info = json.loads(line[5:].decode("utf-8"))
                self._broker_info[url] = info
        except (OSError, ValueError, asyncio.TimeoutError) as exc:
            log.debug("could not read INFO from %s: %s", url, exc)
        return info

    # -------------------------------------------------------------------------------------- nodes

    async def attach(self, node: NodeState) -> Link:
        """Serve ``node`` on the link its mode asks for; returns that link."""
        if node.mode == MODE_PROVISIONING:
            link = await self._provisioning_link()
        else:
            link = await self._configured_link(node)
        names, _main = node.collectives
        await link.attach(node, names, node.agents)
        return link

    async def reconnect(self, node: NodeState) -> Link | None:
        """Serve a configured node on a new connection made with its files as they are now (a renewed certificate, a
        new trust bundle), then leave the old one: its subjects are subscribed on both for a moment, never on none.

        A node on a shared plain connection presents no certificate of its own: nothing to do (None). When the new
        connection cannot be made, the node stays on the old one and the error is raised.
        """
        if self._reconnecting is None:  # made in the running loop
            self._reconnecting = asyncio.Semaphore(RECONNECT_CONCURRENCY)
        async with self._reconnecting:
            return await self._reconnect(node)

    async def _reconnect(self, node: NodeState) -> Link | None:
        old = node.link
        if old is None or not old.dedicated or node.mode == MODE_PROVISIONING:
            return None
        keys = [key for key, link in self.configured.items() if link is old]
        for key in keys:
            del self.configured[key]
        new = None
        try:
            new = await self._configured_link(node)
            names, _main = node.collectives
            await new.attach(node, names, node.agents)
        except BaseException:
            for key in keys:
                self.configured[key] = old
            node.link = old
            if new is not None and new is not old:
                await new.detach(node)
            raise
        await old.detach(node)
        return new

    def trust_more(self, node: NodeState) -> bool:
        """Add the CAs of the node's bundle file to the TLS context of its connection, for this and every reconnection
        (a widened bundle drops nothing, so no new connection is needed). False when the node has no such connection."""
        link = node.link
        path = node.config.get(SECURITY_CA_KEY)
        if link is None or not link.dedicated or link.tls is None or not path:
            return False
        try:
            link.tls.load_verify_locations(cafile=path)
        except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
            log.warning("%s: could not add %s to its connection's trust: %s", node.identity, path, exc)
            return False
        return True

    def links(self) -> list[Link]:
        return self.provisioning + list(self.configured.values())

    async def close(self) -> None:
        await asyncio.gather(*(link.close() for link in self.links()), return_exceptions=True)
