# Copyright: zeroinit.bootstrap contributors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)
"""One member of the leader election over mDNS (python-zeroconf), Zeroinit's algorithm made safe.

* When exactly ``expect`` distinct members are seen (and that view stayed so for ``SETTLE_SECONDS``, which is
  what makes simultaneous extra members visible), the lowest election ID is leader (``outcome.py``).
* The leader re-announces itself as ``leader`` with the sorted member list.
* A follower accepts only the lowest member's own ``leader`` announcement listing exactly the members it saw;
  it then re-announces as ``follower`` of that leader and withdraws (its mDNS goodbye carries the same TXT, so
  the leader can tell a follower that accepted from a member that gave up) and returns.
* The leader returns once every other member withdrew as its follower; otherwise the timeout names who did not.

So a follower never returns without the leader's own word, and a leader never returns before every member
accepted it: a killed member gives a timeout naming it, never a second leader.

The member is split by job: :class:`OwnAnnouncement` (what this member says, published over zeroconf),
:class:`PeerView` (what it hears: the other members' announcements, fed by the zeroconf listener) and
:class:`LeaderElection` (the run that decides from the view and says what follows). ``python -m`` this module
runs one member from a shell and prints its result as JSON (used by the tests and the benchmark).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import ipaddress
import json
import logging
import os
import secrets as _secrets
import socket
import sys
import time

from ..common.deps import (
    HAS_ZEROCONF,
    AsyncServiceBrowser,
    AsyncZeroconf,
    IPVersion,
    NonUniqueNameException,
    RecordUpdateListener,
    ServiceInfo,
    ZeroconfError,
)
from .codec import (
    CANDIDATE,
    FOLLOWER,
    LEADER,
    SERVICE_TYPE,
    Announcement,
    InvalidAnnouncement,
    decode_txt,
    encode_txt,
    instance_name,
    txt_from_wire,
    validate_cluster,
    verify_announcement,
)
from .network import default_interface, interface_address
from .outcome import (
    DuplicateElectionId,
    ElectionError,
    ElectionOutcome,
    ElectionResult,
    ElectionTimeout,
    MismatchedExpect,
    TooManyMembers,
    address_key,
    decide,
    describe,
)

LOG = logging.getLogger(__name__)
# How long the full view must stay unchanged before the leader declares itself: members starting together are
# then all seen, so "more members than expected" is reported instead of an election of whoever came first.
SETTLE_SECONDS = 0.25
# A member that finds duplicate IDs or too many members keeps announcing this long before it withdraws, so the
# others (whose queries may still be in flight) find the same problem instead of waiting for it.
LINGER_SECONDS = 1.0
RECORD_TTL = 120
MAX_IGNORED_REPORTED = 16
_TYPE_PTR, _TYPE_TXT = 12, 16


class OwnAnnouncement:
    """What this member says: its announcement (state, leader, members), and publishing it over zeroconf."""

    def __init__(self, cluster: str, election_id: int, address: str, expect: int, secret: str | None) -> None:
        self.cluster = cluster
        self.election_id = election_id
        self.address = address
        self.expect = expect
        self.secret = secret
        self.name = instance_name(cluster, address)
        self.nonces: set[str] = set()  # every nonce this member used: its own packets looped back
        self.sequence = 0
        self.me = self.announce(CANDIDATE)

    def announce(self, state: str, leader: str = "", members: tuple = ()) -> Announcement:
        """The next announcement (a new sequence and nonce); it becomes ``me``."""
        self.sequence += 1
        nonce = _secrets.token_hex(8)
        self.nonces.add(nonce)
        self.me = Announcement(
            self.cluster,
            self.election_id,
            self.address,
            state,
            leader,
            tuple(members),
            int(time.time() * 1000),
            self.sequence,
            nonce,
            self.expect,
        )
        return self.me

    def service_info(self) -> ServiceInfo:
        return ServiceInfo(
            SERVICE_TYPE,
            self.name,
            port=0,
            properties=encode_txt(self.me, self.secret),
            server=f"zeroinit-{self.address.replace('.', '-')}.local.",
            addresses=[socket.inet_aton(self.address)],
            host_ttl=RECORD_TTL,
            other_ttl=RECORD_TTL,
        )

    async def publish(self, aiozc, broadcast):
        """Announce ``me``; an unfinished earlier broadcast is cancelled so it cannot repeat stale state."""
        if broadcast is not None and not broadcast.done():
            broadcast.cancel()
        info = self.service_info()
        LOG.info("announced %s as %s of %s", self.address, self.me.state, ",".join(self.me.members))
        return info, await aiozc.async_update_service(info)

    @staticmethod
    async def withdraw(aiozc, info, broadcast) -> None:
        if broadcast is not None and not broadcast.done():
            # Let the first packet of the last announcement leave before the goodbyes (same TXT) follow.
            await asyncio.sleep(0)
            broadcast.cancel()
        task = await aiozc.async_unregister_service(info)
        await task


@dataclasses.dataclass
class _Peer:
    announcement: Announcement
    withdrawn: bool = False
    # Withdrawn by a goodbye carrying its (verified) TXT, so its last state is certain; a PTR goodbye alone
    # may follow an update this member missed.
    final: bool = False


class PeerView:
    """What this member hears: the newest announcement of each other member, withdrawals, conflicts, and what
    was ignored (bounded, for the error message)."""

    def __init__(self, own: OwnAnnouncement) -> None:
        self.own = own
        self.cluster = own.cluster
        self.secret = own.secret
        self.peers: dict[str, _Peer] = {}  # address -> last announcement
        self.names: dict[str, str] = {}  # service name (lower) -> address
        self.ignored: dict[str, str] = {}  # who/what was ignored and why
        self.conflict: str | None = None

    def on_txt(self, name: str, text: bytes, goodbye: bool) -> None:
        try:
            props = txt_from_wire(text)
        except InvalidAnnouncement as exc:
            self.ignore(name, str(exc))
            return
        if name.lower() == self.own.name.lower():
            # Only a member that could take part (signed, with a secret) is a conflict; a stranger must not be
            # able to stop this member by sending its name.
            genuine = not self.secret or ("h" in props and verify_announcement(props, self.secret))
            if props.get("n") not in self.own.nonces and not goodbye and genuine:
                self.conflict = (
                    f"another member announces this host's address {self.own.address} in cluster {self.cluster!r} "
                    f"(election ID {props.get('id', '?')})"
                )
            return
        if props.get("c") != self.cluster:
            return  # another cluster's election: not ours to judge
        try:
            ann = decode_txt(props, self.cluster, self.secret)
        except InvalidAnnouncement as exc:
            self.ignore(props.get("a", name), str(exc))
            return
        if name.lower() != instance_name(self.cluster, ann.address).lower():
            self.ignore(ann.address, f"service name {name} does not match its address")
            return
        peer = self.peers.get(ann.address)
        if peer is not None and ann.order < peer.announcement.order:
            return  # a late repeat of an older announcement
        if peer is not None and ann.order == peer.announcement.order:
            peer.withdrawn = peer.withdrawn or goodbye
            peer.final = peer.final or goodbye
            return
        LOG.info("%s %s as %s (id %d)", "withdrawn:" if goodbye else "seen:", ann.address, ann.state, ann.election_id)
        self.peers[ann.address] = _Peer(ann, goodbye, goodbye)
        self.names[name.lower()] = ann.address
        self.ignored.pop(ann.address, None)

    def ignore(self, who: str, why: str) -> None:
        if who in self.ignored or len(self.ignored) < MAX_IGNORED_REPORTED:  # a flood must not grow it
            self.ignored[who] = why

    def on_withdrawn(self, name: str) -> None:
        address = self.names.get(name.lower())
        if address in self.peers:
            self.peers[address].withdrawn = True

    def view(self) -> list[Announcement]:
        """The members taking part: this one, those announcing, and those that withdrew as followers (done)."""
        seen = [self.own.me]
        for peer in self.peers.values():
            if not peer.withdrawn or peer.announcement.state == FOLLOWER:
                seen.append(peer.announcement)
        return seen

    def gone(self) -> list[Announcement]:
        """Members that withdrew other than as followers."""
        return [p.announcement for p in self.peers.values() if p.withdrawn and p.announcement.state != FOLLOWER]

    def ever_seen(self) -> list[Announcement]:
        seen = self.view()
        return seen + [p.announcement for p in self.peers.values() if p.withdrawn and p.announcement not in seen]

    def unconfirmed(self) -> dict[str, str]:
        """Members of this leader's election that have not yet withdrawn as its followers, and why."""
        pending = {}
        for address in self.own.me.members:
            if address == self.own.address:
                continue
            peer = self.peers.get(address)
            if peer is None:
                pending[address] = "is no longer seen"
                continue
            ann = peer.announcement
            follows = ann.state == FOLLOWER and ann.leader == self.own.address and ann.members == self.own.me.members
            if peer.withdrawn and follows:
                continue
            if peer.withdrawn and ann.state != CANDIDATE:
                pending[address] = f"gave up (withdrew as {ann.state} of {ann.leader} for {','.join(ann.members)})"
            elif peer.withdrawn and peer.final:
                pending[address] = "gave up (withdrew as a candidate, without accepting this leader)"
            elif peer.withdrawn:
                pending[address] = "withdrew without accepting this leader"
            elif follows:
                pending[address] = "accepted but has not withdrawn"
            else:
                pending[address] = f"still announcing as {ann.state}"
        return pending


class _AnnouncementListener(RecordUpdateListener):
    """Feeds every TXT record and PTR goodbye of the election service type to the view, in packet order."""

    def __init__(self, peers: PeerView, wake) -> None:
        self.peers = peers
        self.wake = wake

    def async_update_records(self, zc, now, records) -> None:
        for update in records:
            record = update.new
            goodbye = record.ttl == 0 or record.is_expired(now)
            if record.type == _TYPE_TXT and record.name.lower().endswith(SERVICE_TYPE):
                self.peers.on_txt(record.name, record.text, goodbye)
            elif record.type == _TYPE_PTR and record.name.lower() == SERVICE_TYPE and goodbye:
                self.peers.on_withdrawn(record.alias)

    def async_update_records_complete(self) -> None:
        self.wake()


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
            raise ValueError(f"expect must be at least 1, got {expect}")
        self.expect = expect
        self.cluster = validate_cluster(cluster)
        self.timeout = float(timeout)
        self.secret = secret or None
        self.election_id = address_key(self.address) if election_id is None else int(election_id)
        self.own = OwnAnnouncement(self.cluster, self.election_id, self.address, expect, self.secret)
        self.peers = PeerView(self.own)
        self._event: asyncio.Event | None = None

    @property
    def me(self) -> Announcement:
        return self.own.me

    def wake(self) -> None:
        if self._event is not None:
            self._event.set()

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
            zc.async_add_listener(_AnnouncementListener(self.peers, self.wake), None)
            browser = AsyncServiceBrowser(zc, SERVICE_TYPE, handlers=[lambda **_kw: None])
            info = self.own.service_info()
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
                if self.peers.conflict:
                    raise ElectionError(self.peers.conflict)
                now = time.monotonic()
                if self.me.state == CANDIDATE:
                    try:
                        decision = decide(self.peers.view(), self.expect)
                        problem_since = None
                    except (DuplicateElectionId, TooManyMembers, MismatchedExpect):
                        # Reported once it persisted for the settle time, and then still announced for a
                        # while, so that every member sees the same problem before this one withdraws.
                        problem_since = now if problem_since is None else problem_since
                        if now - problem_since >= SETTLE_SECONDS:
                            linger = True
                            raise
                        decision = ElectionOutcome(False, None, ())
                    if not decision.complete:
                        complete_since = None
                    elif decision.leader.address == self.address:
                        if complete_view != decision.members:
                            complete_since, complete_view = now, decision.members
                        if now - complete_since >= SETTLE_SECONDS:
                            self.own.announce(LEADER, self.address, decision.members)
                            info, broadcast = await self.own.publish(aiozc, broadcast)
                    else:
                        lead = decision.leader
                        if lead.state == LEADER and lead.leader == lead.address and lead.members == decision.members:
                            self.own.announce(FOLLOWER, lead.address, decision.members)
                            info, broadcast = await self.own.publish(aiozc, broadcast)
                            await self.own.withdraw(aiozc, info, broadcast)
                            info = None
                            return self._result(lead, False, decision.members, started)
                if self.me.state == LEADER:
                    pending = self.peers.unconfirmed()
                    if not pending:
                        await self.own.withdraw(aiozc, info, broadcast)
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
        seen = self.peers.view()
        head = f"election in cluster {self.cluster!r} timed out after {self.timeout:g}s on {self.address}"
        if self.me.state == LEADER:
            pending = self.peers.unconfirmed()
            unconfirmed = "; ".join(f"{member} {state}" for member, state in sorted(pending.items()))
            msg = (
                f"{head}: this host leads {', '.join(self.me.members)} but these members did not withdraw as its "
                f"followers: {unconfirmed}"
            )
        elif len(seen) < self.expect:
            ever = self.peers.ever_seen()
            msg = f"{head}: saw {len(ever)} of {self.expect} expected members: {describe(ever)}"
        else:
            try:
                decision = decide(seen, self.expect)
            except ElectionError as exc:
                return f"{head}: {exc}"
            lead = decision.leader
            if lead.state == LEADER:
                said = f"announced members {', '.join(lead.members)}"
            else:
                said = f"did not announce that it leads (state {lead.state})"
            msg = f"{head}: saw all {self.expect} expected members ({', '.join(decision.members)}) but the leader {lead.address} {said}"
        gone = self.peers.gone()
        if gone:
            msg += f"; of these withdrew: {describe(gone)}"
        if self.peers.ignored:
            msg += "; ignored announcements: " + "; ".join(
                f"{sender} ({why})" for sender, why in sorted(self.peers.ignored.items())
            )
        return msg


# --------------------------------------------------------------------------------------------------- command line
class MemberFailure(Exception):
    """The zeroconf_elect task fails with ``msg``; ``result`` is what it still reports (address, cluster...)."""

    def __init__(self, msg: str, result: dict | None = None):
        super().__init__(msg)
        self.msg = msg
        self.result = result or {}


def elect(params: dict) -> dict:
    """The zeroconf_elect module's work: the member's interface and address, the election, its result.

    The election writes nothing on the host, so it runs in check mode too and never reports a change.
    """
    if params["expect"] < 1:
        raise MemberFailure(f"expect must be at least 1, got {params['expect']}")
    if params["timeout"] <= 0:
        raise MemberFailure(f"timeout must be positive, got {params['timeout']:g}")
    if params["election_id"] is not None and params["election_id"] < 0:
        raise MemberFailure(f"election_id must not be negative, got {params['election_id']}")
    started = time.monotonic()
    try:
        interface = params["interface"] or default_interface()
        address = interface_address(interface)
    except (ElectionError, OSError) as exc:
        raise MemberFailure(f"interface: {exc}") from None
    election_id = params["election_id"] if params["election_id"] is not None else address_key(address)
    partial = dict(
        changed=False, address=address, cluster=params["cluster"], election_id=election_id, interface=interface
    )
    try:
        election = LeaderElection(
            address, params["expect"], params["cluster"], params["timeout"], params["secret"], election_id
        )
    except ValueError as exc:
        raise MemberFailure(str(exc), partial) from None
    try:
        result = election.run()
    except ElectionError as exc:
        raise MemberFailure(str(exc), dict(partial, elapsed=round(time.monotonic() - started, 3))) from None
    return dict(result.as_dict(), changed=False, interface=interface)


def member_command(argv: list[str] | None = None) -> int:
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
    raise SystemExit(member_command())
