"""Election announcements for tests: one member's announcement in the cluster ``prod``."""

from __future__ import annotations

import time

from ansible_collections.zeroinit.bootstrap.plugins.module_utils.election.codec import Announcement
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.election.outcome import address_key

SECRET = "s3cret"


def ann(address: str, election_id: int | None = None, **kw) -> Announcement:
    kw.setdefault("timestamp", int(time.time() * 1000))
    return Announcement("prod", address_key(address) if election_id is None else election_id, address, **kw)
