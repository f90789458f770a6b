# Copyright: zeroinit.bootstrap contributors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)
"""The node agent: a Choria-protocol-v1 server in provisioning mode, and after ``restart`` a configured member.

Runs as ``zeroinit-agent`` (the venv's command) or, on a node, from the copy the ``provision_agent`` role places
as a package: ``python3 -m zeroinit_agent.node --config /etc/zeroinit/agent.conf`` (settings: ``settings.py``).

One process serves one node, or with ``--fleet N`` N simulated nodes (each its own identity, state directory,
key pair and files) multiplexed over ``--connections K`` NATS connections. The daemon here builds the nodes,
runs them and stops them; the connections are the LinkPool's (``links.py``), messages the MessageRouter's
(``router.py``), answers the dispatcher's (``dispatch.py``), unprompted events the Announcer's
(``announcements.py``), certificate renewal the CertificateRenewer's (``renewal.py``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import signal
import socket
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from ..choria.config import AGENT_BROKERS_KEY, AGENT_PROVISIONING_CA_KEY, ConfigError
from ..choria.security import TrustConfigError
from ..choria.subjects import valid_identity
from ..choria.transport import ConnectError
from ..common.deps import CRYPTOGRAPHY_IMPORT_ERROR, HAS_CRYPTOGRAPHY, HAS_NATS, NATS_IMPORT_ERROR
from .actions.base import ActionResult
from .announcements import Announcer
from .links import LinkPool
from .renewal import CertificateRenewer
from .router import MessageRouter
from .settings import AgentSettings, load_facts, parse_args, provisioning_jwt_path, settings_from
from .state import MODE_CONFIGURED, MODE_PROVISIONING, NodeState
from .trust import AgentTrust

log = logging.getLogger("zeroinit.agent")
RETRY_MAX_SECONDS = 30.0


class NodeAgent:
    """The daemon: builds the nodes, runs them until a signal or the last shutdown, and stops them."""

    def __init__(self, settings: AgentSettings, facts: dict | None = None):
        self.settings = settings
        self.facts = facts or {}
        self.nodes: dict[str, NodeState] = {}
        self.executor = ThreadPoolExecutor(max_workers=max(1, settings.workers), thread_name_prefix="node-action")
        self.tasks: set[asyncio.Task] = set()
        self.stopping: asyncio.Event | None = None
        self.router = MessageRouter(self.executor, self.spawn, self.after_reply, quiet_refusals=bool(settings.fleet))
        self.announcer = Announcer()
        self.pool: LinkPool | None = None
        self.renewer = CertificateRenewer(self.reconnect, self.announcer.lifecycle, self.executor, self.spawn)

    # -------------------------------------------------------------------------------------- nodes

    def identities(self) -> list[str]:
        s = self.settings
        if s.fleet:
            prefix = s.identity or "node"
            return [f"{prefix}{i}.{s.domain}" for i in range(1, s.fleet + 1)]
        return [s.identity or socket.getfqdn()]

    def build_nodes(self) -> None:
        s = self.settings
        try:
            trust = AgentTrust.from_files(s.provisioning_ca, s.max_ttl)  # one verifier (and its cache) for all nodes
        except TrustConfigError as exc:
            raise ConfigError(f"--provisioning-ca / {AGENT_PROVISIONING_CA_KEY}: {exc}") from None
        if trust.verifier is None:
            log.warning(
                "running unauthenticated: no provisioning CA (--provisioning-ca), so choria_provision requests are "
                "judged by the token alone, which anyone holding a node image can read"
            )
        for identity in self.identities():
            if not valid_identity(identity):
                raise ConfigError(f"invalid identity {identity!r}")
            node_dir = os.path.join(s.state_dir, identity) if s.fleet else s.state_dir
            node = NodeState(
                identity,
                node_dir,
                s.token,
                self.facts,
                splay_max=s.splay_max,
                durable=s.fsync if s.fsync is not None else not s.fleet,
                trust=trust,
                jwt_path=provisioning_jwt_path(s.provisioning_jwt, identity),
            )
            node.load()
            self.nodes[identity] = node

    def spawn(self, coro) -> None:
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def attach_with_retry(self, node: NodeState) -> None:
        delay = 0.5
        while not node.stopped and not self.stopping.is_set():
            try:
                link = await self.pool.attach(node)
                await self.announcer.announce(node, link, "startup")
                self.renewer.track(node)
                return
            except Exception as exc:  # keep the node alive and retrying whatever the cause
                where = "provisioning" if node.mode == MODE_PROVISIONING else "its collective"
                log.warning("%s: could not join %s (%s); retrying in %.1fs", node.identity, where, exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_SECONDS)

    # -------------------------------------------------------------------------------------- after a reply

    def after_reply(self, node: NodeState, result: ActionResult) -> None:
        """Schedule what a reply announced: a restart (within its splay), a reprovision or a shutdown; a renewal now;
        a new connection made with the node's files as they are now, or more CAs trusted on the current one (its
        trust bundle changed)."""
        if result.effect == "renew":
            self.renewer.renew_now(node)
            return
        if result.effect == "reconnect":
            self.spawn(self.reconnect(node))
            return
        if result.effect == "trust_more":
            if self.pool is not None:
                self.pool.trust_more(node)
            return
        delay = random.uniform(0, result.delay) if result.effect == "restart" else result.delay
        handler = self.restart if result.effect in ("restart", "reprovision") else self.stop_node
        asyncio.get_running_loop().call_later(delay, lambda: self.spawn(handler(node)))

    async def restart(self, node: NodeState) -> None:
        """Restart in-process: re-read server.conf and move to the connection its mode asks for."""
        if node.stopped:
            return
        old_mode, old_link = node.mode, node.link
        node.load(recover=False)  # this process wrote the files: nothing to recover
        if old_link is not None:
            if old_mode == MODE_PROVISIONING and node.mode == MODE_CONFIGURED:
                await self.announcer.provisioned(node, old_link)
            await old_link.detach(node)
        log.debug("%s: restarted in %s mode", node.identity, node.mode)
        await self.attach_with_retry(node)

    async def reconnect(self, node: NodeState) -> None:
        """Serve a configured node on a new connection made with its files as they are now, then leave the old one."""
        if self.pool is not None and not node.stopped:
            await self.pool.reconnect(node)

    async def stop_node(self, node: NodeState) -> None:
        if node.stopped:
            return
        link = node.link
        node.stopped = True
        if link is not None:
            await self.announcer.announce(node, link, "shutdown")
            await link.detach(node)
        log.info("%s: shut down on request", node.identity)
        if all(n.stopped for n in self.nodes.values()):
            self.stopping.set()

    # -------------------------------------------------------------------------------------- the run

    async def run(self) -> int:
        self.stopping = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stopping.set)
        started = time.monotonic()
        self.pool = LinkPool(
            self.settings.brokers,
            self.settings.connections,
            self.router.route,
            self.stopping,
            tls=self.settings.provisioning_tls(),
            auth=self.settings.provisioning_auth(),
        )
        self.build_nodes()
        if any(node.mode == MODE_PROVISIONING for node in self.nodes.values()):
            if not self.settings.brokers:
                log.error("no provisioning broker configured (--broker or %s)", AGENT_BROKERS_KEY)
            if not await self.pool.open_provisioning():
                await self.close()
                return 0 if self.stopping.is_set() else 1
        for node in self.nodes.values():
            try:
                link = await self.pool.attach(node)
            except (ConnectError, OSError, ValueError) as exc:
                log.warning("%s: could not join its collective (%s); retrying in the background", node.identity, exc)
                self.spawn(self.attach_with_retry(node))
                continue
            await self.announcer.announce(node, link, "startup")
            self.renewer.track(node)
        modes: dict[str, int] = {}
        for node in self.nodes.values():
            modes[node.mode] = modes.get(node.mode, 0) + 1
        log.info(
            "serving %d node(s) (%s) over %d provisioning connection(s) in %.2fs",
            len(self.nodes),
            ", ".join(f"{count} {mode}" for mode, count in sorted(modes.items())),
            len(self.pool.provisioning),
            time.monotonic() - started,
        )
        registration = asyncio.ensure_future(
            self.announcer.registration_loop(self.nodes.values, self.settings.registration_interval)
        )
        renewals = asyncio.ensure_future(self.renewer.run())
        await self.stopping.wait()
        registration.cancel()
        renewals.cancel()
        log.info("stopping: publishing shutdown events and draining connections")
        for node in self.nodes.values():
            if not node.stopped and node.link is not None:
                await self.announcer.announce(node, node.link, "shutdown")
        await self.close()
        log.info("stopped: %s", self.router.summary())
        return 0

    async def close(self) -> None:
        for task in list(self.tasks):
            task.cancel()
        if self.pool is not None:
            await self.pool.close()
        self.executor.shutdown(wait=True)


def main(argv: list[str] | None = None) -> int:
    """The command line: settings, logging, the libraries the agent needs, then the daemon until it stops."""
    args = parse_args(argv)
    try:
        settings = settings_from(args)
        facts = load_facts(settings.facts_file)
    except (ConfigError, OSError, ValueError) as exc:
        _complain(f"{exc}")
        return 2
    logging.basicConfig(
        level=getattr(logging, settings.log_level.upper()),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    for missing, error in ((not HAS_NATS, NATS_IMPORT_ERROR), (not HAS_CRYPTOGRAPHY, CRYPTOGRAPHY_IMPORT_ERROR)):
        if missing:
            _complain(f"a required Python library is missing:\n{error}")
            return 2
    if not settings.token:
        log.warning("no provisioning token configured: only requests with an empty token are accepted")
    agent = NodeAgent(settings, facts)
    try:
        return asyncio.run(agent.run())
    except (ConfigError, OSError) as exc:
        _complain(f"{exc}")
        return 2


def _complain(message: str) -> None:
    sys.stderr.write(f"zeroinit-agent: {message}\n")
