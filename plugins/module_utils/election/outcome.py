# Copyright: zeroinit.bootstrap contributors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)
"""Who leads: the pure decision over the announcements seen, and the errors that name what went wrong.

Exactly ``expect`` distinct members with distinct election IDs: the lowest ID leads. More members, duplicate
IDs or members expecting another count are errors naming the members involved.
"""

from __future__ import annotations

import dataclasses
import ipaddress

from .codec import Announcement


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


def address_key(address: str) -> int:
    return int(ipaddress.IPv4Address(address))


def sort_addresses(addresses) -> list[str]:
    """Addresses in numeric order (10.0.0.9 before 10.0.0.10), each once."""
    return sorted(set(addresses), key=address_key)


@dataclasses.dataclass(frozen=True)
class ElectionOutcome:
    """The decision over the members seen: complete or not, and who leads."""

    complete: bool  # exactly ``expect`` members are present
    leader: Announcement | None
    members: tuple  # sorted addresses of the members seen


def describe(members) -> str:
    members = sorted(members, key=lambda m: address_key(m.address))
    return ", ".join(f"{m.address} (id {m.election_id})" for m in members) or "none"


def decide(members, expect: int) -> ElectionOutcome:
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
            f"members expect a different number of members: this host expects {expect}, {', '.join(f'{m.address} expects {m.expect}' for m in others)}"
        )
    by_id: dict[int, Announcement] = {}
    for member in sorted(by_address.values(), key=lambda m: address_key(m.address)):
        other = by_id.get(member.election_id)
        if other is not None:
            raise DuplicateElectionId(
                f"duplicate election ID {member.election_id}: announced by {other.address} and by {member.address}"
            )
        by_id[member.election_id] = member
    addresses = tuple(sort_addresses(by_address))
    if len(addresses) > expect:
        raise TooManyMembers(
            f"more members than expected: {len(addresses)} seen, {expect} expected: {describe(by_address.values())}"
        )
    if len(addresses) < expect:
        return ElectionOutcome(False, None, addresses)
    return ElectionOutcome(True, by_id[min(by_id)], addresses)


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
