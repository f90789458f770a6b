# Copyright: zeroinit.bootstrap contributors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)
"""The built-in signer in worker processes, for a bulk run: cryptography holds the GIL while it checks a CSR and
signs a certificate, so signing inline stalls the run's event loop (every reply, every request) for each node.

The workers are forked once, before the run's event loop starts, and inherit the loaded signer (the CA's key never
travels over a pipe). Each has a pipe of its own, read by the event loop itself: no threads in this process. A
worker is handed a batch of at most MAX_BATCH nodes when it is idle (one node when the run is quiet, more when
nodes wait), and answers with plain tuples, never an exception object: a signer error comes back as text that the
decider turns into the node's failure, and the run carries on.

A worker that dies (killed, out of memory) fails only the nodes of the batch it held, naming the reason; the other
workers take the rest, and once none is left the nodes are signed inline.
"""

from __future__ import annotations

import asyncio
import collections
import multiprocessing
import os

from ..pki.policy import PolicyError
from ..pki.x509 import PkiError

# Issued: ("issued", certificate PEM, CA chain PEM, serial hex); refused by the policy: ("refused", why);
# any other signer error: ("error", why).
ISSUED, REFUSED, ERROR = "issued", "refused", "error"
# Nodes handed to a worker at once: fewer pipe round trips under load, and at most this many fail when it dies.
MAX_BATCH = 8
__all__ = [
    "ERROR",
    "ISSUED",
    "MAX_BATCH",
    "REFUSED",
    "SigningPool",
    "WorkerLost",
    "default_signing_processes",
    "sign_outcome",
]


class WorkerLost(Exception):
    """The worker process signing this node died before it answered."""


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


def _answer(signer, request: tuple) -> tuple:
    """``sign_outcome`` for a worker, which must answer for every node whatever the signer raised."""
    try:
        return sign_outcome(signer, *request)
    except Exception as exc:  # pylint: disable=broad-except
        return (ERROR, f"{type(exc).__name__}: {exc}")


def _serve(signer, conn, parent_end) -> None:
    """A worker: a batch of requests in, their outcomes out, until the parent closes its end of the pipe."""
    parent_end.close()
    try:
        while True:
            try:
                batch = conn.recv()
            except (EOFError, OSError):
                return
            conn.send([_answer(signer, request) for request in batch])
    except KeyboardInterrupt:  # Ctrl-C reaches the whole process group; the parent decides what happens
        return


def default_signing_processes() -> int:
    """Worker processes for a bulk run: one per core, at most 4 (more only waits for the same cores)."""
    return max(1, min(4, os.cpu_count() or 1))


def _exit_reason(process) -> str:
    process.join(0.5)
    code = process.exitcode
    if code is None:
        return "a signing worker process closed its pipe"
    if code < 0:
        return f"a signing worker process was killed by signal {-code}"
    return f"a signing worker process exited with status {code}"


class _Worker:
    __slots__ = ("alive", "conn", "held", "process")

    def __init__(self, process, conn):
        self.process, self.conn = process, conn
        self.held: list = []  # the futures of the batch it is signing
        self.alive = True


class SigningPool:
    """``processes`` forked workers signing with ``signer``; made before an event loop runs (fork copies one thread)."""

    def __init__(self, signer, processes: int):
        self.processes = max(1, processes)
        self.signer = signer  # for inline signing once every worker is gone
        self.broken = ""  # why the last worker stopped ("" while one works)
        self.lost: list[str] = []  # why each lost worker stopped
        self.waiting: collections.deque = collections.deque()  # (future, request) not handed to a worker yet
        self._loop = None
        context = multiprocessing.get_context("fork")
        self.workers: list[_Worker] = []
        for _number in range(self.processes):
            ours, theirs = context.Pipe()
            process = context.Process(target=_serve, args=(signer, theirs, ours), name="zeroinit-signing", daemon=True)
            process.start()
            theirs.close()
            self.workers.append(_Worker(process, ours))

    @staticmethod
    def available() -> bool:
        """Whether this platform can fork workers (Linux, the BSDs, macOS)."""
        return "fork" in multiprocessing.get_all_start_methods()

    def worker_pids(self) -> list[int]:
        return sorted(worker.process.pid for worker in self.workers if worker.alive)

    async def sign(self, csr_pem: str, identity: str, valid_days: int, profile: str) -> tuple:
        """The outcome tuple for one node; raises WorkerLost when the worker signing it died. With no worker left,
        ``_dispatch`` signs it inline."""
        request = (csr_pem, identity, valid_days, profile)
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            self._watch(loop)
        future = loop.create_future()
        self.waiting.append((future, request))
        self._dispatch()
        return await future

    def _watch(self, loop) -> None:
        """Read the workers' pipes in ``loop`` (each asyncio.run has a loop of its own)."""
        old, self._loop = self._loop, loop
        for worker in self.workers:
            if not worker.alive:
                continue
            if old is not None and not old.is_closed():
                old.remove_reader(worker.conn.fileno())
            loop.add_reader(worker.conn.fileno(), self._readable, worker)

    def _dispatch(self) -> None:
        """Hand the waiting nodes to idle workers, a batch each."""
        for worker in self.workers:
            if not self.waiting:
                return
            if not worker.alive or worker.held:
                continue
            batch = []
            while self.waiting and len(batch) < MAX_BATCH:
                future, request = self.waiting.popleft()
                if not future.done():  # cancelled while it waited
                    batch.append((future, request))
            if not batch:
                continue
            try:
                worker.conn.send([request for _future, request in batch])
            except (OSError, ValueError) as exc:
                self.waiting.extendleft(reversed(batch))  # never reached the worker: nothing of it is lost
                self._lose(worker, f"a signing worker process could not be written to ({exc})")
                continue
            worker.held = [future for future, _request in batch]
        if self.waiting and not any(worker.alive for worker in self.workers):
            self._sign_waiting_inline()

    def _readable(self, worker: _Worker) -> None:
        try:
            outcomes = worker.conn.recv()
        except (EOFError, OSError):
            self._lose(worker, _exit_reason(worker.process))
            self._dispatch()
            return
        held, worker.held = worker.held, []
        for future, outcome in zip(held, outcomes):
            if not future.done():
                future.set_result(outcome)
        self._dispatch()

    def _lose(self, worker: _Worker, reason: str) -> None:
        """The worker is gone: its batch fails with ``reason``; the others (or inline signing) take the rest."""
        self._let_go(worker)
        self.lost.append(reason)
        held, worker.held = worker.held, []
        for future in held:
            if not future.done():
                future.set_exception(WorkerLost(reason))
        if not any(other.alive for other in self.workers):
            self.broken = reason

    def _let_go(self, worker: _Worker) -> None:
        """No more reading from or writing to ``worker``: its pipe leaves the loop and is closed."""
        worker.alive = False
        if self._loop is not None and not self._loop.is_closed():
            self._loop.remove_reader(worker.conn.fileno())
        worker.conn.close()

    def _sign_waiting_inline(self) -> None:
        while self.waiting:
            future, request = self.waiting.popleft()
            if not future.done():
                future.set_result(_answer(self.signer, request))

    def close(self) -> None:
        """Stop the workers and wait for them; nodes still waiting fail."""
        for worker in self.workers:
            if worker.alive:
                self._let_go(worker)  # the worker reads the end of its pipe and exits
        for worker in self.workers:
            worker.process.join(2)
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join(2)
        stopped = WorkerLost("the signing worker processes were stopped")
        for future in [future for worker in self.workers for future in worker.held] + [f for f, _r in self.waiting]:
            if not future.done() and not future.get_loop().is_closed():
                future.set_exception(stopped)
        self.waiting.clear()
