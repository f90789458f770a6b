# Copyright: zeroinit.bootstrap contributors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)
"""Leader election among masters over mDNS (python-zeroconf), Zeroinit's algorithm made safe.

Every member registers one DNS-SD service ``<cluster>-<address>._zeroinit-elect._udp.local.`` whose TXT record is
its *announcement* (cluster, election ID, address, state, a timestamp/sequence/nonce and, with a shared secret, an
HMAC-SHA256 over all of it) and listens to every TXT record of that service type on the chosen interface.

* When exactly ``expect`` distinct members are seen (and that view stayed so for ``SETTLE_SECONDS``, which is
  what makes simultaneous extra members visible), the lowest election ID is leader.
* The leader re-announces itself as ``leader`` with the sorted member list.
* A follower accepts only the lowest member's own ``leader`` announcement listing exactly the members it saw;
  it then re-announces as ``follower`` of that leader and withdraws (its mDNS goodbye carries the same TXT, so
  the leader can tell a follower that accepted from a member that gave up) and returns.
* The leader returns once every other member withdrew as its follower; otherwise the timeout names who did not.

So a follower never returns without the leader's own word, and a leader never returns before every member
accepted it: a killed member gives a timeout naming it, never a second leader.

The pure parts (``decide``, ``sign``/``verify``, ``encode_txt``/``decode_txt``, TXT wire format, route table
parsing) are plain functions; ``LeaderElection.run()`` drives the network part. ``python -m`` this module runs one
member from a shell and prints its result as JSON (used by the tests and the benchmark).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import fcntl
import hashlib
import hmac
import ipaddress
import json
import logging
import os
import re
import secrets as _secrets
import socket
import struct
import sys
import time

from .common.deps import (
    HAS_ZEROCONF,
    AsyncServiceBrowser,
    AsyncZeroconf,
    IPVersion,
    NonUniqueNameException,
    RecordUpdateListener,
    ServiceInfo,
    ZeroconfError,
)

LOG = logging.getLogger(__name__)
SERVICE_TYPE = "_zeroinit-elect._udp.local."
PROTOCOL_VERSION = "1"
CANDIDATE, LEADER, FOLLOWER = "candidate", "leader", "follower"
STATES = (CANDIDATE, LEADER, FOLLOWER)
# How long the full view must stay unchanged before the leader declares itself: members starting together are
# then all seen, so "more members than expected" is reported instead of an election of whoever came first.
SETTLE_SECONDS = 0.25
# A member that finds duplicate IDs or too many members keeps announcing this long before it withdraws, so the
# others (whose queries may still be in flight) find the same problem instead of waiting for it.
LINGER_SECONDS = 1.0
# Signed announcements older/newer than this are ignored (a replay of an earlier election). Clocks of the
# members must agree within this when a secret is used.
MAX_CLOCK_SKEW_MS = 300_000
RECORD_TTL = 120
MAX_IGNORED_REPORTED = 16
CLUSTER_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,39}$")
TXT_CHUNK = 200  # member lists are split over m0, m1, ... so each TXT string stays under 255 bytes
_TYPE_PTR, _TYPE_TXT = 12, 16
_SIOCGIFADDR = 0x8915


class ElectionError(Exception):
    """The election cannot produce a leader; the message says why, naming members."""


class ElectionTimeout(ElectionError):
    pass


class TooManyMembers(ElectionError):
    pass


class DuplicateElectionId(ElectionError):
    pass


class MismatchedExpect(ElectionError):
    """Members disagree on how many members the election has (a configuration error)."""


class InvalidAnnouncement(ValueError):
    """A TXT record that is not an acceptable announcement (wrong cluster, bad signature, malformed, stale)."""


# --------------------------------------------------------------------------------------------------- addresses
def address_key(address: str) -> int:
    return int(ipaddress.IPv4Address(address))


def sort_addresses(addresses) -> list[str]:
    """Addresses in numeric order (10.0.0.9 before 10.0.0.10), each once."""
    return sorted(set(addresses), key=address_key)


def instance_name(cluster: str, address: str) -> str:
    # Dots would become DNS label separators inside the instance name; dashes keep it one label.
    return "{}-{}.{}".format(cluster, address.replace(".", "-"), SERVICE_TYPE)


def validate_cluster(cluster: str) -> str:
    if not CLUSTER_RE.match(cluster or ""):
        raise ValueError(
            f"cluster {cluster!r} must be 1-40 letters, digits, '-' or '_' starting with a letter or digit"
        )
    return cluster


def parse_route_table(text: str) -> str | None:
    """The interface of the default route in /proc/net/route content (lowest metric), or None."""
    best = None
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 8:
            continue
        iface, destination, flags, metric, mask = fields[0], fields[1], int(fields[3], 16), int(fields[6]), fields[7]
        if destination == "00000000" and mask == "00000000" and flags & 0x1:  # RTF_UP
            if best is None or metric < best[0]:
                best = (metric, iface)
    return best[1] if best else None


def default_interface(route_file: str = "/proc/net/route") -> str:
    with open(route_file) as handle:
        iface = parse_route_table(handle.read())
    if not iface:
        raise ElectionError(f"no default route in {route_file}: set interface")
    return iface


def interface_address(iface: str) -> str:
    """The (primary) IPv4 address of ``iface``."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        packed = fcntl.ioctl(sock.fileno(), _SIOCGIFADDR, struct.pack("256s", iface.encode()[:15]))
    except OSError as exc:
        raise ElectionError(f"interface {iface} has no IPv4 address ({exc.strerror or exc})") from exc
    finally:
        sock.close()
    return socket.inet_ntoa(packed[20:24])


# --------------------------------------------------------------------------------------------------- TXT records
def txt_to_wire(properties: dict[str, str]) -> bytes:
    out = bytearray()
    for key in sorted(properties):
        item = (f"{key}={properties[key]}").encode()
        if len(item) > 255:
            raise ValueError(f"TXT entry {key} is longer than 255 bytes")
        out.append(len(item))
        out += item
    return bytes(out)


def txt_from_wire(data: bytes) -> dict[str, str]:
    """DNS TXT rdata (length-prefixed strings) as key -> value; entries without '=' get ''."""
    properties: dict[str, str] = {}
    index = 0
    while index < len(data):
        length = data[index]
        item = data[index + 1 : index + 1 + length]
        if len(item) != length:
            raise InvalidAnnouncement("truncated TXT record")
        index += 1 + length
        key, _sep, value = item.decode("utf-8", "replace").partition("=")
        if key and key not in properties:  # RFC 6763 6.4: the first occurrence wins
            properties[key] = value
    return properties


def canonical(properties: dict[str, str]) -> bytes:
    """What the HMAC covers: every property but the HMAC itself, sorted, one ``key=value`` per line."""
    return "\n".join(f"{k}={properties[k]}" for k in sorted(properties) if k != "h").encode("utf-8")


def sign(properties: dict[str, str], secret: str) -> str:
    return hmac.new(secret.encode("utf-8"), canonical(properties), hashlib.sha256).hexdigest()


def verify(properties: dict[str, str], secret: str) -> bool:
    return hmac.compare_digest(sign(properties, secret), properties.get("h", ""))


@dataclasses.dataclass(frozen=True)
class Announcement:
    """What one member says about itself: who it is and where it stands in the election."""

    cluster: str
    election_id: int
    address: str
    state: str = CANDIDATE
    leader: str = ""  # leader: its own address; follower: the leader it accepted
    members: tuple = ()  # sorted addresses, for leader and follower
    timestamp: int = 0  # milliseconds since the epoch; orders one member's announcements
    sequence: int = 0
    nonce: str = ""
    expect: int = 0  # how many members this member expects; 0 when not said

    @property
    def order(self) -> tuple:
        return (self.timestamp, self.sequence)


def encode_txt(announcement: Announcement, secret: str | None = None) -> dict[str, str]:
    props = {
        "v": PROTOCOL_VERSION,
        "c": announcement.cluster,
        "id": str(announcement.election_id),
        "a": announcement.address,
        "s": announcement.state,
        "t": str(announcement.timestamp),
        "q": str(announcement.sequence),
        "n": announcement.nonce,
    }
    if announcement.expect:
        props["e"] = str(announcement.expect)
    if announcement.leader:
        props["l"] = announcement.leader
    joined = ",".join(announcement.members)
    chunk = 0
    while joined:
        cut = len(joined) if len(joined) <= TXT_CHUNK else joined.rindex(",", 0, TXT_CHUNK + 1)
        props["m%d" % chunk] = joined[:cut]
        joined = joined[cut + 1 :]
        chunk += 1
    if secret:
        props["h"] = sign(props, secret)
    return props


def decode_txt(
    props: dict[str, str], cluster: str, secret: str | None = None, now_ms: int | None = None
) -> Announcement:
    """The announcement in ``props`` if it belongs to ``cluster`` and (with a secret) is signed and fresh."""
    if props.get("v") != PROTOCOL_VERSION:
        raise InvalidAnnouncement("protocol version {!r}".format(props.get("v")))
    if props.get("c") != cluster:
        raise InvalidAnnouncement("cluster {!r}".format(props.get("c")))
    if secret:
        if "h" not in props:
            raise InvalidAnnouncement("unsigned")
        if not verify(props, secret):
            raise InvalidAnnouncement("bad signature")
    try:
        address = str(ipaddress.IPv4Address(props["a"]))
        election_id = int(props["id"])
        timestamp, sequence = int(props["t"]), int(props["q"])
        state = props["s"]
        members = []
        for index in range(64):
            if "m%d" % index not in props:
                break
            members += props["m%d" % index].split(",")
        members = tuple(str(ipaddress.IPv4Address(m)) for m in members)
        leader = str(ipaddress.IPv4Address(props["l"])) if props.get("l") else ""
        expect = int(props.get("e") or 0)
    except (KeyError, ValueError) as exc:
        raise InvalidAnnouncement(f"malformed ({exc})") from exc
    if state not in STATES:
        raise InvalidAnnouncement(f"unknown state {state!r}")
    if election_id < 0:
        raise InvalidAnnouncement("negative election ID")
    if state != CANDIDATE and (not leader or not members):
        raise InvalidAnnouncement(f"{state} announcement without leader or members")
    if secret:
        now_ms = int(time.time() * 1000) if now_ms is None else now_ms
        if abs(now_ms - timestamp) > MAX_CLOCK_SKEW_MS:
            raise InvalidAnnouncement("timestamp %+.0fs from this host's clock" % ((timestamp - now_ms) / 1000.0))
    return Announcement(
        cluster=cluster,
        election_id=election_id,
        address=address,
        state=state,
        leader=leader,
        members=members,
        timestamp=timestamp,
        sequence=sequence,
        nonce=props.get("n", ""),
        expect=expect,
    )


# --------------------------------------------------------------------------------------------------- decision
@dataclasses.dataclass(frozen=True)
class Decision:
    complete: bool  # exactly ``expect`` members are present
    leader: Announcement | None
    members: tuple  # sorted addresses of the members seen


def describe(members) -> str:
    members = sorted(members, key=lambda m: address_key(m.address))
    return ", ".join("%s (id %d)" % (m.address, m.election_id) for m in members) or "none"


def decide(members, expect: int) -> Decision:
    """Who leads the members seen. Raises on duplicate IDs, more members than ``expect``, or members expecting
    another count."""
    by_address = {}
    for member in members:
        by_address[member.address] = member
    others = sorted(
        (m for m in by_address.values() if m.expect and m.expect != expect), key=lambda m: address_key(m.address)
    )
    if others:
        raise MismatchedExpect(
            "members expect a different number of members: this host expects %d, %s"
            % (expect, ", ".join("%s expects %d" % (m.address, m.expect) for m in others))
        )
    by_id: dict[int, Announcement] = {}
    for member in sorted(by_address.values(), key=lambda m: address_key(m.address)):
        other = by_id.get(member.election_id)
        if other is not None:
            raise DuplicateElectionId(
                "duplicate election ID %d: announced by %s and by %s"
                % (member.election_id, other.address, member.address)
            )
        by_id[member.election_id] = member
    addresses = tuple(sort_addresses(by_address))
    if len(addresses) > expect:
        raise TooManyMembers(
            "more members than expected: %d seen, %d expected: %s"
            % (len(addresses), expect, describe(by_address.values()))
        )
    if len(addresses) < expect:
        return Decision(False, None, addresses)
    return Decision(True, by_id[min(by_id)], addresses)


@dataclasses.dataclass
class ElectionResult:
    leader: str
    leader_id: int
    is_leader: bool
    members: list
    election_id: int
    address: str
    cluster: str
    elapsed: float

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class _Peer:
    announcement: Announcement
    withdrawn: bool = False
    # Withdrawn by a goodbye carrying its (verified) TXT, so its last state is certain; a PTR goodbye alone
    # may follow an update this member missed.
    final: bool = False


class _AnnouncementListener(RecordUpdateListener):
    """Feeds every TXT record and PTR goodbye of the election service type to the election, in packet order."""

    def __init__(self, election: LeaderElection) -> None:
        self.election = election

    def async_update_records(self, zc, now, records) -> None:
        for update in records:
            record = update.new
            goodbye = record.ttl == 0 or record.is_expired(now)
            if record.type == _TYPE_TXT and record.name.lower().endswith(SERVICE_TYPE):
                self.election.on_txt(record.name, record.text, goodbye)
            elif record.type == _TYPE_PTR and record.name.lower() == SERVICE_TYPE and goodbye:
                self.election.on_withdrawn(record.alias)

    def async_update_records_complete(self) -> None:
        self.election.wake()


class LeaderElection:
    """One member's part in the election. ``run()`` blocks until it has a result or raises ElectionError."""

    def __init__(
        self,
        address: str,
        expect: int,
        cluster: str = "zeroinit",
        timeout: float = 60.0,
        secret: str | None = None,
        election_id: int | None = None,
    ) -> None:
        if not HAS_ZEROCONF:
            raise ElectionError("python-zeroconf is required")
        self.address = str(ipaddress.IPv4Address(address))
        if expect < 1:
            raise ValueError("expect must be at least 1, got %d" % expect)
        self.expect = expect
        self.cluster = validate_cluster(cluster)
        self.timeout = float(timeout)
        self.secret = secret or None
        self.election_id = address_key(self.address) if election_id is None else int(election_id)
        self.name = instance_name(self.cluster, self.address)
        self._peers: dict[str, _Peer] = {}  # address -> last announcement
        self._names: dict[str, str] = {}  # service name (lower) -> address
        self._ignored: dict[str, str] = {}  # who/what was ignored and why, for error messages
        self._own_nonces: set[str] = set()
        self._conflict: str | None = None
        self._sequence = 0
        self._event: asyncio.Event | None = None
        self.me = self._announce(CANDIDATE)

    # ---------------------------------------------------------------- announcements
    def _announce(self, state: str, leader: str = "", members: tuple = ()) -> Announcement:
        self._sequence += 1
        nonce = _secrets.token_hex(8)
        self._own_nonces.add(nonce)
        return Announcement(
            self.cluster,
            self.election_id,
            self.address,
            state,
            leader,
            tuple(members),
            int(time.time() * 1000),
            self._sequence,
            nonce,
            self.expect,
        )

    def _service_info(self) -> ServiceInfo:
        return ServiceInfo(
            SERVICE_TYPE,
            self.name,
            port=0,
            properties=encode_txt(self.me, self.secret),
            server="zeroinit-{}.local.".format(self.address.replace(".", "-")),
            addresses=[socket.inet_aton(self.address)],
            host_ttl=RECORD_TTL,
            other_ttl=RECORD_TTL,
        )

    # ---------------------------------------------------------------- input from the listener
    def wake(self) -> None:
        if self._event is not None:
            self._event.set()

    def on_txt(self, name: str, text: bytes, goodbye: bool) -> None:
        try:
            props = txt_from_wire(text)
        except InvalidAnnouncement as exc:
            self._ignore(name, str(exc))
            return
        if name.lower() == self.name.lower():
            # Only a member that could take part (signed, with a secret) is a conflict; a stranger must not be
            # able to stop this member by sending its name.
            genuine = not self.secret or ("h" in props and verify(props, self.secret))
            if props.get("n") not in self._own_nonces and not goodbye and genuine:
                self._conflict = (
                    "another member announces this host's address {} in cluster {!r} (election ID {})".format(
                        self.address, self.cluster, props.get("id", "?")
                    )
                )
            return
        if props.get("c") != self.cluster:
            return  # another cluster's election: not ours to judge
        try:
            ann = decode_txt(props, self.cluster, self.secret)
        except InvalidAnnouncement as exc:
            self._ignore(props.get("a", name), str(exc))
            return
        if name.lower() != instance_name(self.cluster, ann.address).lower():
            self._ignore(ann.address, f"service name {name} does not match its address")
            return
        peer = self._peers.get(ann.address)
        if peer is not None and ann.order < peer.announcement.order:
            return  # a late repeat of an older announcement
        if peer is not None and ann.order == peer.announcement.order:
            peer.withdrawn = peer.withdrawn or goodbye
            peer.final = peer.final or goodbye
            return
        LOG.info("%s %s as %s (id %d)", "withdrawn:" if goodbye else "seen:", ann.address, ann.state, ann.election_id)
        self._peers[ann.address] = _Peer(ann, goodbye, goodbye)
        self._names[name.lower()] = ann.address
        self._ignored.pop(ann.address, None)

    def _ignore(self, who: str, why: str) -> None:
        if who in self._ignored or len(self._ignored) < MAX_IGNORED_REPORTED:  # a flood must not grow it
            self._ignored[who] = why

    def on_withdrawn(self, name: str) -> None:
        address = self._names.get(name.lower())
        if address in self._peers:
            self._peers[address].withdrawn = True

    # ---------------------------------------------------------------- the election
    def view(self) -> list[Announcement]:
        """The members taking part: those announcing, and those that withdrew as followers (they are done)."""
        seen = [self.me]
        for peer in self._peers.values():
            if not peer.withdrawn or peer.announcement.state == FOLLOWER:
                seen.append(peer.announcement)
        return seen

    def run(self) -> ElectionResult:
        return asyncio.run(self.run_async())

    async def run_async(self) -> ElectionResult:
        started = time.monotonic()
        deadline = started + self.timeout
        self._event = asyncio.Event()
        try:
            aiozc = AsyncZeroconf(interfaces=[self.address], ip_version=IPVersion.V4Only)
        except (OSError, ZeroconfError) as exc:
            raise ElectionError(f"cannot use {self.address} for mDNS: {exc}") from exc
        zc = aiozc.zeroconf
        browser = None
        info = None
        broadcast = None
        linger = False
        try:
            zc.async_add_listener(_AnnouncementListener(self), None)
            browser = AsyncServiceBrowser(zc, SERVICE_TYPE, handlers=[lambda **_kw: None])
            info = self._service_info()
            try:
                # The name is unique per (cluster, address); a clash is detected from the nonces instead of
                # spending a second on probing.
                broadcast = await aiozc.async_register_service(info, cooperating_responders=True)
                LOG.info("announced %s as %s (id %d)", self.address, CANDIDATE, self.election_id)
            except NonUniqueNameException as exc:
                raise ElectionError(
                    f"another member announces this host's address {self.address} in cluster {self.cluster!r}"
                ) from exc
            complete_since = None
            complete_view = None
            problem_since = None
            while True:
                if self._conflict:
                    raise ElectionError(self._conflict)
                now = time.monotonic()
                if self.me.state == CANDIDATE:
                    try:
                        decision = decide(self.view(), self.expect)
                        problem_since = None
                    except (DuplicateElectionId, TooManyMembers, MismatchedExpect):
                        # Reported once it persisted for the settle time, and then still announced for a
                        # while, so that every member sees the same problem before this one withdraws.
                        problem_since = now if problem_since is None else problem_since
                        if now - problem_since >= SETTLE_SECONDS:
                            linger = True
                            raise
                        decision = Decision(False, None, ())
                    if not decision.complete:
                        complete_since = None
                    elif decision.leader.address == self.address:
                        if complete_view != decision.members:
                            complete_since, complete_view = now, decision.members
                        if now - complete_since >= SETTLE_SECONDS:
                            self.me = self._announce(LEADER, self.address, decision.members)
                            info, broadcast = await self._publish(aiozc, broadcast)
                    else:
                        lead = decision.leader
                        if lead.state == LEADER and lead.leader == lead.address and lead.members == decision.members:
                            self.me = self._announce(FOLLOWER, lead.address, decision.members)
                            info, broadcast = await self._publish(aiozc, broadcast)
                            await self._withdraw(aiozc, info, broadcast)
                            info = None
                            return self._result(lead, False, decision.members, started)
                if self.me.state == LEADER:
                    pending = self._unconfirmed()
                    if not pending:
                        await self._withdraw(aiozc, info, broadcast)
                        info = None
                        return self._result(self.me, True, self.me.members, started)
                    for address, why in pending.items():
                        if why.startswith("gave up"):
                            raise ElectionError(f"leader {self.address}: member {address} {why}")
                if now >= deadline:
                    raise ElectionTimeout(self._timeout_message())
                wait = deadline - now
                for since in (complete_since, problem_since):
                    if since is not None and self.me.state == CANDIDATE:
                        wait = min(wait, max(0.0, since + SETTLE_SECONDS - now) + 0.001)
                self._event.clear()
                try:
                    await asyncio.wait_for(self._event.wait(), timeout=wait)
                except asyncio.TimeoutError:
                    pass
        finally:
            if linger:
                await asyncio.sleep(LINGER_SECONDS)
            if broadcast is not None and not broadcast.done():
                broadcast.cancel()
            if info is not None:
                # A failed member withdraws too, saying so (its state is not "follower").
                try:
                    task = await aiozc.async_unregister_service(info)
                    await task
                except Exception:  # pylint: disable=broad-except
                    pass
            if browser is not None:
                await browser.async_cancel()
            await aiozc.async_close()

    async def _publish(self, aiozc, broadcast):
        """Announce ``self.me``; an unfinished earlier broadcast is cancelled so it cannot repeat stale state."""
        if broadcast is not None and not broadcast.done():
            broadcast.cancel()
        info = self._service_info()
        LOG.info("announced %s as %s of %s", self.address, self.me.state, ",".join(self.me.members))
        return info, await aiozc.async_update_service(info)

    async def _withdraw(self, aiozc, info, broadcast) -> None:
        if broadcast is not None and not broadcast.done():
            # Let the first packet of the last announcement leave before the goodbyes (same TXT) follow.
            await asyncio.sleep(0)
            broadcast.cancel()
        task = await aiozc.async_unregister_service(info)
        await task

    def _unconfirmed(self) -> dict[str, str]:
        """Members of this leader's election that have not yet withdrawn as its followers, and why."""
        pending = {}
        for address in self.me.members:
            if address == self.address:
                continue
            peer = self._peers.get(address)
            if peer is None:
                pending[address] = "is no longer seen"
                continue
            ann = peer.announcement
            follows = ann.state == FOLLOWER and ann.leader == self.address and ann.members == self.me.members
            if peer.withdrawn and follows:
                continue
            if peer.withdrawn and ann.state != CANDIDATE:
                pending[address] = "gave up (withdrew as {} of {} for {})".format(
                    ann.state, ann.leader, ",".join(ann.members)
                )
            elif peer.withdrawn and peer.final:
                pending[address] = "gave up (withdrew as a candidate, without accepting this leader)"
            elif peer.withdrawn:
                pending[address] = "withdrew without accepting this leader"
            elif follows:
                pending[address] = "accepted but has not withdrawn"
            else:
                pending[address] = f"still announcing as {ann.state}"
        return pending

    def _result(self, leader: Announcement, is_leader: bool, members, started: float) -> ElectionResult:
        return ElectionResult(
            leader=leader.address,
            leader_id=leader.election_id,
            is_leader=is_leader,
            members=list(members),
            election_id=self.election_id,
            address=self.address,
            cluster=self.cluster,
            elapsed=round(time.monotonic() - started, 3),
        )

    def _timeout_message(self) -> str:
        seen = self.view()
        head = f"election in cluster {self.cluster!r} timed out after {self.timeout:g}s on {self.address}"
        if self.me.state == LEADER:
            pending = self._unconfirmed()
            msg = "{}: this host leads {} but these members did not withdraw as its followers: {}".format(
                head, ", ".join(self.me.members), "; ".join("{} {}".format(*item) for item in sorted(pending.items()))
            )
        elif len(seen) < self.expect:
            ever = seen + [p.announcement for p in self._peers.values() if p.withdrawn and p.announcement not in seen]
            msg = "%s: saw %d of %d expected members: %s" % (head, len(ever), self.expect, describe(ever))
        else:
            try:
                decision = decide(seen, self.expect)
            except ElectionError as exc:
                return f"{head}: {exc}"
            lead = decision.leader
            if lead.state == LEADER:
                said = "announced members {}".format(", ".join(lead.members))
            else:
                said = f"did not announce that it leads (state {lead.state})"
            msg = "%s: saw all %d expected members (%s) but the leader %s %s" % (
                head,
                self.expect,
                ", ".join(decision.members),
                lead.address,
                said,
            )
        gone = [p.announcement for p in self._peers.values() if p.withdrawn and p.announcement.state != FOLLOWER]
        if gone:
            msg += f"; of these withdrew: {describe(gone)}"
        if self._ignored:
            msg += "; ignored announcements: {}".format(
                "; ".join("{} ({})".format(*item) for item in sorted(self._ignored.items()))
            )
        return msg


# --------------------------------------------------------------------------------------------------- command line
def main(argv: list[str] | None = None) -> int:
    """One election member from a shell; prints the result (or ``{"failed": true, "msg": ...}``) as JSON."""
    parser = argparse.ArgumentParser(description="zeroinit mDNS leader election (one member)")
    parser.add_argument("--expect", type=int, required=True)
    parser.add_argument("--cluster", default="zeroinit")
    parser.add_argument("--timeout", type=float, default=60)
    parser.add_argument("--interface", help="default: the default-route interface")
    parser.add_argument("--election-id", type=int)
    parser.add_argument("--start-at", type=float, help="wall-clock time (epoch seconds) to start at")
    parser.add_argument("--verbose", action="store_true", help="log the election's steps on stderr")
    args = parser.parse_args(argv)
    if args.verbose:
        logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(relativeCreated)d ms %(message)s")
        LOG.setLevel(logging.INFO)
    # The secret comes from the environment so it is not visible in the process list.
    secret = os.environ.get("ZEROINIT_ELECTION_SECRET") or None
    try:
        address = interface_address(args.interface or default_interface())
        election = LeaderElection(address, args.expect, args.cluster, args.timeout, secret, args.election_id)
        if args.start_at:
            time.sleep(max(0.0, args.start_at - time.time()))
        started_at = time.time()
        result = election.run()
    except (ElectionError, ValueError) as exc:
        json.dump({"failed": True, "msg": str(exc), "kind": type(exc).__name__}, sys.stdout)
        sys.stdout.write("\n")
        return 1
    json.dump(dict(result.as_dict(), started_at=started_at), sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
