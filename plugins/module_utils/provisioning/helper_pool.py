# Copyright: zeroinit.bootstrap contributors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)
"""The persistent helper mode: long-lived helper processes answering Choria's helper contract one line at a time.

The same program (the same argv) as the one-shot mode, started once per pool slot and kept. Each request is one
line: Choria's helper input with a request ``id`` added; each reply is one line: Choria's helper output with the
same ``id``::

    > {"identity": "n1", "csr": {...}, "ed25519_pubkey": null, "inventory": "{...}", "jwt": null, "id": "7"}
    < {"id": "7", "certificate": "...", "ca": "...", "ssldir": "...", "configuration": {...}}

A reply is judged by the one-shot mode's judge (``helper_decision``): only the transport differs. A process
serves one request at a time. When it breaks the protocol (no reply within the helper timeout, it exits, a reply
line over ``MAX_HELPER_OUTPUT``, a line that is not a JSON object, a wrong or missing ``id``) it is killed, the
node it was answering fails with the reason and the process's stderr, and the next request starts a new process;
a process that keeps failing is started again after a doubling delay (at most ``RESTART_DELAY_MAX``), so a
helper that cannot start costs no more than that. A valid reply that is refused (no configuration, a bad
certificate) fails only its node: the process keeps running.

Pure Python (asyncio subprocesses).
"""

from __future__ import annotations

import asyncio
import contextlib
import json

from .helper import (
    MAX_HELPER_OUTPUT,
    STDERR_KEPT,
    HelperDecision,
    NodeFailure,
    helper_decision,
    json_object,
    kill_group,
    stderr_tail,
)

REQUEST_ID = "id"
RESTART_DELAY_FIRST = 0.1
RESTART_DELAY_MAX = 5.0
CLOSE_GRACE = 2.0  # seconds a helper has to exit once its stdin is closed, before it is killed
STDERR_SETTLE = 0.5  # seconds to collect a dead helper's last words on stderr


class HelperProtocolError(NodeFailure):
    """The helper process broke the line protocol; it is killed and started again for the next request."""


def request_line(request: dict, request_id: str) -> bytes:
    """One request as one line: Choria's helper input plus the request id (JSON escapes every newline)."""
    return json.dumps({**request, REQUEST_ID: request_id}, separators=(",", ":")).encode("utf-8") + b"\n"


def helper_reply_document(identity: str, request_id: str, line: bytes) -> dict:
    """The reply object of one line, its id removed; HelperProtocolError naming the node when the line is not a JSON
    object carrying ``request_id``."""
    try:
        text = line.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise HelperProtocolError(f"helper reply for {identity} is not UTF-8") from None
    if not text:
        raise HelperProtocolError(f"helper answered an empty line for {identity}")
    doc, problem = json_object(text)
    if doc is None:
        raise HelperProtocolError(f"helper reply for {identity} {problem}")
    if REQUEST_ID not in doc:
        raise HelperProtocolError(
            f"helper reply for {identity} has no {REQUEST_ID!r} (expected {json.dumps(request_id)})"
        )
    if doc[REQUEST_ID] != request_id:
        raise HelperProtocolError(
            f"helper reply for {identity} carries {REQUEST_ID} {json.dumps(doc[REQUEST_ID])[:80]}, "
            f"expected {json.dumps(request_id)}"
        )
    del doc[REQUEST_ID]
    return doc


def restart_delay(consecutive_failures: int) -> float:
    """Seconds to wait before starting a helper again: none after one failure, then doubling up to a bound."""
    if consecutive_failures <= 1:
        return 0.0
    return min(RESTART_DELAY_MAX, RESTART_DELAY_FIRST * 2 ** (consecutive_failures - 2))


class HelperProcess:
    """One long-lived helper process, started on first use and again after it failed."""

    def __init__(self, argv: list[str], env: dict | None = None):
        self.argv = argv
        self.env = env
        self.proc: asyncio.subprocess.Process | None = None
        self.stderr = bytearray()  # the tail of this process's stderr
        self.stderr_seen = 0  # bytes of stderr read from this process in all
        self.failures = 0  # consecutive failed requests
        self.starts = 0
        self.sequence = 0
        self._stderr_task: asyncio.Task | None = None

    async def decide(self, identity: str, request: dict, timeout: float) -> HelperDecision:
        """The helper's decision for one node; NodeFailure naming the node when it cannot be had."""
        await self._ensure_started(identity)
        self.sequence += 1
        request_id = str(self.sequence)
        mark = self.stderr_seen
        try:
            line = await asyncio.wait_for(self._exchange(identity, request_line(request, request_id)), timeout)
            doc = helper_reply_document(identity, request_id, line)
        except asyncio.TimeoutError:
            await self._fail()
            raise NodeFailure(
                f"helper did not answer for {identity} within {timeout:g}s and was killed (a new one serves the "
                f"next node); stderr: {self._stderr_since(mark)}"
            ) from None
        except HelperProtocolError as exc:
            await self._fail()
            raise HelperProtocolError(
                f"{exc}; the helper was killed (a new one serves the next node); stderr: {self._stderr_since(mark)}"
            ) from None
        except BaseException:
            await self._fail()
            raise
        self.failures = 0
        return helper_decision(
            identity, doc, self._stderr_since(mark), require_certificate=request.get("csr") is not None
        )

    async def _ensure_started(self, identity: str) -> None:
        if self.proc is not None:
            return
        await asyncio.sleep(restart_delay(self.failures))
        self.stderr.clear()
        self.stderr_seen = 0
        try:
            self.proc = await asyncio.create_subprocess_exec(
                *self.argv,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                start_new_session=True,
                env=self.env,
                limit=MAX_HELPER_OUTPUT,  # a longer reply line raises instead of filling memory
            )
        except OSError as exc:
            self.failures += 1
            raise NodeFailure(f"helper {self.argv[0]} could not be started for {identity}: {exc}") from None
        self.starts += 1
        self._stderr_task = asyncio.ensure_future(self._drain_stderr(self.proc))

    async def _exchange(self, identity: str, line: bytes) -> bytes:
        proc = self.proc
        try:
            proc.stdin.write(line)
            await proc.stdin.drain()
        except (BrokenPipeError, ConnectionResetError):
            raise HelperProtocolError(
                f"helper exited with status {await self._exit_status()} before it read the request for {identity}"
            ) from None
        try:
            return await proc.stdout.readuntil(b"\n")
        except asyncio.IncompleteReadError:
            raise HelperProtocolError(
                f"helper exited with status {await self._exit_status()} while answering for {identity}"
            ) from None
        except asyncio.LimitOverrunError:
            raise HelperProtocolError(
                f"helper printed a reply line longer than {MAX_HELPER_OUTPUT} bytes for {identity}"
            ) from None

    async def _exit_status(self) -> str:
        """The status of a process that closed its pipes ("unknown" when it is still running a moment later)."""
        try:
            return str(await asyncio.wait_for(self.proc.wait(), STDERR_SETTLE))
        except asyncio.TimeoutError:
            return "unknown"

    async def _drain_stderr(self, proc) -> None:
        while True:
            chunk = await proc.stderr.read(65536)
            if not chunk:
                return
            self.stderr_seen += len(chunk)
            self.stderr.extend(chunk)
            del self.stderr[:-STDERR_KEPT]

    def _stderr_since(self, mark: int) -> str:
        """What the process wrote on stderr since ``mark`` (within the kept tail), as an error message's part."""
        fresh = min(len(self.stderr), self.stderr_seen - mark)
        return stderr_tail(self.stderr[len(self.stderr) - fresh :].decode("utf-8", "replace") if fresh > 0 else "")

    async def _fail(self) -> None:
        """Kill the process (and its children) and count the failure; the next request starts a new one."""
        self.failures += 1
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.returncode is None:
            kill_group(proc)
        await proc.wait()
        await self._settle_stderr()

    async def _settle_stderr(self) -> None:
        task, self._stderr_task = self._stderr_task, None
        if task is None:
            return
        try:
            await asyncio.wait_for(task, STDERR_SETTLE)
        except (asyncio.TimeoutError, OSError):
            pass  # a grandchild holding the pipe open: the tail gathered so far will do

    async def close(self) -> None:
        """End of the run: close stdin (the helper's cue to exit), wait ``CLOSE_GRACE``, then kill."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        with contextlib.suppress(OSError):
            proc.stdin.close()
        try:
            await asyncio.wait_for(proc.wait(), CLOSE_GRACE)
        except asyncio.TimeoutError:
            kill_group(proc)
            await proc.wait()
        await self._settle_stderr()


class PersistentHelperPool:
    """``size`` helper processes; each request goes to an idle one."""

    def __init__(self, argv: list[str], size: int, env: dict | None = None):
        self.processes = [HelperProcess(argv, env) for _slot in range(max(1, size))]
        self._idle: asyncio.Queue | None = None

    async def decide(self, identity: str, request: dict, timeout: float) -> HelperDecision:
        if self._idle is None:  # made in the running loop
            self._idle = asyncio.Queue()
            for process in self.processes:
                self._idle.put_nowait(process)
        process = await self._idle.get()
        try:
            return await process.decide(identity, request, timeout)
        finally:
            self._idle.put_nowait(process)

    @property
    def restarts(self) -> int:
        """Processes started beyond the first of each slot."""
        return sum(max(0, process.starts - 1) for process in self.processes)

    async def close(self) -> None:
        await asyncio.gather(*(process.close() for process in self.processes))
