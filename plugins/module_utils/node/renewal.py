# Copyright: zeroinit.bootstrap contributors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)
"""A configured node renews its own certificate before it expires, as kubelet's certificate rotation does.

When: at a share of the certificate's lifetime drawn once per certificate from ``fraction +- jitter``
(:class:`..choria.renewal.RenewalSettings`, ``plugin.zeroinit.renewal.*`` in server.conf; default 2/3 +- 0.1). The
lifetime is counted from when the certificate arrived on the node (its file's time) or its ``not_before`` if that is
later: a signer backdates ``not_before`` for clock skew (five minutes, both of our signers), which would otherwise
eat a short certificate's whole schedule. ``choria_provision#renew`` asks for a renewal now.

How (:meth:`CertificateRenewer.renew`): a new key made here (the type of the current one) and a CSR for
``CN=<identity>``; the renewal request (``choria/renewal.py``) signed with the CURRENT certificate and key, sent over
the node's own connection in its main collective; the answer checked (the certificate carries the new key, names
this node, is no CA, is valid, and is issued by a CA of the node's own ``ca.pem``: a responder cannot move the node to
another CA, only ``configure`` and the signed ``trust`` action change what it trusts); key and certificate installed
as one journalled set (``journal.write_set``); then the node is served on a new connection made with them before the
old one is left (``LinkPool.reconnect``), so it never stops answering. A ``renewed`` lifecycle event follows.

On failure the node keeps its current key and certificate, logs, publishes a ``renewal_failed`` lifecycle event
(with the reason, the attempt, when it retries and when the certificate ends) and retries with capped exponential
backoff (``retry_min`` doubling to ``retry_max``, +-10 %, never later than halfway to the certificate's end).

One scheduler serves every node of the process (a heap of due times, one task), with at most
:data:`MAX_CONCURRENT_RENEWALS` exchanges at once: a fleet of 10,000 simulated nodes costs no task per node.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import os
import random
import time
from dataclasses import dataclass
from typing import Callable

from ..choria.config import (
    SECURITY_CA_KEY,
    SECURITY_CERT_KEY,
    SECURITY_KEY_KEY,
    SECURITY_PROVIDER_KEY,
    ConfigError,
)
from ..choria.protocol import ProtocolError, Request, caller_id, decode_reply, encode_request, rpc_request_body
from ..choria.renewal import (
    RENEWAL_ACTION,
    RENEWAL_AGENT,
    RENEWAL_FAILED_EVENT,
    RENEWED_EVENT,
    RenewalSettings,
)
from ..choria.security import RequestSigner, TrustConfigError
from ..choria.subjects import broadcast_subject, reply_subject
from ..common.deps import NameOID, NatsError, rsa, serialization, x509
from ..common.files import read_bytes
from ..common.text import iso_utc
from ..pki.x509 import certificate_matches_key, is_issued_by
from .actions.configure import CERTIFICATE_LIMIT
from .actions.gencsr import new_key_and_csr
from .journal import write_set
from .state import MODE_CONFIGURED, NodeState

log = logging.getLogger("zeroinit.agent")

MAX_CONCURRENT_RENEWALS = 64
# How far ahead of this node's clock a renewed certificate's not_before may be (the signer's clock).
NOT_BEFORE_TOLERANCE = 300
_IDLE_WAKE_SECONDS = 3600.0


class RenewalFailure(Exception):
    """One renewal attempt failed; the message says why (it goes into the log and the lifecycle event)."""


class NoCertificate(Exception):
    """The node has no certificate files to renew (it is configured without TLS files)."""


@dataclass(frozen=True)
class CurrentCertificate:
    """What the schedule needs of a node's installed certificate, and the files it came from."""

    serial: int
    not_before: float
    not_after: float
    arrived: float  # the certificate file's modification time
    cert_path: str
    key_path: str
    ca_path: str
    settings: RenewalSettings

    @property
    def start(self) -> float:
        """Where the lifetime is counted from: arrival, or not_before if later (see the module doc)."""
        return max(self.not_before, min(self.arrived, self.not_after))


def renewal_due(current: CurrentCertificate, share: float) -> float:
    """The time to renew at: ``share`` of the way from :attr:`CurrentCertificate.start` to ``not_after``."""
    return current.start + share * (current.not_after - current.start)


def draw_share(settings: RenewalSettings, rng: random.Random) -> float:
    """The share of the lifetime one certificate is renewed at: ``fraction +- jitter``, uniformly."""
    return rng.uniform(settings.fraction - settings.jitter, settings.fraction + settings.jitter)


def retry_delay(attempt: int, settings: RenewalSettings, time_left: float, rng: random.Random) -> float:
    """Seconds before retry ``attempt`` (1, 2, ...): doubling from retry_min, capped at retry_max, +-10 %, and never
    later than halfway to the certificate's end (but not sooner than retry_min)."""
    delay = min(settings.retry_max, settings.retry_min * 2 ** min(attempt - 1, 32)) * rng.uniform(0.9, 1.1)
    return max(settings.retry_min, min(delay, time_left / 2))


def read_current(node: NodeState) -> CurrentCertificate:
    """The node's installed certificate as the schedule sees it; NoCertificate when it has none to renew."""
    config = node.config
    paths = [config.get(k, "") for k in (SECURITY_CERT_KEY, SECURITY_KEY_KEY, SECURITY_CA_KEY)]
    if config.get(SECURITY_PROVIDER_KEY, "file") != "file" or not all(paths):
        raise NoCertificate(f"{node.identity} is configured without certificate files")
    settings = RenewalSettings.from_config(config)
    data = read_bytes(paths[0])
    if data is None:
        raise NoCertificate(f"{node.identity}: {paths[0]} does not exist")
    cert = x509.load_pem_x509_certificate(data)
    return CurrentCertificate(
        serial=cert.serial_number,
        not_before=cert.not_valid_before_utc.timestamp(),
        not_after=cert.not_valid_after_utc.timestamp(),
        arrived=os.stat(paths[0]).st_mtime,
        cert_path=paths[0],
        key_path=paths[1],
        ca_path=paths[2],
        settings=settings,
    )


@dataclass
class PreparedRenewal:
    """A renewal request ready to send, and the new key it is for (kept in memory until the answer is installed)."""

    request: Request
    payload: bytes
    key: object
    key_pem: bytes


def prepare_renewal(node: NodeState, current: CurrentCertificate, collective: str) -> PreparedRenewal:
    """A new key (the current key's type) and the renewal request for it, signed with the current certificate."""
    cert_pem, key_pem = read_bytes(current.cert_path), read_bytes(current.key_path)
    if cert_pem is None or key_pem is None:
        raise RenewalFailure(f"the current certificate or key of {node.identity} cannot be read")
    try:
        signer = RequestSigner(cert_pem, key_pem)
        current_key = serialization.load_pem_private_key(key_pem, password=None)
    except (TrustConfigError, ValueError, TypeError) as exc:
        raise RenewalFailure(f"the current certificate and key of {node.identity} cannot sign: {exc}") from None
    key_type = "rsa" if isinstance(current_key, rsa.RSAPrivateKey) else "ecdsa"
    key, new_key_pem, csr_pem = new_key_and_csr(key_type, [x509.NameAttribute(NameOID.COMMON_NAME, node.identity)])
    request = Request(
        agent=RENEWAL_AGENT,
        body=rpc_request_body(RENEWAL_AGENT, RENEWAL_ACTION, {"csr": csr_pem.decode("ascii")}),
        callerid=caller_id(node.identity),
        senderid=node.identity,
        collective=collective,
    )
    request.reply_to = reply_subject(request.callerid, request.requestid, collective)
    return PreparedRenewal(request, encode_request(request, signer), key, new_key_pem)


def check_renewed(node: NodeState, certificate, prepared: PreparedRenewal, ca_path: str, now: float):
    """The answer's certificate, refused (RenewalFailure) unless it is this node's, for the new key, no CA, valid now
    and issued by a CA the node already trusts (its own ``ca.pem``)."""
    if not isinstance(certificate, str) or not certificate.lstrip().startswith("-----BEGIN CERTIFICATE-----"):
        raise RenewalFailure("the renewal answer carries no PEM certificate")
    if len(certificate) > CERTIFICATE_LIMIT:
        raise RenewalFailure(f"the renewal answer's certificate is longer than {CERTIFICATE_LIMIT} characters")
    try:
        cert = x509.load_pem_x509_certificate(certificate.encode("ascii"))
        names = [a.value for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
        try:
            names += cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
                x509.DNSName
            )
        except x509.ExtensionNotFound:
            pass
        try:
            is_ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        except x509.ExtensionNotFound:
            is_ca = False
        matches = certificate_matches_key(cert, prepared.key)
    except (ValueError, TypeError, UnicodeError) as exc:
        raise RenewalFailure(f"the renewal answer's certificate does not parse: {exc}") from None
    if not matches:
        raise RenewalFailure("the renewed certificate is not for the key this node made")
    if node.identity not in names:
        raise RenewalFailure(f"the renewed certificate names {names}, not {node.identity}")
    if is_ca:
        raise RenewalFailure("the renewed certificate is a CA certificate")
    if (
        cert.not_valid_after_utc.timestamp() <= now
        or cert.not_valid_before_utc.timestamp() > now + NOT_BEFORE_TOLERANCE
    ):
        raise RenewalFailure(
            f"the renewed certificate is valid from {cert.not_valid_before_utc:%Y-%m-%dT%H:%M:%SZ} to "
            f"{cert.not_valid_after_utc:%Y-%m-%dT%H:%M:%SZ}, not now"
        )
    bundle = read_bytes(ca_path) or b""
    try:
        cas = x509.load_pem_x509_certificates(bundle)
    except ValueError:
        cas = []
    if not any(is_issued_by(cert, ca) for ca in cas):
        raise RenewalFailure(
            f"the renewed certificate's issuer {cert.issuer.rfc4514_string()} is not a CA this node trusts ({ca_path})"
        )
    return cert


def install_renewed(node: NodeState, current: CurrentCertificate, prepared: PreparedRenewal, certificate: str):
    """Key and certificate replaced as one journalled set: after a crash the node has the old pair or the new."""
    cert = check_renewed(node, certificate, prepared, current.ca_path, time.time())
    write_set(
        node.node_dir,
        [(current.key_path, prepared.key_pem, 0o600), (current.cert_path, certificate, 0o644)],
        durable=node.durable,
    )
    return cert


@dataclass
class _Tracked:
    node: NodeState
    serial: int | None = None
    share: float = 0.0
    attempts: int = 0
    due: float | None = None
    forced: bool = False
    relink_pending: bool = False
    busy: bool = False  # a turn is running: a second one would race it for the same files


class CertificateRenewer:
    """Renews the certificates of every configured node of the process (see the module doc).

    ``reconnect(node)`` serves the node on a new connection (the LinkPool's), ``announce(node, event_type, extra)``
    publishes a lifecycle event, ``spawn(coro)`` runs a background task the daemon owns.
    """

    def __init__(
        self,
        reconnect: Callable,
        announce: Callable,
        executor,
        spawn: Callable,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        concurrency: int = MAX_CONCURRENT_RENEWALS,
    ):
        self.reconnect = reconnect
        self.announce = announce
        self.executor = executor
        self.spawn = spawn
        self.clock = clock
        self.rng = rng or random.Random()
        self.concurrency = concurrency
        self.renewed = 0
        self.failed = 0
        self._tracked: dict[str, _Tracked] = {}
        self._heap: list[tuple[float, int, str]] = []
        self._sequence = itertools.count()
        self._wake: asyncio.Event | None = None
        self._slots: asyncio.Semaphore | None = None

    # -- which nodes, and when -----------------------------------------------------------------------------------------
    def track(self, node: NodeState) -> None:
        """Look after ``node`` (called whenever it joins its collective); its schedule is read from its files."""
        if node.mode != MODE_CONFIGURED:
            return
        tracked = self._tracked.get(node.identity)
        if tracked is None or tracked.node is not node:
            tracked = self._tracked[node.identity] = _Tracked(node)
        if tracked.due is None and not tracked.busy:
            self._schedule(tracked, self.clock())

    def renew_now(self, node: NodeState) -> None:
        """Renew ``node`` at once (``choria_provision#renew``), whatever its schedule says."""
        self.track(node)
        tracked = self._tracked.get(node.identity)
        if tracked is not None:
            tracked.forced = True
            tracked.attempts = 0
            if not tracked.busy:  # else the running turn schedules the next one, which sees ``forced``
                self._schedule(tracked, self.clock())

    def _schedule(self, tracked: _Tracked, due: float) -> None:
        tracked.due = due
        heapq.heappush(self._heap, (due, next(self._sequence), tracked.node.identity))
        if self._wake is not None and self._heap[0][2] == tracked.node.identity:
            self._wake.set()

    async def run(self) -> None:
        """The scheduler: start each node's turn when it is due; runs until cancelled."""
        self._wake = asyncio.Event()
        self._slots = asyncio.Semaphore(self.concurrency)
        while True:
            now = self.clock()
            while self._heap and self._heap[0][0] <= now:
                due, _sequence, identity = heapq.heappop(self._heap)
                tracked = self._tracked.get(identity)
                if tracked is None or tracked.due != due:
                    continue  # superseded by a later schedule
                tracked.due = None
                self.spawn(self._turn(tracked))
            wait = self._heap[0][0] - now if self._heap else _IDLE_WAKE_SECONDS
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), max(0.0, min(wait, _IDLE_WAKE_SECONDS)))
            except asyncio.TimeoutError:
                pass

    # -- one node's turn -----------------------------------------------------------------------------------------------
    async def _turn(self, tracked: _Tracked) -> None:
        tracked.busy = True
        try:
            await self._one_turn(tracked)
        finally:
            tracked.busy = False
            if tracked.forced and tracked.due is None and self._tracked.get(tracked.node.identity) is tracked:
                self._schedule(tracked, self.clock())  # asked to renew while this turn ran

    async def _one_turn(self, tracked: _Tracked) -> None:
        node = tracked.node
        if node.stopped or node.mode != MODE_CONFIGURED or node.link is None:
            self._tracked.pop(node.identity, None)  # back when it joins again (track)
            return
        try:
            current = await self._file_work(node, read_current, node)
        except NoCertificate as exc:
            log.debug("%s: no renewal: %s", node.identity, exc)
            self._tracked.pop(node.identity, None)
            return
        except ConfigError as exc:
            log.error("%s: renewal is off until server.conf is fixed: %s", node.identity, exc)
            self._tracked.pop(node.identity, None)
            return
        except (OSError, ValueError) as exc:
            log.warning("%s: cannot read its certificate to schedule renewal: %s", node.identity, exc)
            self._schedule(tracked, self.clock() + RenewalSettings().retry_min)
            return
        if not current.settings.enabled:
            self._tracked.pop(node.identity, None)
            return
        if tracked.serial != current.serial:
            tracked.serial, tracked.share = current.serial, draw_share(current.settings, self.rng)
        now = self.clock()
        due = renewal_due(current, tracked.share)
        if tracked.relink_pending and not tracked.forced:
            await self._relink(tracked)  # outside the renewal slots: the LinkPool bounds its own reconnections
            return
        if not (tracked.forced or tracked.attempts) and now < due:
            self._schedule(tracked, due)
            return
        async with self._slots:
            renewed = await self._attempt(tracked, current)
        if renewed:
            await self._relink(tracked)

    async def _attempt(self, tracked: _Tracked, current: CurrentCertificate) -> bool:
        """One renewal exchange and its announcement; True when a new certificate is installed."""
        node = tracked.node
        tracked.forced = False
        try:
            cert = await self.renew(node, current)
        except RenewalFailure as exc:
            tracked.attempts += 1
            self.failed += 1
            settings = current.settings
            time_left = current.not_after - self.clock()
            delay = retry_delay(tracked.attempts, settings, time_left, self.rng)
            log.warning(
                "%s: certificate renewal failed (attempt %d): %s; keeping the current certificate (ends in %.0fs), "
                "retrying in %.1fs",
                node.identity,
                tracked.attempts,
                exc,
                time_left,
                delay,
            )
            await self.announce(
                node,
                RENEWAL_FAILED_EVENT,
                {
                    "reason": str(exc),
                    "attempt": tracked.attempts,
                    "retry_in": round(delay, 1),
                    "serial": f"{current.serial:x}",
                    "not_after": iso_utc(current.not_after),
                },
            )
            self._schedule(tracked, self.clock() + delay)
            return False
        tracked.attempts = 0
        self.renewed += 1
        await self.announce(
            node,
            RENEWED_EVENT,
            {
                "serial": f"{cert.serial_number:x}",
                "previous_serial": f"{current.serial:x}",
                "not_after": iso_utc(cert.not_valid_after_utc.timestamp()),
                "issuer": cert.issuer.rfc4514_string(),
            },
        )
        tracked.relink_pending = True
        return True

    async def _relink(self, tracked: _Tracked) -> None:
        """Serve the node on a connection made with its new files; retried with backoff while that fails."""
        node = tracked.node
        try:
            await self.reconnect(node)
        except Exception as exc:  # the broker may be away; the old connection keeps serving meanwhile
            tracked.attempts += 1
            delay = retry_delay(tracked.attempts, RenewalSettings.from_config(node.config), 3600.0, self.rng)
            log.warning(
                "%s: renewed, but reconnecting with the new certificate failed (%s); retrying in %.1fs",
                node.identity,
                exc,
                delay,
            )
            self._schedule(tracked, self.clock() + delay)
            return
        tracked.relink_pending = False
        tracked.attempts = 0
        self._schedule(tracked, self.clock())  # the new certificate's schedule

    # -- the exchange --------------------------------------------------------------------------------------------------
    async def renew(self, node: NodeState, current: CurrentCertificate):
        """One renewal exchange for ``node`` (see the module doc); the installed certificate, or RenewalFailure."""
        link = node.link
        if link is None or link.nc is None or link.closed:
            raise RenewalFailure("not connected to its collective")
        _names, main = node.collectives
        prepared = await self._file_work(node, prepare_renewal, node, current, main)
        request = prepared.request
        timeout = current.settings.timeout
        try:
            sub = await link.nc.subscribe(request.reply_to, max_msgs=1)
        except (NatsError, OSError) as exc:
            raise RenewalFailure(f"cannot wait for the renewal answer: {exc or type(exc).__name__}") from None
        try:
            await link.nc.publish(broadcast_subject(RENEWAL_AGENT, main), prepared.payload)
            msg = await sub.next_msg(timeout=timeout)
        except asyncio.TimeoutError:
            raise RenewalFailure(f"no renewal responder answered in collective {main} within {timeout:g}s") from None
        except (NatsError, OSError) as exc:
            raise RenewalFailure(f"the renewal request could not be sent: {exc or type(exc).__name__}") from None
        finally:
            try:
                await sub.unsubscribe()
            except (NatsError, OSError):
                pass  # already gone with its one message, or with the connection
        try:
            reply = decode_reply(msg.data)
        except ProtocolError as exc:
            raise RenewalFailure(f"the renewal answer is not a Choria reply: {exc}") from None
        if reply.requestid != request.requestid:
            raise RenewalFailure("the renewal answer is for another request")
        if not reply.ok:
            raise RenewalFailure(
                f"{reply.senderid or 'the responder'} refused the renewal: {reply.statusmsg} "
                f"(statuscode {reply.statuscode})"
            )
        return await self._file_work(node, install_renewed, node, current, prepared, reply.data.get("certificate"))

    async def _file_work(self, node: NodeState, func, *args):
        """``func(*args)`` in the executor when the node's files can block (NodeState.files_block), else inline."""
        if node.files_block:
            return await asyncio.get_running_loop().run_in_executor(self.executor, func, *args)
        return func(*args)
