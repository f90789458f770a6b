# Copyright: zeroinit.bootstrap contributors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)
"""Choria-style ``key = value`` configuration files: the node's ``server.conf`` and the agent's own settings.

Lines are ``key = value``; ``#`` and ``;`` start comment lines; blank lines are ignored; keys and values are
trimmed. Rendering is deterministic (sorted keys) so a rewritten file only differs where a value changed.
"""

from __future__ import annotations

import re

PROVISION_KEY = "plugin.choria.server.provision"
MIDDLEWARE_KEY = "plugin.choria.middleware_hosts"
COLLECTIVES_KEY = "collectives"
MAIN_COLLECTIVE_KEY = "main_collective"
IDENTITY_KEY = "identity"
SECURITY_PROVIDER_KEY = "plugin.security.provider"
SECURITY_CERT_KEY = "plugin.security.file.certificate"
SECURITY_KEY_KEY = "plugin.security.file.key"
SECURITY_CA_KEY = "plugin.security.file.ca"
DEFAULT_COLLECTIVE = "mcollective"  # Choria's default when a configuration names none

# The agent's own settings (not Choria's): where it finds the provisioning network and its inputs.
AGENT_BROKERS_KEY = "plugin.zeroinit.agent.brokers"
AGENT_TOKEN_KEY = "plugin.zeroinit.agent.token"
AGENT_FACTS_KEY = "plugin.zeroinit.agent.facts"
AGENT_STATE_DIR_KEY = "plugin.zeroinit.agent.state_dir"
AGENT_REGISTRATION_INTERVAL_KEY = "plugin.zeroinit.agent.registration_interval"
AGENT_SPLAY_MAX_KEY = "plugin.zeroinit.agent.splay_max"
AGENT_FSYNC_KEY = "plugin.zeroinit.agent.fsync"
AGENT_PROVISIONING_CA_KEY = "plugin.zeroinit.agent.provisioning_ca"
AGENT_PROVISIONING_JWT_KEY = "plugin.zeroinit.agent.provisioning_jwt"
AGENT_MAX_TTL_KEY = "plugin.zeroinit.agent.max_ttl"
AGENT_LOGLEVEL_KEY = "loglevel"
# The provisioning connection: TLS (verify the broker; a client certificate if it asks for one) and a NATS user.
AGENT_TLS_CA_KEY = "plugin.zeroinit.agent.tls_ca"
AGENT_TLS_CERT_KEY = "plugin.zeroinit.agent.tls_cert"
AGENT_TLS_KEY_KEY = "plugin.zeroinit.agent.tls_key"
AGENT_BROKER_USER_KEY = "plugin.zeroinit.agent.broker_user"
AGENT_BROKER_PASSWORD_KEY = "plugin.zeroinit.agent.broker_password"

_KEY_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$")
TRUE_WORDS = ("1", "true", "yes", "on", "y", "t")
FALSE_WORDS = ("0", "false", "no", "off", "n", "f")


class ConfigError(ValueError):
    """A configuration line or value that cannot be used; the text names the line or key."""


def parse_config(text: str, source: str = "configuration") -> dict[str, str]:
    """``key = value`` lines to a dict; later lines win, as in Choria. Raises ConfigError naming the line."""
    result: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#") or line.startswith(";"):
            continue
        if "=" not in line:
            raise ConfigError(f"{source} line {number}: expected 'key = value', got {line[:80]!r}")
        key, value = line.split("=", 1)
        key = key.strip()
        if not _KEY_RE.match(key):
            raise ConfigError(f"{source} line {number}: invalid key {key[:80]!r}")
        result[key] = value.strip()
    return result


def check_entry(key: object, value: object) -> str | None:
    """Why ``key = value`` cannot be written to a configuration file, or None when it can.

    A newline in a value would let a remote caller smuggle a second setting into the file.
    """
    if not isinstance(key, str) or not _KEY_RE.match(key):
        return f"invalid key {key!r}"
    if not isinstance(value, str):
        return f"value of {key} must be a string, got {type(value).__name__}"
    if "\n" in value or "\r" in value or "\x00" in value:
        return f"value of {key} contains a line break"
    return None


def render_config(config: dict[str, str], header: str = "") -> str:
    """A dict to ``key = value`` text (sorted keys); raises ConfigError for an entry that cannot be written."""
    lines = [f"# {line}" for line in header.splitlines()] if header else []
    for key in sorted(config):
        problem = check_entry(key, config[key])
        if problem:
            raise ConfigError(problem)
        lines.append(f"{key} = {config[key].strip()}")
    return "\n".join(lines) + "\n"


def load_config(path: str) -> dict[str, str]:
    with open(path, encoding="utf-8") as handle:
        return parse_config(handle.read(), source=path)


def as_bool(value: str | None, default: bool = False) -> bool:
    if value is None:
        return default
    text = value.strip().lower()
    if text in TRUE_WORDS:
        return True
    if text in FALSE_WORDS or text == "":
        return False
    raise ConfigError(f"not a boolean: {value!r}")


def as_list(value: str | None) -> list[str]:
    """A comma-separated value to a list of trimmed, non-empty items."""
    return [item.strip() for item in (value or "").split(",") if item.strip()]


def provisioning_enabled(config: dict) -> bool:
    """THE loop-guard rule: whether a node with this configuration stays in (or returns to) provisioning mode.

    Provisioning is off only when ``plugin.choria.server.provision`` is an explicit false word (``false``,
    ``no``, ``off``, ``0``, ``n``, ``f``; trimmed, any case). Missing, empty or anything else leaves it on, so
    a configuration that does not clearly say "off" is never taken for a configured node: the node stays
    reachable for provisioning, and the controller refuses to send it.
    """
    value = config.get(PROVISION_KEY)
    return value is None or str(value).strip().lower() not in FALSE_WORDS


def collectives(config: dict[str, str]) -> tuple[list[str], str]:
    """The collectives a configured node joins and its main collective."""
    names = as_list(config.get(COLLECTIVES_KEY))
    main = (config.get(MAIN_COLLECTIVE_KEY) or "").strip()
    if not names:
        names = [main or DEFAULT_COLLECTIVE]
    if not main:
        main = names[0]
    if main not in names:
        names.insert(0, main)
    return names, main
