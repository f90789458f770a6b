# Copyright: zeroinit.bootstrap contributors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)
"""Messages from the bus to nodes and their answers back: decode, check collective and agent, match filters,
serve inline or in a thread, publish the reply.

Actions that do crypto or disk I/O run in a thread pool, one at a time per node, so fsyncs of many nodes
overlap; without fsync they are page-cache fast and run inline (a thread hand-off costs more under the GIL).
Undecodable or misaddressed messages are counted and dropped: network input never raises here.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import Executor
from typing import Awaitable, Callable

from ..choria.filters import filter_matches
from ..choria.protocol import PROVISION_AGENT, ProtocolError, Reply, decode_request, encode_reply
from ..choria.subjects import reply_subject
from .actions.base import ActionResult
from .dispatch import handle
from .links import Link
from .state import NodeState

log = logging.getLogger("zeroinit.agent")

# choria_provision actions that do crypto or disk I/O: run in threads, serialised per node.
BLOCKING_ACTIONS = frozenset(("gencsr", "configure", "reprovision", "restart", "destroy"))


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
        self.refusals = 0

    async def route(self, link: Link, msg) -> None:
        subject = msg.subject
        try:
            req = decode_request(msg.data)
        except ProtocolError as exc:
            self.garbage += 1
            log.debug("ignoring undecodable message on %s: %s", subject, exc)
            return
        if req.collective != subject.split(".", 1)[0]:
            self.garbage += 1
            log.debug("ignoring request for collective %r on %s", req.collective, subject)
            return
        node = link.by_subject.get(subject)
        if node is not None:
            await self.serve(link, node, req)
            return
        _prefix, _sep, agent = subject.partition(".broadcast.agent.")
        if agent != req.agent:
            self.garbage += 1
            log.debug("ignoring request for agent %r on %s", req.agent, subject)
            return
        members = link.members.get(req.collective) or {}
        want_facts = bool(req.filter.get("fact")) if isinstance(req.filter, dict) else False
        for member in list(members.values()):
            if filter_matches(req.filter, member.identity, member.agents, member.facts if want_facts else {}):
                await self.serve(link, member, req)

    async def serve(self, link: Link, node: NodeState, req) -> None:
        if node.stopped:
            return
        blocking = req.agent == PROVISION_AGENT and req.action in BLOCKING_ACTIONS and node.durable
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
                    result.body.get("statusmsg"),
                )
        if result.effect:
            self.after_reply(node, result)
