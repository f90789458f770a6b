# Copyright: zeroinit.bootstrap contributors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)
"""The node agent: a Choria-protocol-v1 server in provisioning mode, and after ``restart`` a configured member.

Runs as ``zeroinit-agent`` (the venv's command) or, on a node, from a plain copy of ``module_utils`` placed as
a package: ``python3 -m zeroinit_agent.agent --config /etc/zeroinit/agent.conf``.

One process serves one node, or with ``--fleet N`` N simulated nodes (each its own identity, state directory,
key pair and files) multiplexed over ``--connections K`` NATS connections. Per connection there is ONE
subscription per broadcast subject and one reader task for every node on it; node subjects are individual
subscriptions whose messages are routed into that shared reader, so 10,000 nodes cost 10,000 small
subscription objects and no idle task each. Actions that do crypto or disk I/O run in a thread pool, one at a
time per node, so fsyncs of many nodes overlap.

Agent configuration (``--config``, ``key = value``; flags override):

    identity                                  the node's identity (fleet mode: the identity prefix)
    plugin.zeroinit.agent.brokers             provisioning broker URLs, comma separated
    plugin.zeroinit.agent.token               provisioning token (never logged)
    plugin.zeroinit.agent.facts               facts file (a JSON object)
    plugin.zeroinit.agent.state_dir           where server.conf and ssl/ live (fleet: one directory per node)
    plugin.zeroinit.agent.registration_interval  seconds between registration publications (0: only at start)
    plugin.zeroinit.agent.splay_max           upper bound for restart's splay, seconds
    plugin.zeroinit.agent.fsync               true/false: fsync written files (default true; false with --fleet)
    loglevel                                  debug, info, warning, error
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import random
import signal
import socket
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from .choria.brokers import BrokerUrlError, normalize_brokers, parse_broker
from .choria.config import (
    AGENT_BROKERS_KEY,
    AGENT_FACTS_KEY,
    AGENT_FSYNC_KEY,
    AGENT_LOGLEVEL_KEY,
    AGENT_REGISTRATION_INTERVAL_KEY,
    AGENT_SPLAY_MAX_KEY,
    AGENT_STATE_DIR_KEY,
    AGENT_TOKEN_KEY,
    IDENTITY_KEY,
    MIDDLEWARE_KEY,
    SECURITY_CA_KEY,
    SECURITY_CERT_KEY,
    SECURITY_KEY_KEY,
    SECURITY_PROVIDER_KEY,
    ConfigError,
    as_bool,
    as_list,
    load_config,
)
from .choria.events import lifecycle_event, registration_document
from .choria.filters import filter_matches
from .choria.protocol import ProtocolError, Reply, decode_request, encode_reply
from .choria.subjects import (
    LIFECYCLE_COMPONENT,
    REGISTRATION_SUBJECT,
    REGISTRATION_SUBJECT_PER_NODE,
    broadcast_subject,
    lifecycle_subject,
    node_subject,
    reply_subject,
    valid_identity,
)
from .choria.transport import ConnectError, connect, tls_context
from .common.deps import CRYPTOGRAPHY_IMPORT_ERROR, HAS_CRYPTOGRAPHY, HAS_NATS, NATS_IMPORT_ERROR
from .node_actions import (
    AGENT_VERSION,
    DEFAULT_SPLAY_MAX,
    MODE_CONFIGURED,
    MODE_PROVISIONING,
    PROVISION_AGENT,
    ProvisionNode,
)

log = logging.getLogger("zeroinit.agent")

# choria_provision actions that do crypto or disk I/O: run in threads, serialised per node.
BLOCKING_ACTIONS = frozenset(("gencsr", "configure", "reprovision", "restart"))
CONFIGURED_COMPONENT = "server"
DEFAULT_STATE_DIR = "/var/lib/zeroinit/agent"
DEFAULT_DOMAIN = "fleet.example.net"


@dataclass
class AgentSettings:
    brokers: list[str] = field(default_factory=list)
    identity: str = ""
    facts_file: str = ""
    token: str = field(default="", repr=False)
    state_dir: str = DEFAULT_STATE_DIR
    fleet: int = 0
    domain: str = DEFAULT_DOMAIN
    connections: int = 1
    registration_interval: float = 60.0
    splay_max: float = DEFAULT_SPLAY_MAX
    log_level: str = "info"
    workers: int = 8
    fsync: bool | None = None  # None: on for one node, off for a simulated fleet


class Link:
    """One NATS connection and the nodes served on it, per collective."""

    def __init__(self, agent: NodeAgent, brokers: list[str], name: str, tls=None, dedicated: bool = False):
        self.agent = agent
        self.brokers = brokers
        self.name = name
        self.tls = tls
        self.dedicated = dedicated
        self.nc = None
        self.inbox: asyncio.Queue | None = None
        self.reader: asyncio.Task | None = None
        self.by_subject: dict[str, ProvisionNode] = {}
        self.node_subs: dict[str, object] = {}
        self.members: dict[str, dict[str, ProvisionNode]] = {}
        self.broadcast_subs: dict[str, object] = {}
        self.closed = False

    async def open(self) -> Link:
        self.nc = await connect(self.brokers, name=self.name, tls=self.tls)
        self.inbox = asyncio.Queue()
        self.reader = asyncio.create_task(self._read())
        return self

    async def _subscribe(self, subject: str):
        """A subscription whose messages land in this link's shared inbox (no task per subscription).

        nats-py gives every callback subscription its own task; a subscription without a callback only has a
        queue, which is replaced here by the link's inbox. Without that attribute (another nats-py), fall back
        to a callback subscription.
        """
        sub = await self.nc.subscribe(subject, pending_bytes_limit=0)
        own = getattr(sub, "_pending_queue", None)
        if isinstance(own, asyncio.Queue):
            sub._pending_queue = self.inbox
            while not own.empty():  # anything that arrived before the swap
                self.inbox.put_nowait(own.get_nowait())
            return sub
        await sub.unsubscribe()
        return await self.nc.subscribe(subject, cb=self._enqueue)

    async def _enqueue(self, msg) -> None:
        self.inbox.put_nowait(msg)

    async def _read(self) -> None:
        while True:
            msg = await self.inbox.get()
            try:
                await self.agent.dispatch(self, msg)
            except asyncio.CancelledError:
                raise
            except Exception:  # one bad message must never stop the reader
                log.exception("error handling a message on %s", msg.subject)
            finally:
                self.inbox.task_done()  # nats-py's drain waits for the queue to be processed

    async def attach(self, node: ProvisionNode, collectives: list[str], agents) -> None:
        node.link = self
        for collective in collectives:
            subject = node_subject(node.identity, collective)
            self.by_subject[subject] = node
            self.node_subs[subject] = await self._subscribe(subject)
            self.members.setdefault(collective, {})[node.identity] = node
            for agent in agents:
                bsubject = broadcast_subject(agent, collective)
                if bsubject not in self.broadcast_subs:
                    self.broadcast_subs[bsubject] = await self._subscribe(bsubject)

    async def detach(self, node: ProvisionNode) -> None:
        subjects = [node_subject(node.identity, c) for c, members in self.members.items() if node.identity in members]
        for subject in subjects:
            if self.by_subject.get(subject) is not node:
                continue
            self.by_subject.pop(subject, None)
            sub = self.node_subs.pop(subject, None)
            if sub is not None and not self.closed:
                try:
                    await sub.unsubscribe()
                except Exception:  # the connection may be gone already
                    pass
        for members in self.members.values():
            members.pop(node.identity, None)
        if node.link is self:
            node.link = None
        if self.dedicated and not any(self.members.values()):
            await self.close()

    async def publish(self, subject: str, payload: bytes) -> None:
        if self.closed or self.nc is None:
            return
        try:
            await self.nc.publish(subject, payload)
        except Exception as exc:  # a lost connection reconnects; the message is lost as on any bus
            log.debug("could not publish to %s: %s", subject, exc)

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.nc is not None:
            try:
                await asyncio.wait_for(self.nc.drain(), 10)
            except Exception:
                try:
                    await self.nc.close()
                except Exception:
                    pass
        if self.reader is not None:
            self.reader.cancel()
            try:
                await self.reader
            except (asyncio.CancelledError, Exception):
                pass
        self.agent.forget_link(self)


class NodeAgent:
    """The daemon: nodes, their connections, timers and signals."""

    def __init__(self, settings: AgentSettings, facts: dict | None = None):
        self.settings = settings
        self.facts = facts or {}
        self.nodes: dict[str, ProvisionNode] = {}
        self.provisioning_links: list[Link] = []
        self.configured_links: dict[tuple, Link] = {}
        self.executor = ThreadPoolExecutor(max_workers=max(1, settings.workers), thread_name_prefix="node-action")
        self.inflight: dict[str, asyncio.Future] = {}
        self.tasks: set[asyncio.Task] = set()
        self.garbage = 0
        self.refusals = 0
        self.stopping: asyncio.Event | None = None
        self._next_link = 0
        self._broker_info: dict[str, dict] = {}
        # In-progress INFO reads and link opens, shared by every node asking meanwhile: nodes restart by the
        # thousand at once, and each opening its own connection to the same broker costs a connect apiece.
        self._broker_info_pending: dict[str, asyncio.Future] = {}
        self._opening_links: dict[tuple, asyncio.Future] = {}

    # -------------------------------------------------------------------------------------- nodes

    def identities(self) -> list[str]:
        s = self.settings
        if s.fleet:
            prefix = s.identity or "node"
            return ["%s%d.%s" % (prefix, i, s.domain) for i in range(1, s.fleet + 1)]
        return [s.identity or socket.getfqdn()]

    def build_nodes(self) -> None:
        s = self.settings
        for identity in self.identities():
            if not valid_identity(identity):
                raise ConfigError(f"invalid identity {identity!r}")
            node_dir = os.path.join(s.state_dir, identity) if s.fleet else s.state_dir
            node = ProvisionNode(
                identity,
                node_dir,
                s.token,
                self.facts,
                splay_max=s.splay_max,
                durable=s.fsync if s.fsync is not None else not s.fleet,
            )
            node.load()
            self.nodes[identity] = node

    # -------------------------------------------------------------------------------------- links

    def forget_link(self, link: Link) -> None:
        for key, value in list(self.configured_links.items()):
            if value is link:
                del self.configured_links[key]

    async def open_provisioning_links(self) -> bool:
        """Connect to the provisioning brokers, retrying while they are unreachable (they may start later)."""
        if not self.settings.brokers:
            log.error("no provisioning broker configured (--broker or %s)", AGENT_BROKERS_KEY)
            return False
        delay = 0.5
        while not self.stopping.is_set():
            try:
                for index in range(len(self.provisioning_links), max(1, self.settings.connections)):
                    link = Link(self, self.settings.brokers, "zeroinit-agent-%d-%d" % (os.getpid(), index))
                    self.provisioning_links.append(await link.open())
                return True
            except ConnectError as exc:
                log.warning("%s; retrying in %.1fs", exc, delay)
                try:
                    await asyncio.wait_for(self.stopping.wait(), delay)
                except asyncio.TimeoutError:
                    pass
                delay = min(delay * 2, 30.0)
        return False

    async def _provisioning_link(self) -> Link:
        if not self.provisioning_links and not await self.open_provisioning_links():
            raise ConnectError("no provisioning connection")
        link = self.provisioning_links[self._next_link % len(self.provisioning_links)]
        self._next_link += 1
        return link

    async def _configured_link(self, node: ProvisionNode) -> Link:
        config = node.config
        brokers = normalize_brokers(config.get(MIDDLEWARE_KEY), allow_empty=True)
        files = [config.get(k, "") for k in (SECURITY_CERT_KEY, SECURITY_KEY_KEY, SECURITY_CA_KEY)]
        uses_files = config.get(SECURITY_PROVIDER_KEY, "file") == "file" and all(f and os.path.exists(f) for f in files)
        if uses_files and not any(url.startswith("tls://") for url in brokers):
            # nats:// may still be a TLS broker: its INFO line says so. Asked once per broker, not per node.
            infos = [await self.broker_info(url) for url in brokers]
            uses_files = any(info.get("tls_required") for info in infos)
        if uses_files:
            # A client certificate is per node, so is its connection; nats-py upgrades to TLS with it.
            key: tuple = ("tls", node.identity)
            tls = tls_context(ca=files[2], cert=files[0], key=files[1])
        else:
            key, tls = ("plain",) + tuple(brokers), None
        link = self.configured_links.get(key)
        if link is None or link.closed:
            opening = self._opening_links.get(key)
            if opening is None:
                link = Link(
                    self,
                    brokers,
                    node.identity if uses_files else "zeroinit-agent-%d-configured" % os.getpid(),
                    tls=tls,
                    dedicated=uses_files,
                )
                opening = asyncio.ensure_future(link.open())
                self._opening_links[key] = opening
                opening.add_done_callback(lambda done, key=key: self._link_opened(key, done))
            link = await asyncio.shield(opening)
        return link

    def _link_opened(self, key: tuple, done: asyncio.Future) -> None:
        # Runs before the waiters resume (first callback), so they and later callers find the link stored.
        if self._opening_links.get(key) is done:
            del self._opening_links[key]
        if not done.cancelled() and done.exception() is None:
            self.configured_links[key] = done.result()

    async def broker_info(self, url: str) -> dict:
        """The INFO a nats-server sends first (tls_required, tls_verify), cached; {} when unreachable."""
        if url in self._broker_info:
            return self._broker_info[url]
        pending = self._broker_info_pending.get(url)
        if pending is None:
            pending = asyncio.ensure_future(self._read_broker_info(url))
            self._broker_info_pending[url] = pending
            pending.add_done_callback(lambda _done, url=url: self._broker_info_pending.pop(url, None))
        return await asyncio.shield(pending)

    async def _read_broker_info(self, url: str) -> dict:
        info: dict = {}
        try:
            broker = parse_broker(url)
            reader, writer = await asyncio.wait_for(asyncio.open_connection(broker.host, broker.port), 5)
            try:
                line = await asyncio.wait_for(reader.readline(), 5)
            finally:
                writer.close()
            if line.startswith(b"INFO "):
                info = json.loads(line[5:].decode("utf-8"))
                self._broker_info[url] = info
        except (OSError, ValueError, asyncio.TimeoutError) as exc:
            log.debug("could not read INFO from %s: %s", url, exc)
        return info

    async def attach(self, node: ProvisionNode) -> Link:
        if node.mode == MODE_PROVISIONING:
            link = await self._provisioning_link()
        else:
            link = await self._configured_link(node)
        names, _main = node.collectives
        await link.attach(node, names, node.agents)
        return link

    async def attach_with_retry(self, node: ProvisionNode) -> None:
        delay = 0.5
        while not node.stopped and not self.stopping.is_set():
            try:
                link = await self.attach(node)
                await self.announce(node, link, "startup")
                return
            except Exception as exc:  # keep the node alive and retrying whatever the cause
                log.warning(
                    "%s: could not join %s (%s); retrying in %.1fs",
                    node.identity,
                    "provisioning" if node.mode == MODE_PROVISIONING else "its collective",
                    exc,
                    delay,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)

    # -------------------------------------------------------------------------------------- messages

    async def dispatch(self, link: Link, msg) -> None:
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

    async def serve(self, link: Link, node: ProvisionNode, req) -> None:
        if node.stopped:
            return
        # Without fsync the file writes are page-cache fast: inline beats a thread hand-off under the GIL.
        blocking = req.agent == PROVISION_AGENT and req.action in BLOCKING_ACTIONS and node.durable
        if blocking or node.identity in self.inflight:
            self.spawn(self._serve_in_thread(link, node, req))
            return
        await self.answer(link, node, req, node.handle(req))

    async def _serve_in_thread(self, link: Link, node: ProvisionNode, req) -> None:
        loop = asyncio.get_running_loop()
        previous = self.inflight.get(node.identity)
        done = loop.create_future()
        self.inflight[node.identity] = done
        try:
            if previous is not None:
                await previous
            result = await loop.run_in_executor(self.executor, node.handle, req)
            await self.answer(link, node, req, result)
        finally:
            done.set_result(None)
            if self.inflight.get(node.identity) is done:
                del self.inflight[node.identity]

    async def answer(self, link: Link, node: ProvisionNode, req, result) -> None:
        if result.body is not None:
            reply = Reply(requestid=req.requestid, senderid=node.identity, agent=req.agent, body=result.body)
            target = req.reply_to or reply_subject(req.callerid, req.requestid, req.collective)
            await link.publish(target, encode_reply(reply))
            if isinstance(result.body, dict) and result.body.get("statuscode"):
                self.refusals += 1
                # one node: a refusal is news; a simulated fleet: thousands of them would drown the log
                log.log(
                    logging.DEBUG if self.settings.fleet else logging.INFO,
                    "%s: %s#%s from %s refused: %s",
                    node.identity,
                    req.agent,
                    req.action,
                    req.callerid,
                    result.body.get("statusmsg"),
                )
        if result.effect:
            delay = random.uniform(0, result.delay) if result.effect == "restart" else result.delay
            handle = self.restart if result.effect in ("restart", "reprovision") else self.stop_node
            asyncio.get_running_loop().call_later(delay, lambda: self.spawn(handle(node)))

    def spawn(self, coro) -> None:
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    # -------------------------------------------------------------------------------------- life cycle

    async def announce(self, node: ProvisionNode, link: Link, event_type: str) -> None:
        component = LIFECYCLE_COMPONENT if node.mode == MODE_PROVISIONING else CONFIGURED_COMPONENT
        event = lifecycle_event(event_type, node.identity, component=component, version=AGENT_VERSION)
        await link.publish(lifecycle_subject(event_type, component), json.dumps(event).encode("utf-8"))
        if event_type == "startup" and node.mode == MODE_PROVISIONING:
            await self.register(node, link)

    async def register(self, node: ProvisionNode, link: Link) -> None:
        payload = json.dumps(registration_document(node.identity, node.facts, AGENT_VERSION)).encode("utf-8")
        await link.publish(REGISTRATION_SUBJECT, payload)
        await link.publish(REGISTRATION_SUBJECT_PER_NODE.format(identity=node.identity), payload)

    async def restart(self, node: ProvisionNode) -> None:
        """Restart in-process: re-read server.conf and move to the connection its mode asks for."""
        if node.stopped:
            return
        old_mode, old_link = node.mode, node.link
        node.load(recover=False)  # this process wrote the files: nothing to recover
        if old_link is not None:
            if old_mode == MODE_PROVISIONING and node.mode == MODE_CONFIGURED:
                event = lifecycle_event(
                    "provisioned", node.identity, component=LIFECYCLE_COMPONENT, version=AGENT_VERSION
                )
                await old_link.publish(
                    lifecycle_subject("provisioned", LIFECYCLE_COMPONENT), json.dumps(event).encode("utf-8")
                )
            await old_link.detach(node)
        log.debug("%s: restarted in %s mode", node.identity, node.mode)
        await self.attach_with_retry(node)

    async def stop_node(self, node: ProvisionNode) -> None:
        if node.stopped:
            return
        link = node.link
        node.stopped = True
        if link is not None:
            await self.announce(node, link, "shutdown")
            await link.detach(node)
        log.info("%s: shut down on request", node.identity)
        if all(n.stopped for n in self.nodes.values()):
            self.stopping.set()

    async def registration_loop(self) -> None:
        interval = self.settings.registration_interval
        if interval <= 0:
            return
        while True:
            await asyncio.sleep(interval)
            count = 0
            for node in list(self.nodes.values()):
                if node.mode == MODE_PROVISIONING and node.link is not None and not node.stopped:
                    await self.register(node, node.link)
                    count += 1
                    if count % 500 == 0:
                        await asyncio.sleep(0)  # let replies through between batches

    async def run(self) -> int:
        self.stopping = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stopping.set)
        started = time.monotonic()
        self.build_nodes()
        if any(node.mode == MODE_PROVISIONING for node in self.nodes.values()):
            if not await self.open_provisioning_links():
                await self.close()
                return 0 if self.stopping.is_set() else 1
        for node in self.nodes.values():
            try:
                link = await self.attach(node)
            except (ConnectError, OSError, ValueError) as exc:
                log.warning("%s: could not join its collective (%s); retrying in the background", node.identity, exc)
                self.spawn(self.attach_with_retry(node))
                continue
            await self.announce(node, link, "startup")
        modes = {}
        for node in self.nodes.values():
            modes[node.mode] = modes.get(node.mode, 0) + 1
        log.info(
            "serving %d node(s) (%s) over %d provisioning connection(s) in %.2fs",
            len(self.nodes),
            ", ".join("%d %s" % (v, k) for k, v in sorted(modes.items())),
            len(self.provisioning_links),
            time.monotonic() - started,
        )
        registration = asyncio.ensure_future(self.registration_loop())
        await self.stopping.wait()
        registration.cancel()
        log.info("stopping: publishing shutdown events and draining connections")
        for node in self.nodes.values():
            if not node.stopped and node.link is not None:
                await self.announce(node, node.link, "shutdown")
        await self.close()
        log.info(
            "stopped: %d refused request(s), %d undecodable or misaddressed message(s) ignored",
            self.refusals,
            self.garbage,
        )
        return 0

    async def close(self) -> None:
        for task in list(self.tasks):
            task.cancel()
        links = self.provisioning_links + list(self.configured_links.values())
        await asyncio.gather(*(link.close() for link in links), return_exceptions=True)
        self.executor.shutdown(wait=True)


# ------------------------------------------------------------------------------------------ command line


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="zeroinit-agent", description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--config", help="agent configuration file (key = value); flags override it")
    parser.add_argument("--broker", action="append", dest="brokers", help="provisioning broker URL (repeatable)")
    parser.add_argument("--identity", help="node identity; with --fleet the identity prefix (default node)")
    parser.add_argument("--facts", help="facts file: a JSON object")
    parser.add_argument("--token", help="provisioning token (prefer the config file: argv is visible to others)")
    parser.add_argument("--state-dir", help=f"state directory (default {DEFAULT_STATE_DIR})")
    parser.add_argument("--fleet", type=int, help="serve N simulated nodes from this process")
    parser.add_argument("--domain", help=f"fleet identities are <prefix><i>.<domain> (default {DEFAULT_DOMAIN})")
    parser.add_argument("--connections", type=int, help="NATS connections the fleet is multiplexed over (default 1)")
    parser.add_argument("--registration-interval", type=float, help="seconds between registrations (0: only at start)")
    parser.add_argument(
        "--splay-max", type=float, help=f"upper bound for restart's splay (default {DEFAULT_SPLAY_MAX:.0f}s)"
    )
    parser.add_argument("--workers", type=int, help="threads for key generation and file writes (default 8)")
    parser.add_argument(
        "--fsync",
        choices=("on", "off"),
        help="fsync keys, certificates and configuration (default: on for one node, off with --fleet, "
        "whose simulated nodes share one disk; renames keep every file set consistent either way)",
    )
    parser.add_argument("--log-level", choices=("debug", "info", "warning", "error"))
    return parser.parse_args(argv)


def settings_from(args: argparse.Namespace) -> AgentSettings:
    """Settings from the config file, overridden by flags."""
    s = AgentSettings()
    if args.config:
        conf = load_config(args.config)
        s.brokers = as_list(conf.get(AGENT_BROKERS_KEY))
        s.identity = conf.get(IDENTITY_KEY, "")
        s.facts_file = conf.get(AGENT_FACTS_KEY, "")
        s.token = conf.get(AGENT_TOKEN_KEY, "")
        s.state_dir = conf.get(AGENT_STATE_DIR_KEY) or s.state_dir
        s.log_level = conf.get(AGENT_LOGLEVEL_KEY) or s.log_level
        if conf.get(AGENT_FSYNC_KEY):
            s.fsync = as_bool(conf[AGENT_FSYNC_KEY])
        for key, attr in (
            (AGENT_REGISTRATION_INTERVAL_KEY, "registration_interval"),
            (AGENT_SPLAY_MAX_KEY, "splay_max"),
        ):
            if conf.get(key):
                try:
                    setattr(s, attr, float(conf[key]))
                except ValueError:
                    raise ConfigError(f"{args.config}: {key} must be a number, got {conf[key]!r}") from None
    for attr, value in (
        ("brokers", args.brokers),
        ("identity", args.identity),
        ("facts_file", args.facts),
        ("token", args.token),
        ("state_dir", args.state_dir),
        ("fleet", args.fleet),
        ("domain", args.domain),
        ("connections", args.connections),
        ("registration_interval", args.registration_interval),
        ("splay_max", args.splay_max),
        ("workers", args.workers),
        ("log_level", args.log_level),
        ("fsync", None if args.fsync is None else args.fsync == "on"),
    ):
        if value is not None:
            setattr(s, attr, value)
    try:
        s.brokers = normalize_brokers(s.brokers, allow_empty=True)
    except BrokerUrlError as exc:
        raise ConfigError(f"--broker / {AGENT_BROKERS_KEY}: {exc}") from None
    if s.fleet < 0 or s.connections < 1:
        raise ConfigError("--fleet must be >= 0 and --connections >= 1")
    if s.log_level not in ("debug", "info", "warning", "error"):
        raise ConfigError(f"log level must be debug, info, warning or error, got {s.log_level!r}")
    return s


def load_facts(path: str) -> dict:
    if not path:
        return {}
    with open(path, encoding="utf-8") as handle:
        facts = json.load(handle)
    if not isinstance(facts, dict):
        raise ConfigError(f"facts file {path} must hold a JSON object")
    return facts


def main(argv: list[str] | None = None) -> int:
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


if __name__ == "__main__":
    raise SystemExit(main())
