# Copyright: zeroinit.bootstrap contributors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)
"""Configuration of ``zeroinit-provisioner``: one YAML file, checked whole at start.

Keys carry the names Choria's provisioner gives them where it has one (``site``, ``workers``, ``interval``,
``token``, ``helper``, ``features.pki``, ``monitor_port``, ``loglevel``, ``logfile``); the built-in signer's
options sit under ``signer:`` and the base node configuration under ``configuration:``, both as
``choria_provision`` takes them. ``CONFIG_KEYS`` is the one table of keys: the loader checks a file against it
and ``reference_markdown()`` renders the documentation from it, so the two cannot drift.

Checks: an unknown key, a wrong type or a value out of bounds is refused with the key's dotted path
(``features.pki: expected a boolean, got 'yes'``); every problem in the file is reported at once. YAML's own
booleans (``true``/``false`` and YAML 1.1's unquoted ``yes``/``no``/``on``/``off``, which ``yaml.safe_load``
turns into booleans) are accepted for boolean keys; a quoted string is not. A key written twice is refused
rather than silently taking the last value.

``monitor_address`` defaults to 127.0.0.1, where Choria listens on every interface: ``/metrics`` and ``/healthz``
have no authentication, and the service runs on the provisioning network, next to nodes nobody has vetted yet.
Set it to an address Prometheus can reach (or ``0.0.0.0``) deliberately.
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import math
import os
import re
import socket
from dataclasses import dataclass
from typing import Any, Callable, Optional

from ...common.deps import HAS_YAML, YAML_IMPORT_ERROR, yaml
from ..helper import HELPER_MODES, ONESHOT

REQUIRED = object()
# KV bucket names allow [A-Za-z0-9_-]; a NATS subject token must not hold '.', '*', '>' or spaces. A site name
# that is both can name the site's bucket and control subject verbatim, so two sites never share either.
SITE_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
# Goes into every request's senderid, the claim values and the JSON log lines.
INSTANCE_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
SERVICE_LOG_LEVELS = ("trace", "debug", "info", "warn", "warning", "error", "fatal")
SECRET_WORDS = ("passphrase", "password", "secret", "token", "auth_key")  # auth_key: the cfssl backend's HMAC key


class ServiceConfigError(ValueError):
    """The configuration file cannot be used; ``problems`` lists each one, prefixed with its key path."""

    def __init__(self, source: str, problems: list):
        self.source = source
        self.problems = list(problems)
        super().__init__(f"invalid configuration {source}:\n  " + "\n  ".join(self.problems))


@dataclass(frozen=True)
class ConfigKey:
    """One configuration key: the loader's rule and the documentation's row."""

    name: str
    kind: str
    default: Any
    description: str
    choria: bool = False
    secret: bool = False
    minimum: Optional[float] = None
    maximum: Optional[float] = None
    choices: tuple = ()


CONFIG_KEYS = (
    ConfigKey(
        "site",
        "site",
        REQUIRED,
        "Name of the site; labels every metric, names the claims bucket and "
        "the control subject. Letters, digits, `_`, `-`.",
        choria=True,
    ),
    ConfigKey("brokers", "url_list", REQUIRED, "Broker URLs of the provisioning network (NATS cluster).", choria=False),
    ConfigKey("collective", "string", "provisioning", "Collective the nodes are provisioned in."),
    ConfigKey(
        "workers",
        "integer",
        50,
        "Nodes provisioned at the same time by this instance.",
        choria=True,
        minimum=1,
        maximum=10000,
    ),
    ConfigKey(
        "interval",
        "duration",
        60.0,
        "Discovery period (`30s`, `1m`, `1h` or seconds).",
        choria=True,
        minimum=5,
        maximum=86400,
    ),
    ConfigKey(
        "token", "string", "", "Provisioning token sent in every `choria_provision` request.", choria=True, secret=True
    ),
    ConfigKey(
        "helper",
        "command",
        None,
        "Helper program (Choria's contract): a path with arguments, as a string or a list. Exclusive with `signer`.",
        choria=True,
    ),
    ConfigKey("helper_timeout", "duration", 10.0, "Time a helper may run for one node.", minimum=1, maximum=600),
    ConfigKey(
        "helper_mode",
        "choice",
        ONESHOT,
        "`oneshot`: a helper process per node (Choria's contract); `persistent`: long-lived helper processes, "
        'one JSON request line and one JSON reply line per node (README "Persistent helpers").',
        choices=HELPER_MODES,
    ),
    ConfigKey(
        "helper_concurrency",
        "integer",
        0,
        "Helpers running at once; with `helper_mode: persistent`, the long-lived helper processes. 0: four per "
        "CPU one-shot, two per CPU persistent, at most `workers`.",
        minimum=0,
        maximum=10000,
    ),
    ConfigKey(
        "features.pki",
        "boolean",
        True,
        "Ask each node for a CSR (`gencsr`) and have it signed (Choria's "
        "default is false; ours is true, as the built-in signer needs the CSR).",
        choria=True,
    ),
    ConfigKey(
        "signer",
        "mapping",
        None,
        "The built-in signer's options, as `choria_provision`'s `signer` takes them. Exclusive with `helper`.",
    ),
    ConfigKey(
        "configuration",
        "config_map",
        {},
        "Base node configuration; what the helper or signer returns is merged over it.",
    ),
    ConfigKey("tls_ca", "file", None, "CA certificate to verify the brokers with."),
    ConfigKey("tls_cert", "file", None, "Client certificate presented to the brokers."),
    ConfigKey("tls_key", "file", None, "Private key of `tls_cert`."),
    ConfigKey(
        "signing_cert",
        "file",
        None,
        "Provisioner certificate (provisioner extended key usage) every request is signed with, as "
        "`choria_provision`'s `signing_cert`; nodes pinning its CA (`--provisioning-ca`) and locked nodes need it.",
    ),
    ConfigKey("signing_key", "file", None, "Private key of `signing_cert`."),
    ConfigKey("signing_key_passphrase", "string", "", "Passphrase of `signing_key`.", secret=True),
    ConfigKey(
        "jwt_verify_key",
        "string",
        None,
        "The site's provisioning-JWT issuer key (a PEM public key or certificate, a hex Ed25519 key file or the "
        "hex key; Choria's `jwt_verify_cert`): each node's JWT is fetched and verified before anything else.",
    ),
    ConfigKey(
        "renewal.brokers",
        "url_list",
        None,
        "Broker URLs of the members' network (the configured nodes' brokers). Set, this instance runs the renewal "
        "responder there: it answers the nodes' renewal requests (agent `zeroinit_ca`), sharing them with other "
        "responders in one queue group.",
    ),
    ConfigKey("renewal.collective", "string", "mcollective", "The members' collective renewal requests come in."),
    ConfigKey(
        "renewal.site_ca",
        "file",
        None,
        "CA certificates a renewal request's certificate must chain to (during a CA migration, the old and the "
        "new CA); by default the renewal signer's CA chain.",
    ),
    ConfigKey(
        "renewal.signer",
        "mapping",
        None,
        "Who signs renewed certificates, as `signer` (the built-in signer or `backend: cfssl`); default `signer`.",
    ),
    ConfigKey("renewal.tls_ca", "file", None, "CA certificate to verify the members' brokers with."),
    ConfigKey("renewal.tls_cert", "file", None, "Client certificate presented to the members' brokers."),
    ConfigKey("renewal.tls_key", "file", None, "Private key of `renewal.tls_cert`."),
    ConfigKey(
        "monitor_port",
        "integer",
        0,
        "Port of `/metrics` and `/healthz`; 0 turns them off.",
        choria=True,
        minimum=0,
        maximum=65535,
    ),
    ConfigKey(
        "monitor_address",
        "address",
        "127.0.0.1",
        "Address `/metrics` and `/healthz` listen on; loopback by default, as they have no authentication.",
    ),
    ConfigKey("loglevel", "choice", "info", "Log level.", choria=True, choices=SERVICE_LOG_LEVELS),
    ConfigKey("logfile", "string", "", "Log file; empty logs to standard error.", choria=True),
    ConfigKey(
        "claim_ttl",
        "duration",
        30.0,
        "Seconds a node's claim outlives its holder; another instance takes the node over within `claim_ttl` + 1 s. "
        "Keep it well above the time the claims bucket needs to elect a new leader when a server dies (5-7 s "
        "measured on a loaded 2-core machine), or claims are lost in that failover.",
        minimum=5,
        maximum=3600,
    ),
    ConfigKey(
        "instance",
        "instance",
        None,
        "This instance's name (default `<host name>-<process id>`); in "
        "every request's `senderid`, the claims and the logs.",
    ),
    ConfigKey(
        "control_key",
        "string",
        "",
        "Key authenticating pause/resume/status; default derived from `token` and `site`.",
        secret=True,
    ),
    ConfigKey(
        "queue_limit",
        "integer",
        50000,
        "Most nodes waiting in the queue; more are refused and counted.",
        minimum=1,
        maximum=10_000_000,
    ),
    ConfigKey(
        "retry_limit",
        "integer",
        10,
        "Attempts (failures and defers) before a node is dropped until it is found again.",
        minimum=1,
        maximum=1000,
    ),
    ConfigKey(
        "retry_max_delay", "duration", 300.0, "Longest wait between two attempts at one node.", minimum=1, maximum=86400
    ),
)
KEYS_BY_NAME = {key.name: key for key in CONFIG_KEYS}

# Keys of Choria's provisioner that this service does not take, with why: a Choria file is refused clearly.
CHORIA_ONLY_KEYS = {
    "features.jwt": "set jwt_verify_key: the JWT is fetched and verified whenever it is set",
    "features.ed25519": "ed25519 server keys are not implemented",
    "features.upgrades": "release upgrades are not implemented",
    "jwt_verify_cert": "named jwt_verify_key here, with the same values",
    "jwt_signing_key": "server JWTs (ed25519 mode) are not implemented",
    "jwt_signing_token": "server JWTs (ed25519 mode) are not implemented",
    "server_jwt_validity": "server JWTs (ed25519 mode) are not implemented",
    "leader_election": "every instance works (JetStream claims share the nodes); there is no leader",
    "upgrades_repository": "release upgrades are not implemented",
    "upgrades_optional": "release upgrades are not implemented",
    "lifecycle_component": "nodes are found by their provision_mode_server events",
    "choria_insecure": "use tls_ca/tls_cert/tls_key for the brokers",
    "broker_provisioning_password": "use tls_cert/tls_key for the brokers",
    "cert_deny_list": "use the signer's deny list (signer.denied_sans)",
    "broker_port": "unused by Choria too",
    "rego_policy": "unused by Choria too",
}


def parse_duration(value: Any) -> float:
    """Seconds in a duration written as Choria writes them, or a YAML number of seconds.

    Choria (go-choria ``util.ParseDuration``) picks the unit by the last character: ``w``/``W`` weeks, ``d``/``D``
    days, ``M`` months (30 days), ``y``/``Y`` years (365 days), each with a decimal value; ``s``, ``S``, ``m``,
    ``h``, ``H`` go to Go's ``time.ParseDuration`` (``1h30m``, ``1.5s``, ``500ms``; Go's units are lower case).
    """
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f"expected a duration such as 30s, 1m, 1h or a number of seconds, got {value!r}")
    seconds = float(value) if isinstance(value, (int, float)) else _choria_duration(value.strip())
    if not math.isfinite(seconds):
        raise ValueError(f"expected a finite duration, got {value!r}")
    return seconds


_DAY = 86400.0
_LONG_UNITS = {"w": 7 * _DAY, "W": 7 * _DAY, "d": _DAY, "D": _DAY, "M": 30 * _DAY, "y": 365 * _DAY, "Y": 365 * _DAY}
_GO_UNITS = {"ns": 1e-9, "us": 1e-6, "\u00b5s": 1e-6, "\u03bcs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_GO_PART = re.compile(r"(\d+\.?\d*|\.\d+)(ns|us|\u00b5s|\u03bcs|ms|s|m|h)")
_DECIMAL = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)$")


def _choria_duration(text: str) -> float:
    if not text:
        return 0.0
    unit = text[-1]
    if unit in _LONG_UNITS:
        number = text[:-1]
        if not _DECIMAL.match(number):
            raise ValueError(f"invalid duration {text!r}")
        return float(number) * _LONG_UNITS[unit]
    if unit in "sSmhH":
        return _go_duration(text)
    raise ValueError(f"invalid time unit in {text!r}: expected a duration such as 30s, 1m, 1h or a number of seconds")


def _go_duration(text: str) -> float:
    sign, body = (-1.0, text[1:]) if text[:1] == "-" else (1.0, text.lstrip("+"))
    if body == "0":
        return 0.0
    total, position = 0.0, 0
    while position < len(body):
        part = _GO_PART.match(body, position)
        if part is None:
            raise ValueError(f"invalid duration {text!r}")
        total += float(part.group(1)) * _GO_UNITS[part.group(2)]
        position = part.end()
    if position == 0:
        raise ValueError(f"invalid duration {text!r}")
    return sign * total


def default_instance() -> str:
    """``<host name>-<process id>``, with any character a name may not hold turned into ``-``."""
    host = re.sub(r"[^A-Za-z0-9_.-]", "-", socket.gethostname().split(".")[0]) or "host"
    return f"{host.lstrip('-_.') or 'host'}-{os.getpid()}"[:128]


@dataclass(frozen=True)
class ConfigHooks:
    """Checks that live with the code they belong to, passed in by the daemon (each: value -> value, raising
    ``ValueError`` or ``TypeError`` with a message; the loader puts the key name in front).

    ``brokers``: the broker URL rule; ``helper``: resolving the helper's argv; ``signer``: the built-in
    signer's option check (the argument spec ``pki_sign`` and ``choria_provision`` share).
    """

    brokers: Optional[Callable[[list], list]] = None
    helper: Optional[Callable[[Any], Any]] = None
    signer: Optional[Callable[[dict], dict]] = None


@dataclass(frozen=True)
class ServiceConfig:
    """A checked configuration; field names are the keys (``features.pki`` is ``features_pki``)."""

    site: str
    brokers: list
    instance: str
    collective: str = "provisioning"
    workers: int = 50
    interval: float = 60.0
    token: str = dataclasses.field(default="", repr=False)
    helper: Any = None
    helper_timeout: float = 10.0
    helper_mode: str = ONESHOT
    helper_concurrency: int = 0
    features_pki: bool = True
    signer: Optional[dict] = dataclasses.field(default=None, repr=False)
    configuration: dict = dataclasses.field(default_factory=dict)
    tls_ca: Optional[str] = None
    tls_cert: Optional[str] = None
    tls_key: Optional[str] = None
    signing_cert: Optional[str] = None
    signing_key: Optional[str] = None
    signing_key_passphrase: str = dataclasses.field(default="", repr=False)
    jwt_verify_key: Optional[str] = None
    renewal_brokers: Optional[list] = None
    renewal_collective: str = "mcollective"
    renewal_site_ca: Optional[str] = None
    renewal_signer: Optional[dict] = dataclasses.field(default=None, repr=False)
    renewal_tls_ca: Optional[str] = None
    renewal_tls_cert: Optional[str] = None
    renewal_tls_key: Optional[str] = None
    monitor_port: int = 0
    monitor_address: str = "127.0.0.1"
    loglevel: str = "info"
    logfile: str = ""
    claim_ttl: float = 30.0
    control_key: str = dataclasses.field(default="", repr=False)
    queue_limit: int = 50000
    retry_limit: int = 10
    retry_max_delay: float = 300.0

    @property
    def stale_after(self) -> float:
        """A queued node not seen for three discovery intervals leaves the queue."""
        return 3 * self.interval

    def redacted(self) -> dict:
        """The configuration as a dict fit for a log line: secrets replaced, the signer's secret options too."""
        doc = dataclasses.asdict(self)
        for key in CONFIG_KEYS:
            field_name = key.name.replace(".", "_")
            if key.secret and doc.get(field_name):
                doc[field_name] = "<redacted>"
        for name in ("signer", "renewal_signer"):
            if isinstance(doc.get(name), dict):
                doc[name] = {
                    k: ("<redacted>" if v and any(word in k for word in SECRET_WORDS) else v)
                    for k, v in doc[name].items()
                }
        return doc

    @property
    def renewal_signer_params(self) -> Optional[dict]:
        """The renewal responder's signer options (``renewal.signer``, else ``signer``); None: no responder."""
        return (self.renewal_signer or self.signer) if self.renewal_brokers else None

    def __repr__(self) -> str:
        return f"ServiceConfig({self.redacted()!r})"

    __str__ = __repr__


class _UniqueKeyLoader(yaml.SafeLoader if HAS_YAML else object):  # type: ignore[misc]
    """safe_load's loader, refusing a mapping that names one key twice."""


def _construct_unique_mapping(loader, node, deep=False):
    seen = set()
    for key_node, _value_node in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if not isinstance(key, (str, int, float, bool)):
            continue  # an unhashable key is refused later, with its path
        if key in seen:
            raise yaml.constructor.ConstructorError(None, None, f"key {key!r} is written twice", key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


if HAS_YAML:
    _UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_unique_mapping)


def load_service_config(path: str, hooks: Optional[ConfigHooks] = None) -> ServiceConfig:
    """Read and check the YAML file at ``path``; ``ServiceConfigError`` names every problem."""
    if not HAS_YAML:
        raise ServiceConfigError(path, [f"PyYAML is required to read the configuration: {YAML_IMPORT_ERROR}"])
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise ServiceConfigError(path, [f"cannot read the file: {exc}"]) from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader subclass: no arbitrary objects
    except yaml.YAMLError as exc:
        raise ServiceConfigError(path, [f"not valid YAML: {exc}"]) from None
    return parse_service_config(data, source=path, hooks=hooks)


def parse_service_config(data: Any, source: str = "(inline)", hooks: Optional[ConfigHooks] = None) -> ServiceConfig:
    """Check an already parsed document against ``CONFIG_KEYS``; ``ServiceConfigError`` names every problem."""
    hooks = hooks or ConfigHooks()
    problems: list = []
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ServiceConfigError(source, [f"expected a mapping of keys at the top, got {_kind_of(data)}"])
    flat = _flatten(data, problems)
    values: dict = {}
    for name, value in flat.items():
        key = KEYS_BY_NAME.get(name)
        if key is None:
            problems.append(_unknown_key(name))
            continue
        try:
            values[name] = _check(key, value)
        except (TypeError, ValueError) as exc:
            problems.append(f"{name}: {exc}")
    for key in CONFIG_KEYS:
        if key.name not in values and key.name not in flat:
            if key.default is REQUIRED:
                problems.append(f"{key.name}: required")
            else:
                values[key.name] = _copy_default(key.default)
    if not problems:
        _check_together(values, problems)
    if not problems:
        for name, hook in (
            ("brokers", hooks.brokers),
            ("helper", hooks.helper),
            ("signer", hooks.signer),
            ("renewal.brokers", hooks.brokers),
            ("renewal.signer", hooks.signer),
        ):
            if hook is not None and values.get(name) is not None:
                try:
                    values[name] = hook(values[name])
                except (TypeError, ValueError) as exc:
                    problems.append(f"{name}: {exc}")
    if problems:
        raise ServiceConfigError(source, problems)
    if values["instance"] is None:
        values["instance"] = default_instance()
    fields = {name.replace(".", "_"): value for name, value in values.items()}
    return ServiceConfig(**fields)


SECTIONS = ("features", "renewal")


def _flatten(data: dict, problems: list) -> dict:
    """``{"features": {"pki": true}}`` -> ``{"features.pki": true}``; only known sections (SECTIONS) nest."""
    flat = {}
    for name, value in data.items():
        if not isinstance(name, str):
            problems.append(f"{name!r}: keys must be strings")
            continue
        if name in SECTIONS:
            if not isinstance(value, dict):
                problems.append(f"{name}: expected a mapping, got {_kind_of(value)}")
                continue
            for sub, sub_value in value.items():
                flat[f"{name}.{sub}"] = sub_value
            continue
        flat[name] = value
    return flat


def _unknown_key(name: str) -> str:
    if name in CHORIA_ONLY_KEYS:
        return f"{name}: Choria's provisioner key is not supported here ({CHORIA_ONLY_KEYS[name]})"
    close = difflib.get_close_matches(name, list(KEYS_BY_NAME), n=1)
    hint = f"; did you mean {close[0]}?" if close else ""
    return f"{name}: unknown key{hint}"


def _copy_default(value: Any) -> Any:
    return dict(value) if isinstance(value, dict) else value


def _kind_of(value: Any) -> str:
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    if isinstance(value, (int, float)):
        return f"a number ({value})"
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return type(value).__name__


def _check(key: ConfigKey, value: Any) -> Any:
    """The value for ``key`` or ``ValueError`` saying what was expected (without the key name)."""
    kind = key.kind
    if value is None and key.default is None:
        return None
    if kind == "boolean":
        if not isinstance(value, bool):
            raise ValueError(f"expected a boolean, got {_kind_of(value)}")
        return value
    if kind == "integer":
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"expected an integer, got {_kind_of(value)}")
        return _bounded(key, value)
    if kind == "duration":
        return _bounded(key, parse_duration(value))
    if kind == "choice":
        if not isinstance(value, str) or value.lower() not in key.choices:
            raise ValueError(f"expected one of {', '.join(key.choices)}, got {_kind_of(value)}")
        return value.lower()
    if not isinstance(value, (str, list, dict)):
        expected = {"mapping": "a mapping", "config_map": "a mapping", "url_list": "a list of URLs"}
        raise ValueError(f"expected {expected.get(kind, 'a string')}, got {_kind_of(value)}{_quote_hint(value)}")
    checker = _CHECKERS[kind]
    return checker(value)


def _quote_hint(value: Any) -> str:
    return " (quote it to keep it a string)" if isinstance(value, (bool, int, float)) else ""


def _bounded(key: ConfigKey, number: float) -> Any:
    if key.minimum is not None and number < key.minimum:
        raise ValueError(f"must be at least {key.minimum:g}, got {number:g}")
    if key.maximum is not None and number > key.maximum:
        raise ValueError(f"must be at most {key.maximum:g}, got {number:g}")
    return number


def _string(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {_kind_of(value)}")
    return value


def _site(value: Any) -> str:
    if not SITE_PATTERN.match(_string(value)):
        raise ValueError(f"{value!r} is not a site name (1 to 64 letters, digits, '_' or '-')")
    return value


def _instance(value: Any) -> str:
    if not INSTANCE_PATTERN.match(_string(value)):
        raise ValueError(f"{value!r} is not an instance name (letters, digits, '_', '.', '-'; at most 128)")
    return value


def _url_list(value: Any) -> list:
    if not isinstance(value, list) or not value:
        raise ValueError(f"expected a non-empty list of broker URLs, got {_kind_of(value)}")
    for index, url in enumerate(value):
        if not isinstance(url, str) or not url or any(ch.isspace() for ch in url):
            raise ValueError(f"item {index}: expected a broker URL, got {_kind_of(url)}")
    return list(value)


def _command(value: Any) -> Any:
    if isinstance(value, str):
        if not value.strip():
            raise ValueError("expected a program path, got an empty string")
        return value
    if isinstance(value, list) and value and all(isinstance(part, str) and part for part in value):
        return list(value)
    raise ValueError(f"expected a program path (string) or a list of arguments, got {_kind_of(value)}")


def _mapping(value: Any) -> dict:
    if not isinstance(value, dict):
        raise ValueError(f"expected a mapping, got {_kind_of(value)}")
    for sub in value:
        if not isinstance(sub, str):
            raise ValueError(f"key {sub!r}: expected a string key")
    return dict(value)


def _config_map(value: Any) -> dict:
    """Node configuration keys and values as Choria's key = value file takes them: strings."""
    rendered = {}
    for sub, item in _mapping(value).items():
        if isinstance(item, bool):
            rendered[sub] = "true" if item else "false"
        elif isinstance(item, (int, float, str)):
            rendered[sub] = str(item)
        else:
            raise ValueError(f"{sub}: expected a string, number or boolean, got {_kind_of(item)}")
    return rendered


def _file(value: Any) -> str:
    path = _string(value)
    if not os.path.isfile(path):
        raise ValueError(f"{path}: no such file")
    if not os.access(path, os.R_OK):
        raise ValueError(f"{path}: not readable by this process")
    return path


def _address(value: Any) -> str:
    text = _string(value)
    try:
        ipaddress.ip_address(text)
    except ValueError:
        if not re.match(r"^[A-Za-z0-9]([A-Za-z0-9.-]{0,252})$", text):
            raise ValueError(f"{text!r} is not an IP address or host name") from None
    return text


_CHECKERS = {
    "string": _string,
    "site": _site,
    "instance": _instance,
    "url_list": _url_list,
    "command": _command,
    "mapping": _mapping,
    "config_map": _config_map,
    "file": _file,
    "address": _address,
}


def _check_together(values: dict, problems: list) -> None:
    """Rules between keys."""
    if values.get("helper") is not None and values.get("signer") is not None:
        problems.append("helper, signer: exclusive; set one")
    elif values.get("helper") is None and values.get("signer") is None:
        problems.append("helper, signer: one is required (a helper program or the built-in signer)")
    if values.get("tls_key") and not values.get("tls_cert"):
        problems.append("tls_key: given without tls_cert")
    if values.get("signing_cert") and not values.get("signing_key"):
        problems.append("signing_cert: given without signing_key (a signing certificate needs its key)")
    if values.get("signing_key") and not values.get("signing_cert"):
        problems.append("signing_key: given without signing_cert")
    if values.get("signing_key_passphrase") and not values.get("signing_key"):
        problems.append("signing_key_passphrase: given without signing_key")
    if values.get("signer") is not None and not values.get("features.pki"):
        problems.append("features.pki: the built-in signer needs the node's CSR; set it true or use a helper")
    if values.get("renewal.brokers"):
        if values.get("renewal.signer") is None and values.get("signer") is None:
            problems.append("renewal.brokers: the renewal responder needs a signer; set renewal.signer (or signer)")
        if values.get("renewal.tls_key") and not values.get("renewal.tls_cert"):
            problems.append("renewal.tls_key: given without renewal.tls_cert")
    else:
        for name in ("renewal.site_ca", "renewal.signer", "renewal.tls_ca", "renewal.tls_cert", "renewal.tls_key"):
            if values.get(name) is not None:
                problems.append(f"{name}: given without renewal.brokers (the members' brokers to serve renewals on)")
    if not values.get("token") and not values.get("control_key"):
        problems.append("token: required unless control_key is set (it keys the pause/resume/status messages)")


def reference_markdown() -> str:
    """The configuration keys as a Markdown table, from ``CONFIG_KEYS``."""
    rows = ["| Key | Type | Default | Choria's name | Description |", "|---|---|---|---|---|"]
    for key in CONFIG_KEYS:
        if key.default is REQUIRED:
            default = "required"
        elif key.name == "instance":
            default = "`<host name>-<process id>`"
        elif key.default in (None, "", {}):
            default = ""
        else:
            default = f"`{_format_default(key)}`"
        bounds = ""
        if key.minimum is not None or key.maximum is not None:
            bounds = f" ({_format_bound(key, key.minimum)} to {_format_bound(key, key.maximum)})"
        if key.choices:
            bounds = f" (one of {', '.join(key.choices)})"
        rows.append(
            f"| `{key.name}` | {key.kind} | {default} | {'yes' if key.choria else ''} | {key.description}{bounds} |"
        )
    return "\n".join(rows) + "\n"


def _format_default(key: ConfigKey) -> str:
    if isinstance(key.default, bool):
        return str(key.default).lower()
    if key.kind == "duration":
        return f"{key.default:g}s"
    return str(key.default)


def _format_bound(key: ConfigKey, bound: Optional[float]) -> str:
    if bound is None:
        return "any"
    return f"{bound:g}s" if key.kind == "duration" else f"{bound:g}"
