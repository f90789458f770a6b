# Copyright: zeroinit.bootstrap contributors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)
"""The provisioning lock: one provisioner at a time per node.

``gencsr`` and ``configure`` lock the node for their caller; the holder's later actions renew the lock; another
caller is refused until it expires (as go-choria's "could not obtain provisioning lock").
"""

from __future__ import annotations

from ..choria.protocol import StatusCode
from .actions.base import Refusal

LOCK_SECONDS = 120


class ProvisioningLock:
    """Who holds a node's provisioning round, and until when (seconds since the epoch)."""

    __slots__ = ("holder", "seconds", "until")

    def __init__(self, seconds: float = LOCK_SECONDS):
        self.seconds = seconds
        self.holder = ""
        self.until = 0.0

    def check(self, callerid: str, at: float, take: bool) -> None:
        """Refuse ``callerid`` while another caller holds the lock; ``take`` (or holding it) (re)starts it."""
        if self.holder and self.until > at and self.holder != callerid:
            raise Refusal(
                StatusCode.ABORTED,
                f"could not obtain provisioning lock (held by {self.holder} for {int(self.until - at + 0.999)} more "
                "seconds)",
            )
        if take or self.holder == callerid:
            self.holder = callerid
            self.until = at + self.seconds

    def release(self) -> None:
        self.holder, self.until = "", 0.0
