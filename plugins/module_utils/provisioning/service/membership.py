# Copyright: zeroinit.bootstrap contributors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)
"""Which live instance of a site a node falls to, so instances do not all reach for the same node at once.

Every instance hears every node, and claims (``claims.py``) make sure one works it; this only decides who tries
first. Rendezvous hashing: among the live instances, the one with the highest hash of (instance, node) owns the
node; every instance computes the same answer from the same member list, and when an instance joins or leaves,
only the nodes it owns (or will own) change hands. The member list comes from the site's control subject
(``hello``, every few seconds): instances in cluster mode that are not draining. Views that differ for a moment
cost a lost claim race, never a node worked twice.
"""

from __future__ import annotations

import hashlib
from typing import Iterable


def node_owner(identity: str, members: Iterable[str]) -> str:
    """The member ``identity`` falls to (rendezvous hashing)."""
    return max(members, key=lambda member: hashlib.blake2b(f"{member}\0{identity}".encode(), digest_size=8).digest())


class SiteMembers:
    """This instance's view of the site's live instances."""

    def __init__(self, me: str):
        self.me = me
        self.members: tuple = (me,)

    def update(self, others: Iterable[str]) -> bool:
        """Set the other live instances; True when the view changed."""
        members = tuple(sorted({self.me, *others}))
        changed = members != self.members
        self.members = members
        return changed

    def mine(self, identity: str) -> bool:
        return len(self.members) == 1 or node_owner(identity, self.members) == self.me
