# Copyright: zeroinit.bootstrap contributors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)
"""The built-in signer in worker processes, for a bulk run: cryptography holds the GIL while it checks a CSR and
signs a certificate, so signing inline stalls the run's event loop (every reply, every request) for each node.

The workers are forked once, before the run's event loop starts, and inherit the loaded signer (the CA's key never
travels over a pipe). A worker answers with plain tuples, never an exception object: a signer error comes back as
text that the decider turns into the node's failure, and the run carries on. A pool that breaks (a worker killed)
is not used again: the node it was signing for fails naming the reason, and the run signs inline from then on.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from ..pki.policy import PolicyError
from ..pki.x509 import PkiError

# Issued: ("issued", certificate PEM, CA chain PEM, serial hex); refused by the policy: ("refused", why);
# any other signer error: ("error", why).
ISSUED, REFUSED, ERROR = "issued", "refused", "error"
__all__ = [
    "ERROR",
    "ISSUED",
    "REFUSED",
    "BrokenProcessPool",
    "SigningPool",
    "default_signing_processes",
    "sign_outcome",
]

_worker_signer = None  # the worker's signer, inherited from the parent at fork


def _adopt_signer(signer) -> None:
    global _worker_signer  # one signer per worker process, set once when it starts
    _worker_signer = signer


def _ready() -> int:
    return os.getpid()


def sign_outcome(signer, csr_pem: str, identity: str, valid_days: int, profile: str) -> tuple:
    """One CSR checked and signed by ``signer``, the outcome as a tuple (see ISSUED, REFUSED, ERROR); inline or in a
    worker alike."""
    try:
        issued = signer.sign(csr_pem, identity, valid_days=valid_days, profile=profile)
    except PolicyError as exc:
        return (REFUSED, str(exc))
    except PkiError as exc:
        return (ERROR, str(exc))
    return (ISSUED, issued.certificate, issued.ca, issued.serial_hex)


def sign_in_worker(csr_pem: str, identity: str, valid_days: int, profile: str) -> tuple:
    """Runs in a worker: ``sign_outcome`` with the inherited signer."""
    try:
        return sign_outcome(_worker_signer, csr_pem, identity, valid_days, profile)
    # A worker must answer for every node, whatever the signer raised.
    except Exception as exc:  # pylint: disable=broad-except
        return (ERROR, f"{type(exc).__name__}: {exc}")


def default_signing_processes() -> int:
    """Worker processes for a bulk run: one per core, at most 4 (more only waits for the same cores)."""
    return max(1, min(4, os.cpu_count() or 1))


class SigningPool:
    """``processes`` forked workers signing with ``signer``; made before an event loop runs (fork copies one thread)."""

    def __init__(self, signer, processes: int):
        self.processes = max(1, processes)
        self.broken = ""  # why the pool stopped being used ("" while it works)
        self.executor = ProcessPoolExecutor(
            self.processes,
            mp_context=multiprocessing.get_context("fork"),
            initializer=_adopt_signer,
            initargs=(signer,),
        )
        # Fork now, while this process has one thread (not later from inside the run's event loop).
        for future in [self.executor.submit(_ready) for _worker in range(self.processes)]:
            future.result()

    @staticmethod
    def available() -> bool:
        """Whether this platform can fork workers (Linux, the BSDs, macOS)."""
        return "fork" in multiprocessing.get_all_start_methods()

    def worker_pids(self) -> list[int]:
        return sorted(getattr(self.executor, "_processes", None) or {})

    async def sign(self, csr_pem: str, identity: str, valid_days: int, profile: str) -> tuple:
        """The outcome tuple for one node; raises BrokenProcessPool (and marks the pool broken) when a worker died."""
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self.executor, sign_in_worker, csr_pem, identity, valid_days, profile)
        except BrokenProcessPool as exc:
            self.broken = str(exc) or "a signing worker process died"
            raise

    def close(self) -> None:
        """Stop the workers and wait for them (queued work is cancelled)."""
        self.executor.shutdown(wait=True, cancel_futures=True)
