# Copyright: zeroinit.bootstrap contributors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)
"""Pause, resume and status of every instance of a site, over NATS; and "is another instance running?".

Every instance subscribes to ``zeroinit.provisioner.<site>.control`` (no queue group, so each one gets each
request). A client publishes one request with a reply inbox and gathers the answers that arrive within a short
window: one per live instance. Choria's provisioner has no such API today (its backplane was removed in 2021);
the operations mirror the backplane's ``pause``/``resume``/``info``.

Messages are authenticated, so a stranger on the provisioning network can neither pause the site nor ask for
its status, nor fake an instance's answer. Each message is ``{"v": 1, "msg": <JSON text>, "mac": <hex>}`` with
``mac`` = HMAC-SHA256 over the ``msg`` bytes, keyed with ``derive_control_key(token, site)`` (or the
configured ``control_key``): an HMAC of a fixed label and the site, so one site's messages never verify at
another. The inner document names its kind (request or reply), the site, the time (refused outside
``WINDOW`` seconds of ours) and a random nonce (a request's nonce is refused a second time, an answer must
carry the nonce of our request). Sizes are bounded before anything is parsed, and no bytes raise out of the
decoder: they are refused and counted.

Two limits to know: answers are authenticated, not encrypted, so whoever can subscribe to the requester's
inbox reads them (status holds counts and node names, which the nodes' own events show anyway). The token
is known to every node (Choria bakes it into the node's provisioning JWT), so a ``control_key`` that only the
operators have keeps a compromised node from pausing the site.

Pause persistence: with JetStream, ``PauseRecord`` keeps the site's paused flag in the bucket
``zeroinit_state_<site>`` (file storage, no expiry); an instance started later reads it and starts paused.
Without JetStream the service runs alone and a restart starts it unpaused.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import hmac
import json
import logging
import math
import os
import re
import time
from typing import Any, Callable, Optional

from ...common.deps import NatsError, nats
from .claims import BucketError, open_bucket

VERSION = 1
WINDOW = 30.0  # seconds a message's time may differ from ours
MAX_REQUEST = 4096
MAX_REPLY = 256 * 1024
NONCE_LIMIT = 10_000
DEFAULT_GATHER = 1.0  # seconds to collect answers
OPERATIONS = ("status", "pause", "resume", "hello")
CONTROL_REQUEST, CONTROL_REPLY = "request", "reply"
PAUSE_KEY = "paused"
STATUS_KEYS = ("instance", "paused", "busy_workers", "queue", "provisioned", "claims")
_NONCE = re.compile(r"^[0-9a-f]{32}$")
_MAC = re.compile(r"^[0-9a-f]{64}$")
KEY_LABEL = b"zeroinit-provisioner control v1\x00"

log = logging.getLogger("zeroinit.provisioner.control")


class ControlError(RuntimeError):
    """Control cannot be used (no key)."""


class ControlRejected(ValueError):
    """A message that is not an authentic, fresh control message of this site; the text says why."""


def control_subject(site: str) -> str:
    return f"zeroinit.provisioner.{site}.control"


def state_bucket_name(site: str) -> str:
    return f"zeroinit_state_{site}"


def derive_control_key(site: str, token: str = "", control_key: str = "") -> bytes:
    """The HMAC key of ``site``'s control messages: from ``control_key`` if set, else from the token."""
    secret = control_key or token
    if not secret:
        raise ControlError("control messages need a key: set token or control_key")
    return hmac.new(secret.encode("utf-8"), KEY_LABEL + site.encode("utf-8"), hashlib.sha256).digest()


class ControlCodec:
    """Seals and opens the control messages of one site."""

    def __init__(self, site: str, key: bytes, clock: Callable[[], float] = time.time, window: float = WINDOW):
        self.site = site
        self._key = key
        self._clock = clock
        self.window = window
        self._nonces: collections.OrderedDict = collections.OrderedDict()  # request nonces seen -> expiry

    def __repr__(self) -> str:
        return f"ControlCodec(site={self.site!r})"

    def seal(self, kind: str, body: dict, nonce: Optional[str] = None) -> tuple:
        """(bytes to send, nonce) for a message of ``kind`` carrying ``body``."""
        nonce = nonce or os.urandom(16).hex()
        inner = dict(body, kind=kind, site=self.site, time=round(self._clock(), 3), nonce=nonce)
        text = json.dumps(inner, separators=(",", ":"), sort_keys=True)
        mac = hmac.new(self._key, text.encode("utf-8"), hashlib.sha256).hexdigest()
        return json.dumps({"v": VERSION, "msg": text, "mac": mac}, separators=(",", ":")).encode("utf-8"), nonce

    def open(self, data: bytes, kind: str, limit: int) -> dict:
        """The inner document of an authentic, fresh message of ``kind``; ``ControlRejected`` otherwise."""
        if len(data) > limit:
            raise ControlRejected(f"{len(data)} bytes, more than {limit}")
        try:
            outer = json.loads(data)
        except (ValueError, RecursionError):
            raise ControlRejected("not JSON") from None
        if not isinstance(outer, dict) or outer.get("v") != VERSION:
            raise ControlRejected("not a control message of version 1")
        text, mac = outer.get("msg"), outer.get("mac")
        if not isinstance(text, str) or not isinstance(mac, str) or not _MAC.match(mac):
            raise ControlRejected("no message or no signature")
        expected = hmac.new(self._key, text.encode("utf-8", "surrogatepass"), hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected, mac):
            raise ControlRejected("bad signature (another key or another site)")
        try:
            inner = json.loads(text)
        except (ValueError, RecursionError):
            raise ControlRejected("signed message is not JSON") from None
        if not isinstance(inner, dict):
            raise ControlRejected("signed message is not an object")
        if inner.get("kind") != kind:
            raise ControlRejected(f"a {inner.get('kind')!r} where a {kind} was expected")
        if inner.get("site") != self.site:
            raise ControlRejected("for another site")
        sent = inner.get("time")
        now = self._clock()
        if isinstance(sent, bool) or not isinstance(sent, (int, float)) or not math.isfinite(sent):
            raise ControlRejected("no time")
        if abs(now - sent) > self.window:
            raise ControlRejected(f"sent {now - sent:+.0f}s from now, outside {self.window:g}s")
        nonce = inner.get("nonce")
        if not isinstance(nonce, str) or not _NONCE.match(nonce):
            raise ControlRejected("no nonce")
        if kind == CONTROL_REQUEST:
            self._remember(nonce, now)
        return inner

    def _remember(self, nonce: str, now: float) -> None:
        while self._nonces:
            oldest, expiry = next(iter(self._nonces.items()))
            if expiry > now and len(self._nonces) < NONCE_LIMIT:
                break
            del self._nonces[oldest]
        if nonce in self._nonces:
            raise ControlRejected("replayed")
        self._nonces[nonce] = now + 2 * self.window


class ControlHandlers:
    """What an instance does for each operation; the daemon subclasses it. Each returns the answer's result."""

    async def status(self) -> dict:
        raise NotImplementedError

    async def pause(self, sender: str) -> dict:
        raise NotImplementedError

    async def resume(self, sender: str) -> dict:
        raise NotImplementedError

    async def hello(self) -> dict:
        raise NotImplementedError


class ControlServer:
    """Answers the site's control requests for one instance."""

    def __init__(
        self,
        nc: Any,
        codec: ControlCodec,
        instance: str,
        handlers: ControlHandlers,
        on_rejected: Optional[Callable[[str], None]] = None,
    ):
        self.nc = nc
        self.codec = codec
        self.instance = instance
        self.handlers = handlers
        self.on_rejected = on_rejected
        self.subject = control_subject(codec.site)
        self.rejected = 0
        self._subscription = None
        self._last_log = float("-inf")

    async def start(self) -> None:
        self._subscription = await self.nc.subscribe(self.subject, cb=self._on_message)
        await self.nc.flush()

    async def stop(self) -> None:
        if self._subscription is not None:
            subscription, self._subscription = self._subscription, None
            try:
                await subscription.unsubscribe()
            except NatsError:
                pass

    async def _on_message(self, msg: Any) -> None:
        try:
            request = self.codec.open(msg.data, CONTROL_REQUEST, MAX_REQUEST)
        except ControlRejected as exc:
            self._reject(str(exc))
            return
        op = request.get("op")
        sender = request.get("sender") if isinstance(request.get("sender"), str) else ""
        if not msg.reply:
            return
        body = {"op": op, "request": request["nonce"], "instance": self.instance}
        try:
            if op not in OPERATIONS:
                raise ValueError(f"unknown operation {op!r}")
            if op in ("pause", "resume"):
                log.warning("%s requested by %s", op, sender[:128] or "an unnamed client")
                result = await getattr(self.handlers, op)(sender[:128])
            else:
                result = await getattr(self.handlers, op)()
            body.update(ok=True, result=result)
        except Exception as exc:  # one failing handler must not end the subscription; the client sees why
            body.update(ok=False, error=str(exc)[:500])
        data, _nonce = self.codec.seal(CONTROL_REPLY, body)
        if len(data) > MAX_REPLY:
            body.pop("result", None)
            body.update(ok=False, error=f"answer too large ({len(data)} bytes)")
            data, _nonce = self.codec.seal(CONTROL_REPLY, body)
        try:
            await msg.respond(data)
        except NatsError as exc:
            log.warning("could not answer a %s request: %s", op, exc)

    def _reject(self, reason: str) -> None:
        self.rejected += 1
        if self.on_rejected is not None:
            self.on_rejected(reason)
        now = time.monotonic()
        if now - self._last_log >= 10.0:  # whoever floods the subject does not flood the log
            log.warning("refused a control message on %s: %s (%d refused so far)", self.subject, reason, self.rejected)
            self._last_log = now


class ControlClient:
    """Sends a request to every instance of a site and gathers the answers."""

    def __init__(self, nc: Any, codec: ControlCodec, sender: str = "zeroinit-provisioner"):
        self.nc = nc
        self.codec = codec
        self.sender = sender
        self.subject = control_subject(codec.site)

    async def broadcast(self, op: str, gather: float = DEFAULT_GATHER) -> list:
        """One ``{"instance", "ok", "result" | "error"}`` per instance that answered within ``gather`` seconds,
        sorted by instance; answers that are not authentic replies to this request are ignored."""
        if op not in OPERATIONS:
            raise ValueError(f"unknown operation {op!r}; expected one of {', '.join(OPERATIONS)}")
        inbox = self.nc.new_inbox()
        answers: dict = {}
        data, nonce = self.codec.seal(CONTROL_REQUEST, {"op": op, "sender": self.sender})

        async def collect(msg: Any) -> None:
            try:
                reply = self.codec.open(msg.data, CONTROL_REPLY, MAX_REPLY)
            except ControlRejected as exc:
                log.debug("ignored an answer: %s", exc)
                return
            instance = reply.get("instance")
            if reply.get("request") != nonce or not isinstance(instance, str) or reply.get("op") != op:
                return
            answer = {"instance": instance, "ok": reply.get("ok") is True}
            if answer["ok"]:
                answer["result"] = reply.get("result")
            else:
                answer["error"] = str(reply.get("error", ""))
            answers[instance] = answer

        subscription = await self.nc.subscribe(inbox, cb=collect)
        try:
            await self.nc.publish(self.subject, data, reply=inbox)
            await self.nc.flush()
            await asyncio.sleep(gather)
        finally:
            await subscription.unsubscribe()
        return [answers[name] for name in sorted(answers)]

    async def status(self, gather: float = DEFAULT_GATHER) -> list:
        """The status document of every live instance (each has at least ``STATUS_KEYS``)."""
        documents = []
        for answer in await self.broadcast("status", gather):
            if answer["ok"] and isinstance(answer.get("result"), dict):
                documents.append(dict(answer["result"], instance=answer["instance"]))
            else:
                documents.append({"instance": answer["instance"], "error": answer.get("error", "no status")})
        return documents

    async def other_instances(self, me: str, gather: float = DEFAULT_GATHER) -> list:
        """``hello`` answers of the site's instances other than ``me``: what a starting instance asks."""
        return [
            dict(answer.get("result") or {}, instance=answer["instance"])
            for answer in await self.broadcast("hello", gather)
            if answer["instance"] != me
        ]


def first_started(me: str, started: float, others: list) -> Optional[dict]:
    """Among ``others`` (``hello`` results with ``started``), one that started before ``me`` (ties: the smaller
    name wins), or None. Without JetStream the one that started first runs and later ones refuse, so two
    instances starting together cannot both run."""
    earlier = []
    for other in others:
        when = other.get("started")
        if isinstance(when, bool) or not isinstance(when, (int, float)):
            continue
        if (when, str(other.get("instance"))) < (started, me):
            earlier.append((when, str(other.get("instance")), other))
    return min(earlier, key=lambda item: item[:2])[2] if earlier else None


class PauseRecord:
    """The site's paused flag in JetStream, so an instance started later starts paused too."""

    def __init__(self, kv: Any):
        self.kv = kv

    @classmethod
    async def open(cls, js: Any, site: str, replicas: Optional[int] = None) -> PauseRecord:
        description = "zeroinit-provisioner: site state (paused)"
        bucket = state_bucket_name(site)
        try:
            return cls(await open_bucket(js, bucket, description, None, memory=False, replicas=replicas))
        except (NatsError, asyncio.TimeoutError) as exc:
            raise BucketError(f"cannot open the state bucket {bucket}: {exc or type(exc).__name__}") from None

    async def load(self) -> bool:
        """The stored flag (False when never set or unreadable)."""
        try:
            entry = await self.kv.get(PAUSE_KEY)
        except nats.js.errors.KeyNotFoundError:
            return False
        except (NatsError, asyncio.TimeoutError) as exc:
            raise BucketError(f"could not read the paused flag: {exc or type(exc).__name__}") from None
        try:
            doc = json.loads(entry.value or b"{}")
        except (ValueError, RecursionError):
            return False
        return isinstance(doc, dict) and doc.get("paused") is True

    async def save(self, paused: bool, by: str) -> None:
        value = json.dumps({"paused": paused, "by": by[:128], "time": round(time.time(), 3)}).encode()
        try:
            await self.kv.put(PAUSE_KEY, value)
        except (NatsError, asyncio.TimeoutError) as exc:
            raise BucketError(f"could not store paused={paused}: {exc}") from None
