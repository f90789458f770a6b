# Copyright: zeroinit.bootstrap contributors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)
"""Messages from the bus to nodes and their answers back: decode, check collective and agent, match filters,
serve inline or in a thread, publish the reply.

Actions that do crypto or disk I/O run in a thread pool, one at a time per node, so fsyncs of many nodes
overlap; without fsync they are page-cache fast and run inline (a thread hand-off costs more under the GIL).

Network input never raises here. A message that does not decode, is for another collective or agent, carries a
filter this node will not evaluate (``choria/filters.py``) or a reply subject a node may not publish to
(``choria/subjects.py``: under ``<collective>.reply.``, literal, short) is counted and dropped with one log line;
those lines are rate-limited, so a flood of them costs a few lines a minute. A broadcast's filter is compiled once
and matched against every node within a CPU-time budget; the nodes past the budget do not act on it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import Executor
from typing import Awaitable, Callable

from ..choria.filters import FilterBudget, FilterError, compile_filter
from ..choria.protocol import PROVISION_AGENT, ProtocolError, Reply, decode_request, encode_reply
from ..choria.subjects import reply_subject, valid_reply_subject
from ..common.text import printable
from .actions.base import ActionResult
from .dispatch import handle
from .links import Link
from .state import NodeState

log = logging.getLogger("zeroinit.agent")

# choria_provision actions that do crypto or disk I/O: run in threads, serialised per node.
BLOCKING_ACTIONS = frozenset(("gencsr", "configure", "reprovision", "restart", "trust", "destroy"))


class RateLimitedLog:
    """At most ``burst`` lines per ``interval`` seconds; the next line that gets out counts the ones held back."""

    def __init__(self, logger: logging.Logger, level: int, burst: int = 20, interval: float = 60.0):
        self.logger, self.level, self.burst, self.interval = logger, level, burst, interval
        self.window_start = -interval
        self.written = 0
        self.held_back = 0

    def __call__(self, message: str, *args) -> None:
        now = time.monotonic()
        if now - self.window_start >= self.interval:
            self.window_start, self.written = now, 0
        if self.written >= self.burst:
            self.held_back += 1
            return
        self.written += 1
        if self.held_back:
            message += f" ({self.held_back} more like this held back)"
            self.held_back = 0
        self.logger.log(self.level, message, *args)


class MessageRouter:
    """Routes each message a link receives to the nodes it is for, and publishes their answers."""

    def __init__(
        self,
        executor: Executor,
        spawn: Callable[[Awaitable], None],
        after_reply: Callable[[NodeState, ActionResult], None],
        quiet_refusals: bool = False,
    ):
        self.executor = executor
        self.spawn = spawn
        self.after_reply = after_reply  # what the daemon does once a reply is out (restart, shutdown)
        self.quiet_refusals = quiet_refusals  # a simulated fleet: thousands of refusals would drown the log
        self.inflight: dict[str, asyncio.Future] = {}
        self.garbage = 0
        self.dropped: dict[str, int] = {}  # by kind: undecodable, collective, agent, reply subject, filter, budget
        self.refusals = 0
        self.dropped_log = RateLimitedLog(log, logging.INFO)

    def drop(self, subject: str, kind: str, reason: str) -> None:
        """Count a message no node acts on, with one (rate-limited) log line naming the subject and the reason."""
        self.garbage += 1
        self.dropped[kind] = self.dropped.get(kind, 0) + 1
        self.dropped_log("ignoring a message on %s: %s", printable(subject, 120), printable(reason, 300))

    def summary(self) -> str:
        """The refusals and ignored messages so far, for the agent's last log line."""
        kinds = ", ".join(f"{count} {kind}" for kind, count in sorted(self.dropped.items()))
        return f"{self.refusals} refused request(s), {self.garbage} message(s) ignored ({kinds or 'none'})"

    async def route(self, link: Link, msg) -> None:
        subject = msg.subject
        try:
            req = decode_request(msg.data)
        except ProtocolError as exc:
            self.drop(subject, "undecodable", str(exc))
            return
        if req.collective != subject.split(".", 1)[0]:
            self.drop(subject, "other collective", f"request for collective {req.collective!r}")
            return
        reply_to = req.reply_to or reply_subject(req.callerid, req.requestid, req.collective)
        if not valid_reply_subject(reply_to, req.collective):
            reason = f"reply subject {printable(reply_to, 60)!r} is not a subject under {req.collective}.reply"
            self.drop(subject, "reply subject", reason)
            return
        node = link.by_subject.get(subject)
        if node is not None:
            await self.serve(link, node, req)
            return
        _prefix, _sep, agent = subject.partition(".broadcast.agent.")
        if agent != req.agent:
            self.drop(subject, "other agent", f"request for agent {req.agent!r}")
            return
        try:
            flt = compile_filter(req.filter)
        except FilterError as exc:
            self.drop(subject, "filter", f"filter not evaluated: {exc}")
            return
        members = list((link.members.get(req.collective) or {}).values())
        budget = FilterBudget(len(members))
        for index, member in enumerate(members):
            # CPU time of this thread: a loaded machine that preempts the agent must not use up the budget.
            started = time.thread_time()
            matched = flt.matches(member.identity, member.agents, member.facts if flt.wants_facts else {})
            budget.charge(time.thread_time() - started)
            if matched:
                await self.serve(link, member, req)
            if budget.spent() and index + 1 < len(members):
                self.drop(
                    subject,
                    "filter budget",
                    f"filter of request {req.requestid} took longer than its {budget.limit * 1000:.0f} ms budget; "
                    f"{len(members) - index - 1} of {len(members)} nodes do not act on it",
                )
                return

    async def serve(self, link: Link, node: NodeState, req) -> None:
        if node.stopped:
            return
        blocking = req.agent == PROVISION_AGENT and req.action in BLOCKING_ACTIONS and node.files_block
        if blocking or node.identity in self.inflight:
            self.spawn(self._serve_in_thread(link, node, req))
            return
        await self.answer(link, node, req, handle(node, req))

    async def _serve_in_thread(self, link: Link, node: NodeState, req) -> None:
        loop = asyncio.get_running_loop()
        previous = self.inflight.get(node.identity)
        done = loop.create_future()
        self.inflight[node.identity] = done
        try:
            if previous is not None:
                await previous
            result = await loop.run_in_executor(self.executor, handle, node, req)
            await self.answer(link, node, req, result)
        finally:
            done.set_result(None)
            if self.inflight.get(node.identity) is done:
                del self.inflight[node.identity]

    async def answer(self, link: Link, node: NodeState, req, result: ActionResult) -> None:
        if result.body is not None:
            reply = Reply(requestid=req.requestid, senderid=node.identity, agent=req.agent, body=result.body)
            target = req.reply_to or reply_subject(req.callerid, req.requestid, req.collective)
            await link.publish(target, encode_reply(reply))
            if isinstance(result.body, dict) and result.body.get("statuscode"):
                self.refusals += 1
                log.log(
                    logging.DEBUG if self.quiet_refusals else logging.INFO,
                    "%s: %s#%s from %s refused: %s",
                    node.identity,
                    req.agent,
                    req.action,
                    req.callerid,
                    printable(result.body.get("statusmsg"), 300),
                )
        if result.effect:
            self.after_reply(node, result)
