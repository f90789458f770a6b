# Copyright: zeroinit.bootstrap contributors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)
"""The agent's settings: a Choria-style ``key = value`` file (``--config``), overridden by command-line flags.

Agent configuration (``--config``, ``key = value``; flags override):

    identity                                  the node's identity (fleet mode: the identity prefix)
    plugin.zeroinit.agent.brokers             provisioning broker URLs, comma separated
    plugin.zeroinit.agent.token               provisioning token (never logged)
    plugin.zeroinit.agent.facts               facts file (a JSON object)
    plugin.zeroinit.agent.state_dir           where server.conf and ssl/ live (fleet: one directory per node)
    plugin.zeroinit.agent.registration_interval  seconds between registration publications (0: only at start)
    plugin.zeroinit.agent.splay_max           upper bound for restart's splay, seconds
    plugin.zeroinit.agent.fsync               true/false: fsync written files (default true; false with --fleet)
    plugin.zeroinit.agent.tls_ca              CA (PEM) the provisioning broker's certificate must chain to: TLS on
    plugin.zeroinit.agent.tls_cert            client certificate (PEM) for a broker that asks for one, and its
    plugin.zeroinit.agent.tls_key             key (PEM)
    plugin.zeroinit.agent.broker_user         NATS user on the provisioning broker (Choria's provisioning account)
    plugin.zeroinit.agent.broker_password     its password (config file only: argv is visible to others)
    plugin.zeroinit.agent.provisioning_ca     CA bundle (PEM) that every choria_provision request must be signed
                                              under (a provisioner certificate with the provisioner EKU); unset:
                                              the token alone authenticates (logged once at start)
    plugin.zeroinit.agent.provisioning_jwt    the node's provisioning JWT (Choria's provisioning.jwt), served by
                                              choria_provision#jwt; with --fleet a directory of <identity>.jwt
                                              files, or a path holding {identity}
    plugin.zeroinit.agent.max_ttl             the longest ttl a request is judged with, seconds (default 300): a
                                              sender asking for more gets this much
    loglevel                                  debug, info, warning, error
"""

from __future__ import annotations

import argparse
import json
import os
import ssl
from dataclasses import dataclass, field

from ..choria.brokers import BrokerUrlError, normalize_brokers
from ..choria.config import (
    AGENT_BROKER_PASSWORD_KEY,
    AGENT_BROKER_USER_KEY,
    AGENT_BROKERS_KEY,
    AGENT_FACTS_KEY,
    AGENT_FSYNC_KEY,
    AGENT_LOGLEVEL_KEY,
    AGENT_MAX_TTL_KEY,
    AGENT_PROVISIONING_CA_KEY,
    AGENT_PROVISIONING_JWT_KEY,
    AGENT_REGISTRATION_INTERVAL_KEY,
    AGENT_SPLAY_MAX_KEY,
    AGENT_STATE_DIR_KEY,
    AGENT_TLS_CA_KEY,
    AGENT_TLS_CERT_KEY,
    AGENT_TLS_KEY_KEY,
    AGENT_TOKEN_KEY,
    IDENTITY_KEY,
    ConfigError,
    as_bool,
    as_list,
    load_config,
)
from ..choria.replay import DEFAULT_MAX_TTL
from ..choria.transport import tls_context
from .state import DEFAULT_SPLAY_MAX

DEFAULT_STATE_DIR = "/var/lib/zeroinit/agent"
DEFAULT_DOMAIN = "fleet.example.net"
LOG_LEVELS = ("debug", "info", "warning", "error")


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
    tls_ca: str = ""
    tls_cert: str = ""
    tls_key: str = ""
    broker_user: str = ""
    broker_password: str = field(default="", repr=False)
    provisioning_ca: str = ""  # CA bundle file; set: every choria_provision request must be signed under it
    provisioning_jwt: str = ""  # the node's provisioning JWT file (fleet: a directory or a {identity} template)
    max_ttl: int = DEFAULT_MAX_TTL

    def provisioning_tls(self) -> ssl.SSLContext | None:
        """The provisioning connection's TLS context (None without --tls-ca/--tls-cert); ConfigError naming the
        option when a file cannot be used."""
        if self.tls_cert and not self.tls_key:
            raise ConfigError(f"--tls-cert / {AGENT_TLS_CERT_KEY} needs --tls-key / {AGENT_TLS_KEY_KEY}")
        try:
            return tls_context(self.tls_ca or None, self.tls_cert or None, self.tls_key or None)
        except (OSError, ValueError, ssl.SSLError) as exc:
            raise ConfigError(f"provisioning TLS (--tls-ca, --tls-cert, --tls-key): {exc}") from None

    def provisioning_auth(self) -> dict:
        """The NATS user and password of the provisioning connection, as ``connect`` takes them."""
        if not (self.broker_user or self.broker_password):
            return {}
        return {"user": self.broker_user, "password": self.broker_password}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="zeroinit-agent",
        description="The node agent: a Choria-protocol-v1 server in provisioning mode, and after ``restart`` a configured member.",
    )
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
    parser.add_argument("--tls-ca", help="CA (PEM) that the provisioning broker's certificate must chain to: TLS on")
    parser.add_argument("--tls-cert", help="client certificate (PEM) for a provisioning broker that asks for one")
    parser.add_argument("--tls-key", help="the client certificate's key (PEM)")
    parser.add_argument(
        "--broker-user",
        help=f"NATS user on the provisioning broker; its password only in the config file ({AGENT_BROKER_PASSWORD_KEY})",
    )
    parser.add_argument(
        "--provisioning-ca",
        help="CA bundle (PEM): every choria_provision request must be signed by a provisioner certificate under it",
    )
    parser.add_argument(
        "--provisioning-jwt",
        help="the node's provisioning JWT, served by choria_provision#jwt (with --fleet: a directory of "
        "<identity>.jwt files, or a path holding {identity})",
    )
    parser.add_argument(
        "--max-ttl", type=int, help=f"longest ttl a request is judged with, seconds (default {DEFAULT_MAX_TTL})"
    )
    parser.add_argument("--log-level", choices=LOG_LEVELS)
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
        s.tls_ca = conf.get(AGENT_TLS_CA_KEY, "")
        s.tls_cert = conf.get(AGENT_TLS_CERT_KEY, "")
        s.tls_key = conf.get(AGENT_TLS_KEY_KEY, "")
        s.broker_user = conf.get(AGENT_BROKER_USER_KEY, "")
        s.broker_password = conf.get(AGENT_BROKER_PASSWORD_KEY, "")
        s.provisioning_ca = conf.get(AGENT_PROVISIONING_CA_KEY, "")
        s.provisioning_jwt = conf.get(AGENT_PROVISIONING_JWT_KEY, "")
        if conf.get(AGENT_MAX_TTL_KEY):
            try:
                s.max_ttl = int(conf[AGENT_MAX_TTL_KEY])
            except ValueError:
                raise ConfigError(
                    f"{args.config}: {AGENT_MAX_TTL_KEY} must be a whole number of seconds, "
                    f"got {conf[AGENT_MAX_TTL_KEY]!r}"
                ) from None
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
        ("tls_ca", args.tls_ca),
        ("tls_cert", args.tls_cert),
        ("tls_key", args.tls_key),
        ("broker_user", args.broker_user),
        ("fsync", None if args.fsync is None else args.fsync == "on"),
        ("provisioning_ca", args.provisioning_ca),
        ("provisioning_jwt", args.provisioning_jwt),
        ("max_ttl", args.max_ttl),
    ):
        if value is not None:
            setattr(s, attr, value)
    try:
        s.brokers = normalize_brokers(s.brokers, allow_empty=True)
    except BrokerUrlError as exc:
        raise ConfigError(f"--broker / {AGENT_BROKERS_KEY}: {exc}") from None
    if s.fleet < 0 or s.connections < 1:
        raise ConfigError("--fleet must be >= 0 and --connections >= 1")
    if s.max_ttl < 1:
        raise ConfigError(f"--max-ttl / {AGENT_MAX_TTL_KEY} must be at least 1 second, not {s.max_ttl}")
    if s.log_level not in LOG_LEVELS:
        raise ConfigError(f"log level must be debug, info, warning or error, got {s.log_level!r}")
    return s


def provisioning_jwt_path(setting: str, identity: str) -> str:
    """One node's JWT file: ``{identity}`` in the setting is that node's identity; a directory holds
    ``<identity>.jwt`` per node (a simulated fleet); anything else is the file itself ("" when unset)."""
    if not setting:
        return ""
    if "{identity}" in setting:
        return setting.replace("{identity}", identity)
    if os.path.isdir(setting):
        return os.path.join(setting, f"{identity}.jwt")
    return setting


def load_facts(path: str) -> dict:
    if not path:
        return {}
    with open(path, encoding="utf-8") as handle:
        facts = json.load(handle)
    if not isinstance(facts, dict):
        raise ConfigError(f"facts file {path} must hold a JSON object")
    return facts
