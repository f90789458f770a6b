# Copyright: zeroinit.bootstrap contributors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)
"""Nodes entering provisioning mode, one record per node per boot: the Event-Driven Ansible source's work.

:class:`ArrivalFeed` listens with :class:`NodeEventListener` (startup and alive lifecycle events, registration
data) and hands each arrival to a coroutine (the rulebook's queue) as
``{"zeroinit": {"identity", "facts", "source"}}``. Facts come from the registration data; an event without any
(a lifecycle event) gets them from the node with ``rpcutil#inventory``.

One record per boot (:class:`ArrivalFilter`): a node announces itself several times per boot (a startup event,
registration data on two subjects at start and then every minute, alive events), so after a record the node's
registration and alive announcements stay quiet for ``dedupe_window`` seconds; a startup event is a new boot and
is recorded again (unless it comes within ``BOOT_GRACE`` of the node's last record: the same boot's startup
event, delivered after its registration data on another subscription). A node that leaves (``shutdown``,
``provisioned``) is forgotten, so it is recorded again when it comes back.

Bounded: announcements wait in a queue of ``queue_size`` (more are dropped, counted and logged) and the filter
remembers at most ``FILTER_LIMIT`` nodes. The first connection is retried with backoff until it succeeds, and
nats-py reconnects (and subscribes again) after that; a connection closed for good is made again.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from typing import Any, Awaitable, Callable

from ..choria.brokers import BrokerUrlError, normalize_brokers
from ..choria.subjects import PROVISIONING_COLLECTIVE
from ..choria.transport import ConnectError, connect, tls_context
from .listener import ARRIVAL_EVENTS, NodeEvent, NodeEventListener
from .rpc import RpcClient, RpcError

ARRIVAL_KEY = "zeroinit"
BOOT_GRACE = 2.0
FILTER_LIMIT = 100_000
INVENTORY_WORKERS = 16
RECONNECT_MAX_DELAY = 30.0
DROP_LOG_PERIOD = 10.0

log = logging.getLogger("zeroinit.eda.provisioning")


class ArrivalFilter:
    """Decides which announcements are a node entering provisioning mode (see the module's docstring)."""

    def __init__(self, window: float, limit: int = FILTER_LIMIT, clock: Callable[[], float] = time.monotonic):
        self.window = window
        self.limit = limit
        self.clock = clock
        self._recorded: collections.OrderedDict = collections.OrderedDict()  # identity -> time of its record

    def __len__(self) -> int:
        return len(self._recorded)

    def offer(self, event: NodeEvent) -> bool:
        """True when ``event`` is to be recorded."""
        if event.departure:
            self._recorded.pop(event.identity, None)
            return False
        if event.kind not in ARRIVAL_EVENTS:
            return False
        now = self.clock()
        last = self._recorded.get(event.identity)
        if last is not None:
            quiet = BOOT_GRACE if event.kind == "startup" else self.window
            if now - last < quiet:
                return False
        self._recorded[event.identity] = now
        self._recorded.move_to_end(event.identity)
        while len(self._recorded) > self.limit:
            self._recorded.popitem(last=False)
        return True


def arrival_record(identity: str, facts: dict, source: str) -> dict:
    """The event handed to the rulebook."""
    return {ARRIVAL_KEY: {"identity": identity, "facts": facts, "source": source}}


def _number(args: dict, name: str, default: float, minimum: float) -> float:
    value = args.get(name, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < minimum:
        raise ValueError(f"{name}: expected a number of at least {minimum:g}, got {value!r}")
    return value


class ArrivalFeed:
    """Announcements on a provisioning network -> one arrival record per node per boot -> ``emit(record)``."""

    def __init__(
        self,
        emit: Callable[[dict], Awaitable[Any]],
        brokers: list,
        collective: str = PROVISIONING_COLLECTIVE,
        tls: Any = None,
        dedupe_window: float = 3600.0,
        inventory_timeout: float = 10.0,
        queue_size: int = 10000,
        callerid: str = "zeroinit-eda",
        connect_timeout: float = 5.0,
    ):
        self.emit = emit
        self.brokers = brokers
        self.collective = collective
        self.tls = tls
        self.inventory_timeout = inventory_timeout
        self.callerid = callerid
        self.connect_timeout = connect_timeout
        self.filter = ArrivalFilter(dedupe_window)
        self.pending: asyncio.Queue = asyncio.Queue(maxsize=queue_size)
        self.dropped = 0
        self.emitted = 0
        self._last_drop_log = float("-inf")

    @classmethod
    def from_args(cls, emit: Callable[[dict], Awaitable[Any]], args: dict) -> ArrivalFeed:
        """A feed from the source's arguments; ``ValueError`` naming the argument that cannot be used."""
        unknown = sorted(set(args) - set(SOURCE_ARGUMENTS) - {"eda_feedback_queue"})
        if unknown:
            raise ValueError(f"unknown argument(s) {', '.join(unknown)}; expected {', '.join(SOURCE_ARGUMENTS)}")
        brokers = args.get("brokers")
        if isinstance(brokers, str):
            brokers = [brokers]
        if not isinstance(brokers, list) or not brokers:
            raise ValueError(f"brokers: expected a list of broker URLs, got {brokers!r}")
        try:
            brokers = normalize_brokers(brokers)
        except BrokerUrlError as exc:
            raise ValueError(f"brokers: {exc}") from None
        collective = args.get("collective", PROVISIONING_COLLECTIVE)
        if not isinstance(collective, str) or not collective:
            raise ValueError(f"collective: expected a name, got {collective!r}")
        try:
            tls = tls_context(args.get("tls_ca"), args.get("tls_cert"), args.get("tls_key"))
        except (OSError, ValueError) as exc:
            raise ValueError(f"tls_ca, tls_cert, tls_key: {exc}") from None
        queue_size = _number(args, "queue_size", 10000, 1)
        return cls(
            emit,
            brokers,
            collective=collective,
            tls=tls,
            dedupe_window=_number(args, "dedupe_window", 3600.0, 0),
            inventory_timeout=_number(args, "inventory_timeout", 10.0, 0.1),
            queue_size=int(queue_size),
            callerid=str(args.get("callerid") or "zeroinit-eda"),
        )

    # ------------------------------------------------------------------------------------------ events

    def on_event(self, event: NodeEvent) -> None:
        if not self.filter.offer(event):
            return
        try:
            self.pending.put_nowait(event)
        except asyncio.QueueFull:
            self.dropped += 1
            now = time.monotonic()
            if now - self._last_drop_log >= DROP_LOG_PERIOD:
                log.warning(
                    "%d arrivals waiting; dropped %s (%d dropped so far)",
                    self.pending.qsize(),
                    event.identity,
                    self.dropped,
                )
                self._last_drop_log = now

    @staticmethod
    def on_rejected(shown: str, source: str, kind: str) -> None:
        log.warning("ignored a %s %s announcement from %s: not a valid node identity", source, kind, shown)

    async def facts_of(self, rpc: RpcClient, event: NodeEvent) -> dict:
        """The event's facts, or the node's inventory facts; ``{}`` (logged) when the node does not answer."""
        if event.facts is not None:
            return event.facts
        try:
            reply = await rpc.call(event.identity, "rpcutil", "inventory", timeout=self.inventory_timeout)
        except RpcError as exc:
            log.warning("no facts for %s: %s", event.identity, exc)
            return {}
        facts = reply.data.get("facts") if reply.ok and isinstance(reply.data, dict) else None
        return facts if isinstance(facts, dict) else {}

    async def forward(self, rpc: RpcClient) -> None:
        while True:
            event = await self.pending.get()
            try:
                facts = await self.facts_of(rpc, event)
                await self.emit(arrival_record(event.identity, facts, event.kind))
                self.emitted += 1
            finally:
                self.pending.task_done()

    # ------------------------------------------------------------------------------------------ life

    async def connection(self, closed: asyncio.Event) -> Any:
        """A connection to the brokers, retried with backoff until one succeeds."""
        delay = 1.0
        while True:
            try:
                nc = await connect(
                    self.brokers,
                    name=self.callerid,
                    tls=self.tls,
                    connect_timeout=self.connect_timeout,
                    closed_cb=self._closed(closed),
                )
            except ConnectError as exc:
                log.warning("%s; trying again in %.0fs", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RECONNECT_MAX_DELAY)
                continue
            log.info("listening for nodes entering provisioning mode on %s", ", ".join(self.brokers))
            return nc

    @staticmethod
    def _closed(closed: asyncio.Event) -> Callable[[], Awaitable[None]]:
        async def closed_cb() -> None:
            closed.set()

        return closed_cb

    async def run(self) -> None:
        """Forever (until cancelled): connect, listen, forward arrivals; connect again if the connection closes."""
        while True:
            closed = asyncio.Event()
            nc = await self.connection(closed)
            listener = NodeEventListener(self.on_event, self.on_rejected)
            rpc = RpcClient(self.brokers, callerid=self.callerid, collective=self.collective, connection=nc)
            workers: list = []
            try:
                await rpc.connect()
                await listener.start(nc)
                workers = [asyncio.ensure_future(self.forward(rpc)) for _worker in range(INVENTORY_WORKERS)]
                await closed.wait()
                log.warning("the connection to the brokers closed; connecting again")
            finally:
                for worker in workers:
                    worker.cancel()
                await asyncio.gather(*workers, return_exceptions=True)
                await listener.stop()
                await rpc.close()
                if not nc.is_closed:
                    await nc.close()


SOURCE_ARGUMENTS = (
    "brokers",
    "collective",
    "tls_ca",
    "tls_cert",
    "tls_key",
    "dedupe_window",
    "inventory_timeout",
    "queue_size",
    "callerid",
)


async def run_arrival_feed(emit: Callable[[dict], Awaitable[Any]], args: dict) -> None:
    """The event source's ``main``: the feed from ``args``, run until cancelled."""
    await ArrivalFeed.from_args(emit, args).run()
