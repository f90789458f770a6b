# Copyright: zeroinit.bootstrap contributors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)
"""A bulk run: discover the nodes waiting in provisioning mode, queue them, run the flow for each, report.

Thousands of nodes go through one RPC client (one reply subscription) with ``workers`` flows in flight. With
``wait``, the run keeps listening (``NodeEventListener``) and rediscovering for nodes that boot meanwhile; with
``expect``, it stops taking nodes once that many are provisioned. The result is the module's: per-node outcome
lists, counts and per-step timings.
"""

from __future__ import annotations

import asyncio
import math
import time
from array import array
from typing import Callable

from ..choria.filters import identity_filter
from ..choria.transport import ConnectError
from .deciders import decider_for
from .flow import (
    DEFERRED,
    FAILED,
    PROVISIONED,
    SHUTDOWN,
    STEPS,
    WOULD_PROVISION,
    Decider,
    NodeOutcome,
    ProvisioningFlow,
)
from .listener import ARRIVAL_EVENTS, NodeEvent, NodeEventListener
from .rpc import RpcClient, RpcError
from .settings import ProvisionError, ProvisionSettings
from .signing_pool import default_signing_processes

# Above this many wanted identities, discover everyone and intersect locally: an identity filter is
# evaluated by every node against every listed identity (O(n^2) across the fleet).
IDENTITY_FILTER_LIMIT = 64
REDISCOVER_INTERVAL = 5.0


def percentile(sorted_values: list, fraction: float) -> float:
    """Nearest-rank percentile of an already sorted list (0 for an empty one)."""
    if not sorted_values:
        return 0.0
    rank = max(0, min(len(sorted_values) - 1, math.ceil(round(fraction * len(sorted_values), 9)) - 1))
    return round(sorted_values[rank], 1)


def summarize_ms(values) -> dict:
    ordered = sorted(values)
    return {"count": len(ordered), "p50_ms": percentile(ordered, 0.50), "p99_ms": percentile(ordered, 0.99)}


class BulkRun:
    """One ``action=provision`` run: discovery and listening feed a queue, workers run the flow per node."""

    def __init__(
        self,
        settings: ProvisionSettings,
        decider: Decider | None,
        client_factory: Callable[[], RpcClient] | None = None,
    ):
        self.s = settings
        self.decider = decider
        self.client_factory = client_factory or settings.client
        self.client: RpcClient | None = None
        self.flow: ProvisioningFlow | None = None
        # Per node only what the result needs: its status, and a reason unless it was provisioned. Step timings go
        # into one array of floats per step (8 bytes a node), not a dict per node: memory grows with the fleet.
        self.statuses: dict[str, str] = {}
        self.reasons: dict[str, str] = {}
        self.step_ms: dict[str, array] = {step: array("d") for step in STEPS}
        self.node_ms = array("d")  # of the provisioned nodes
        self.discovered: set[str] = set()
        self.absent: list[str] = []
        self.wanted = set(settings.identities) if settings.identities else None
        self._provisioned = 0
        self._queue: asyncio.Queue | None = None
        self._expect_met: asyncio.Event | None = None

    # ----------------------------------------------------------------------------------------- the queue

    def admit(self, identity: str) -> None:
        if identity in self.discovered or (self.wanted is not None and identity not in self.wanted):
            return
        self.discovered.add(identity)
        self._queue.put_nowait(identity)

    def _expect_reached(self) -> bool:
        return bool(self.s.expect) and self._provisioned >= self.s.expect

    async def _worker(self) -> None:
        while True:
            identity = await self._queue.get()
            try:
                if not self._expect_reached():
                    self._record(await self.flow.run(identity))
            except Exception as exc:  # pylint: disable=broad-except
                # One node's unexpected error must not take the other flows down with it.
                self._record(NodeOutcome(identity, FAILED, f"unexpected error: {exc or type(exc).__name__}"))
            finally:
                self._queue.task_done()

    def _record(self, outcome: NodeOutcome) -> None:
        self.statuses[outcome.identity] = outcome.status
        for step, ms in outcome.timings.items():
            if step in self.step_ms:
                self.step_ms[step].append(ms)
        if outcome.status == PROVISIONED:
            self.reasons.pop(outcome.identity, None)
            self.node_ms.append(outcome.elapsed_ms)
            self._provisioned += 1
            if self._expect_reached():
                self._expect_met.set()
        elif outcome.reason:
            self.reasons[outcome.identity] = outcome.reason

    def _on_event(self, event: NodeEvent) -> None:
        if event.kind in ARRIVAL_EVENTS:
            self.admit(event.identity)

    async def _discover(self, expect: int | None) -> list[str]:
        wanted = self.wanted
        flt = identity_filter(sorted(wanted)) if wanted and len(wanted) <= IDENTITY_FILTER_LIMIT else None
        if wanted and expect is None:
            expect = len(wanted)
        return await self.client.discover(timeout=self.s.discovery_timeout, expect=expect, flt=flt)

    # ----------------------------------------------------------------------------------------- the run

    async def run(self) -> dict:
        """Discover (and, with ``wait``, keep listening), run every node's flow, return the outcome."""
        started = time.monotonic()
        self._queue = asyncio.Queue()
        self._expect_met = asyncio.Event()
        self.client = self.client_factory()
        try:
            await self.client.connect()
        except (ConnectError, RpcError) as exc:
            raise ProvisionError(str(exc)) from None
        self.flow = ProvisioningFlow(self.client, self.decider, self.s.flow_options())
        listener = NodeEventListener(self._on_event) if self.s.wait > 0 else None
        workers: list = []
        try:
            if listener is not None:
                await listener.start(self.client.nc)
            for identity in await self._discover(self.s.expect):
                self.admit(identity)
            discovery_s = time.monotonic() - started
            workers = [asyncio.ensure_future(self._worker()) for _slot in range(max(1, self.s.workers))]
            deadline = started + self.s.wait
            while not self._expect_met.is_set():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    await asyncio.wait_for(self._expect_met.wait(), min(remaining, REDISCOVER_INTERVAL))
                except asyncio.TimeoutError:
                    # Nodes whose startup event we missed (booted before we subscribed) answer discovery.
                    if deadline - time.monotonic() > 0:
                        for identity in await self._discover(None):
                            self.admit(identity)
            await self._queue.join()
        finally:
            for task in workers:
                task.cancel()
            if workers:
                await asyncio.gather(*workers, return_exceptions=True)
            if listener is not None:
                await listener.stop()
            await self.client.close()
        if self.wanted:
            self.absent = sorted(self.wanted - self.discovered)
        return self.result(time.monotonic() - started, discovery_s)

    def result(self, total_s: float, discovery_s: float = 0.0) -> dict:
        by_status: dict[str, list[str]] = {}
        for identity, status in self.statuses.items():
            by_status.setdefault(status, []).append(identity)
        provisioned = sorted(by_status.get(PROVISIONED, []))

        def messages(status: str) -> dict:
            return {identity: self.reasons.get(identity, "") for identity in sorted(by_status.get(status, []))}

        timings = {name: summarize_ms(values) for name, values in self.step_ms.items() if values}
        timings["node"] = summarize_ms(self.node_ms)
        timings["discovery_seconds"] = round(discovery_s, 3)
        timings["total_seconds"] = round(total_s, 3)
        timings["nodes_per_second"] = round(len(provisioned) / total_s, 1) if total_s > 0 else 0.0
        deferred, failed, shutdown = messages(DEFERRED), messages(FAILED), messages(SHUTDOWN)
        out = {
            "changed": bool(provisioned or shutdown),
            "provisioned": provisioned,
            "deferred": deferred,
            "failed": failed,
            "shutdown": shutdown,
            "absent": list(self.absent),
            "counts": {
                "discovered": len(self.discovered),
                "provisioned": len(provisioned),
                "deferred": len(deferred),
                "failed": len(failed),
                "shutdown": len(shutdown),
            },
            "timings": timings,
            "warnings": self.decider.warnings() if self.decider is not None else [],
        }
        if self.s.check_mode:
            out["would_provision"] = sorted(by_status.get(WOULD_PROVISION, []))
            out["changed"] = bool(out["would_provision"])
        return out


def provision(settings: ProvisionSettings) -> dict:
    """Synchronous entry point for a bulk run (the module, playbooks, benchmarks): the built-in signer signs in
    worker processes, forked here before the run's event loop starts."""
    decider = decider_for(settings, signing_processes=default_signing_processes())

    async def run() -> dict:
        try:
            return await BulkRun(settings, decider).run()
        finally:
            if decider is not None:
                await decider.finish()  # persistent helpers live in this loop

    try:
        return asyncio.run(run())
    finally:
        if decider is not None:
            decider.close()
