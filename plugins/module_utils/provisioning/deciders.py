# Copyright: zeroinit.bootstrap contributors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)
"""Who decides for a node in the provisioning flow: a helper program (Choria's contract) or the policy signer
(either backend: built in, or a CFSSL server).

A decider has ``async decide(identity, inventory, csr, jwt) -> HelperDecision`` (``jwt``: the node's verified
provisioning-JWT claims, or None), ``turn()`` (an async context that bounds concurrent decisions), ``warnings()``
for the run's report, ``async finish()`` before the run's event loop ends (persistent helpers are stopped) and
``close()`` when the run is over.

A helper runs ``oneshot`` (Choria's contract: a process per node) or ``persistent`` (``helper_pool.py``: a pool
of long-lived processes, one request line and one reply line per node). The persistent pool has
``helper_concurrency`` processes, by default the workers capped at two per CPU: a Python helper that signs is
CPU-bound once its start-up is gone, so more processes than that add memory and context switches, not
throughput (a helper that waits on a remote service is given more with ``helper_concurrency``). The flow checks every decision's
configuration against the loop guard, whoever made it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os

from ..choria.config import IDENTITY_KEY, PROVISION_KEY
from ..pki.issuance import signer_from_params
from ..pki.policy import DEFAULT_VALID_DAYS
from ..pki.signer import Signer
from ..pki.x509 import PkiError
from .helper import (
    DEFAULT_HELPER_TIMEOUT,
    HELPER_MODES,
    ONESHOT,
    PERSISTENT,
    HelperDecision,
    NodeFailure,
    certificate_problem,
    check_configuration,
    helper_request,
    merge_configuration,
    run_helper,
)
from .helper_pool import PersistentHelperPool
from .settings import ProvisionError, ProvisionSettings
from .signing_pool import ISSUED, REFUSED, SigningPool, WorkerLost, sign_outcome


def helper_concurrency(mode: str, workers: int, configured: int = 0) -> int:
    """Helpers at once: ``configured``, else for one-shot helpers four per CPU (each mostly starts up), for
    persistent ones two per CPU (each mostly computes); never more than the workers."""
    if configured:
        return configured
    per_cpu = 2 if mode == PERSISTENT else 4
    return max(2, min(workers, per_cpu * (os.cpu_count() or 1)))


class HelperDecider:
    """A helper program deciding per node, at most ``concurrency`` at once; its configuration goes over the base one.

    ``mode`` oneshot: a process per node (Choria's contract); persistent: ``concurrency`` long-lived processes."""

    def __init__(
        self,
        argv: list[str],
        base_configuration: dict | None = None,
        timeout: float = DEFAULT_HELPER_TIMEOUT,
        concurrency: int = 4,
        mode: str = ONESHOT,
    ):
        if mode not in HELPER_MODES:
            raise ValueError(f"helper_mode must be one of {', '.join(HELPER_MODES)}, not {mode!r}")
        self.argv = argv
        self.base = dict(base_configuration or {})
        self.timeout = timeout
        self.concurrency = max(1, concurrency)
        self.mode = mode
        self.pool = PersistentHelperPool(argv, self.concurrency) if mode == PERSISTENT else None
        self.ignored_fields: dict[str, int] = {}
        self._slots: asyncio.Semaphore | None = None

    def turn(self) -> asyncio.Semaphore:
        if self._slots is None:  # made in the running loop
            self._slots = asyncio.Semaphore(self.concurrency)
        return self._slots

    async def decide(self, identity: str, inventory: dict, csr: dict | None, jwt: dict | None = None) -> HelperDecision:
        request = helper_request(identity, csr, inventory, jwt)
        if self.pool is not None:
            decision = await self.pool.decide(identity, request, self.timeout)
        else:
            decision = await run_helper(self.argv, request, timeout=self.timeout)
        for name in decision.ignored:
            self.ignored_fields[name] = self.ignored_fields.get(name, 0) + 1
        if not (decision.defer or decision.shutdown):
            decision.configuration = merge_configuration(self.base, decision.configuration)
            # The loop guard before the certificate: a looping configuration is the failure a helper author
            # needs to read first (the flow checks every decision again, whoever made it).
            check_configuration(identity, decision.configuration)
            # A certificate for another key would leave the node unable to use it after restart (without PKI there
            # is no CSR to compare with: the node's own key, if any, is the node's business, as in Choria).
            problem = certificate_problem(decision.certificate, csr.get("csr", "")) if csr is not None else ""
            if problem:
                raise NodeFailure(f"helper answer for {identity} refused: {problem}")
        return decision

    def warnings(self) -> list[str]:
        return [
            f"helper returned the Choria field {name!r} for {count} node(s); this provisioner ignores it"
            for name, count in sorted(self.ignored_fields.items())
        ]

    async def finish(self) -> None:
        """Stop the persistent helpers (stdin closed, a grace period, then killed); nothing for one-shot ones."""
        if self.pool is not None:
            await self.pool.close()

    def close(self) -> None:
        """Nothing held outside the event loop."""


class SignerDecider:
    """The built-in decision: the collection's signer (built-in CA or CFSSL server) and a ``CsrPolicy``.

    Configuration = the base configuration, ``identity`` set to the node and provisioning forced off. A CFSSL server
    that cannot be reached fails the run here, once, rather than every node. With ``processes`` the built-in signer
    signs in that many worker processes (a bulk run: ``signing_pool.py``); the CFSSL backend's work is the server's.
    """

    def __init__(self, signer_options: dict, base_configuration: dict | None = None, processes: int = 0):
        self.valid_days = signer_options.get("valid_days") or DEFAULT_VALID_DAYS
        self.profile = signer_options.get("profile") or "both"
        self.base = dict(base_configuration or {})
        try:
            self.signer, self.ca_created = signer_from_params(signer_options)
        except KeyError as exc:
            raise ProvisionError(f"signer: option {exc} is required") from None
        except (PkiError, OSError, ValueError, TypeError) as exc:
            raise ProvisionError(f"signer: {exc}") from None
        self.ca = self.signer.ca
        self.pool: SigningPool | None = None
        if processes > 0 and isinstance(self.signer, Signer) and SigningPool.available():
            self.pool = SigningPool(self.signer, processes)

    def turn(self) -> contextlib.AbstractAsyncContextManager:
        return _NO_LIMIT  # signing is sub-millisecond (inline) or in the pool's workers

    async def decide(self, identity: str, inventory: dict, csr: dict | None, jwt: dict | None = None) -> HelperDecision:
        if csr is None:
            raise NodeFailure(f"the built-in signer needs the CSR of {identity}: it signs only with PKI on (gencsr)")
        csr_pem = csr.get("csr", "")
        if self.pool is not None:  # with no worker left, the pool signs inline itself
            try:
                outcome = await self.pool.sign(csr_pem, identity, self.valid_days, self.profile)
            except WorkerLost as exc:
                later = "signed inline" if self.pool.broken else "signed by the other workers"
                raise NodeFailure(
                    f"signer could not sign the CSR of {identity}: {exc} (later nodes are {later})"
                ) from None
        else:
            outcome = sign_outcome(self.signer, csr_pem, identity, self.valid_days, self.profile)
        if outcome[0] != ISSUED:
            verb = "refused" if outcome[0] == REFUSED else "could not sign"
            raise NodeFailure(f"signer {verb} the CSR of {identity}: {outcome[1]}")
        _issued, certificate, ca, serial_hex = outcome
        configuration = dict(self.base)
        configuration[IDENTITY_KEY] = identity
        configuration[PROVISION_KEY] = "false"
        return HelperDecision(
            certificate=certificate,
            ca=ca,
            ssldir=csr.get("ssldir", ""),
            configuration=configuration,
            msg=f"signed serial {serial_hex}",
        )

    def warnings(self) -> list[str]:
        warnings = list(getattr(self.ca, "warnings", []) or [])
        if self.pool is not None and self.pool.lost:
            rest = "the rest was signed inline" if self.pool.broken else "the others signed the rest"
            warnings.append(
                f"{len(self.pool.lost)} of {self.pool.processes} signing worker processes stopped "
                f"({'; '.join(self.pool.lost)}); only the nodes they held failed, {rest}"
            )
        return warnings

    async def finish(self) -> None:
        """Nothing lives in the event loop."""

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()
        self.signer.close()


class _NoLimit(contextlib.AbstractAsyncContextManager):
    async def __aexit__(self, *exc) -> None:
        return None


_NO_LIMIT = _NoLimit()


def decider_for(settings: ProvisionSettings, signing_processes: int = 0) -> HelperDecider | SignerDecider | None:
    """The decider the settings ask for; None without one, and no signer in check mode (loading with create_ca
    would write a CA). ``signing_processes``: worker processes for the built-in signer (a bulk run)."""
    if settings.helper_argv is not None:
        concurrency = helper_concurrency(settings.helper_mode, settings.workers, settings.helper_concurrency)
        return HelperDecider(
            settings.helper_argv, settings.configuration, settings.helper_timeout, concurrency, settings.helper_mode
        )
    if settings.signer and not settings.check_mode:
        return SignerDecider(settings.signer, settings.configuration, processes=signing_processes)
    return None
