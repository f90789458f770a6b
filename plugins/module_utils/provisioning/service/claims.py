# Copyright: zeroinit.bootstrap contributors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)
"""Per-node claims in a JetStream key-value bucket: several instances of a site share the nodes, each node is
worked by at most one instance at a time, and a dead instance's nodes are taken over within ``ttl`` + 1 s.

The bucket ``zeroinit_claims_<site>`` (one per site, so two sites never share one; memory storage, three
replicas when the cluster has them, history 1) has ``ttl`` as its max age: every value expires ``ttl``
seconds after it was last written. A claim is the key ``node.<identity>``:

- ``acquire`` creates it (atomic: JetStream refuses the write unless the key is absent, so exactly one of
  several racing instances wins, whichever server each is connected to);
- the holder rewrites it every ``ttl``/3 (an ``update`` against the revision it last wrote; if that revision is
  no longer the latest the claim is lost and the holder is told through ``Claim.lost``);
- ``finish`` rewrites it once more as *done*, and it then expires by itself after ``ttl``. The done mark stays
  on purpose: a provisioned node restarts, and events it sent before (registration data, an alive event, a
  discovery reply in flight) still reach the other instances. Finding *done*, they drop the node instead of
  provisioning it a second time while it restarts (and would then find it configured). All instances use the
  same caller id, so the node's own provisioning lock would not stop them;
- ``release`` deletes it (after a defer or a failure), so any instance may try the node again.

Taking over. A value that expires by max age leaves no delete marker for watchers on servers before 2.11
(and needs ``subject_delete_marker_ttl`` on later ones), so nobody is told that a holder died. Instead, when
``acquire`` finds the key held, it reads the holder's last write and its server time stamp and answers with
``ClaimHeld.retry_after``: the moment a live holder must have rewritten it (2/3 of ``ttl`` after the last
write) and, once the holder has missed that, the moment the value expires (``ttl`` after the last write, plus
``EXPIRY_MARGIN``). The caller asks again then; the create succeeds as soon as the value is gone. Server time
stamps are compared with the local clock corrected by an offset measured on this instance's own presence key.

A server's death costs nothing while the bucket's replicas elect a new leader faster than ``ttl`` (5 to 7 s
measured on a loaded two-core machine); a longer failover loses the claims held, which their holders are told.

Without JetStream (``probe_jetstream`` says why) the daemon runs as a single instance instead.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import re
import time
from dataclasses import dataclass, field
from typing import Any, Optional

from ...common.deps import NatsError, nats, require

CLAIM_PREFIX = "node."
PRESENCE_PREFIX = "instance."
WORKING, DONE = "working", "done"
# Measured on nats-server 2.15 (loopback cluster): memory storage expires a value within ~15 ms of its max age,
# file storage within ~260 ms. The margin covers either, plus the clock offset's error.
EXPIRY_MARGIN = 0.3
MIN_RECHECK = 0.2
MAX_VALUE_SIZE = 1024
RENEW_CONCURRENCY = 256
WATCHED_LIMIT = 100_000
BUCKET_DESCRIPTION = "zeroinit-provisioner: which instance works which node"
WRONG_REVISION = (10071, 10164)  # JetStream's "wrong last sequence" error codes
KEY_PATTERN = re.compile(r"^[-/_=.a-zA-Z0-9]+$")  # JetStream KV keys; no leading or trailing dot

log = logging.getLogger("zeroinit.provisioner.claims")


class BucketError(RuntimeError):
    """A key-value bucket of the service (claims, site state) cannot be used: created, opened, read or written."""


class JetStreamUnavailable(BucketError):
    """The broker has no JetStream for this account: the service must run as a single instance."""


def claims_bucket_name(site: str) -> str:
    return f"zeroinit_claims_{site}"


def recheck_delay(age: float, ttl: float, margin: float = EXPIRY_MARGIN) -> float:
    """Seconds until a claim held elsewhere is worth reading again, given the age of its holder's last write.

    A live holder rewrites every ttl/3, so by 2/3 ttl it has written again (or finished: the done mark lives a
    whole ttl, so it is still there to be seen). A holder that missed that is probably dead: look again when
    its last write expires.
    """
    due = 2.0 * ttl / 3.0
    delay = due - age if age < due else ttl - age + margin
    return max(MIN_RECHECK, delay)


async def probe_jetstream(nc: Any, timeout: float = 2.0) -> str:
    """ "" when the JetStream API answers on this connection, otherwise why it does not."""
    try:
        await nc.jetstream(timeout=timeout).account_info()
    except (nats.js.errors.ServiceUnavailableError, nats.errors.NoRespondersError):
        return "the broker has no JetStream (nothing answers $JS.API.INFO)"
    except nats.js.errors.APIError as exc:
        return f"the JetStream API refused this account: {exc.description or exc}"
    except (nats.errors.TimeoutError, asyncio.TimeoutError):
        return f"the JetStream API did not answer within {timeout:g}s"
    return ""


@dataclass
class Claim:
    """A node this instance holds. ``lost`` is set when another write took the key (or renewal failed for a
    whole ttl): the daemon should stop working the node."""

    identity: str
    key: str
    revision: int
    acquired: float
    renewed: float
    lost: asyncio.Event = field(default_factory=asyncio.Event)
    took_over_from: str = ""
    closed: bool = False
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


@dataclass(frozen=True)
class ClaimHeld:
    """Another instance (``holder``) holds the node: ``done`` (it provisioned the node; drop it) or working
    (ask again after ``retry_after`` seconds)."""

    identity: str
    holder: str
    done: bool
    retry_after: float


@dataclass(frozen=True)
class ClaimRecord:
    """A claim as stored: who, what state, which revision, and when the server stored it (unix seconds)."""

    holder: str
    state: str
    revision: int
    stored: float


class ClaimObserver:
    """What the claims report as it happens; the daemon passes one that feeds the metrics. Does nothing here."""

    def taken_over(self, identity: str, previous_holder: str) -> None:
        """This instance claimed a node another instance held before (the holder stopped renewing)."""

    def lost(self, identity: str, reason: str) -> None:
        """A claim this instance held was lost before it finished."""


class ClaimStore:
    """The claims of one site, as seen from one instance. Create with ``open``; run ``run()`` as a task."""

    def __init__(self, js: Any, kv: Any, site: str, instance: str, ttl: float, observer: Optional[ClaimObserver]):
        self.js = js
        self.kv = kv
        self.site = site
        self.instance = instance
        self.ttl = ttl
        self.bucket = claims_bucket_name(site)
        self.stream = f"KV_{self.bucket}"
        self.observer = observer or ClaimObserver()
        self.replicas: Optional[int] = None
        self.clock_offset = 0.0  # server time minus local time, from this instance's presence key
        self.takeovers_total = 0
        self.lost_total = 0
        self._held: dict = {}
        self._watched: collections.OrderedDict = collections.OrderedDict()  # identity -> holder seen working
        self._started = time.time()

    # Opening --------------------------------------------------------------------------------------------------

    @classmethod
    async def open(
        cls,
        nc: Any,
        site: str,
        instance: str,
        ttl: float,
        replicas: Optional[int] = None,
        observer: Optional[ClaimObserver] = None,
        timeout: float = 5.0,
    ) -> ClaimStore:
        """Open (creating if needed) the site's claims bucket. ``JetStreamUnavailable`` if there is no JetStream.

        ``replicas`` None: three, or one when the servers are not a cluster of three. An existing bucket's max
        age wins over ``ttl`` (instances of a site must agree; the first one set it), with a warning.
        """
        require("nats", "for the provisioner's claims")
        problem = await probe_jetstream(nc, timeout)
        if problem:
            raise JetStreamUnavailable(problem)
        js = nc.jetstream(timeout=timeout)
        bucket = claims_bucket_name(site)
        try:
            kv = await open_bucket(js, bucket, BUCKET_DESCRIPTION, ttl, memory=True, replicas=replicas)
            in_force = (await kv.status()).ttl or ttl
        except (NatsError, asyncio.TimeoutError) as exc:
            raise BucketError(f"cannot open the claims bucket {bucket}: {exc or type(exc).__name__}") from None
        if abs(in_force - ttl) > 0.001:
            log.warning(
                "claims bucket %s keeps values %gs (claim_ttl of the instance that created it), not %gs; using %gs",
                bucket,
                in_force,
                ttl,
                in_force,
            )
        store = cls(js, kv, site, instance, in_force, observer)
        store.replicas = replicas
        try:
            await store.announce()
        except (NatsError, asyncio.TimeoutError) as exc:
            raise BucketError(f"cannot write to the claims bucket {bucket}: {exc or type(exc).__name__}") from None
        return store

    async def announce(self) -> None:
        """Write this instance's presence key and measure the offset between the server's clock and ours."""
        value = json.dumps({"instance": self.instance, "started": self._started}).encode()
        before = time.time()
        revision = await self.kv.put(f"{PRESENCE_PREFIX}{self.instance}", value)
        after = time.time()
        record = await self._read_revision(revision)
        if record is not None:
            self.clock_offset = record - (before + after) / 2.0

    # Claiming -------------------------------------------------------------------------------------------------

    @property
    def held(self) -> int:
        return len(self._held)

    def holding(self, identity: str) -> Optional[Claim]:
        return self._held.get(identity)

    async def acquire(self, identity: str) -> Any:
        """Claim ``identity``: a ``Claim`` if this instance now holds it, a ``ClaimHeld`` if another does.

        ``BucketError`` when the bucket cannot be reached (the daemon tries the node again later). A bucket that
        is gone (memory storage does not outlive a restart of all its servers) is made again, once.
        """
        if identity in self._held:
            raise ValueError(f"{identity} is already claimed by this instance")
        key = claim_key(identity)
        try:
            try:
                return await self._acquire(identity, key)
            except nats.js.errors.NoStreamResponseError:
                await self._recreate()
                return await self._acquire(identity, key)
        except (NatsError, asyncio.TimeoutError) as exc:
            raise BucketError(f"claims bucket {self.bucket} unreachable: {exc or type(exc).__name__}") from None

    async def _recreate(self) -> None:
        log.warning("claims bucket %s is gone; making it again (the claims held are lost)", self.bucket)
        for claim in list(self._held.values()):
            self._lose(claim, "the claims bucket was lost")
        self.kv = await open_bucket(
            self.js, self.bucket, BUCKET_DESCRIPTION, self.ttl, memory=True, replicas=self.replicas
        )
        await self.announce()

    async def _acquire(self, identity: str, key: str) -> Any:
        for _round in range(4):
            expired_from = ""
            if identity in self._watched:
                # Seen held: read first, so an expiry (a takeover) is told from a release.
                record, released = await self._lookup(key)
                if record is not None:
                    answer = await self._held_by(identity, key, record)
                    if answer is not None:
                        return answer
                    continue
                expired_from = "" if released else self._watched[identity]
            try:
                revision = await self.kv.create(key, self._value(WORKING))
            except nats.js.errors.KeyWrongLastSequenceError:
                self._watched.setdefault(identity, "")  # held: the next round reads who holds it
                continue
            except nats.js.errors.KeyNotFoundError:
                continue  # nats-py's create re-reads after a refusal; the value expired in between: try again
            return self._hold(identity, key, revision, expired_from)
        return ClaimHeld(identity, "", False, MIN_RECHECK)

    async def _held_by(self, identity: str, key: str, record: ClaimRecord) -> Any:
        """The answer when ``record`` holds the key; None to try again."""
        if record.holder == self.instance and record.state == WORKING:
            # Our own name from before a restart (a fixed ``instance``): take the claim back.
            try:
                revision = await self.kv.update(key, self._value(WORKING), last=record.revision)
            except nats.js.errors.KeyWrongLastSequenceError:
                return None
            return self._hold(identity, key, revision, "")
        if record.state == DONE:
            self._watched.pop(identity, None)
            return ClaimHeld(identity, record.holder, True, 0.0)
        self._watch(identity, record.holder)
        age = self.server_now() - record.stored
        return ClaimHeld(identity, record.holder, False, recheck_delay(age, self.ttl))

    def _hold(self, identity: str, key: str, revision: int, expired_from: str) -> Claim:
        now = time.monotonic()
        claim = Claim(identity, key, revision, now, now)
        self._watched.pop(identity, None)
        if expired_from and expired_from != self.instance:
            claim.took_over_from = expired_from
            self.takeovers_total += 1
            log.warning("took over %s from %s, whose claim expired unrenewed", identity, expired_from)
            self.observer.taken_over(identity, expired_from)
        self._held[identity] = claim
        return claim

    def _watch(self, identity: str, holder: str) -> None:
        self._watched[identity] = holder
        self._watched.move_to_end(identity)
        while len(self._watched) > WATCHED_LIMIT:
            self._watched.popitem(last=False)

    def forget(self, identity: str) -> None:
        """The daemon dropped ``identity``: stop remembering who held it."""
        self._watched.pop(identity, None)

    async def finish(self, claim: Claim) -> bool:
        """The node is provisioned: mark the claim done (it expires after ttl) and stop renewing it. False if
        the claim had been lost meanwhile."""
        return await self._close(claim, done=True)

    async def release(self, claim: Claim) -> bool:
        """Let go of the node (deferred or failed): delete the claim so any instance may try it again."""
        return await self._close(claim, done=False)

    async def _close(self, claim: Claim, done: bool) -> bool:
        async with claim.lock:
            if claim.closed:
                return False
            claim.closed = True
            self._held.pop(claim.identity, None)
            if claim.lost.is_set():
                return False
            try:
                if done:
                    await self.kv.update(claim.key, self._value(DONE), last=claim.revision)
                else:
                    await self.kv.delete(claim.key, last=claim.revision)
            except nats.js.errors.KeyWrongLastSequenceError:
                self._lose(claim, "another write replaced the claim before it was closed")
                return False
            except nats.js.errors.APIError as exc:
                if exc.err_code not in WRONG_REVISION:
                    raise BucketError(f"could not close the claim on {claim.identity}: {exc}") from None
                # nats-py's delete(last=) reports a wrong revision as a plain APIError, not KeyWrongLastSequenceError
                self._lose(claim, "another write replaced the claim before it was released")
                return False
            except (NatsError, asyncio.TimeoutError) as exc:
                log.warning("could not %s the claim on %s: %s", "finish" if done else "release", claim.identity, exc)
                return False
        return True

    # Renewing -------------------------------------------------------------------------------------------------

    async def run(self) -> None:
        """Renew every held claim each ttl/3 until cancelled."""
        while True:
            await asyncio.sleep(self.ttl / 3.0)
            try:
                await self.renew_all()
            except Exception:  # the loop must outlive any one failure, or every claim would expire
                log.exception("renewing the claims failed; trying again in %gs", self.ttl / 3.0)

    async def renew_all(self) -> None:
        claims = list(self._held.values())
        for start in range(0, len(claims), RENEW_CONCURRENCY):
            await asyncio.gather(*(self._renew(claim) for claim in claims[start : start + RENEW_CONCURRENCY]))
        try:
            await self.announce()
        except (NatsError, asyncio.TimeoutError) as exc:
            log.debug("presence key not written: %s", exc)

    async def _renew(self, claim: Claim) -> None:
        async with claim.lock:
            if claim.closed or claim.lost.is_set():
                return
            try:
                claim.revision = await self.kv.update(claim.key, self._value(WORKING), last=claim.revision)
                claim.renewed = time.monotonic()
            except nats.js.errors.KeyWrongLastSequenceError:
                self._lose(claim, "the claim expired or was taken before it was renewed")
            except (NatsError, asyncio.TimeoutError) as exc:
                if time.monotonic() - claim.renewed >= self.ttl:
                    self._lose(claim, f"not renewed for {self.ttl:g}s ({exc})")
                else:
                    log.warning("could not renew the claim on %s: %s", claim.identity, exc)

    def _lose(self, claim: Claim, reason: str) -> None:
        self._held.pop(claim.identity, None)
        if not claim.lost.is_set():
            claim.lost.set()
            self.lost_total += 1
            log.warning("lost the claim on %s: %s", claim.identity, reason)
            self.observer.lost(claim.identity, reason)

    # Reading --------------------------------------------------------------------------------------------------

    def server_now(self) -> float:
        return time.time() + self.clock_offset

    async def read(self, identity: str) -> Optional[ClaimRecord]:
        """The stored claim on ``identity`` (None when there is none)."""
        return (await self._lookup(claim_key(identity)))[0]

    async def _lookup(self, key: str) -> tuple:
        """(the stored claim or None, whether a release left a delete marker)."""
        try:
            message = await self.js.get_msg(self.stream, subject=f"$KV.{self.bucket}.{key}")
        except nats.js.errors.NotFoundError:
            return None, False
        if (message.headers or {}).get("KV-Operation") in ("DEL", "PURGE"):
            return None, True
        holder, state = parse_claim_value(message.data)
        stored = message.time.timestamp() if message.time else self.server_now()
        return ClaimRecord(holder, state, int(message.seq or 0), stored), False

    async def _read_revision(self, revision: int) -> Optional[float]:
        try:
            message = await self.js.get_msg(self.stream, seq=revision)
        except nats.js.errors.NotFoundError:
            return None
        return message.time.timestamp() if message.time else None

    def _value(self, state: str) -> bytes:
        return json.dumps({"instance": self.instance, "state": state, "time": round(time.time(), 3)}).encode()


def claim_key(identity: str) -> str:
    key = f"{CLAIM_PREFIX}{identity}"
    if not KEY_PATTERN.match(key) or key.endswith("."):
        raise ValueError(f"{identity!r} cannot be a claim key (JetStream keys: letters, digits, - / _ = .)")
    return key


def parse_claim_value(data: Optional[bytes]) -> tuple:
    """(holder, state) from a stored value; anything unreadable is a working claim by an unknown holder."""
    try:
        doc = json.loads((data or b"")[:MAX_VALUE_SIZE])
    except (ValueError, UnicodeDecodeError):
        return "?", WORKING
    if not isinstance(doc, dict):
        return "?", WORKING
    holder = doc.get("instance")
    state = doc.get("state")
    return (holder if isinstance(holder, str) and holder else "?"), (DONE if state == DONE else WORKING)


async def open_bucket(
    js: Any, bucket: str, description: str, ttl: Optional[float], memory: bool, replicas: Optional[int] = None
) -> Any:
    """The key-value bucket ``bucket`` (history 1), created if absent: ``replicas`` None tries three replicas,
    then one (a single server or a cluster of fewer than three). An existing bucket is used as it is."""
    try:
        return await js.key_value(bucket)
    except nats.js.errors.BucketNotFoundError:
        pass
    for count in (replicas,) if replicas else (3, 1):
        config = nats.js.api.KeyValueConfig(
            bucket=bucket,
            description=description,
            history=1,
            ttl=ttl,
            storage=nats.js.api.StorageType.MEMORY if memory else nats.js.api.StorageType.FILE,
            replicas=count,
            max_value_size=MAX_VALUE_SIZE,
        )
        try:
            return await js.create_key_value(config)
        except nats.js.errors.APIError as exc:
            if exc.err_code == 10058:  # created meanwhile by another instance, with another configuration
                return await js.key_value(bucket)
            if replicas or count == 1:
                raise BucketError(f"cannot create the bucket {bucket}: {exc.description or exc}") from None
            log.info("bucket %s: %d replicas refused (%s); trying one", bucket, count, exc.description)
    raise BucketError(f"cannot create the bucket {bucket}")  # pragma: no cover - the loop returns or raises
