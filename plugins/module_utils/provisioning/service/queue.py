# Copyright: zeroinit.bootstrap contributors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)
"""The provisioner service's work queue: one entry per node, handed to workers, re-queued with backoff.

Pure asyncio (no NATS). Nodes enter from discovery and from events (``add``); a node already queued, deferred
or being worked is not queued twice, its "last seen" time is refreshed instead. A worker ``take``s an entry and
reports exactly one ending: ``complete`` (provisioned: late events for it are ignored for ``done_grace``),
``defer`` or ``fail`` (re-queued after a capped, jittered exponential backoff; after ``retry_limit`` attempts
the node is dropped with the reason, until it is found again), ``postpone`` (re-queued at a given time without
counting an attempt: another instance holds its claim) or ``drop``.

Differences from Choria's provisioner, on purpose: Choria forgets a deferred or failed node at once and tries
again whenever it is next found, so a node that sends events often is retried without backoff; here the backoff
holds. Choria's queue is a channel of 50000; here ``limit`` caps the entries (memory stays bounded), and nodes
beyond it are refused, counted and logged.

``pause()`` stops handing out entries at once (no ``take`` returns while paused); entries already handed out
finish. ``tick()`` (called by the daemon every second or so) evicts nodes not seen for ``stale_after`` seconds
(three discovery intervals) unless a worker has them.
"""

from __future__ import annotations

import asyncio
import collections
import heapq
import logging
import random
import time
from typing import Callable, NamedTuple, Optional

DISCOVERY = "discovery"
EVENT_SOURCES = ("startup", "alive", "registration")
SOURCES = (DISCOVERY, *EVENT_SOURCES)
_READY, _DEFERRED, _BUSY = "ready", "deferred", "busy"
LOG_EVERY = 10.0  # seconds between two "queue full" warnings

log = logging.getLogger("zeroinit.provisioner.queue")


class QueueEntry:
    """One node in the queue. Workers read it; only the queue changes it."""

    __slots__ = ("attempts", "first_seen", "identity", "last_seen", "ready_at", "reason", "source", "state", "ticket")

    def __init__(self, identity: str, source: str, now: float):
        self.identity = identity
        self.source = source
        self.first_seen = now
        self.last_seen = now
        self.attempts = 0
        self.state = _READY
        self.ready_at = now
        self.reason = ""
        self.ticket = 0  # bumped on every re-queue, so stale references in the ready list and heap are skipped

    def __repr__(self) -> str:
        return f"QueueEntry({self.identity!r}, {self.state}, attempts={self.attempts})"


class Disposition(NamedTuple):
    """What became of a node after a defer or failure."""

    dropped: bool
    delay: float
    attempts: int
    reason: str


class QueueObserver:
    """What the queue reports as it happens; the daemon passes one that feeds the metrics. Does nothing here."""

    def entered(self, identity: str, source: str) -> None:
        """A node entered the queue (not a refresh of a queued one)."""

    def rejected(self, identity: str, source: str) -> None:
        """The queue was full; the node was not queued."""

    def evicted(self, identity: str, idle: float) -> None:
        """A queued node was not seen for ``stale_after`` seconds and left the queue."""

    def dropped(self, identity: str, reason: str, attempts: int) -> None:
        """A node left the queue without being provisioned (retry limit, or ``drop``)."""


class WorkQueue:
    """The de-duplicated work queue; see the module docstring."""

    def __init__(
        self,
        *,
        limit: int = 50000,
        retry_limit: int = 10,
        base_delay: float = 2.0,
        max_delay: float = 300.0,
        stale_after: float = 180.0,
        done_grace: float = 60.0,
        observer: Optional[QueueObserver] = None,
        clock: Callable[[], float] = time.monotonic,
        rand: Callable[[], float] = random.random,
    ):
        self.limit = limit
        self.retry_limit = retry_limit
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.stale_after = stale_after
        self.done_grace = done_grace
        self.observer = observer or QueueObserver()
        self._clock = clock
        self._rand = rand
        self._entries: dict = {}
        self._ready: collections.deque = collections.deque()  # (identity, ticket), oldest first
        self._deferred: list = []  # heap of (ready_at, sequence, identity, ticket)
        self._sequence = 0
        self._done: collections.OrderedDict = collections.OrderedDict()  # identity -> ignore adds until
        self._waiters: collections.deque = collections.deque()
        self._timer: Optional[asyncio.TimerHandle] = None
        self._timer_at = float("inf")
        self._paused = False
        self.waiting = 0  # entries ready to be taken
        self.deferred = 0  # entries waiting for their next attempt
        self.busy = 0  # entries handed to workers
        self.rejected_total = 0
        self._rejected_unlogged = 0
        self._last_full_log = float("-inf")

    # Entering -----------------------------------------------------------------------------------------------------

    def add(self, identity: str, source: str) -> bool:
        """Queue ``identity`` found by ``source``; True if it entered, False if known, just done, or the queue is
        full. Identities are expected to be valid already (the listener and discovery check them)."""
        if source not in SOURCES:
            raise ValueError(f"unknown source {source!r}; expected one of {', '.join(SOURCES)}")
        now = self._clock()
        entry = self._entries.get(identity)
        if entry is not None:
            entry.last_seen = now
            return False
        until = self._done.get(identity)
        if until is not None:
            if until > now:
                return False
            del self._done[identity]
        if len(self._entries) >= self.limit:
            self._reject(identity, source, now)
            return False
        entry = QueueEntry(identity, source, now)
        self._entries[identity] = entry
        self._push_ready(entry)
        self.observer.entered(identity, source)
        self._dispatch()
        return True

    def _reject(self, identity: str, source: str, now: float) -> None:
        self.rejected_total += 1
        self._rejected_unlogged += 1
        self.observer.rejected(identity, source)
        if now - self._last_full_log >= LOG_EVERY:
            log.warning(
                "work queue full (%d nodes): refused %s and %d more since the last warning",
                self.limit,
                identity,
                self._rejected_unlogged - 1,
            )
            self._last_full_log = now
            self._rejected_unlogged = 0

    # Handing out --------------------------------------------------------------------------------------------------

    async def take(self) -> QueueEntry:
        """The next node to work; waits while the queue is empty or paused. The caller must end it (see below)."""
        self._dispatch()  # due entries go to the workers already waiting first
        if not self._paused and not self._waiters:
            entry = self._pop_ready()
            if entry is not None:
                return entry
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        self._schedule_timer()
        try:
            return await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self._give_back(waiter.result())
            raise

    def _give_back(self, entry: QueueEntry) -> None:
        """An entry handed to a waiter that was cancelled before it ran: first in line again."""
        self.busy -= 1
        entry.state = _READY
        entry.ticket += 1
        self._ready.appendleft((entry.identity, entry.ticket))
        self.waiting += 1
        self._dispatch()

    # Endings (exactly one per taken entry) ----------------------------------------------------------------------

    def complete(self, entry: QueueEntry) -> None:
        """Provisioned: the node leaves the queue; events about it are ignored for ``done_grace`` seconds."""
        self._finish(entry)
        self._remember_done(entry.identity)

    def defer(self, entry: QueueEntry, reason: str) -> Disposition:
        """The helper or signer said "not yet": try again after the backoff (counts as an attempt)."""
        return self._retry(entry, reason)

    def fail(self, entry: QueueEntry, reason: str) -> Disposition:
        """A helper, RPC or other error: try again after the backoff (counts as an attempt)."""
        return self._retry(entry, reason)

    def postpone(self, entry: QueueEntry, delay: float, reason: str) -> None:
        """Try again after ``delay`` seconds without counting an attempt (e.g. another instance holds the node)."""
        self._require_busy(entry)
        self.busy -= 1
        entry.reason = reason
        self._push_deferred(entry, self._clock() + max(0.0, delay))
        self._dispatch()

    def drop(self, entry: QueueEntry, reason: str, done_elsewhere: bool = False) -> None:
        """The node leaves the queue; with ``done_elsewhere`` (provisioned by another instance) late events about
        it are ignored for ``done_grace`` seconds, as after ``complete``."""
        self._finish(entry)
        if done_elsewhere:
            self._remember_done(entry.identity)
        else:
            self.observer.dropped(entry.identity, reason, entry.attempts)

    def _retry(self, entry: QueueEntry, reason: str) -> Disposition:
        self._require_busy(entry)
        entry.attempts += 1
        entry.reason = reason
        if entry.attempts >= self.retry_limit:
            self._finish(entry)
            self.observer.dropped(entry.identity, reason, entry.attempts)
            return Disposition(True, 0.0, entry.attempts, reason)
        delay = self.backoff(entry.attempts)
        self.busy -= 1
        self._push_deferred(entry, self._clock() + delay)
        self._dispatch()
        return Disposition(False, delay, entry.attempts, reason)

    def backoff(self, attempts: int) -> float:
        """Seconds before attempt ``attempts + 1``: doubling from ``base_delay``, jittered x[0.75, 1.25), capped."""
        exponent = min(attempts - 1, 62)
        delay = self.base_delay * (2.0**exponent) * (0.75 + 0.5 * self._rand())
        return min(self.max_delay, delay)

    def _finish(self, entry: QueueEntry) -> None:
        self._require_busy(entry)
        self.busy -= 1
        entry.state = ""
        del self._entries[entry.identity]
        self._dispatch()

    def _require_busy(self, entry: QueueEntry) -> None:
        if entry.state != _BUSY or self._entries.get(entry.identity) is not entry:
            raise ValueError(f"{entry.identity} is not being worked ({entry.state or 'gone'}); it was ended twice")

    def _remember_done(self, identity: str) -> None:
        if self.done_grace <= 0:
            return
        self._done[identity] = self._clock() + self.done_grace
        self._done.move_to_end(identity)
        while len(self._done) > self.limit:
            self._done.popitem(last=False)

    # Pause --------------------------------------------------------------------------------------------------------

    @property
    def paused(self) -> bool:
        return self._paused

    def pause(self) -> None:
        """No entry is handed out from now on; entries already handed out are not affected."""
        self._paused = True

    def resume(self) -> None:
        self._paused = False
        self._dispatch()

    # Housekeeping -------------------------------------------------------------------------------------------------

    def tick(self) -> None:
        """Move due entries forward, evict stale ones, forget old "done" marks. Called periodically."""
        now = self._clock()
        for entry in list(self._entries.values()):
            idle = now - entry.last_seen
            if entry.state != _BUSY and idle > self.stale_after:
                self._evict(entry, idle)
        while self._done:
            identity, until = next(iter(self._done.items()))
            if until > now:
                break
            del self._done[identity]
        self._dispatch()

    def _evict(self, entry: QueueEntry, idle: float) -> None:
        if entry.state == _READY:
            self.waiting -= 1
        elif entry.state == _DEFERRED:
            self.deferred -= 1
        entry.state = ""
        del self._entries[entry.identity]
        log.info("%s left the queue: not seen for %.0fs", entry.identity, idle)
        self.observer.evicted(entry.identity, idle)

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, identity: str) -> bool:
        return identity in self._entries

    def snapshot(self, limit: int = 100) -> dict:
        """For ``status``: counts, and up to ``limit`` deferred nodes (soonest first) and busy nodes."""
        now = self._clock()
        deferred = sorted((e for e in self._entries.values() if e.state == _DEFERRED), key=lambda e: e.ready_at)
        busy = sorted(e.identity for e in self._entries.values() if e.state == _BUSY)
        return {
            "paused": self._paused,
            "queue": self.waiting,
            "deferred": self.deferred,
            "busy": self.busy,
            "entries": len(self._entries),
            "limit": self.limit,
            "rejected": self.rejected_total,
            "deferred_nodes": [
                {
                    "identity": e.identity,
                    "attempts": e.attempts,
                    "next_attempt_in": round(max(0.0, e.ready_at - now), 1),
                    "reason": e.reason[:200],
                }
                for e in deferred[:limit]
            ],
            "busy_nodes": busy[:limit],
        }

    # Internals ----------------------------------------------------------------------------------------------------

    def _push_ready(self, entry: QueueEntry) -> None:
        entry.state = _READY
        entry.ticket += 1
        self._ready.append((entry.identity, entry.ticket))
        self.waiting += 1

    def _push_deferred(self, entry: QueueEntry, ready_at: float) -> None:
        entry.state = _DEFERRED
        entry.ticket += 1
        entry.ready_at = ready_at
        self._sequence += 1
        heapq.heappush(self._deferred, (ready_at, self._sequence, entry.identity, entry.ticket))
        self.deferred += 1

    def _current(self, identity: str, ticket: int, state: str) -> Optional[QueueEntry]:
        entry = self._entries.get(identity)
        if entry is None or entry.ticket != ticket or entry.state != state:
            return None
        return entry

    def _pop_ready(self) -> Optional[QueueEntry]:
        while self._ready:
            identity, ticket = self._ready.popleft()
            entry = self._current(identity, ticket, _READY)
            if entry is not None:
                self.waiting -= 1
                self.busy += 1
                entry.state = _BUSY
                return entry
        return None

    def _promote_due(self, now: float) -> None:
        while self._deferred and self._deferred[0][0] <= now:
            _ready_at, _sequence, identity, ticket = heapq.heappop(self._deferred)
            entry = self._current(identity, ticket, _DEFERRED)
            if entry is not None:
                self.deferred -= 1
                self._push_ready(entry)

    def _dispatch(self) -> None:
        self._promote_due(self._clock())
        while not self._paused and self._waiters and self.waiting:
            waiter = self._waiters.popleft()
            if waiter.done():
                continue
            entry = self._pop_ready()
            if entry is None:
                self._waiters.appendleft(waiter)
                break
            waiter.set_result(entry)
        self._schedule_timer()

    def _schedule_timer(self) -> None:
        """Wake up when the soonest deferred entry is due, if anyone is waiting for work."""
        while self._deferred and self._current(self._deferred[0][2], self._deferred[0][3], _DEFERRED) is None:
            heapq.heappop(self._deferred)  # drop stale heap references so the timer aims at a real entry
        if not self._deferred or not self._waiters:
            return
        due = self._deferred[0][0]
        if self._timer is not None and self._timer_at <= due:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop (a synchronous caller): tick() or the next take() promotes due entries
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = due
        self._timer = loop.call_later(max(0.0, due - self._clock()), self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = float("inf")
        self._dispatch()
