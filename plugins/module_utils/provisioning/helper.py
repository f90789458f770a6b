# Copyright: zeroinit.bootstrap contributors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)
"""Choria's provisioning helper contract: what a helper is given on stdin and what it must print.

A helper is any program. For each node it reads one JSON document on stdin::

    {"identity": "...", "csr": {"csr": "...", "public_key": "...", "ssldir": "..."} | null,
     "ed25519_pubkey": null, "inventory": "<rpcutil#inventory reply data as a JSON string>",
     "jwt": {<the node's verified provisioning-JWT claims>} | null}

and prints one JSON document::

    {"defer": bool, "shutdown": bool, "msg": "...", "certificate": "PEM", "ca": "PEM", "ssldir": "...",
     "configuration": {"key": "value", ...}}

With PKI (a CSR was asked for, ``csr`` is set) the certificate and CA are required; without (Choria's
``features.pki: false``, ``csr`` null) they are optional, as a Choria helper that only configures returns none.

Pure Python (asyncio subprocesses). ``HelperDecision`` is also what the built-in signer decides (``deciders.py``).
"""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import shutil
import signal
from dataclasses import dataclass, field
from typing import Any

from ..choria.config import FALSE_WORDS, PROVISION_KEY, ConfigError, provisioning_enabled
from ..choria.renewal import RenewalSettings
from ..common.deps import HAS_CRYPTOGRAPHY, x509
from ..pki.x509 import certificate_matches_csr

DEFAULT_HELPER_TIMEOUT = 10.0
# oneshot: a process per node, Choria's contract; persistent: long-lived processes, a line per node (helper_pool.py)
ONESHOT, PERSISTENT = "oneshot", "persistent"
HELPER_MODES = (ONESHOT, PERSISTENT)
STDERR_TAIL = 2000
# Choria's configure inputs are at most 2 KiB of configuration, 10 KiB of certificate and 20 KiB of CA; a helper
# printing more than this is killed, so a thousand helpers at once cannot fill the provisioner's memory.
MAX_HELPER_OUTPUT = 1024 * 1024
STDERR_KEPT = 64 * 1024  # the tail of stderr kept for the error message

# Fields a Choria helper may return that this provisioner does not act on (JWT/ed25519 and policy features).
IGNORED_CHORIA_FIELDS = ("server_claims", "action_policies", "opa_policies", "key", "ecdh_public", "server_jwt")
KNOWN_FIELDS = ("defer", "shutdown", "msg", "certificate", "ca", "ssldir", "configuration")


class NodeFailure(Exception):
    """One node could not be provisioned; the text says which step and why."""


@dataclass
class HelperDecision:
    """What to do with one node: defer, shut it down, or configure it with this certificate and config."""

    defer: bool = False
    shutdown: bool = False
    msg: str = ""
    certificate: str = ""
    ca: str = ""
    ssldir: str = ""
    configuration: dict = field(default_factory=dict)
    ignored: tuple = ()


def helper_argv(helper: Any) -> list[str]:
    """A helper given as a list (argv) or a string (split like a shell would, without a shell)."""
    if isinstance(helper, str):
        argv = shlex.split(helper)
    elif isinstance(helper, (list, tuple)):
        argv = [str(part) for part in helper]
    else:
        raise ValueError("helper must be a string or a list of arguments")
    if not argv or not argv[0]:
        raise ValueError("helper is empty")
    program = argv[0]
    resolved = program if os.sep in program else shutil.which(program)
    if not resolved or not os.path.isfile(resolved) or not os.access(resolved, os.X_OK):
        raise ValueError(f"helper program {program!r} is not an executable file")
    return [resolved, *argv[1:]]


def helper_request(identity: str, csr: dict | None, inventory: Any, jwt: dict | None = None) -> dict:
    """The document a helper reads on stdin (Choria's field names and shapes); ``jwt`` is the node's verified
    provisioning-JWT claims object, as Choria passes them (not the token's text), or None."""
    csr_doc = None
    if csr:
        csr_doc = {"csr": csr.get("csr", ""), "public_key": csr.get("public_key", ""), "ssldir": csr.get("ssldir", "")}
    inventory_text = inventory if isinstance(inventory, str) else json.dumps(inventory or {}, sort_keys=True)
    return {"identity": identity, "csr": csr_doc, "ed25519_pubkey": None, "inventory": inventory_text, "jwt": jwt}


def merge_configuration(base: dict | None, decided: dict | None) -> dict:
    """The base configuration with the helper's or policy's keys on top (they win)."""
    merged = {str(k): str(v) for k, v in (base or {}).items()}
    merged.update(decided or {})
    return merged


def stderr_tail(text: str) -> str:
    """The end of a helper's stderr for an error message ("(empty)" when it printed nothing)."""
    text = (text or "").strip()
    return text[-STDERR_TAIL:] if text else "(empty)"


def json_object(text: str) -> tuple[dict | None, str]:
    """The JSON object ``text`` holds, or None and why not; never raises (deep nesting included)."""
    try:
        doc = json.loads(text)
    except (ValueError, RecursionError) as exc:
        return None, f"is not JSON ({str(exc)[:200] or type(exc).__name__})"
    if not isinstance(doc, dict):
        return None, f"is a JSON {type(doc).__name__}, not an object"
    return doc, ""


def parse_helper_output(
    identity: str, returncode: int, stdout: str, stderr: str, require_certificate: bool = True
) -> HelperDecision:
    """Judge a one-shot helper's exit and output for one node. Raises NodeFailure with the helper's stderr in the
    text. ``require_certificate``: see :func:`helper_decision`."""
    if returncode != 0:
        raise NodeFailure(f"helper exited with status {returncode} for {identity}; stderr: {stderr_tail(stderr)}")
    text = (stdout or "").strip()
    if not text:
        raise NodeFailure(f"helper printed nothing for {identity}; stderr: {stderr_tail(stderr)}")
    doc, problem = json_object(text)
    if doc is None:
        raise NodeFailure(f"helper output for {identity} {problem}; stderr: {stderr_tail(stderr)}")
    return helper_decision(identity, doc, stderr, require_certificate)


def helper_decision(identity: str, doc: dict, stderr: str, require_certificate: bool = True) -> HelperDecision:
    """Judge a helper's answer (a JSON object, however it came: one-shot or persistent). Raises NodeFailure with the
    helper's stderr in the text.

    ``require_certificate`` false (no PKI): ``certificate`` and ``ca`` may be absent or empty; when given they
    must still be PEM certificates."""
    ignored = tuple(sorted(k for k in doc if k not in KNOWN_FIELDS and doc[k] not in (None, "", {}, [])))
    msg = doc.get("msg") if isinstance(doc.get("msg"), str) else ""
    if doc.get("defer") is True:
        return HelperDecision(defer=True, msg=msg or "deferred by helper", ignored=ignored)
    if doc.get("shutdown") is True:
        return HelperDecision(shutdown=True, msg=msg or "shutdown requested by helper", ignored=ignored)
    configuration = doc.get("configuration")
    if not isinstance(configuration, dict) or not configuration:
        said = f" (helper's msg: {msg[:STDERR_TAIL]})" if msg else ""
        raise NodeFailure(
            f"helper returned no configuration for {identity} (field 'configuration' must be an object of "
            f"strings){said}; stderr: {stderr_tail(stderr)}"
        )
    for key, value in configuration.items():
        if not isinstance(value, str):
            raise NodeFailure(
                f"helper configuration for {identity}: value of {key!r} must be a string, got {type(value).__name__}"
            )
    certificate = _pem_field(doc, "certificate", "certificate", identity, stderr, require_certificate)
    ca = _pem_field(doc, "ca", "CA", identity, stderr, require_certificate)
    ssldir = doc.get("ssldir") if isinstance(doc.get("ssldir"), str) else ""
    return HelperDecision(
        msg=msg, certificate=certificate, ca=ca, ssldir=ssldir, configuration=dict(configuration), ignored=ignored
    )


def _pem_field(doc: dict, name: str, what: str, identity: str, stderr: str, required: bool) -> str:
    value = doc.get(name)
    if not required and value in (None, ""):
        return ""
    if not isinstance(value, str) or not value.lstrip().startswith("-----BEGIN CERTIFICATE-----"):
        raise NodeFailure(
            f"helper returned no PEM {what} for {identity} (field {name!r}); stderr: {stderr_tail(stderr)}"
        )
    return value


def certificate_problem(certificate_pem: str, csr_pem: str) -> str:
    """Why a helper's certificate cannot serve the node ("" when it can): it must parse and carry the CSR's key."""
    if not HAS_CRYPTOGRAPHY:
        return ""
    try:
        cert = x509.load_pem_x509_certificate(certificate_pem.encode("ascii"))
    except (ValueError, UnicodeError) as exc:
        return f"the certificate does not parse ({exc})"
    try:
        csr = x509.load_pem_x509_csr(csr_pem.encode("ascii"))
    except (ValueError, UnicodeError) as exc:
        return f"the node's CSR does not parse ({exc})"
    if not certificate_matches_csr(cert, csr):
        return "the certificate does not carry the public key of the node's CSR"
    return ""


def check_configuration(identity: str, configuration: dict) -> None:
    """Refuse a configuration that would put the node straight back into provisioning mode, or that the node could
    not renew its certificate with (``plugin.zeroinit.renewal.*``)."""
    if provisioning_enabled(configuration):
        raise NodeFailure(
            f"configuration for {identity} leaves provisioning on: {PROVISION_KEY} must be an explicit false "
            f"({', '.join(FALSE_WORDS)}; got {configuration.get(PROVISION_KEY)!r}); "
            "refusing to configure a node that would loop back into provisioning"
        )
    try:
        RenewalSettings.from_config(configuration)
    except ConfigError as exc:
        raise NodeFailure(f"configuration for {identity}: {exc}") from None


def kill_group(proc) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        try:
            proc.kill()
        except ProcessLookupError:
            pass


async def run_helper(
    argv: list[str], request: dict, timeout: float = DEFAULT_HELPER_TIMEOUT, env: dict | None = None
) -> HelperDecision:
    """Run the helper for one node; kill it (and its children) when it runs past ``timeout`` seconds.

    The answer needs a certificate when the request carries a CSR (see :func:`parse_helper_output`)."""
    identity = request.get("identity", "?")
    payload = json.dumps(request).encode("utf-8")
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
            env=env,
        )
    except OSError as exc:
        raise NodeFailure(f"helper {argv[0]} could not be started for {identity}: {exc}") from None
    stdout, stderr = bytearray(), bytearray()
    too_much = asyncio.Event()

    async def _drain_stdout() -> None:
        # Past the cap the helper is killed and the rest is read and dropped to the pipe's end: a pipe left unread
        # stays paused, never sees its end, and the process is never waited for.
        while True:
            chunk = await proc.stdout.read(65536)
            if not chunk:
                return
            if too_much.is_set():
                continue
            if len(stdout) + len(chunk) > MAX_HELPER_OUTPUT:
                too_much.set()
                kill_group(proc)
                continue
            stdout.extend(chunk)

    async def _drain_stderr() -> None:
        while True:
            chunk = await proc.stderr.read(65536)
            if not chunk:
                return
            stderr.extend(chunk)
            del stderr[:-STDERR_KEPT]

    async def _converse() -> None:
        # Read both pipes into buffers we keep: on a timeout the stderr gathered so far goes into the error.
        readers = asyncio.gather(_drain_stdout(), _drain_stderr())
        try:
            proc.stdin.write(payload)
            await proc.stdin.drain()
        except (BrokenPipeError, ConnectionResetError):
            pass  # a helper may exit without reading stdin; its exit status and output decide
        finally:
            proc.stdin.close()
        await readers
        await proc.wait()

    try:
        await asyncio.wait_for(_converse(), timeout)
    except asyncio.TimeoutError:
        kill_group(proc)
        await proc.wait()
        raise NodeFailure(
            f"helper ran longer than {timeout:g}s for {identity} and was killed; "
            f"stderr: {stderr_tail(stderr.decode('utf-8', 'replace'))}"
        ) from None
    except BaseException:
        kill_group(proc)
        await proc.wait()
        raise
    if too_much.is_set():
        raise NodeFailure(
            f"helper printed more than {MAX_HELPER_OUTPUT} bytes for {identity} and was killed; "
            f"stderr: {stderr_tail(stderr.decode('utf-8', 'replace'))}"
        )
    return parse_helper_output(
        identity,
        proc.returncode,
        stdout.decode("utf-8", "replace"),
        stderr.decode("utf-8", "replace"),
        require_certificate=request.get("csr") is not None,
    )
