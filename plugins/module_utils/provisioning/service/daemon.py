# Copyright: zeroinit.bootstrap contributors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)
"""``zeroinit-provisioner run``: the provisioning flow run for ever, by one or several instances of a site.

What one instance wires, from its checked configuration:

- one NATS connection (``connect``: reconnects for ever, to any server of the cluster);
- the site's control subject (``control.py``): pause, resume, status, and ``hello`` to find other instances;
- with JetStream, the site's claims bucket (``claims.py``) and paused flag; without, this instance runs alone
  and says so, and refuses to start while another instance of the site answers ``hello``;
- the nodes' lifecycle events and registration data (``NodeEventListener``) and a broadcast discovery at start
  and every ``interval``, all into one de-duplicated ``WorkQueue``;
- in cluster mode, the site's other live instances (``hello`` every few seconds), so each instance takes the
  nodes that fall to it first (``membership.py``) and the others' only when it has nothing else to do;
- ``workers`` workers: take a node, claim it (before the first request), run ``ProvisioningFlow`` (THE flow
  ``choria_provision`` runs too) while the claim is renewed, then mark it done (provisioned) or release it and
  re-queue the node with backoff (deferred, failed); a claim lost meanwhile cancels the node's run;
- Choria's statistics on ``/metrics`` and ``/healthz`` (``metrics.py``), and one JSON log line per node outcome;
- with ``renewal.brokers``, the renewal responder (``..renewal``) on a connection of its own to the members' broker:
  it answers the configured nodes' renewal requests, in one queue group with any other responder of the site.

All instances of a site send as one caller, ``choria=<site>.provisioner``: a node's provisioning lock is per
caller, so another instance can finish a node whose instance died. Each instance puts its own name in every
request's ``senderid`` (a capture of the bus shows who did what) and gets its replies on a subject of its own.

SIGTERM (or SIGINT) drains: nothing new starts, the nodes in flight finish, their claims are closed, exit 0. A
second signal stops at once (in-flight runs are cancelled, their claims released).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import signal
import time
from typing import Any, Optional

from ...choria.brokers import normalize_brokers
from ...choria.protocol import caller_id
from ...choria.subjects import valid_identity
from ...choria.transport import ConnectError, connect, tls_context
from ...common.deps import NatsError
from ...common.files import read_text
from ...pki.issuance import check_signer_params
from ..deciders import HelperDecider, decider_for
from ..flow import DEFERRED, PROVISIONED, SHUTDOWN, NodeOutcome, ProvisioningFlow
from ..helper import helper_argv
from ..listener import ARRIVAL_EVENTS, NodeEvent, NodeEventListener
from ..renewal import RenewalResponder, RenewalSetupError, responder_from_params
from ..rpc import RpcClient, RpcError
from ..settings import ProvisionError, ProvisionSettings
from .claims import BucketError, Claim, ClaimHeld, ClaimStore, probe_jetstream
from .config import ConfigHooks, ServiceConfig
from .control import (
    ControlClient,
    ControlCodec,
    ControlError,
    ControlHandlers,
    ControlServer,
    PauseRecord,
    derive_control_key,
    first_started,
)
from .logs import log_fields
from .membership import SiteMembers
from .metrics import LivenessCheck, MonitorServer, ServiceMetrics
from .queue import QueueEntry, WorkQueue

log = logging.getLogger("zeroinit.provisioner")

CLUSTER, SINGLE = "cluster", "single"
DISCOVERY_TIMEOUT = 2.0  # Choria's broadcast discovery timeout
TICK = 1.0  # queue housekeeping and liveness
PAUSE_SYNC = 5.0  # seconds between two reads of the site's paused flag (a pause this instance missed)
BUCKET_RETRY = 2.0  # seconds before a node whose claim could not be asked for is tried again
HELLO_GATHER = 1.0
MEMBERSHIP_INTERVAL = 3.0  # seconds between two looks at the site's live instances
MEMBERSHIP_GATHER = 0.5
START_TIMEOUT = 60.0  # seconds to keep trying the site's buckets at start (a cluster electing leaders)
DISCOVERY_TASK = "discovery"
STATUS_NODES = 50  # deferred and busy nodes listed in a status answer
REJECTED_LOG_EVERY = 10.0


class ServiceError(RuntimeError):
    """The service cannot start (broker unreachable, another instance running alone, unusable signer...)."""


def site_caller(site: str) -> str:
    """The caller id every instance of ``site`` sends as."""
    return caller_id(f"{site}.provisioner")


def reply_scope(instance: str) -> str:
    """The subject token of this instance's replies: its name with every character a token may not hold as ``_``."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", instance)[:128]


async def drain_connection(nc, timeout: float = 5.0) -> None:
    """Drain a NATS connection (what was published goes out), closing it when draining fails or takes too long."""
    try:
        await asyncio.wait_for(nc.drain(), timeout)
    except (NatsError, asyncio.TimeoutError):
        with contextlib.suppress(NatsError):
            await nc.close()


def config_hooks() -> ConfigHooks:
    """The checks the configuration borrows from the code each rule lives in."""
    return ConfigHooks(brokers=normalize_brokers, helper=helper_argv, signer=check_signer_params)


def provision_settings(config: ServiceConfig) -> ProvisionSettings:
    """What the flow needs, from the service's configuration (ProvisionError naming the option)."""
    return ProvisionSettings(
        brokers=config.brokers,
        token=config.token,
        collective=config.collective,
        callerid=site_caller(config.site),
        workers=config.workers,
        helper=config.helper,
        helper_timeout=config.helper_timeout,
        helper_mode=config.helper_mode,
        helper_concurrency=config.helper_concurrency,
        signer=config.signer,
        configuration=dict(config.configuration),
        tls_ca=config.tls_ca,
        tls_cert=config.tls_cert,
        tls_key=config.tls_key,
        signing_cert=config.signing_cert,
        signing_key=config.signing_key,
        signing_key_passphrase=config.signing_key_passphrase or None,
        jwt_verify_key=config.jwt_verify_key,
        pki=config.features_pki,
    )


def control_codec(config: ServiceConfig) -> ControlCodec:
    return ControlCodec(config.site, derive_control_key(config.site, config.token, config.control_key))


class ProvisionerDaemon(ControlHandlers):
    """One instance of the provisioner service; ``await run()`` until ``stop()`` (or a signal), then drained."""

    def __init__(self, config: ServiceConfig, decider: Any = None, handle_signals: bool = False):
        self.config = config
        self.instance = config.instance
        self.settings = provision_settings(config)
        self.decider = decider
        self.handle_signals = handle_signals
        self.metrics = ServiceMetrics(config.site)
        self.queue = WorkQueue(
            limit=config.queue_limit,
            retry_limit=config.retry_limit,
            max_delay=config.retry_max_delay,
            stale_after=config.stale_after,
            observer=self.metrics.queue_observer(),
        )
        self.mode = ""
        self.started = 0.0
        self.paused = False
        self.draining = False
        self.closing = False
        self.provisioned_total = 0
        self.failed_total = 0
        self.nc: Any = None
        self.client: Optional[RpcClient] = None
        self.flow: Optional[ProvisioningFlow] = None
        self.claims: Optional[ClaimStore] = None
        self.pause_record: Optional[PauseRecord] = None
        self.listener: Optional[NodeEventListener] = None
        self.control: Optional[ControlServer] = None
        self.control_client: Optional[ControlClient] = None
        self.members = SiteMembers(self.instance)
        self.monitor: Optional[MonitorServer] = None
        self.renewal: Optional[RenewalResponder] = None
        self.renewal_nc: Any = None  # the connection to the members' broker the responder answers on
        self._renewal_stop: Optional[asyncio.Event] = None
        self._renewal_task: Optional[asyncio.Task] = None
        self.liveness = LivenessCheck(lambda: self.nc is not None and self.nc.is_connected)
        self._pause_revision = 0
        self._stop: Optional[asyncio.Event] = None
        self._force: Optional[asyncio.Event] = None
        self._tasks: list = []
        self._workers: list = []
        self._rejected_logged = float("-inf")

    # Life ---------------------------------------------------------------------------------------------------------

    async def run(self) -> int:
        """Start, serve until stopped, drain; 0 after a drain. ServiceError when the service cannot start."""
        self._stop, self._force = asyncio.Event(), asyncio.Event()
        if self.handle_signals:
            loop = asyncio.get_running_loop()
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(signum, self.stop)
        try:
            await self.start()
            await self._stop.wait()
            await self.drain()
        finally:
            await self.close()
        return 0

    def stop(self) -> None:
        """Drain and exit (a signal calls this); a second call stops at once."""
        if self._stop is None:
            return
        if self._stop.is_set():
            log.warning("stopping now: %d node(s) in flight are cancelled", self.queue.busy)
            self._force.set()
        else:
            log.info("draining: no new node starts; %d node(s) in flight finish", self.queue.busy)
            self._stop.set()

    async def start(self) -> None:
        config = self.config
        if self.decider is None:
            try:
                self.decider = decider_for(self.settings)
            except ProvisionError as exc:
                raise ServiceError(str(exc)) from None
        if config.monitor_port:
            try:
                self.monitor = MonitorServer(
                    config.monitor_address, config.monitor_port, self.metrics.render, self.liveness.problem
                ).start()
            except OSError as exc:
                raise ServiceError(
                    f"monitor_port: cannot listen on {config.monitor_address}:{config.monitor_port}: {exc}"
                ) from None
        try:
            self.nc = await connect(
                self.settings.brokers,
                name=f"zeroinit-provisioner {self.instance}",
                tls=self.settings.tls(),
                disconnected_cb=self._on_disconnected,
                reconnected_cb=self._on_reconnected,
            )
        except (ConnectError, ProvisionError) as exc:
            raise ServiceError(str(exc)) from None
        problem = await probe_jetstream(self.nc)
        self.mode = SINGLE if problem else CLUSTER
        if problem:
            log.warning(
                "%s: no JetStream, so this is the only instance of site %s (%s)",
                self.instance,
                config.site,
                problem,
                extra=log_fields(mode=SINGLE, site=config.site),
            )
        codec = control_codec(config)
        self.started = time.time()  # just before subscribing: the order instances can find each other in
        self.control = ControlServer(
            self.nc, codec, self.instance, self, on_rejected=lambda _reason: self.metrics.control_rejected.inc()
        )
        await self.control.start()
        self.control_client = ControlClient(self.nc, codec, sender=self.instance)
        await self._refuse_a_second_single_instance()
        if self.mode == CLUSTER:
            await self._open_site_state()
        self.metrics.set_instance(self.instance, self.mode)
        self.metrics.track(self.queue, self.claims)
        self.client = self.settings.client(
            connection=self.nc,
            senderid=self.instance,
            reply_scope=reply_scope(self.instance),
            observer=self._observe_rpc,
        )
        await self.client.connect()
        self.flow = ProvisioningFlow(self.client, self.decider, self.settings.flow_options())
        self.listener = NodeEventListener(self._on_event, self._on_rejected)
        await self.listener.start(self.nc)
        if self.claims is not None:
            self._spawn(self.claims.run(), "claims")
        self._spawn(self._housekeeping(), "housekeeping")
        if self.mode == CLUSTER:
            self._spawn(self._membership_loop(), "membership")
        self._spawn(self._discovery_loop(), DISCOVERY_TASK)
        self._workers = [asyncio.ensure_future(self._worker()) for _slot in range(config.workers)]
        if config.renewal_brokers:
            await self._start_renewal()
        log.info(
            "%s started: site %s, %s mode, %d workers, discovery every %gs, %s",
            self.instance,
            config.site,
            self.mode,
            config.workers,
            config.interval,
            "PKI on (gencsr, certificates)" if config.features_pki else "PKI off (configuration only)",
            extra=log_fields(
                event="started",
                instance=self.instance,
                site=config.site,
                mode=self.mode,
                caller=self.settings.callerid,
                brokers=self.settings.brokers,
                decider="helper" if isinstance(self.decider, HelperDecider) else "signer",
                monitor=f"http://{self.monitor.address}:{self.monitor.port}" if self.monitor else None,
                renewal=config.renewal_brokers,
            ),
        )

    async def _start_renewal(self) -> None:
        """The renewal responder on its own connection to the members' broker (README "Certificate renewal")."""
        config = self.config
        try:
            site_ca = read_text(config.renewal_site_ca) if config.renewal_site_ca else None
        except (OSError, UnicodeDecodeError) as exc:
            raise ServiceError(f"renewal.site_ca: {exc}") from None
        try:
            self.renewal = responder_from_params(config.renewal_signer_params, site_ca)
            self.renewal.on_answer = self.metrics.renewal_answered
        except RenewalSetupError as exc:
            raise ServiceError(f"renewal.{exc}") from None
        try:
            self.renewal_nc = await connect(
                config.renewal_brokers,
                name=f"zeroinit-provisioner {self.instance} renewal",
                tls=tls_context(config.renewal_tls_ca, config.renewal_tls_cert, config.renewal_tls_key),
            )
        except (ConnectError, OSError, ValueError) as exc:
            raise ServiceError(f"renewal.brokers: {exc}") from None
        self._renewal_stop = asyncio.Event()
        self._renewal_task = asyncio.ensure_future(
            self.renewal.serve(self.renewal_nc, [config.renewal_collective], self._renewal_stop)
        )
        log.info(
            "%s answers renewal requests in collective %s on %s",
            self.instance,
            config.renewal_collective,
            ", ".join(config.renewal_brokers),
            extra=log_fields(event="renewal_started", instance=self.instance, site=config.site),
        )

    async def _stop_renewal(self) -> None:
        """Stop answering (the requests in hand are answered), then close the members' connection and the signer."""
        if self._renewal_task is not None:
            self._renewal_stop.set()
            with contextlib.suppress(asyncio.TimeoutError, NatsError):
                await asyncio.wait_for(self._renewal_task, 10.0)
            self._renewal_task = None
        if self.renewal_nc is not None:
            await drain_connection(self.renewal_nc)
            self.renewal_nc = None
        if self.renewal is not None:
            self.renewal.signer.close()
            self.renewal = None

    async def _open_site_state(self) -> None:
        """The claims bucket and the paused flag, tried again while the cluster is busy (electing leaders)."""
        deadline = time.monotonic() + START_TIMEOUT
        delay = 0.5
        while True:
            try:
                if self.claims is None:
                    self.claims = await ClaimStore.open(
                        self.nc,
                        self.config.site,
                        self.instance,
                        self.config.claim_ttl,
                        observer=self.metrics.claim_observer(),
                    )
                if self.pause_record is None:
                    self.pause_record = await PauseRecord.open(self.claims.js, self.config.site)
                paused, self._pause_revision, by = await self.pause_record.read()
                break
            except BucketError as exc:
                if time.monotonic() + delay > deadline or self._stop.is_set():
                    raise ServiceError(str(exc)) from None
                log.warning("%s; trying again in %gs", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
        if paused:
            self._set_paused(True)
            log.warning("starting paused: site %s was paused by %s", self.config.site, by or "an operator")

    async def _refuse_a_second_single_instance(self) -> None:
        """Without JetStream nothing keeps two instances off one node: the later of two refuses to run."""
        others = await self.control_client.other_instances(self.instance, HELLO_GATHER)
        alone = [other for other in others if self.mode == SINGLE or other.get("mode") == SINGLE]
        first = first_started(self.instance, self.started, alone)
        if first is not None:
            raise ServiceError(
                f"instance {first.get('instance')} of site {self.config.site} is running in single mode "
                f"({first.get('mode')}; {'this broker has' if self.mode == SINGLE else 'it has'} no JetStream to "
                "share the nodes): stop it or give the brokers JetStream"
            )

    async def drain(self) -> None:
        """Nothing new starts; wait for the nodes in flight (until a second stop); stop listening."""
        self.draining = True
        self.queue.pause()
        if self.listener is not None:
            await self.listener.stop()
        for task in self._tasks:
            if task.get_name() == DISCOVERY_TASK:
                task.cancel()
        while self.queue.busy and not self._force.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._force.wait(), 0.1)
        log.info("%s drained: %d provisioned since start", self.instance, self.provisioned_total)

    async def close(self) -> None:
        self.closing = True
        await self._stop_renewal()
        for task in [*self._workers, *self._tasks]:
            task.cancel()
        await asyncio.gather(*self._workers, *self._tasks, return_exceptions=True)
        self._workers, self._tasks = [], []
        if self.decider is not None:
            await self.decider.finish()
        for part in (self.listener, self.control):
            if part is not None:
                with contextlib.suppress(NatsError):
                    await part.stop()
        if self.client is not None:
            await self.client.close()
        if self.nc is not None:
            await drain_connection(self.nc)
        if self.monitor is not None:
            self.monitor.stop()

    def _spawn(self, coroutine, name: str) -> asyncio.Task:
        """A background part of the service, cancelled at close (a renewal responder would start here too)."""
        task = asyncio.ensure_future(coroutine)
        task.set_name(name)
        self._tasks.append(task)
        return task

    # Finding nodes ------------------------------------------------------------------------------------------------

    def _on_event(self, event: NodeEvent) -> None:
        if self.draining:
            return
        if event.departure:
            self.queue.discard(event.identity, f"{event.kind} event")
        elif event.kind in ARRIVAL_EVENTS:
            self.queue.add(event.identity, event.kind)

    def _on_rejected(self, shown: str, source: str, kind: str) -> None:
        now = time.monotonic()
        if now - self._rejected_logged >= REJECTED_LOG_EVERY:
            self._rejected_logged = now
            log.warning("ignored a %s %s for node %s: not a valid identity", source, kind, shown)

    async def _discovery_loop(self) -> None:
        """A discovery at start, then one every ``interval`` (measured start to start)."""
        loop = asyncio.get_running_loop()
        due = loop.time()
        while True:
            await self.discover()
            due += self.config.interval
            await asyncio.sleep(max(0.0, due - loop.time()))

    async def discover(self) -> int:
        """One broadcast discovery into the queue; the number of nodes that answered."""
        self.metrics.discover_cycles.inc()
        try:
            found = await self.client.discover(timeout=DISCOVERY_TIMEOUT)
        except (NatsError, RpcError, OSError) as exc:
            self.metrics.discovery_errors.inc()
            log.warning("discovery failed: %s", exc or type(exc).__name__)
            return 0
        for identity in found:
            if valid_identity(identity):
                self.queue.add(identity, "discovery")
        log.debug("discovery: %d node(s) answered, %d queued", len(found), len(self.queue))
        return len(found)

    async def _membership_loop(self) -> None:
        while True:
            await asyncio.sleep(MEMBERSHIP_INTERVAL)
            try:
                others = await self.control_client.other_instances(self.instance, MEMBERSHIP_GATHER)
            except NatsError as exc:
                log.debug("the site's instances not asked: %s", exc)
                continue
            live = [o["instance"] for o in others if o.get("mode") == CLUSTER and not o.get("draining")]
            if self.members.update(live):
                log.info(
                    "instances of site %s: %s",
                    self.config.site,
                    ", ".join(self.members.members),
                    extra=log_fields(event="members", members=list(self.members.members)),
                )
                self.queue.set_preference(self.members.mine if len(self.members.members) > 1 else None)

    # Working nodes ------------------------------------------------------------------------------------------------

    async def _worker(self) -> None:
        while True:
            entry = await self.queue.take()
            try:
                await self.work(entry)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # one node's surprise must not end a worker
                log.exception("unexpected error working %s", entry.identity)
                if entry.in_work:
                    self.queue.fail(entry, f"unexpected error: {exc or type(exc).__name__}")

    async def work(self, entry: QueueEntry) -> None:
        """One node: claim, flow, outcome. Ends ``entry`` in the queue exactly once."""
        identity = entry.identity
        claim: Optional[Claim] = None
        if self.claims is not None:
            try:
                held = await self.claims.acquire(identity)
            except BucketError as exc:
                self.queue.postpone(entry, BUCKET_RETRY, str(exc))
                log.warning("%s: %s; trying again in %gs", identity, exc, BUCKET_RETRY)
                return
            if isinstance(held, ClaimHeld):
                if held.done:
                    self.queue.drop(entry, f"provisioned by {held.holder}", done_elsewhere=True)
                    self.claims.forget(identity)
                else:
                    self.queue.postpone(entry, held.retry_after, f"worked by {held.holder}")
                return
            claim = held
        if self.paused or self.draining:  # paused while the claim was asked for: the node has not been started
            if claim is not None:
                await self.claims.release(claim)
            self.queue.postpone(entry, 0.0, "paused")
            return
        try:
            outcome = await self._run_flow(identity, claim)
        except BaseException:
            if claim is not None:
                await asyncio.shield(self.claims.release(claim))
            raise
        await self._conclude(entry, claim, outcome)

    async def _run_flow(self, identity: str, claim: Optional[Claim]) -> Optional[NodeOutcome]:
        """The node's flow; None when its claim was lost before it ended (the run is cancelled)."""
        run = asyncio.ensure_future(self.flow.run(identity))
        if claim is None:
            return await run
        lost = asyncio.ensure_future(claim.lost.wait())
        try:
            await asyncio.wait({run, lost}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (run, lost):
                if not task.done():
                    task.cancel()
            await asyncio.gather(run, lost, return_exceptions=True)
        if run.cancelled() or run.exception() is not None:
            if claim.lost.is_set():
                return None
            raise run.exception() or asyncio.CancelledError()
        return run.result()

    async def _conclude(self, entry: QueueEntry, claim: Optional[Claim], outcome: Optional[NodeOutcome]) -> None:
        metrics = self.metrics
        attempt = entry.attempts + 1
        if outcome is None:
            self.queue.postpone(entry, 0.0, "claim lost")
            self._log_outcome(entry, "lost", "the claim was lost (another instance took the node over)", attempt)
            return
        seconds = outcome.elapsed_ms / 1000.0
        metrics.node_time.observe(seconds)
        if isinstance(self.decider, HelperDecider) and "decide" in outcome.timings:
            metrics.helper_time.observe(outcome.timings["decide"] / 1000.0)
        disposition = None
        if outcome.status in (PROVISIONED, SHUTDOWN):
            if claim is not None:
                await self.claims.finish(claim)
            self.queue.complete(entry)
            self.provisioned_total += 1
            metrics.provisioned.inc()
            if outcome.status == SHUTDOWN:
                metrics.helper_shutdown_requests.inc()
        else:
            if claim is not None:
                await self.claims.release(claim)
            metrics.provision_errors.inc()
            if outcome.status == DEFERRED:
                metrics.deferred.inc()
                disposition = self.queue.defer(entry, outcome.reason)
            else:
                self.failed_total += 1
                if outcome.step == "decide":
                    metrics.helper_errors.inc()
                disposition = self.queue.fail(entry, outcome.reason or "failed")
        self._log_outcome(entry, outcome.status, outcome.reason, attempt, outcome, disposition)

    def _log_outcome(self, entry, status, reason, attempt, outcome=None, disposition=None) -> None:
        level = logging.INFO if status in (PROVISIONED, SHUTDOWN, DEFERRED) else logging.WARNING
        retry = None
        if disposition is not None:
            retry = "dropped" if disposition.dropped else f"in {disposition.delay:.1f}s"
        log.log(
            level,
            "%s %s%s",
            entry.identity,
            status,
            f": {reason}" if reason else "",
            extra=log_fields(
                event="node",
                identity=entry.identity,
                outcome=status,
                reason=reason,
                step=(outcome.step or None) if outcome else None,
                duration=round(outcome.elapsed_ms / 1000.0, 3) if outcome else None,
                instance=self.instance,
                site=self.config.site,
                attempt=attempt,
                source=entry.source,
                retry=retry,
                timings_ms={step: round(ms, 1) for step, ms in outcome.timings.items()} if outcome else None,
            ),
        )

    def _observe_rpc(self, rpc: str, seconds: float, reply: Any) -> None:
        self.metrics.rpc_time(rpc).observe(seconds)
        if reply is None or not reply.ok:
            self.metrics.rpc_errors(rpc).inc()

    # Housekeeping -------------------------------------------------------------------------------------------------

    async def _housekeeping(self) -> None:
        last_sync = time.monotonic()
        while True:
            await asyncio.sleep(TICK)
            self.queue.tick()
            self.liveness.beat()
            if self.pause_record is not None and time.monotonic() - last_sync >= PAUSE_SYNC:
                last_sync = time.monotonic()
                await self._sync_pause()

    async def _sync_pause(self) -> None:
        """Follow the site's paused flag when it changed without this instance hearing (it was disconnected)."""
        try:
            paused, revision, by = await self.pause_record.read()
        except BucketError as exc:
            log.debug("paused flag not read: %s", exc)
            return
        if revision > self._pause_revision:
            self._pause_revision = revision
            if paused != self.paused:
                log.warning("%s by %s (read from the site's state)", "paused" if paused else "resumed", by or "?")
                self._set_paused(paused)

    def _set_paused(self, paused: bool) -> None:
        self.paused = paused
        self.metrics.set_paused(paused)
        if paused:
            self.queue.pause()
        elif not self.draining:
            self.queue.resume()

    async def _save_pause(self, paused: bool, sender: str) -> bool:
        if self.pause_record is None:
            return False
        try:
            self._pause_revision = max(self._pause_revision, await self.pause_record.save(paused, sender))
        except BucketError as exc:
            log.warning("the paused flag was not stored: %s", exc)
            return False
        return True

    # Control ------------------------------------------------------------------------------------------------------

    async def pause(self, sender: str) -> dict:
        self._set_paused(True)
        persisted = await self._save_pause(True, sender)
        return {"paused": True, "busy_workers": self.queue.busy, "persisted": persisted}

    async def resume(self, sender: str) -> dict:
        self._set_paused(False)
        persisted = await self._save_pause(False, sender)
        return {"paused": False, "queue": self.queue.waiting, "persisted": persisted}

    async def status(self) -> dict:
        snapshot = self.queue.snapshot(STATUS_NODES)
        return {
            "instance": self.instance,
            "site": self.config.site,
            "mode": self.mode,
            "paused": self.paused,
            "draining": self.draining,
            "busy_workers": snapshot["busy"],
            "workers": self.config.workers,
            "queue": snapshot["queue"],
            "deferred": snapshot["deferred"],
            "provisioned": self.provisioned_total,
            "failed": self.failed_total,
            "claims": self.claims.held if self.claims is not None else 0,
            "takeovers": self.claims.takeovers_total if self.claims is not None else 0,
            "stolen": snapshot["stolen"],
            "members": list(self.members.members),
            "started": round(self.started, 3),
            "deferred_nodes": snapshot["deferred_nodes"],
            "busy_nodes": snapshot["busy_nodes"],
        }

    async def hello(self) -> dict:
        return {"mode": self.mode, "started": self.started, "site": self.config.site, "draining": self.draining}

    # Connection ---------------------------------------------------------------------------------------------------

    async def _on_disconnected(self) -> None:
        if not self.closing:
            log.warning("disconnected from the broker; reconnecting")

    async def _on_reconnected(self) -> None:
        url = getattr(self.nc, "connected_url", None)
        log.warning("reconnected to %s", url.netloc if url is not None else "a broker")


async def run_service(config: ServiceConfig) -> int:
    """The ``run`` command: the daemon with signal handlers; 1 (after logging why) when it cannot start."""
    daemon = ProvisionerDaemon(config, handle_signals=True)
    try:
        return await daemon.run()
    except (ServiceError, ControlError) as exc:
        log.error("%s cannot start: %s", config.instance, exc, extra=log_fields(event="refused"))
        return 1
