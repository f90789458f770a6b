# Copyright: zeroinit.bootstrap contributors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)
"""What a node agent trusts, shared by every node the process serves: the provisioning CA and the ttl cap.

* ``--provisioning-ca``: one :class:`..choria.security.RequestVerifier` over that bundle with the provisioner
  policy (the certificate must carry :data:`..choria.security.PROVISIONER_USAGE_OID`), made once per process so
  its cache serves the whole fleet. Without it the token alone authenticates ``choria_provision``.
* The site CA of a locked node: a node locked to its site (``site_lock.py``) without a provisioning CA still
  needs to tell its own site's provisioner from anyone else's, so a request for a site-locked action is verified
  against the CA bundle the lock was committed with, under the same provisioner policy (a node or TLS
  certificate of that CA lacks the provisioner usage, so it cannot move other nodes). Those verifiers are made
  on first use and kept per bundle: a fleet configured by one site shares one.
* ``--max-ttl``: the longest ttl a request is judged with (``replay.py``).
"""

from __future__ import annotations

import hashlib
import threading

from ..choria.replay import DEFAULT_MAX_TTL
from ..choria.security import (
    PROVISIONER_POLICY,
    PROVISIONER_USAGE_OID,
    RequestVerifier,
    SignedRequestPolicy,
    TrustConfigError,
)

SITE_PROVISIONER_POLICY = SignedRequestPolicy(required_usage=PROVISIONER_USAGE_OID, ca_label="site CA")
MAX_SITE_VERIFIERS = 16  # distinct site CA bundles one process keeps verifiers for


class AgentTrust:
    """The provisioning CA's verifier (None: token only), the ttl cap, and site CA verifiers made on demand."""

    def __init__(self, provisioning_ca_pem: str | None = None, max_ttl: int = DEFAULT_MAX_TTL):
        self.provisioning_ca_pem = provisioning_ca_pem or None
        self.verifier = (
            RequestVerifier(self.provisioning_ca_pem, PROVISIONER_POLICY) if self.provisioning_ca_pem else None
        )
        self.max_ttl = max_ttl
        self._site_verifiers: dict[str, RequestVerifier] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_files(cls, provisioning_ca_path: str = "", max_ttl: int = DEFAULT_MAX_TTL) -> AgentTrust:
        """The trust of an agent's settings; TrustConfigError naming the file when it cannot be used."""
        if not provisioning_ca_path:
            return cls(None, max_ttl)
        try:
            with open(provisioning_ca_path, encoding="utf-8") as handle:
                pem = handle.read(1024 * 1024)
        except (OSError, UnicodeDecodeError) as exc:
            reason = getattr(exc, "strerror", None) or exc
            raise TrustConfigError(f"the provisioning CA {provisioning_ca_path} cannot be read: {reason}") from None
        try:
            return cls(pem, max_ttl)
        except TrustConfigError as exc:
            raise TrustConfigError(f"the provisioning CA {provisioning_ca_path}: {exc}") from None

    def site_verifier(self, site_ca_pem: str) -> RequestVerifier:
        """The verifier of provisioners under a site CA bundle; TrustConfigError when the bundle cannot anchor one."""
        key = hashlib.sha256(site_ca_pem.encode("utf-8")).hexdigest()
        with self._lock:
            verifier = self._site_verifiers.get(key)
        if verifier is None:
            verifier = RequestVerifier(site_ca_pem, SITE_PROVISIONER_POLICY)
            with self._lock:
                if len(self._site_verifiers) >= MAX_SITE_VERIFIERS:
                    self._site_verifiers.clear()
                self._site_verifiers[key] = verifier
        return verifier
