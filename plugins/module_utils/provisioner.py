# Copyright: zeroinit.bootstrap contributors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)
"""The controller-side provisioner: takes nodes in provisioning mode to configured members.

Per node: ``rpcutil#inventory`` -> ``choria_provision#gencsr`` (the key is made on the node and never leaves
it) -> decide (a Choria-contract helper program, or the in-process policy signer) -> ``configure`` ->
``restart``. Thousands of nodes run through one RPC client (one reply subscription) with ``workers``
pipelines in flight; helpers run as asyncio subprocesses, signing runs inline (EC signing is sub-millisecond).
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import time
from dataclasses import dataclass, field
from typing import Any

from .choria.brokers import BrokerUrlError, normalize_brokers
from .choria.config import PROVISION_KEY
from .choria.events import parse_lifecycle_event
from .choria.filters import identity_filter
from .choria.protocol import ProtocolError
from .choria.subjects import PROVISIONING_COLLECTIVE, REGISTRATION_SUBJECT, lifecycle_subject, valid_identity
from .choria.transport import ConnectError, tls_context
from .common.deps import HAS_CRYPTOGRAPHY, x509
from .pki.issuance import signer_from_params
from .pki.policy import DEFAULT_VALID_DAYS, PolicyError
from .pki.x509 import PkiError, certificate_matches_csr
from .provision_helper import (
    DEFAULT_HELPER_TIMEOUT,
    Decision,
    NodeFailure,
    check_configuration,
    helper_argv,
    helper_request,
    merge_configuration,
    run_helper,
)
from .rpc import RpcClient, RpcError, reply_error

PROVISION_AGENT = "choria_provision"
STEPS = ("inventory", "gencsr", "decide", "configure", "restart")
SINGLE_ACTIONS = ("inventory", "gencsr", "configure", "restart", "reprovision", "shutdown")
CHANGING_ACTIONS = ("gencsr", "configure", "restart", "reprovision", "shutdown")
CSR_SUBJECT_FIELDS = ("C", "L", "O", "OU", "ST")
# Above this many wanted identities, discover everyone and intersect locally: an identity filter is
# evaluated by every node against every listed identity (O(n^2) across the fleet).
IDENTITY_FILTER_LIMIT = 64
REDISCOVER_INTERVAL = 5.0


class ProvisionError(Exception):
    """The run as a whole cannot proceed (bad options, broker unreachable, signer unusable)."""


@dataclass
class ProvisionSettings:
    """Everything a provisioning run needs; field names follow the module's options."""

    brokers: list
    token: str = ""
    collective: str = PROVISIONING_COLLECTIVE
    callerid: str = "zeroinit-provisioner"
    timeout: float = 10.0
    retries: int = 2
    workers: int = 500
    wait: float = 0.0
    expect: int | None = None
    discovery_timeout: float = 2.0
    splay: int = 0
    identities: list | None = None
    helper: Any = None
    helper_timeout: float = DEFAULT_HELPER_TIMEOUT
    helper_concurrency: int = 0
    signer: dict | None = None
    configuration: dict = field(default_factory=dict)
    csr_subject: dict = field(default_factory=dict)
    key_type: str = "ec"
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    check_mode: bool = False


def percentile(sorted_values: list, fraction: float) -> float:
    """Nearest-rank percentile of an already sorted list (0 for an empty one)."""
    if not sorted_values:
        return 0.0
    rank = max(0, min(len(sorted_values) - 1, math.ceil(round(fraction * len(sorted_values), 9)) - 1))
    return round(sorted_values[rank], 1)


def summarize_ms(values: list) -> dict:
    ordered = sorted(values)
    return {"count": len(ordered), "p50_ms": percentile(ordered, 0.50), "p99_ms": percentile(ordered, 0.99)}


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


class PolicySigner:
    """The built-in decision: the collection's ``pki.Signer`` with a CA and a ``CsrPolicy``.

    Configuration = the run's base configuration, ``identity`` set to the node and provisioning forced off.
    """

    def __init__(self, settings: dict, base_configuration: dict):
        self.valid_days = settings.get("valid_days") or DEFAULT_VALID_DAYS
        self.profile = settings.get("profile") or "both"
        self.base = dict(base_configuration or {})
        try:
            self.signer, self.ca_created = signer_from_params(settings)
        except KeyError as exc:
            raise ProvisionError(f"signer: option {exc} is required") from None
        except (PkiError, OSError, ValueError, TypeError) as exc:
            raise ProvisionError(f"signer: {exc}") from None
        self.ca = self.signer.ca
        self.warnings = list(getattr(self.ca, "warnings", []) or [])

    def decide(self, identity: str, csr: dict) -> Decision:
        try:
            issued = self.signer.sign(csr.get("csr", ""), identity, valid_days=self.valid_days, profile=self.profile)
        except PolicyError as exc:
            raise NodeFailure(f"signer refused the CSR of {identity}: {exc}") from None
        except PkiError as exc:
            raise NodeFailure(f"signer could not sign the CSR of {identity}: {exc}") from None
        configuration = dict(self.base)
        configuration["identity"] = identity
        configuration[PROVISION_KEY] = "false"
        return Decision(
            certificate=issued.certificate,
            ca=issued.ca,
            ssldir=csr.get("ssldir", ""),
            configuration=configuration,
            msg=f"signed serial {issued.serial_hex}",
        )


class ChoriaProvisioner:
    """One provisioning run (``provision``) or one single-node action, over one RPC client."""

    def __init__(self, settings: ProvisionSettings, signer: PolicySigner | None = None):
        self.s = settings
        try:
            self.brokers = normalize_brokers(settings.brokers)
        except BrokerUrlError as exc:
            raise ProvisionError(f"brokers: {exc}") from None
        self.helper_argv: list[str] | None = None
        if settings.helper is not None and settings.helper != "" and settings.helper != []:
            if settings.signer:
                raise ProvisionError("helper and signer are mutually exclusive")
            try:
                self.helper_argv = helper_argv(settings.helper)
            except ValueError as exc:
                raise ProvisionError(f"helper: {exc}") from None
        self.signer = signer
        self.client: RpcClient | None = None
        self.provisioned: list[str] = []
        self.deferred: dict[str, str] = {}
        self.failed: dict[str, str] = {}
        self.shutdown: dict[str, str] = {}
        self.absent: list[str] = []
        self.would_provision: list[str] = []
        self.discovered: set[str] = set()
        self.ignored_fields: dict[str, int] = {}
        self.step_ms: dict[str, list] = {step: [] for step in STEPS}
        self.node_ms: list[float] = []
        self.warnings: list[str] = []
        self._queue: asyncio.Queue | None = None
        self._expect_met: asyncio.Event | None = None
        self._helper_slots: asyncio.Semaphore | None = None

    # ----------------------------------------------------------------------------------------- plumbing

    def _client(self) -> RpcClient:
        try:
            tls = tls_context(self.s.tls_ca, self.s.tls_cert, self.s.tls_key)
        except (OSError, ValueError) as exc:
            raise ProvisionError(f"broker TLS options: {exc}") from None
        return RpcClient(self.brokers, callerid=self.s.callerid, collective=self.s.collective, tls=tls)

    async def _rpc(
        self,
        identity: str,
        action: str,
        data: dict | None = None,
        agent: str = PROVISION_AGENT,
        step: str | None = None,
    ) -> dict:
        step = step or action
        started = time.monotonic()
        try:
            reply = await self.client.call(
                identity, agent, action, data or {}, timeout=self.s.timeout, retries=self.s.retries, step=step
            )
        except RpcError as exc:
            raise NodeFailure(str(exc)) from None
        if step in self.step_ms:
            self.step_ms[step].append((time.monotonic() - started) * 1000.0)
        if not reply.ok:
            raise NodeFailure(reply_error(reply, step))
        return reply.data

    def _token_data(self, **extra) -> dict:
        data = {"token": self.s.token}
        data.update({k: v for k, v in extra.items() if v is not None})
        return data

    def gencsr_data(self, identity: str) -> dict:
        subject = {k: v for k, v in (self.s.csr_subject or {}).items() if k in CSR_SUBJECT_FIELDS and v}
        data = self._token_data(cn=(self.s.csr_subject or {}).get("cn") or identity, **subject)
        if self.s.key_type == "rsa":
            data["key_type"] = "rsa"
        return data

    # ----------------------------------------------------------------------------------------- one node

    async def decide(self, identity: str, inventory: dict, csr: dict) -> Decision:
        if self.helper_argv is not None:
            async with self._helper_slots:
                started = time.monotonic()  # time the helper itself, not the wait for a free slot
                try:
                    decision = await run_helper(
                        self.helper_argv, helper_request(identity, csr, inventory), timeout=self.s.helper_timeout
                    )
                finally:
                    self.step_ms["decide"].append((time.monotonic() - started) * 1000.0)
            for name in decision.ignored:
                self.ignored_fields[name] = self.ignored_fields.get(name, 0) + 1
            if not (decision.defer or decision.shutdown):
                decision.configuration = merge_configuration(self.s.configuration, decision.configuration)
                check_configuration(identity, decision.configuration)
                # A certificate for another key would leave the node unable to use it after restart.
                problem = certificate_problem(decision.certificate, csr.get("csr", ""))
                if problem:
                    raise NodeFailure(f"helper answer for {identity} refused: {problem}")
            return decision
        if self.signer is None:
            raise NodeFailure(f"no helper and no signer: nothing can decide for {identity}")
        started = time.monotonic()
        try:
            decision = self.signer.decide(identity, csr)
        finally:
            self.step_ms["decide"].append((time.monotonic() - started) * 1000.0)
        check_configuration(identity, decision.configuration)
        return decision

    async def provision_node(self, identity: str) -> None:
        """The whole pipeline for one node; the outcome lands in exactly one of the result collections."""
        started = time.monotonic()
        try:
            if not valid_identity(identity):
                raise NodeFailure(f"identity {identity!r} is not a valid node name")
            inventory = await self._rpc(identity, "inventory", agent="rpcutil")
            if self.s.check_mode:
                self.would_provision.append(identity)
                return
            csr = await self._rpc(identity, "gencsr", self.gencsr_data(identity))
            if not isinstance(csr.get("csr"), str) or "CERTIFICATE REQUEST" not in csr.get("csr", ""):
                raise NodeFailure(f"gencsr: {identity} replied without a PEM CSR")
            decision = await self.decide(identity, inventory, csr)
            if decision.defer:
                self.deferred[identity] = decision.msg
                return
            if decision.shutdown:
                await self._rpc(identity, "shutdown", self._token_data())
                self.shutdown[identity] = decision.msg
                return
            await self._rpc(
                identity,
                "configure",
                self._token_data(
                    config=json.dumps(decision.configuration, sort_keys=True),
                    certificate=decision.certificate,
                    ca=decision.ca,
                    ssldir=decision.ssldir or csr.get("ssldir") or None,
                ),
            )
            await self._rpc(identity, "restart", self._token_data(splay=self.s.splay))
            self.provisioned.append(identity)
            self.node_ms.append((time.monotonic() - started) * 1000.0)
            if self.s.expect and len(self.provisioned) >= self.s.expect and self._expect_met is not None:
                self._expect_met.set()
        except NodeFailure as exc:
            self.failed[identity] = str(exc)

    # ----------------------------------------------------------------------------------------- many nodes

    def _wanted(self) -> set | None:
        return set(self.s.identities) if self.s.identities else None

    def admit(self, identity: str, wanted: set | None) -> None:
        if identity in self.discovered or (wanted is not None and identity not in wanted):
            return
        self.discovered.add(identity)
        self._queue.put_nowait(identity)

    async def _worker(self) -> None:
        while True:
            identity = await self._queue.get()
            try:
                if not (self.s.expect and len(self.provisioned) >= self.s.expect):
                    await self.provision_node(identity)
            except Exception as exc:  # pylint: disable=broad-except
                # One node's unexpected error must not take the other pipelines down with it.
                self.failed[identity] = "unexpected error: %s" % (exc or type(exc).__name__)
            finally:
                self._queue.task_done()

    async def _listen(self, wanted: set | None) -> list:
        """Startup lifecycle events and registration data announce nodes that boot during the wait window."""

        async def on_event(msg) -> None:
            try:
                identity = parse_lifecycle_event(msg.data).get("identity", "")
            except ProtocolError:
                return
            if valid_identity(identity):
                self.admit(identity, wanted)

        async def on_registration(msg) -> None:
            try:
                identity = json.loads(msg.data).get("identity", "")
            except (ValueError, AttributeError):
                return
            if valid_identity(identity):
                self.admit(identity, wanted)

        nc = self.client.nc
        subs = [
            await nc.subscribe(lifecycle_subject("startup"), cb=on_event),
            await nc.subscribe(REGISTRATION_SUBJECT, cb=on_registration),
            await nc.subscribe(REGISTRATION_SUBJECT + ".>", cb=on_registration),
        ]
        await nc.flush()
        return subs

    async def _discover(self, wanted: set | None, expect: int | None) -> list[str]:
        flt = identity_filter(sorted(wanted)) if wanted and len(wanted) <= IDENTITY_FILTER_LIMIT else None
        if wanted and expect is None:
            expect = len(wanted)
        return await self.client.discover(timeout=self.s.discovery_timeout, expect=expect, flt=flt)

    async def provision(self) -> dict:
        """Discover (and, with ``wait``, keep listening), run every node's pipeline, return the outcome."""
        started = time.monotonic()
        wanted = self._wanted()
        if self.helper_argv is not None:
            self._helper_slots = asyncio.Semaphore(
                self.s.helper_concurrency or max(2, min(self.s.workers, 4 * (os.cpu_count() or 1)))
            )
        if self.signer is not None:
            self.warnings.extend(getattr(self.signer, "warnings", []))
        self._queue = asyncio.Queue()
        self._expect_met = asyncio.Event()
        self.client = self._client()
        try:
            await self.client.connect()
        except (ConnectError, RpcError) as exc:
            raise ProvisionError(str(exc)) from None
        subs: list = []
        workers: list = []
        try:
            if self.s.wait > 0:
                subs = await self._listen(wanted)
            for identity in await self._discover(wanted, self.s.expect):
                self.admit(identity, wanted)
            discovery_s = time.monotonic() - started
            workers = [asyncio.ensure_future(self._worker()) for _slot in range(max(1, self.s.workers))]
            deadline = started + self.s.wait
            while not self._expect_met.is_set():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    await asyncio.wait_for(self._expect_met.wait(), min(remaining, REDISCOVER_INTERVAL))
                except asyncio.TimeoutError:
                    # Nodes whose startup event we missed (booted before we subscribed) answer discovery.
                    if deadline - time.monotonic() > 0:
                        for identity in await self._discover(wanted, None):
                            self.admit(identity, wanted)
            await self._queue.join()
        finally:
            for task in workers:
                task.cancel()
            if workers:
                await asyncio.gather(*workers, return_exceptions=True)
            for sub in subs:
                try:
                    await sub.unsubscribe()
                except Exception:  # pylint: disable=broad-except
                    pass
            await self.client.close()
        if wanted:
            self.absent = sorted(wanted - self.discovered)
        return self.result(time.monotonic() - started, discovery_s)

    def result(self, total_s: float, discovery_s: float = 0.0) -> dict:
        for name, count in sorted(self.ignored_fields.items()):
            self.warnings.append(
                "helper returned the Choria field %r for %d node(s); this provisioner ignores it" % (name, count)
            )
        done = len(self.provisioned)
        timings = {name: summarize_ms(values) for name, values in self.step_ms.items() if values}
        timings["node"] = summarize_ms(self.node_ms)
        timings["discovery_seconds"] = round(discovery_s, 3)
        timings["total_seconds"] = round(total_s, 3)
        timings["nodes_per_second"] = round(done / total_s, 1) if total_s > 0 else 0.0
        out = {
            "changed": bool(self.provisioned or self.shutdown),
            "provisioned": sorted(self.provisioned),
            "deferred": dict(sorted(self.deferred.items())),
            "failed": dict(sorted(self.failed.items())),
            "shutdown": dict(sorted(self.shutdown.items())),
            "absent": list(self.absent),
            "counts": {
                "discovered": len(self.discovered),
                "provisioned": done,
                "deferred": len(self.deferred),
                "failed": len(self.failed),
                "shutdown": len(self.shutdown),
            },
            "timings": timings,
            "warnings": list(self.warnings),
        }
        if self.s.check_mode:
            out["would_provision"] = sorted(self.would_provision)
            out["changed"] = bool(self.would_provision)
        return out

    # ----------------------------------------------------------------------------------------- one action

    def action_data(self, action: str, params: dict) -> dict:
        """The request data for a single-node action (token added for choria_provision actions)."""
        identity = params["identity"]
        if action == "inventory":
            return {}
        if action == "gencsr":
            return self.gencsr_data(identity)
        if action == "configure":
            configuration = merge_configuration(self.s.configuration, {})
            check_configuration(identity, configuration)
            return self._token_data(
                config=json.dumps(configuration, sort_keys=True),
                certificate=params.get("certificate") or None,
                ca=params.get("ca") or None,
                ssldir=params.get("ssldir") or None,
            )
        if action == "restart":
            return self._token_data(splay=self.s.splay)
        return self._token_data()

    async def single(self, action: str, identity: str, params: dict | None = None) -> dict:
        """One action on one node. In check mode only read-only requests go out (a ping proves reachability)."""
        if action not in SINGLE_ACTIONS:
            raise ProvisionError("action {!r} is not one of {}".format(action, ", ".join(SINGLE_ACTIONS)))
        if not valid_identity(identity):
            raise ProvisionError(f"identity {identity!r} is not a valid node name")
        params = dict(params or {})
        params["identity"] = identity
        try:
            data = self.action_data(action, params)
        except NodeFailure as exc:
            raise ProvisionError(str(exc)) from None
        self.client = self._client()
        try:
            await self.client.connect()
        except (ConnectError, RpcError) as exc:
            raise ProvisionError(str(exc)) from None
        try:
            if action == "inventory":
                return {
                    "changed": False,
                    "identity": identity,
                    "data": await self._rpc(identity, "inventory", agent="rpcutil"),
                }
            if self.s.check_mode:
                await self._rpc(identity, "ping", agent="rpcutil", step="ping")
                return {
                    "changed": True,
                    "identity": identity,
                    "data": {},
                    "msg": f"{action} would be sent to {identity}",
                }
            return {"changed": True, "identity": identity, "data": await self._rpc(identity, action, data)}
        except NodeFailure as exc:
            raise ProvisionError(str(exc)) from None
        finally:
            await self.client.close()


def build_signer(settings: ProvisionSettings) -> PolicySigner | None:
    """The in-process signer; never in check mode (loading with create_ca would write a CA)."""
    if not settings.signer or settings.check_mode:
        return None
    return PolicySigner(settings.signer, settings.configuration)


def provision(settings: ProvisionSettings) -> dict:
    """Synchronous entry point for a bulk run (the module, playbooks, benchmarks)."""
    provisioner = ChoriaProvisioner(settings, build_signer(settings))
    return asyncio.run(provisioner.provision())


def run_action(settings: ProvisionSettings, action: str, identity: str, params: dict | None = None) -> dict:
    provisioner = ChoriaProvisioner(settings)
    return asyncio.run(provisioner.single(action, identity, params))
