# Copyright: zeroinit.bootstrap contributors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)
"""One node's state: identity, mode, configuration and files. No networking and no request handling here.

Node directory layout::

    <node dir>/server.conf            the node's Choria configuration (provisioning on, or the configured one)
    <node dir>/ssl/private.pem        made by gencsr, 0600, never leaves the node
    <node dir>/ssl/csr.pem            the last CSR
    <node dir>/ssl/certificate.pem    from configure
    <node dir>/ssl/ca.pem             from configure
    <node dir>/ssl/previous/          the certificate files a reprovision set aside
    <node dir>/.configure.journal     present only while configure renames its staged files
    <node dir>/site-lock.json         the site the node is locked to since its first committed configure (0600)
    <node dir>/site-lock-ca.pem       the CA bundle that configure installed, kept with the lock: a locked node
                                      without a provisioning CA verifies its site's provisioners against it

The site lock lives beside ``ssl/``, not in it: ``reprovision`` sets the certificate files aside but the node stays
locked to its site; only wiping the node directory unlocks it.
"""

from __future__ import annotations

import logging
import os

from ..choria.config import MIDDLEWARE_KEY, ConfigError, collectives, parse_config, provisioning_enabled
from ..choria.protocol import PROVISION_AGENT
from ..choria.replay import ReplayGuard
from ..choria.subjects import PROVISIONING_COLLECTIVE
from ..common.files import read_text
from .journal import JOURNAL, recover_configure
from .lock import LOCK_SECONDS, ProvisioningLock
from .trust import AgentTrust

log = logging.getLogger("zeroinit.agent")

AGENT_VERSION = "1.0.0"
AGENTS_PROVISIONING = (PROVISION_AGENT, "discovery", "rpcutil")
# A configured node answers rpcutil and discovery, and choria_provision only for ``reprovision``.
AGENTS_CONFIGURED = (PROVISION_AGENT, "discovery", "rpcutil")

MODE_PROVISIONING = "provisioning"
MODE_CONFIGURED = "configured"
DEFAULT_SPLAY_MAX = 10.0
SITE_LOCK_FILE = "site-lock.json"
SITE_LOCK_CA_FILE = "site-lock-ca.pem"


class NodeState:
    """A node's identity, mode, configuration, lock and file locations, as the daemon and the actions share them."""

    __slots__ = (
        "config",
        "durable",
        "identity",
        "jwt_path",
        "link",
        "lock",
        "mode",
        "node_dir",
        "replay",
        "shared_facts",
        "site_ca_pem",
        "site_lock_text",
        "splay_max",
        "ssldir",
        "stopped",
        "token",
        "trust",
    )

    def __init__(
        self,
        identity: str,
        node_dir: str,
        token: str,
        shared_facts: dict | None = None,
        splay_max: float = DEFAULT_SPLAY_MAX,
        lock_seconds: float = LOCK_SECONDS,
        durable: bool = True,
        trust: AgentTrust | None = None,
        jwt_path: str = "",
    ):
        self.identity = identity
        self.node_dir = os.path.abspath(node_dir)
        self.ssldir = os.path.join(self.node_dir, "ssl")
        self.token = token or ""
        self.shared_facts = shared_facts if shared_facts is not None else {}
        self.splay_max = splay_max
        self.lock = ProvisioningLock(lock_seconds)
        self.mode = MODE_PROVISIONING
        self.config: dict[str, str] = {}
        self.link = None  # set by the daemon: the connection this node is served on
        self.stopped = False
        self.durable = durable  # fsync files and directories (off for simulated fleets sharing one disk)
        self.trust = trust if trust is not None else AgentTrust()
        self.replay = ReplayGuard(max_ttl=self.trust.max_ttl)  # the ids of requests this node accepted
        self.jwt_path = jwt_path  # the node's provisioning JWT file ("" when it has none)
        self.site_lock_text: str | None = None  # the site lock as on disk (None: not locked)
        self.site_ca_pem: str | None = None

    def __repr__(self) -> str:  # never shows the token
        return f"NodeState({self.identity}, {self.mode})"

    @property
    def server_conf(self) -> str:
        return os.path.join(self.node_dir, "server.conf")

    @property
    def journal(self) -> str:
        return os.path.join(self.node_dir, JOURNAL)

    @property
    def site_lock_path(self) -> str:
        return os.path.join(self.node_dir, SITE_LOCK_FILE)

    @property
    def site_ca_path(self) -> str:
        return os.path.join(self.node_dir, SITE_LOCK_CA_FILE)

    @property
    def files_block(self) -> bool:
        """Whether this node's file work goes to a worker thread rather than running on the event loop.

        Fsynced files (a real node) can block for as long as the disk takes, so they go to a thread. Without fsync
        (a simulated fleet's state, in memory or page cache) a write or read is microseconds, less than the thread
        hop and the GIL hand-over it would cost for every node.
        """
        return self.durable

    def ssl_path(self, name: str) -> str:
        return os.path.join(self.ssldir, name)

    @property
    def facts(self) -> dict:
        facts = dict(self.shared_facts)
        facts["identity"] = self.identity
        return facts

    @property
    def agents(self) -> tuple:
        return AGENTS_PROVISIONING if self.mode == MODE_PROVISIONING else AGENTS_CONFIGURED

    @property
    def collectives(self) -> tuple[list[str], str]:
        if self.mode == MODE_PROVISIONING:
            return [PROVISIONING_COLLECTIVE], PROVISIONING_COLLECTIVE
        return collectives(self.config)

    def read_server_conf(self) -> dict[str, str] | None:
        """server.conf as parsed (None when there is none); ConfigError naming the line when it does not parse."""
        text = read_text(self.server_conf)
        return None if text is None else parse_config(text, source=self.server_conf)

    def load(self, recover: bool = True) -> None:
        """Read the node's state from disk: finish an interrupted configure (at process start), pick the mode.

        A server.conf that turns provisioning off makes the node start configured: the one-way lock
        survives process restarts until ``reprovision``.
        """
        if not os.path.isdir(self.ssldir):
            os.makedirs(self.ssldir, mode=0o700, exist_ok=True)
        if recover:
            recover_configure(self.node_dir)
        try:
            self.config = self.read_server_conf() or {}
        except ConfigError:
            self.config = {}
        self.site_lock_text, self.site_ca_pem = self._read_site_lock()
        self.mode = (
            MODE_PROVISIONING
            if provisioning_enabled(self.config) or not self.config.get(MIDDLEWARE_KEY)
            else MODE_CONFIGURED
        )

    def _read_site_lock(self) -> tuple[str | None, str | None]:
        """The lock's text and CA bundle; a lock that cannot be read is kept as text that refuses (never unlocks)."""
        try:
            text = read_text(self.site_lock_path)
        except (OSError, UnicodeDecodeError) as exc:
            log.error("%s: the site lock cannot be read (%s); every site-locked action is refused", self.identity, exc)
            text = f"unreadable site lock {self.site_lock_path}: {exc}"
        try:
            ca_pem = read_text(self.site_ca_path)
        except (OSError, UnicodeDecodeError):
            ca_pem = None
        return text, ca_pem
