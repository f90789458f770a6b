# Copyright: zeroinit.bootstrap contributors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)
"""The renewal responder: answers configured nodes' certificate-renewal requests (``zeroinit_ca#renew``).

One class for the provisioner service and for the ``node_certificates`` module (sites without the service).
The exchange and why it is a Choria agent: ``choria/renewal.py``; the node's side: ``node/renewal.py``.

Per request, in this order; the first failure is the reply (a statuscode and a message naming the reason), or
silence when no reply can be addressed safely:

1. it decodes as a Choria v1 request (bounded: ``protocol.MAX_MESSAGE_BYTES``), for ``zeroinit_ca#renew``;
2. its ``time`` is within its ttl, capped at ``max_ttl`` (``choria.replay.request_window_refusal``);
3. its caller id is ``choria=<identity>`` with a valid identity, and its sender id is that identity (else dropped:
   the reply subject is derived from the caller id);
4. it is signed by a certificate for that identity (CN or DNS SAN) that chains to the site CA bundle the responder
   trusts (during a CA migration: the old and the new CA), with a valid signature
   (``RequestVerifier(site_ca_bundle, RENEWAL_POLICY).verify(..., required_name=identity)``);
5. its request id was not accepted before within its window (``choria.replay.ReplayGuard``);
6. ``csr`` is a PEM CSR of at most ``CSR_LIMIT`` characters for a NEW key (not the signing certificate's);
7. the signer (either backend) applies the same ``CsrPolicy`` as at provisioning and signs; a policy refusal is
   InvalidData, an unreachable CA server UnknownError (the node retries).

The reply's data: ``certificate``, ``ca`` (the chain the responder hands out), ``serial``, ``not_after``. Replies go to
the subject Choria derives from the caller id and request id, never to a subject the request names.

Signing runs in a thread pool (the cfssl backend is a blocking HTTP call), at most ``concurrency`` at once; requests
beyond what the pool can take wait in NATS's subscription buffer, not in an unbounded queue of our own.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable

from ..choria.protocol import (
    ProtocolError,
    Reply,
    Request,
    StatusCode,
    caller_id,
    decode_request,
    encode_reply,
    rpc_reply_body,
)
from ..choria.renewal import CSR_LIMIT, RENEWAL_ACTION, RENEWAL_AGENT, RENEWAL_QUEUE_GROUP
from ..choria.replay import DEFAULT_MAX_TTL, ReplayGuard, request_window_refusal
from ..choria.security import RENEWAL_POLICY, RequestTrustError, RequestVerifier, TrustConfigError
from ..choria.subjects import broadcast_subject, reply_subject, valid_identity
from ..common.deps import NatsError, x509
from ..pki.issuance import signer_from_params
from ..pki.policy import DEFAULT_VALID_DAYS, PolicyError
from ..pki.x509 import PkiError, certificate_matches_key, load_csr

log = logging.getLogger("zeroinit.renewal")

DEFAULT_RENEWAL_CONCURRENCY = 8
# One responder hears every node of the site: a node's 4,096 ids would be full after 4,096 renewals within one request
# window (a fleet of 10,000 renewing at once refused most as "replay memory full"). Only requests signed by a site
# certificate are remembered; 131,072 ids take about 45 MB at most.
RENEWAL_REPLAY_CAPACITY = 131_072


@dataclass
class RenewalAnswer:
    """What the responder made of one request: the reply to publish (None: drop it) and the outcome."""

    identity: str
    reply_subject: str | None
    reply: bytes | None
    renewed: bool = False
    reason: str = ""  # why it was refused, or the serial it was renewed with
    code: str = ""  # a short tag for statistics: renewed, garbage, window, caller, trust.<code>, replay, csr, ...


@dataclass
class RenewalRecord:
    """The responder's account: who was renewed (identity -> serial hex), the last refusal per identity, counts."""

    renewed: dict = field(default_factory=dict)
    refused: dict = field(default_factory=dict)
    counts: Counter = field(default_factory=Counter)


class RenewalResponder:
    """Verifies, judges and signs renewal requests (see the module doc). Thread-safe: ``answer`` may run in threads.

    ``signer`` is either backend (``pki.issuance.signer_from_params``); ``site_ca_bundle_pem`` the CAs whose
    certificates may sign renewal requests; ``node_ca_bundle_pem`` the chain put in replies (default: the signer's);
    ``valid_days`` what is asked of the signer (default: 365, or the policy's ``max_valid_days`` if shorter).
    """

    def __init__(
        self,
        signer,
        site_ca_bundle_pem,
        valid_days: int | None = None,
        profile: str = "both",
        node_ca_bundle_pem: str | None = None,
        max_ttl: int = DEFAULT_MAX_TTL,
        clock: Callable[[], float] = time.time,
        on_answer: Callable[[RenewalAnswer], None] | None = None,
    ):
        self.signer = signer
        self.verifier = RequestVerifier(site_ca_bundle_pem, RENEWAL_POLICY, clock=clock)
        # Unset: as long as the policy allows, up to the signer's default.
        self.valid_days = valid_days or min(DEFAULT_VALID_DAYS, signer.policy.max_valid_days)
        self.profile = profile
        self.node_ca_bundle = node_ca_bundle_pem or signer.ca.chain_pem
        self.max_ttl = max_ttl
        self.clock = clock
        self.on_answer = on_answer
        self.replays = ReplayGuard(capacity=RENEWAL_REPLAY_CAPACITY, max_ttl=max_ttl)
        self.record = RenewalRecord()

    # -- one request ---------------------------------------------------------------------------------------------------
    def answer(self, raw) -> RenewalAnswer:
        """The answer to one message received on the renewal subject; never raises for any input."""
        try:
            result = self._answer(raw)
        except Exception as exc:  # network input: an outcome, never a traceback
            log.warning("renewal request could not be answered: %s: %s", type(exc).__name__, exc)
            result = RenewalAnswer("", None, None, reason=f"{type(exc).__name__}: {exc}", code="error")
        self.record.counts[result.code] += 1
        if result.identity:
            if result.renewed:
                self.record.renewed[result.identity] = result.reason
                self.record.refused.pop(result.identity, None)
            elif result.reply is not None:
                self.record.refused[result.identity] = result.reason
        if self.on_answer is not None:
            self.on_answer(result)
        return result

    def _answer(self, raw) -> RenewalAnswer:
        try:
            req = decode_request(raw)
        except ProtocolError as exc:
            return RenewalAnswer("", None, None, reason=str(exc), code="garbage")
        identity = req.callerid.partition("=")[2]
        if (
            not valid_identity(identity)
            or req.callerid != caller_id(identity)
            or req.senderid != identity
            or not valid_identity(req.collective)
        ):
            return RenewalAnswer(
                "", None, None, reason="caller id is not choria=<identity> of its sender", code="caller"
            )

        def refuse(status: int, message: str, code: str) -> RenewalAnswer:
            body = rpc_reply_body(req.action, status, message)
            return RenewalAnswer(identity, *self._reply(req, body), reason=message, code=code)

        if req.agent != RENEWAL_AGENT or req.action != RENEWAL_ACTION:
            return refuse(StatusCode.UNKNOWN_ACTION, f"unknown action {req.agent}#{req.action}", "action")
        now = self.clock()
        window = request_window_refusal(req.time, req.ttl, now, self.max_ttl)
        if window:
            return refuse(StatusCode.ABORTED, window, "window")
        try:
            signer = self.verifier.verify(req.secure_message, req.signature, req.pubcert, required_name=identity)
        except RequestTrustError as exc:
            return refuse(StatusCode.ABORTED, f"renewal refused: {exc.message}", f"trust.{exc.code}")
        replay = self.replays.admit(req.requestid, req.time, req.ttl, now, scope=identity)
        if replay:
            return refuse(StatusCode.ABORTED, replay, "replay")
        csr = req.data.get("csr")
        if not isinstance(csr, str) or not csr or len(csr) > CSR_LIMIT:
            return refuse(
                StatusCode.INVALID_DATA, f"input 'csr' must be a PEM CSR of at most {CSR_LIMIT} characters", "csr"
            )
        try:
            request = load_csr(csr)
            pubcert = x509.load_pem_x509_certificate(req.pubcert.encode("ascii"))
            same_key = certificate_matches_key(pubcert, request.public_key())
        except (PkiError, ValueError, UnicodeError) as exc:
            return refuse(StatusCode.INVALID_DATA, f"input 'csr': {exc}", "csr")
        if same_key:
            return refuse(
                StatusCode.INVALID_DATA, "a renewal must be for a new key, not the current certificate's", "csr"
            )
        try:
            issued = self.signer.sign(request, identity, valid_days=self.valid_days, profile=self.profile)
        except PolicyError as exc:
            return refuse(StatusCode.INVALID_DATA, str(exc), f"policy.{exc.rule}")
        except PkiError as exc:
            return refuse(StatusCode.UNKNOWN_ERROR, f"the signer cannot sign now: {exc}", "signer")
        body = rpc_reply_body(
            req.action,
            data={
                "certificate": issued.certificate,
                "ca": self.node_ca_bundle,
                "serial": issued.serial_hex,
                "not_after": issued.not_after_iso,
            },
        )
        log.debug("renewed %s (signed by %s): serial %s", identity, signer.subject, issued.serial_hex)
        return RenewalAnswer(identity, *self._reply(req, body), renewed=True, reason=issued.serial_hex, code="renewed")

    @staticmethod
    def _reply(req: Request, body: dict) -> tuple[str, bytes]:
        reply = Reply(requestid=req.requestid, senderid="zeroinit-ca", agent=req.agent, body=body)
        return reply_subject(req.callerid, req.requestid, req.collective), encode_reply(reply)

    # -- on the bus ----------------------------------------------------------------------------------------------------
    async def serve(
        self,
        nc,
        collectives: list[str],
        stopping: asyncio.Event,
        concurrency: int = DEFAULT_RENEWAL_CONCURRENCY,
        executor=None,
    ) -> None:
        """Answer renewal requests in ``collectives`` on connection ``nc`` until ``stopping`` is set.

        Joins the queue group :data:`RENEWAL_QUEUE_GROUP`, so several responders (service instances, a module run)
        share the requests. This is where the provisioner service hands its members' connection to the responder.
        """
        own_executor = executor is None
        executor = executor or ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="renewal")
        slots = asyncio.Semaphore(concurrency)
        tasks: set[asyncio.Task] = set()
        loop = asyncio.get_running_loop()

        async def one(msg) -> None:
            async with slots:
                result = await loop.run_in_executor(executor, self.answer, msg.data)
            if result.reply is not None:
                try:
                    await nc.publish(result.reply_subject, result.reply)
                except (NatsError, OSError) as exc:
                    log.warning("could not answer the renewal of %s: %s", result.identity, exc)

        async def received(msg) -> None:
            task = asyncio.ensure_future(one(msg))
            tasks.add(task)
            task.add_done_callback(tasks.discard)

        subs = [
            await nc.subscribe(broadcast_subject(RENEWAL_AGENT, collective), queue=RENEWAL_QUEUE_GROUP, cb=received)
            for collective in collectives
        ]
        try:
            await nc.flush()
            await stopping.wait()
        finally:
            for sub in subs:
                try:
                    await sub.unsubscribe()
                except (NatsError, OSError):
                    pass
            if tasks:
                await asyncio.gather(*tasks, return_exceptions=True)
            if own_executor:
                executor.shutdown(wait=True)


class RenewalSetupError(ValueError):
    """A responder cannot be made from its options; the message starts with the option's name."""


def responder_from_params(signer_params: dict, site_ca_pem: str | None = None) -> RenewalResponder:
    """A responder signing with ``signer_params`` (either backend, as ``pki_sign`` takes them) for requests whose
    certificate chains to ``site_ca_pem`` (default: the signer's CA chain). Close ``responder.signer`` when done."""
    try:
        signer, _created = signer_from_params(signer_params)
    except (PkiError, OSError, ValueError) as exc:
        raise RenewalSetupError(f"signer: {exc}") from None
    try:
        return RenewalResponder(signer, site_ca_pem or signer.ca.chain_pem, valid_days=signer_params.get("valid_days"))
    except (TrustConfigError, ValueError) as exc:
        signer.close()
        raise RenewalSetupError(f"site_ca: {exc}") from None
