# Copyright: zeroinit.bootstrap contributors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)
"""The election's announcement and its DNS-SD TXT wire form, with an HMAC when the members share a secret.

Every member registers one DNS-SD service ``<cluster>-<address>._zeroinit-elect._udp.local.`` whose TXT record is
its announcement: cluster, election ID, address, state, a timestamp/sequence/nonce and, with a shared secret, an
HMAC-SHA256 over all of it (RFC 6763 section 6 for the TXT format).
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import ipaddress
import re
import time

SERVICE_TYPE = "_zeroinit-elect._udp.local."
PROTOCOL_VERSION = "1"
CANDIDATE, LEADER, FOLLOWER = "candidate", "leader", "follower"
STATES = (CANDIDATE, LEADER, FOLLOWER)

# Signed announcements older/newer than this are ignored (a replay of an earlier election). Clocks of the
# members must agree within this when a secret is used.
MAX_CLOCK_SKEW_MS = 300_000
CLUSTER_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,39}$")
TXT_CHUNK = 200  # member lists are split over m0, m1, ... so each TXT string stays under 255 bytes


class InvalidAnnouncement(ValueError):
    """A TXT record that is not an acceptable announcement (wrong cluster, bad signature, malformed, stale)."""


def instance_name(cluster: str, address: str) -> str:
    # Dots would become DNS label separators inside the instance name; dashes keep it one label.
    return f"{cluster}-{address.replace('.', '-')}.{SERVICE_TYPE}"


def validate_cluster(cluster: str) -> str:
    if not CLUSTER_RE.match(cluster or ""):
        raise ValueError(
            f"cluster {cluster!r} must be 1-40 letters, digits, '-' or '_' starting with a letter or digit"
        )
    return cluster


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


def sign_announcement(properties: dict[str, str], secret: str) -> str:
    return hmac.new(secret.encode("utf-8"), canonical(properties), hashlib.sha256).hexdigest()


def verify_announcement(properties: dict[str, str], secret: str) -> bool:
    return hmac.compare_digest(sign_announcement(properties, secret), properties.get("h", ""))


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
        props[f"m{chunk}"] = joined[:cut]
        joined = joined[cut + 1 :]
        chunk += 1
    if secret:
        props["h"] = sign_announcement(props, secret)
    return props


def decode_txt(
    props: dict[str, str], cluster: str, secret: str | None = None, now_ms: int | None = None
) -> Announcement:
    """The announcement in ``props`` if it belongs to ``cluster`` and (with a secret) is signed and fresh."""
    if props.get("v") != PROTOCOL_VERSION:
        raise InvalidAnnouncement(f"protocol version {props.get('v')!r}")
    if props.get("c") != cluster:
        raise InvalidAnnouncement(f"cluster {props.get('c')!r}")
    if secret:
        if "h" not in props:
            raise InvalidAnnouncement("unsigned")
        if not verify_announcement(props, secret):
            raise InvalidAnnouncement("bad signature")
    try:
        address = str(ipaddress.IPv4Address(props["a"]))
        election_id = int(props["id"])
        timestamp, sequence = int(props["t"]), int(props["q"])
        state = props["s"]
        members = []
        for index in range(64):
            if f"m{index}" not in props:
                break
            members += props[f"m{index}"].split(",")
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
            raise InvalidAnnouncement(f"timestamp {(timestamp - now_ms) / 1000.0:+.0f}s from this host's clock")
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
