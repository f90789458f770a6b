# Copyright: zeroinit.bootstrap contributors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)
"""Find the nodes waiting on a provisioning network and read their inventory.

A node is found three ways, all on one NATS connection:

* it answers the broadcast ``discovery`` ping with ``pong``;
* it publishes a lifecycle event, e.g. at startup, or registration data (both heard by ``NodeEventListener``).

The listener subscribes before the ping goes out, so a node that connects while discovery runs is
seen one way or the other. Every node found is then asked for ``rpcutil#inventory`` with node-directed
requests, in batches sent concurrently, so a thousand nodes cost a few dozen requests rather than a thousand
round trips. Plain Python (asyncio + nats-py); the inventory plugin calls :func:`discover_fleet`.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from typing import Any, Callable

from ..choria.brokers import BrokerUrlError, normalize_brokers
from ..choria.protocol import DISCOVERY_PING, DISCOVERY_PONG, rpc_request_body
from ..choria.subjects import (
    IDENTITY_RULE,
    PROVISIONING_COLLECTIVE,
    valid_identity,
)
from ..choria.transport import ConnectError, connect, tls_context
from ..common.deps import MissingDependency, NatsError, require
from .listener import DEPARTURE_EVENTS, NodeEvent, NodeEventListener
from .rpc import RpcClient, RpcError, reply_error

DEFAULT_CALLERID = "zeroinit-inventory"
DEFAULT_DISCOVERY_TIMEOUT = 2.0
DEFAULT_INVENTORY_TIMEOUT = 10.0
CONNECT_TIMEOUT = 3.0

# One inventory request names up to INVENTORY_BATCH nodes (each gets its own node-directed copy); at most
# INVENTORY_IN_FLIGHT such requests are outstanding, which bounds the reply burst a 2-core broker absorbs.
INVENTORY_BATCH = 64
INVENTORY_IN_FLIGHT = 16
# Nodes that appear while listening trickle in; gather them this long so they share a request.
LATE_BATCH_DELAY = 0.05
# Alive events repeat on an interval: keep the newest few per node, not an unbounded history.
EVENTS_KEPT = 10


class DiscoveryError(RuntimeError):
    """Discovery could not run (bad option, broker unreachable, TLS files unusable); the text says which."""


# --------------------------------------------------------------------------------------------- pure helpers


def inventory_summary(data: Any) -> dict:
    """The inventory reply without its facts (those are kept apart), for the ``zeroinit_inventory`` hostvar."""
    if not isinstance(data, dict):
        return {}
    return {key: value for key, value in data.items() if key != "facts"}


def check_settings(timeout: Any, listen: Any, expect: Any, inventory_timeout: Any) -> None:
    """Refuse settings that would make discovery wait forever or not at all, naming the option."""
    for name, value, minimum in (
        ("discovery_timeout", timeout, 0.0),
        ("listen", listen, 0.0),
        ("inventory_timeout", inventory_timeout, 0.0),
    ):
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise DiscoveryError(f"{name} must be a number of seconds, got {value!r}")
        if value < minimum or (name != "listen" and value == 0):
            raise DiscoveryError(f"{name} must be {'>=' if name == 'listen' else '>'} 0 seconds, got {value!r}")
    if expect is not None and (not isinstance(expect, int) or isinstance(expect, bool) or expect < 1):
        raise DiscoveryError(f"expect must be a positive number of nodes, got {expect!r}")


def _tls_context(tls: dict | None) -> ssl.SSLContext | None:
    if not tls or not any(tls.get(k) for k in ("ca", "cert", "key")):
        return None
    if tls.get("key") and not tls.get("cert"):
        raise DiscoveryError("tls_key is set but tls_cert is not: a client key needs its certificate")
    try:
        return tls_context(ca=tls.get("ca") or None, cert=tls.get("cert") or None, key=tls.get("key") or None)
    except (OSError, ssl.SSLError) as exc:
        raise DiscoveryError(
            f"TLS files for the broker are unusable (ca={tls.get('ca')}, cert={tls.get('cert')}): {exc}"
        ) from None


# --------------------------------------------------------------------------------------------- discovery


class _Node:
    __slots__ = ("departed", "events", "facts", "inventory", "inventory_error", "registration_facts", "sources")

    def __init__(self) -> None:
        self.sources: set[str] = set()
        self.facts: dict | None = None
        self.registration_facts: dict | None = None
        self.inventory: dict | None = None
        self.inventory_error = ""
        self.events: list[dict] = []
        self.departed = False

    def record(self) -> dict:
        facts = self.facts if self.facts is not None else (self.registration_facts or {})
        record = {
            "facts": facts,
            "inventory": self.inventory,
            "events": list(self.events),
            "sources": sorted(self.sources),
        }
        if self.inventory_error:
            record["inventory_error"] = self.inventory_error
        return record


class FleetDiscovery:
    """One discovery run: ping, listen, inventory; :meth:`run` returns ``{identity: record}``.

    A record is ``{"facts", "inventory", "events", "sources"}`` plus ``"inventory_error"`` when the node was
    found but its inventory could not be read (it is still returned). Nodes whose last word was a shutdown or
    provisioned lifecycle event are left out: they are no longer waiting in provisioning mode.
    """

    def __init__(
        self,
        brokers: Any,
        collective: str = PROVISIONING_COLLECTIVE,
        timeout: float = DEFAULT_DISCOVERY_TIMEOUT,
        listen: float = 0.0,
        expect: int | None = None,
        tls: dict | None = None,
        callerid: str = DEFAULT_CALLERID,
        inventory_timeout: float = DEFAULT_INVENTORY_TIMEOUT,
        warn: Callable[[str], None] | None = None,
        signer=None,
    ) -> None:
        check_settings(timeout, listen, expect, inventory_timeout)
        if not valid_identity(collective) or "." in collective:
            raise DiscoveryError(f"collective {collective!r} is not a valid collective name")
        try:
            self.brokers = normalize_brokers(brokers)
        except BrokerUrlError as exc:
            raise DiscoveryError(str(exc)) from None
        self.collective = collective
        self.timeout = float(timeout)
        self.listen = float(listen)
        self.expect = expect
        self.tls = tls
        self.callerid = callerid or DEFAULT_CALLERID
        self.inventory_timeout = float(inventory_timeout)
        self.warn = warn or (lambda _msg: None)
        self.signer = signer  # choria.security.RequestSigner: sign the ping and the inventory requests
        self.nodes: dict[str, _Node] = {}
        self._here = 0  # nodes seen and not departed
        self.rejected: set[str] = set()
        self.listener = NodeEventListener(self._on_event, self._on_rejected)
        self.timings: dict[str, float] = {}
        self.latencies: dict[str, float] = {}  # identity -> seconds from its inventory request to the reply
        self._client: RpcClient | None = None
        self._enough: asyncio.Event | None = None
        self._inventory_started = False
        self._closed = False
        self._queue: list[str] = []
        self._tasks: list[asyncio.Task] = []
        self._slots: asyncio.Semaphore | None = None

    # ----------------------------------------------------------------------------------- bookkeeping

    def _known(self) -> int:
        """How many nodes are here (seen and not departed): counted as they come and go, not by a walk over
        every node, which made discovery quadratic in the fleet's size (one walk per pong)."""
        return self._here

    def _seen(self, identity: Any, source: str, revive: bool = False) -> _Node | None:
        """Note that ``identity`` was seen via ``source``; returns its node, or None when it is refused.

        Only a lifecycle event (``revive``) brings back a node that announced its departure. nats-py runs each
        subscription's callbacks in its own task, so a pong or registration the node sent before its shutdown
        may be handled after the shutdown event; lifecycle events share one subscription and stay in order.
        """
        if self._closed:
            return None
        if not valid_identity(identity):
            self._reject(repr(identity)[:80], source)
            return None
        node = self.nodes.get(identity)
        if node is None:
            node = self.nodes[identity] = _Node()
            self._here += 1
            if self._inventory_started:
                self._enqueue(identity)
        elif node.departed and revive:
            # Back after a shutdown (a restart): it is here again, and its inventory may never have been read.
            node.departed = False
            self._here += 1
            if self._inventory_started and node.inventory is None:
                self._enqueue(identity)
        node.sources.add(source)
        if self.expect is not None and self._enough is not None and self._known() >= self.expect:
            self._enough.set()
        return node

    def _reject(self, shown: str, source: str) -> None:
        if shown not in self.rejected:
            self.rejected.add(shown)
            self.warn(
                f"ignoring node identity {shown} seen via {source}: not usable as a NATS subject token and host "
                f"name ({IDENTITY_RULE})"
            )

    async def _on_pong(self, reply) -> None:
        if reply.body == DISCOVERY_PONG:
            self._seen(reply.senderid, "discovery")

    def _on_event(self, event: NodeEvent) -> None:
        if event.departure:
            if self._closed:
                return
            # Remembered even when the node is not known yet: its pong may still be waiting to be handled.
            node = self.nodes.get(event.identity)
            if node is None:
                node = self.nodes[event.identity] = _Node()
            elif not node.departed:
                self._here -= 1
            node.departed = True
            node.events = ([*node.events, event.summary])[-EVENTS_KEPT:]
            return
        node = self._seen(event.identity, event.source, revive=event.source == "lifecycle")
        if node is None:
            return
        if event.summary is not None:
            node.events = ([*node.events, event.summary])[-EVENTS_KEPT:]
        if event.facts is not None:
            node.registration_facts = event.facts

    def _on_rejected(self, shown: str, source: str, kind: str) -> None:
        if kind not in DEPARTURE_EVENTS and not self._closed:
            self._reject(shown, source)

    @property
    def undecodable(self) -> int:
        return self.listener.undecodable

    # ----------------------------------------------------------------------------------- inventory

    def _enqueue(self, identity: str) -> None:
        if not self._queue:
            asyncio.get_running_loop().call_later(LATE_BATCH_DELAY, self._flush)
        self._queue.append(identity)

    def _flush(self) -> None:
        queued, self._queue = self._queue, []
        queued = [identity for identity in queued if not self.nodes[identity].departed]
        for start in range(0, len(queued), INVENTORY_BATCH):
            self._tasks.append(asyncio.ensure_future(self._inventory(queued[start : start + INVENTORY_BATCH])))

    async def _inventory(self, batch: list[str]) -> None:
        async with self._slots:
            sent = time.monotonic()

            def arrived(reply) -> None:
                self.latencies.setdefault(reply.senderid, time.monotonic() - sent)

            try:
                replies = await self._client.request(
                    "rpcutil",
                    rpc_request_body("rpcutil", "inventory"),
                    identities=batch,
                    timeout=self.inventory_timeout,
                    expect=len(batch),
                    on_reply=arrived,
                )
            except (NatsError, RpcError) as exc:
                replies = []
                failure = "rpcutil#inventory could not be sent: %s" % (str(exc) or type(exc).__name__)
            else:
                failure = f"rpcutil#inventory: no reply within {self.inventory_timeout:.1f}s"
        answered = {}
        for reply in replies:
            answered.setdefault(reply.senderid, reply)
        for identity in batch:
            node = self.nodes[identity]
            reply = answered.get(identity)
            if reply is None:
                node.inventory_error = failure
            elif not reply.ok:
                node.inventory_error = reply_error(reply, "rpcutil#inventory")
            else:
                facts = reply.data.get("facts")
                node.facts = facts if isinstance(facts, dict) else {}
                node.inventory = inventory_summary(reply.data)
                node.inventory_error = ""

    # ----------------------------------------------------------------------------------- the run

    async def _discover(self) -> None:
        ping = asyncio.ensure_future(
            self._client.request("discovery", DISCOVERY_PING, timeout=self.timeout, on_reply=self._on_pong)
        )
        enough = asyncio.ensure_future(self._enough.wait())
        try:
            await asyncio.wait([ping, enough], return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (ping, enough):
                if not task.done():
                    task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if not ping.cancelled():
            ping.result()  # re-raises a failure to publish the ping

    async def run(self) -> dict:
        started = time.monotonic()
        ctx = _tls_context(self.tls)
        try:
            # Two attempts per broker, then give up: an inventory run should fail fast, not wait for a broker.
            nc = await connect(
                self.brokers,
                name=self.callerid,
                tls=ctx,
                connect_timeout=CONNECT_TIMEOUT,
                reconnect=False,
                max_reconnect_attempts=1,
            )
        except ConnectError as exc:
            raise DiscoveryError(
                f"cannot reach the provisioning broker(s) {', '.join(self.brokers)}: {str(exc).split(': ', 1)[-1]}"
            ) from None
        self._enough = asyncio.Event()
        self._slots = asyncio.Semaphore(INVENTORY_IN_FLIGHT)
        try:
            self._client = RpcClient(
                self.brokers,
                callerid=self.callerid,
                collective=self.collective,
                tls=ctx,
                connection=nc,
                signer=self.signer,
            )
            await self._client.connect()
            # Listen before the ping: a node that connects meanwhile is seen by its startup event.
            await self.listener.start(nc)
            await self._discover()
            self.timings["discovery"] = time.monotonic() - started
            self._inventory_started = True
            self._queue = sorted(self.nodes)
            self._flush()
            if self.listen > 0 and not self._enough.is_set():
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._enough.wait(), self.listen)
            self._closed = True
            self._flush()
            await asyncio.gather(*self._tasks)
            self.timings["total"] = time.monotonic() - started
        except NatsError as exc:
            raise DiscoveryError(
                f"lost the connection to the provisioning broker(s) {', '.join(self.brokers)} during discovery: "
                f"{exc or type(exc).__name__}"
            ) from None
        finally:
            self._closed = True
            for task in self._tasks:
                task.cancel()
            await self.listener.stop()
            if self._client is not None:
                await self._client.close()
            with contextlib.suppress(NatsError, asyncio.TimeoutError):
                await nc.close()
        return {
            identity: self.nodes[identity].record()
            for identity in sorted(self.nodes)
            if not self.nodes[identity].departed
        }


def discover_fleet(brokers: Any, **options: Any) -> dict:
    """Discover the provisioning fleet from synchronous code: ``{identity: {"facts", "inventory", "events",
    "sources"[, "inventory_error"]}}`` sorted by identity. ``options`` are FleetDiscovery's (``tls`` is
    ``{"ca", "cert", "key"}``, paths).

    Raises DiscoveryError when the options are wrong or no broker can be reached.
    """
    try:
        require("nats", "for discovery")
    except MissingDependency as exc:
        raise DiscoveryError(str(exc)) from None
    return asyncio.run(FleetDiscovery(brokers, **options).run())
