# Copyright: zeroinit.bootstrap contributors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)
"""A node's time window for requests, with the sender's ttl capped, and its memory of the requests it accepted.

The window (go-choria's ``ValidateTTL``): a request is judged only while its ``time`` is within ``ttl`` seconds of
the node's clock, either way. The sender chooses ``ttl``, so a ten-minute-old request carrying ``ttl=100000``
would pass; :func:`request_window_refusal` judges every request with ``min(ttl, max_ttl)``.

The memory (go-choria has none: its only replay defence is that window). :class:`ReplayGuard` remembers the id
of every request the node accepted until the window has closed on it, ``time + min(ttl, max_ttl) + slack``, and
refuses the same id again with a message that says replay. After that the window itself refuses the copy.

What is remembered, and what happens when the memory is full:

* Only requests that passed authentication (the token, and the signature when signed requests are on) are
  remembered, so nobody without the site's credentials can fill the memory. The open agents (``discovery``,
  ``rpcutil``) answer read-only questions and are not remembered.
* Memory is bounded by ``capacity`` ids per guard. Expired ids are dropped as they reach the front of the
  insertion order (O(1) amortised per request); when the guard is full, one sweep drops every expired id.
* If it is still full, the request is refused ("replay memory full"), and refused without another sweep until the
  earliest remembered id expires. Evicting a live id instead would let exactly that request be replayed: the gap
  this guard closes. Filling it takes an authenticated sender sending more than ``capacity`` requests to one node
  within ``max_ttl`` (the defaults: 4,096 in 5 minutes), and it heals by itself as the window moves on.

Pure: the clock is passed in (``now``); one lock makes a guard safe to share between the agent's threads (a fleet
process may keep one guard per node, or one for all with ``scope`` = the node's identity).
"""

from __future__ import annotations

import threading
from collections import deque

DEFAULT_MAX_TTL = 300
DEFAULT_REPLAY_CAPACITY = 4096
# Seconds an id is kept beyond its window: the window compares whole seconds of the node's clock.
RETENTION_SLACK = 2


def accepted_ttl(ttl: int, max_ttl: int = DEFAULT_MAX_TTL) -> int:
    """The ttl a request is judged with: the sender's, but never more than the node's ``max_ttl``."""
    return min(ttl, max_ttl)


def request_window_refusal(request_time: int, ttl: int, now: float, max_ttl: int = DEFAULT_MAX_TTL) -> str | None:
    """None when the request's ``time`` is within its (capped) ttl of ``now``, else the refusal message."""
    if ttl < 1:
        return f"request ttl {ttl}s is not positive"
    effective = accepted_ttl(ttl, max_ttl)
    skew = int(now) - request_time
    if abs(skew) <= effective:
        return None
    what, when = ("request expired", "ago") if skew > 0 else ("request too far in the future", "ahead")
    capped = f" (capped from the {ttl}s it asked for)" if ttl > effective else ""
    return f"{what}: sent {abs(skew)}s {when}, ttl {effective}s{capped}"


class ReplayGuard:
    """The ids of accepted requests, each until its window has closed; see the module doc for the policy."""

    def __init__(
        self, capacity: int = DEFAULT_REPLAY_CAPACITY, max_ttl: int = DEFAULT_MAX_TTL, slack: int = RETENTION_SLACK
    ):
        if capacity < 1:
            raise ValueError(f"replay memory capacity must be at least 1, not {capacity}")
        self.capacity = capacity
        self.max_ttl = max_ttl
        self.slack = slack
        self._expiry: dict[tuple, float] = {}
        self._order: deque = deque()  # (expiry, key) in insertion order
        self._full_until = 0.0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._expiry)

    def admit(self, request_id: str, request_time: int, ttl: int, now: float, scope: str = "") -> str | None:
        """Remember an authenticated request: None if it is new, else the refusal message (replay, or full)."""
        key = (scope, request_id)
        with self._lock:
            self._drop_expired_front(now)
            until = self._expiry.get(key)
            if until is not None and until > now:
                return f"replay refused: request {request_id} was already accepted (remembered for {until - now:.0f}s)"
            if until is None and len(self._expiry) >= self.capacity:
                if now >= self._full_until:
                    self._sweep(now)
                if len(self._expiry) >= self.capacity:
                    self._full_until = min(self._expiry.values())
                    return (
                        f"replay memory full: {len(self._expiry)} requests accepted within the ttl window; "
                        f"refusing new ones for {self._full_until - now:.0f}s rather than forgetting one"
                    )
            expiry = request_time + accepted_ttl(ttl, self.max_ttl) + self.slack
            self._expiry[key] = expiry
            self._order.append((expiry, key))
            if len(self._order) > 2 * self.capacity:  # superseded entries stuck behind a long-lived one
                self._sweep(now)
            return None

    def _drop_expired_front(self, now: float) -> None:
        order, expiry = self._order, self._expiry
        while order and order[0][0] <= now:
            until, key = order.popleft()
            if expiry.get(key) == until:  # not re-admitted since with a later expiry
                del expiry[key]

    def _sweep(self, now: float) -> None:
        self._expiry = {key: until for key, until in self._expiry.items() if until > now}
        self._order = deque((until, key) for until, key in self._order if self._expiry.get(key) == until)
