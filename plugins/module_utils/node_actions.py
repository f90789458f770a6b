# Copyright: zeroinit.bootstrap contributors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)
"""One provisioning node's state and its answers to the ``discovery``, ``rpcutil`` and ``choria_provision`` agents.

No networking here: ``ProvisionNode.handle(request)`` returns the reply body and, for ``restart``,
``reprovision`` and ``shutdown``, what the daemon must do after the reply is sent. The daemon
(``agent.py``) owns connections and timers; tests call ``handle`` directly.

Node directory layout::

    <node dir>/server.conf            the node's Choria configuration (provisioning on, or the configured one)
    <node dir>/ssl/private.pem        made by gencsr, 0600, never leaves the node
    <node dir>/ssl/csr.pem            the last CSR
    <node dir>/ssl/certificate.pem    from configure
    <node dir>/ssl/ca.pem             from configure
    <node dir>/ssl/previous/          the certificate files a reprovision set aside
    <node dir>/.configure.journal     present only while configure renames its staged files

Inputs beyond go-choria's DDL: ``gencsr`` takes ``key_type`` (``ecdsa``, the default: P-256; or ``rsa``:
RSA-2048). Refused inputs: ``configure``'s ``key`` (private keys are made on the node, never sent), and the
actions ``release_update``, ``jwt`` and ``gen25519`` (statuscode 2 with the reason).
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass
from typing import Any

from .choria.brokers import BrokerUrlError, normalize_brokers
from .choria.config import (
    IDENTITY_KEY,
    MIDDLEWARE_KEY,
    PROVISION_KEY,
    SECURITY_CA_KEY,
    SECURITY_CERT_KEY,
    SECURITY_KEY_KEY,
    SECURITY_PROVIDER_KEY,
    ConfigError,
    check_entry,
    collectives,
    parse_config,
    provisioning_enabled,
    render_config,
)
from .choria.protocol import (
    DISCOVERY_PING,
    DISCOVERY_PONG,
    Request,
    StatusCode,
    constant_time_equal,
    now,
    rpc_reply_body,
)
from .choria.subjects import IDENTITY_RULE, PROVISIONING_COLLECTIVE, valid_identity
from .common.deps import HAS_CRYPTOGRAPHY, NameOID, ec, hashes, rsa, serialization, x509
from .common.files import atomic_write, fsync_directory, read_bytes, read_text, remove_quietly, write_file
from .pki.x509 import certificate_matches_key, is_issued_by

AGENT_VERSION = "1.0.0"
PROVISION_AGENT = "choria_provision"
AGENTS_PROVISIONING = ("choria_provision", "discovery", "rpcutil")
# A configured node answers rpcutil and discovery, and choria_provision only for ``reprovision``.
AGENTS_CONFIGURED = ("choria_provision", "discovery", "rpcutil")

MODE_PROVISIONING = "provisioning"
MODE_CONFIGURED = "configured"

LOCK_SECONDS = 120
DEFAULT_SPLAY_MAX = 10.0
JOURNAL = ".configure.journal"
# Test-only: seconds to sleep between the renames of configure, so a test can kill the process midway.
SLOW_WRITES_ENV = "ZEROINIT_AGENT_TEST_SLOW_WRITES"

KEY_TYPES = ("ecdsa", "rsa")

# Input rules from choria_provision.json (validation regex, maxlength); ``key_type`` is ours (gencsr).
_GENCSR_FIELDS = {
    "cn": (r"", 80),  # the identity rule (choria/subjects.py), not a pattern of its own
    "C": (r"^[A-Z]{2}$", 2),
    "L": (r"^[\w\s-]+$", 50),
    "O": (r"^[\w\s-]+$", 50),
    "OU": (r"^[\w\s-]+$", 50),
    "ST": (r"^[\w\s-]+$", 50),
}
_GENCSR_RE = {name: re.compile(pattern) for name, (pattern, _limit) in _GENCSR_FIELDS.items()}
_NAME_OIDS = {
    "C": "COUNTRY_NAME",
    "ST": "STATE_OR_PROVINCE_NAME",
    "L": "LOCALITY_NAME",
    "O": "ORGANIZATION_NAME",
    "OU": "ORGANIZATIONAL_UNIT_NAME",
}
_CERT_PREFIX = "-----BEGIN CERTIFICATE-----"

UNSUPPORTED_ACTIONS = {
    "release_update": "release_update is not supported by this agent: update it with the provision_agent role",
    "jwt": "jwt is not supported by this agent: it uses the file security provider with X.509 certificates",
    "gen25519": "gen25519 is not supported by this agent: it uses X.509 certificates made by gencsr",
}


class Refusal(Exception):
    """An action refused: becomes a reply with this statuscode and message."""

    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass
class ActionResult:
    """The reply body (None: send nothing) and what the daemon does after replying."""

    body: Any
    effect: str = ""  # "", "restart", "reprovision", "shutdown"
    delay: float = 0.0


class ProvisionNode:
    """A node's identity, mode, lock and files; answers requests for it."""

    __slots__ = (
        "config",
        "durable",
        "identity",
        "link",
        "lock_holder",
        "lock_seconds",
        "lock_until",
        "mode",
        "node_dir",
        "shared_facts",
        "splay_max",
        "ssldir",
        "stopped",
        "token",
    )

    def __init__(
        self,
        identity: str,
        node_dir: str,
        token: str,
        shared_facts: dict | None = None,
        splay_max: float = DEFAULT_SPLAY_MAX,
        lock_seconds: int = LOCK_SECONDS,
        durable: bool = True,
    ):
        self.identity = identity
        self.node_dir = os.path.abspath(node_dir)
        self.ssldir = os.path.join(self.node_dir, "ssl")
        self.token = token or ""
        self.shared_facts = shared_facts if shared_facts is not None else {}
        self.splay_max = splay_max
        self.lock_seconds = lock_seconds
        self.mode = MODE_PROVISIONING
        self.config: dict[str, str] = {}
        self.lock_holder = ""
        self.lock_until = 0.0
        self.link = None  # set by the daemon: the connection this node is served on
        self.stopped = False
        self.durable = durable  # fsync files and directories (off for simulated fleets sharing one disk)

    def __repr__(self) -> str:  # never shows the token
        return f"ProvisionNode({self.identity}, {self.mode})"

    # ------------------------------------------------------------------------------------------ state

    @property
    def server_conf(self) -> str:
        return os.path.join(self.node_dir, "server.conf")

    @property
    def journal(self) -> str:
        return os.path.join(self.node_dir, JOURNAL)

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

    def load(self, recover: bool = True) -> None:
        """Read the node's state from disk: finish an interrupted configure (at process start), pick the mode.

        A server.conf that turns provisioning off makes the node start configured: the one-way lock
        survives process restarts until ``reprovision``.
        """
        if not os.path.isdir(self.ssldir):
            os.makedirs(self.ssldir, mode=0o700, exist_ok=True)
        if recover:
            recover_configure(self.node_dir)
        text = read_text(self.server_conf)
        self.config = {}
        if text is not None:
            try:
                self.config = parse_config(text, source=self.server_conf)
            except ConfigError:
                self.config = {}
        self.mode = (
            MODE_PROVISIONING
            if provisioning_enabled(self.config) or not self.config.get(MIDDLEWARE_KEY)
            else MODE_CONFIGURED
        )

    # ------------------------------------------------------------------------------------------ dispatch

    def handle(self, req: Request, at: float | None = None) -> ActionResult:
        """The answer to one request addressed to (or matching) this node."""
        at = time.time() if at is None else at
        if req.agent == "discovery":
            # The discovery agent answers a raw ping; there is no status to carry a refusal, so stale
            # requests are dropped.
            if req.body == DISCOVERY_PING and not req.expired(int(at)):
                return ActionResult(DISCOVERY_PONG)
            return ActionResult(None)
        action = req.action
        if not isinstance(req.body, dict):
            return ActionResult(
                rpc_reply_body(action, StatusCode.INVALID_DATA, "request body is not an mcorpc JSON object")
            )
        skew = int(at) - req.time
        if abs(skew) > req.ttl:
            what = "request expired" if skew > 0 else "request too far in the future"
            return ActionResult(
                rpc_reply_body(
                    action,
                    StatusCode.ABORTED,
                    "%s: sent %ds %s, ttl %ds" % (what, abs(skew), "ago" if skew > 0 else "ahead", req.ttl),
                )
            )
        try:
            if req.agent == "rpcutil":
                return ActionResult(self._rpcutil(action))
            if req.agent == PROVISION_AGENT:
                return self._provision(req, at)
            raise Refusal(StatusCode.UNKNOWN_ACTION, f"unknown agent {req.agent!r} on {self.identity}")
        except Refusal as refusal:
            return ActionResult(rpc_reply_body(action, refusal.code, refusal.message))
        except Exception as exc:  # an action must answer, never take the agent down
            return ActionResult(
                rpc_reply_body(
                    action, StatusCode.UNKNOWN_ERROR, f"{req.agent}#{action} failed on {self.identity}: {exc}"
                )
            )

    def _rpcutil(self, action: str) -> dict:
        if action == "ping":
            return rpc_reply_body(action, data={"pong": now()})
        if action == "inventory":
            names, main = self.collectives
            return rpc_reply_body(
                action,
                data={
                    "agents": list(self.agents),
                    "facts": self.facts,
                    "classes": [],
                    "version": AGENT_VERSION,
                    "main_collective": main,
                    "collectives": names,
                    "data_plugins": [],
                    "machines": {},
                    "upgradable": False,
                },
            )
        raise Refusal(StatusCode.UNKNOWN_ACTION, f"unknown action rpcutil#{action}")

    def _provision(self, req: Request, at: float) -> ActionResult:
        action = req.action
        data = req.data
        if action in UNSUPPORTED_ACTIONS:
            raise Refusal(StatusCode.UNKNOWN_ACTION, UNSUPPORTED_ACTIONS[action])
        handler = {
            "gencsr": self.gencsr,
            "configure": self.configure,
            "restart": self.restart,
            "reprovision": self.reprovision,
            "shutdown": self.shutdown,
        }.get(action)
        if handler is None:
            raise Refusal(StatusCode.UNKNOWN_ACTION, f"unknown action choria_provision#{action}")
        self._check_token(data, required=action != "configure")
        if action == "reprovision":
            if self.mode != MODE_CONFIGURED:
                raise Refusal(StatusCode.ABORTED, f"{self.identity} is already in provisioning mode")
        else:
            if self.mode != MODE_PROVISIONING:
                raise Refusal(
                    StatusCode.ABORTED,
                    f"{self.identity} is configured and not in provisioning mode: send reprovision first",
                )
            self._check_lock(req.callerid, at, take=action in ("gencsr", "configure"))
        return handler(data)

    def _check_token(self, data: dict, required: bool) -> None:
        if "token" not in data:
            if required:
                raise Refusal(StatusCode.MISSING_DATA, "missing input 'token'")
        elif not isinstance(data["token"], str):
            raise Refusal(StatusCode.INVALID_DATA, "input 'token' must be a string")
        if not constant_time_equal(data.get("token", ""), self.token):
            raise Refusal(StatusCode.ABORTED, "incorrect provisioning token")

    def _check_lock(self, callerid: str, at: float, take: bool) -> None:
        """One provisioner at a time: gencsr/configure lock the node for their caller; its actions renew it."""
        if self.lock_holder and self.lock_until > at and self.lock_holder != callerid:
            raise Refusal(
                StatusCode.ABORTED,
                "could not obtain provisioning lock (held by %s for %d more seconds)"
                % (self.lock_holder, int(self.lock_until - at + 0.999)),
            )
        if take or self.lock_holder == callerid:
            self.lock_holder = callerid
            self.lock_until = at + self.lock_seconds

    # ------------------------------------------------------------------------------------------ actions

    def gencsr(self, data: dict) -> ActionResult:
        """A new key pair made here (ECDSA P-256, or RSA-2048 with ``key_type: rsa``) and a CSR for it."""
        subject = {}
        for name, (pattern, limit) in _GENCSR_FIELDS.items():
            value = data.get(name)
            if value is None or value == "":
                continue
            if not isinstance(value, str):
                raise Refusal(StatusCode.INVALID_DATA, f"input '{name}' must be a string")
            if len(value) > limit:
                raise Refusal(StatusCode.INVALID_DATA, "input '%s' is longer than %d characters" % (name, limit))
            if name == "cn" and not valid_identity(value):
                raise Refusal(
                    StatusCode.INVALID_DATA, f"input 'cn' {value!r} is not a valid identity ({IDENTITY_RULE})"
                )
            if name != "cn" and not _GENCSR_RE[name].match(value):
                raise Refusal(StatusCode.INVALID_DATA, f"input '{name}' does not match {pattern}")
            subject[name] = value
        key_type = data.get("key_type", "ecdsa") or "ecdsa"
        if key_type == "ec":
            key_type = "ecdsa"
        if key_type not in KEY_TYPES:
            raise Refusal(StatusCode.INVALID_DATA, "input 'key_type' must be one of {}".format(", ".join(KEY_TYPES)))
        _need_cryptography()
        if key_type == "rsa":
            key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        else:
            key = ec.generate_private_key(ec.SECP256R1())
        names = [x509.NameAttribute(NameOID.COMMON_NAME, subject.get("cn", self.identity))]
        for name in ("OU", "O", "L", "ST", "C"):
            if name in subject:
                names.append(x509.NameAttribute(getattr(NameOID, _NAME_OIDS[name]), subject[name]))
        csr = x509.CertificateSigningRequestBuilder().subject_name(x509.Name(names)).sign(key, hashes.SHA256())
        csr_pem = csr.public_bytes(serialization.Encoding.PEM)
        key_pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        public_pem = key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        if not os.path.isdir(self.ssldir):
            os.makedirs(self.ssldir, mode=0o700, exist_ok=True)
        # No journal: a key without its CSR (or the reverse) is harmless, the next gencsr replaces both.
        write_set(
            self.node_dir,
            [(self.ssl_path("private.pem"), key_pem, 0o600), (self.ssl_path("csr.pem"), csr_pem, 0o644)],
            durable=self.durable,
            journal=False,
        )
        return ActionResult(
            rpc_reply_body(
                "gencsr",
                data={"csr": csr_pem.decode("ascii"), "public_key": public_pem.decode("ascii"), "ssldir": self.ssldir},
            )
        )

    def configure(self, data: dict) -> ActionResult:
        """Validate certificate, CA and configuration, then write them as one set (see ``write_set``)."""
        raw = data.get("config")
        if raw is None or raw == "":
            raise Refusal(StatusCode.MISSING_DATA, "missing input 'config'")
        if not isinstance(raw, str) or len(raw) > 2048 or not re.match(r"^{.+}$", raw, re.S):
            raise Refusal(
                StatusCode.INVALID_DATA, "input 'config' must be a JSON object as a string of at most 2048 characters"
            )
        try:
            config = json.loads(raw)
        except ValueError as exc:
            raise Refusal(StatusCode.INVALID_DATA, f"input 'config' is not valid JSON: {exc}") from None
        if not isinstance(config, dict):
            raise Refusal(StatusCode.INVALID_DATA, "input 'config' must be a JSON object")
        for key, value in config.items():
            problem = check_entry(key, value)
            if problem:
                raise Refusal(StatusCode.INVALID_DATA, f"input 'config': {problem}")
        if data.get("key"):
            raise Refusal(
                StatusCode.INVALID_DATA,
                "input 'key' is refused: the private key is made on the node by gencsr and never sent over the network",
            )
        ssldir = data.get("ssldir")
        if ssldir not in (None, "") and (
            not isinstance(ssldir, str) or os.path.normpath(ssldir) != os.path.normpath(self.ssldir)
        ):
            raise Refusal(StatusCode.INVALID_DATA, f"input 'ssldir' {ssldir!r} is not this node's ssldir {self.ssldir}")
        certificate, ca = data.get("certificate"), data.get("ca")
        files: list[tuple[str, bytes | str, int]] = []
        final = dict(config)
        if certificate or ca:
            cert_pem, ca_pem = self._check_certificates(certificate, ca)
            files += [(self.ssl_path("certificate.pem"), cert_pem, 0o644), (self.ssl_path("ca.pem"), ca_pem, 0o644)]
            final.update(
                {
                    SECURITY_PROVIDER_KEY: "file",
                    SECURITY_CERT_KEY: self.ssl_path("certificate.pem"),
                    SECURITY_KEY_KEY: self.ssl_path("private.pem"),
                    SECURITY_CA_KEY: self.ssl_path("ca.pem"),
                }
            )
        final[IDENTITY_KEY] = self.identity
        text = render_config(final, header="Written by the zeroinit node agent (choria_provision#configure)")
        files.append((self.server_conf, text, 0o640))
        write_set(self.node_dir, files, durable=self.durable)
        self.config = final
        return ActionResult(
            rpc_reply_body("configure", data={"message": "Wrote %d files to %s" % (len(files), self.node_dir)})
        )

    def _check_certificates(self, certificate: Any, ca: Any) -> tuple[bytes, bytes]:
        for name, value, limit in (("certificate", certificate, 10240), ("ca", ca, 20480)):
            if not value:
                raise Refusal(StatusCode.MISSING_DATA, f"missing input '{name}' (certificate and ca come together)")
            if not isinstance(value, str) or len(value) > limit or not value.lstrip().startswith(_CERT_PREFIX):
                raise Refusal(
                    StatusCode.INVALID_DATA,
                    "input '%s' must be a PEM certificate of at most %d characters" % (name, limit),
                )
        _need_cryptography()
        try:
            cert = x509.load_pem_x509_certificate(certificate.encode("ascii"))
        except ValueError as exc:
            raise Refusal(StatusCode.INVALID_DATA, f"input 'certificate' does not parse: {exc}") from None
        try:
            cas = _load_ca(ca)
        except ValueError as exc:
            raise Refusal(StatusCode.INVALID_DATA, f"input 'ca' does not parse: {exc}") from None
        key_pem = read_bytes(self.ssl_path("private.pem"))
        if key_pem is None:
            raise Refusal(StatusCode.ABORTED, f"no private key in {self.ssldir}: run gencsr first")
        if not certificate_matches_key(cert, key_pem):
            raise Refusal(
                StatusCode.INVALID_DATA, f"input 'certificate' does not match the private key of {self.identity}"
            )
        if not any(is_issued_by(cert, issuer) for issuer in cas):
            raise Refusal(
                StatusCode.INVALID_DATA,
                f"input 'certificate' is not signed by the given 'ca' (issuer {cert.issuer.rfc4514_string()})",
            )
        return certificate.encode("ascii"), ca.encode("ascii")

    def restart(self, data: dict) -> ActionResult:
        """Reply, then restart into configured mode after a random delay in [0, splay]; the loop guard first."""
        splay = data.get("splay")
        if splay is None or splay == "":
            splay = 0.0
        if isinstance(splay, bool) or not isinstance(splay, (int, float)) or splay < 0:
            raise Refusal(StatusCode.INVALID_DATA, "input 'splay' must be a number of seconds >= 0")
        splay = min(float(splay), self.splay_max)
        text = read_text(self.server_conf)
        if text is None:
            raise Refusal(
                StatusCode.ABORTED,
                f"refusing to restart {self.identity}: no configuration at {self.server_conf} (run configure first)",
            )
        try:
            config = parse_config(text, source=self.server_conf)
        except ConfigError as exc:
            raise Refusal(StatusCode.ABORTED, f"refusing to restart {self.identity}: {exc}") from None
        if provisioning_enabled(config):
            raise Refusal(
                StatusCode.ABORTED,
                f"refusing to restart {self.identity}: {self.server_conf} leaves {PROVISION_KEY} enabled, the node would come back "
                "in provisioning mode",
            )
        try:
            brokers = normalize_brokers(config.get(MIDDLEWARE_KEY), allow_empty=True)
        except BrokerUrlError as exc:
            raise Refusal(StatusCode.ABORTED, f"refusing to restart {self.identity}: {MIDDLEWARE_KEY}: {exc}") from None
        if not brokers:
            raise Refusal(
                StatusCode.ABORTED,
                f"refusing to restart {self.identity}: {self.server_conf} names no {MIDDLEWARE_KEY} to connect to",
            )
        self.config = config
        return ActionResult(
            rpc_reply_body(
                "restart", data={"message": f"Restarting {self.identity} into configured mode within {splay:.1f}s"}
            ),
            effect="restart",
            delay=splay,
        )

    def reprovision(self, data: dict) -> ActionResult:
        """Turn provisioning back on, keep the certificate files aside, restart into provisioning mode."""
        config = dict(self.config)
        config[PROVISION_KEY] = "true"
        for key in (SECURITY_PROVIDER_KEY, SECURITY_CERT_KEY, SECURITY_KEY_KEY, SECURITY_CA_KEY):
            config.pop(key, None)
        atomic_write(self.server_conf, render_config(config, header="Reprovisioning requested"), mode=0o640)
        previous = self.ssl_path("previous")
        os.makedirs(previous, mode=0o700, exist_ok=True)
        moved = []
        for name in ("certificate.pem", "ca.pem", "private.pem", "csr.pem"):
            if os.path.exists(self.ssl_path(name)):
                os.replace(self.ssl_path(name), os.path.join(previous, name))
                moved.append(name)
        fsync_directory(previous)
        fsync_directory(self.ssldir)
        self.config = config
        self.lock_holder, self.lock_until = "", 0.0
        return ActionResult(
            rpc_reply_body(
                "reprovision",
                data={
                    "message": "Reprovisioning {}; {} kept in {}".format(
                        self.identity, ", ".join(moved) or "no files", previous
                    )
                },
            ),
            effect="reprovision",
            delay=0.2,
        )

    def shutdown(self, data: dict) -> ActionResult:
        return ActionResult(
            rpc_reply_body("shutdown", data={"message": f"Shutting down {self.identity}"}), effect="shutdown", delay=0.2
        )


# ---------------------------------------------------------------------------------------------- files


def write_set(
    node_dir: str, files: list[tuple[str, bytes | str, int]], durable: bool = True, journal: bool = True
) -> None:
    """Write several files as one set: after the process dies at any point the node has the old set or the new.

    ``files.atomic_write_many`` makes each file whole but renames them one by one; for the set, a journal
    naming the staged files is written once they are all on disk, the renames follow, then the journal goes.
    A node that finds a journal at start finishes the renames (``recover_configure``); staged files without
    a journal are an unfinished staging and are deleted. With ``durable`` every file and directory is also
    fsynced (power loss); renames alone already make the set safe against a killed process.
    """
    staged: list[tuple[str, str]] = []
    slow = float(os.environ.get(SLOW_WRITES_ENV, "0") or 0)
    journal_path = os.path.join(node_dir, JOURNAL)
    try:
        for path, data, mode in files:
            if os.path.islink(path):
                raise OSError(f"refusing to write {path}: it is a symbolic link")
            tmp = path + ".staged"
            write_file(tmp, data, mode, durable)
            staged.append((tmp, path))
        if journal:
            write_file(journal_path + ".staged", json.dumps(staged), 0o600, durable)
            os.replace(journal_path + ".staged", journal_path)
            if durable:
                fsync_directory(node_dir)
    except BaseException:
        for tmp, _path in staged:
            remove_quietly(tmp)
        raise
    for tmp, path in staged:
        if slow:
            time.sleep(slow)
        os.replace(tmp, path)
    if durable:
        for directory in sorted({os.path.dirname(p) for _t, p in staged}):
            fsync_directory(directory)
    if journal:
        os.unlink(journal_path)


def recover_configure(node_dir: str) -> str:
    """Finish or discard an interrupted ``write_set``; returns "rolled forward", "discarded" or ""."""
    journal = os.path.join(node_dir, JOURNAL)
    text = read_text(journal)
    outcome = ""
    if text is not None:
        try:
            staged = [(str(t), str(p)) for t, p in json.loads(text)]
        except (ValueError, TypeError):
            staged = []
        for tmp, path in staged:
            if os.path.dirname(os.path.abspath(path)).startswith(os.path.abspath(node_dir)) and os.path.exists(tmp):
                os.replace(tmp, path)
        for directory in sorted({os.path.dirname(p) for _t, p in staged}):
            fsync_directory(directory)
        os.unlink(journal)
        fsync_directory(node_dir)
        outcome = "rolled forward"
    for directory in (node_dir, os.path.join(node_dir, "ssl")):
        try:
            names = os.listdir(directory)
        except OSError:
            continue
        for name in names:
            if name.endswith(".staged"):
                remove_quietly(os.path.join(directory, name))
                outcome = outcome or "discarded"
    return outcome


# ---------------------------------------------------------------------------------------------- crypto


def _need_cryptography() -> None:
    if not HAS_CRYPTOGRAPHY:
        raise Refusal(StatusCode.UNKNOWN_ERROR, "the Python library cryptography is not installed on this node")


_CA_CACHE: dict[str, list] = {}


def _load_ca(pem: str) -> list:
    """Parsed CA bundles, cached: a fleet is configured with the same CA thousands of times."""
    cas = _CA_CACHE.get(pem)
    if cas is None:
        cas = x509.load_pem_x509_certificates(pem.encode("ascii"))
        if len(_CA_CACHE) > 16:
            _CA_CACHE.clear()
        _CA_CACHE[pem] = cas
    return cas


__all__ = [
    "AGENT_VERSION",
    "MODE_CONFIGURED",
    "MODE_PROVISIONING",
    "ActionResult",
    "ProvisionNode",
    "Refusal",
    "recover_configure",
    "write_set",
]
