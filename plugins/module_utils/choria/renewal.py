# Copyright: zeroinit.bootstrap contributors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)
"""The certificate-renewal exchange between a configured node and a renewal responder: its names, its limits, and
the node's renewal settings (``plugin.zeroinit.renewal.*`` in server.conf), read the same way by both sides.

The exchange is a Choria v1 request to the agent :data:`RENEWAL_AGENT` in the node's main collective, sent by the
node as a client would: to ``<collective>.broadcast.agent.zeroinit_ca``, caller id ``choria=<identity>``, signed with
the node's current certificate and key (``choria.security``, :data:`..choria.security.RENEWAL_POLICY`), body
``{"agent": "zeroinit_ca", "action": "renew", "data": {"csr": <PEM>}}``. Nodes do not host that agent, so no node
receives another's request; responders subscribe in the queue group :data:`RENEWAL_QUEUE_GROUP`, so each request is
answered by exactly one of them however many run. The reply's data: ``certificate`` (PEM), ``ca`` (the responder's
chain, PEM), ``serial`` (hex) and ``not_after`` (ISO 8601 UTC).

Why a Choria agent rather than a subject of our own: the request is then an ordinary signed Choria v1 request (the
verifier, the ttl window, the reply subject and the size limits are the ones every other request has), a broker's
Choria permissions already let a member publish requests and receive replies in its collective, and the exchange is
visible to Choria tooling as what it is.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .config import ConfigError, as_bool

RENEWAL_AGENT = "zeroinit_ca"
RENEWAL_ACTION = "renew"
RENEWAL_QUEUE_GROUP = "zeroinit_ca"

# Lifecycle events a configured node publishes (component ``server``): a certificate installed, an attempt failed.
RENEWED_EVENT = "renewed"
RENEWAL_FAILED_EVENT = "renewal_failed"

CSR_LIMIT = 8192  # an RSA-4096 CSR is under 2 KiB

RENEWAL_ENABLED_KEY = "plugin.zeroinit.renewal.enabled"
RENEWAL_FRACTION_KEY = "plugin.zeroinit.renewal.fraction"
RENEWAL_JITTER_KEY = "plugin.zeroinit.renewal.jitter"
RENEWAL_RETRY_MIN_KEY = "plugin.zeroinit.renewal.retry_min"
RENEWAL_RETRY_MAX_KEY = "plugin.zeroinit.renewal.retry_max"
RENEWAL_TIMEOUT_KEY = "plugin.zeroinit.renewal.timeout"


@dataclass(frozen=True)
class RenewalSettings:
    """When and how persistently a configured node renews its certificate (see the README, "Renewal").

    ``fraction`` of the certificate's lifetime, give or take ``jitter`` (a fraction of the lifetime too, drawn once per
    certificate), is when the node asks; kubelet's rotation uses 0.8 +- 0.1. A failed attempt is retried after
    ``retry_min`` seconds, doubling up to ``retry_max``, and never later than halfway to the certificate's end.
    ``timeout`` bounds one exchange.
    """

    enabled: bool = True
    fraction: float = 2.0 / 3.0
    jitter: float = 0.1
    retry_min: float = 5.0
    retry_max: float = 300.0
    timeout: float = 10.0

    @classmethod
    def from_config(cls, config: dict) -> RenewalSettings:
        """The settings a server.conf gives; ConfigError naming the key for a value that cannot be used."""
        values: dict = {}
        if config.get(RENEWAL_ENABLED_KEY, "").strip():
            try:
                values["enabled"] = as_bool(config[RENEWAL_ENABLED_KEY])
            except ConfigError:
                raise ConfigError(
                    f"{RENEWAL_ENABLED_KEY} must be true or false, not {config[RENEWAL_ENABLED_KEY]!r}"
                ) from None
        for key, name in (
            (RENEWAL_FRACTION_KEY, "fraction"),
            (RENEWAL_JITTER_KEY, "jitter"),
            (RENEWAL_RETRY_MIN_KEY, "retry_min"),
            (RENEWAL_RETRY_MAX_KEY, "retry_max"),
            (RENEWAL_TIMEOUT_KEY, "timeout"),
        ):
            text = config.get(key, "").strip()
            if not text:
                continue
            try:
                number = float(text)
            except ValueError:
                number = math.nan
            if not math.isfinite(number):
                raise ConfigError(f"{key} must be a number, not {text!r}")
            values[name] = number
        settings = cls(**values)
        problem = settings.problem()
        if problem:
            raise ConfigError(problem)
        return settings

    def problem(self) -> str | None:
        """Why these settings cannot schedule renewals, naming the key; None when they can."""
        low, high = self.fraction - self.jitter, self.fraction + self.jitter
        if not 0 < self.fraction < 1:
            return f"{RENEWAL_FRACTION_KEY} must be between 0 and 1 (a share of the lifetime), not {self.fraction:g}"
        if self.jitter < 0 or low <= 0.05 or high >= 0.95:
            return (
                f"{RENEWAL_JITTER_KEY} {self.jitter:g} around {RENEWAL_FRACTION_KEY} {self.fraction:g} must keep "
                "renewal between 5% and 95% of the lifetime"
            )
        if self.retry_min <= 0 or self.retry_max < self.retry_min:
            return (
                f"{RENEWAL_RETRY_MIN_KEY} must be above 0 and {RENEWAL_RETRY_MAX_KEY} at least as large "
                f"(got {self.retry_min:g} and {self.retry_max:g})"
            )
        if self.timeout <= 0:
            return f"{RENEWAL_TIMEOUT_KEY} must be above 0 seconds, not {self.timeout:g}"
        return None
