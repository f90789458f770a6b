# Copyright: zeroinit.bootstrap contributors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)
"""THE provisioning flow: one node from provisioning mode to configured member, and nothing else.

``jwt`` (with a ``jwt_verify_key``) -> ``inventory`` -> ``gencsr`` (the key is made on the node and never
leaves it) -> decide (a decider: a helper program, the built-in signer, or anything with
``async decide(identity, inventory, csr, jwt) -> HelperDecision``) -> ``configure`` -> ``restart``.
:meth:`ProvisioningFlow.run` returns a :class:`NodeOutcome` and never raises for a node's failure. The flow uses
an RPC client it does not own and knows nothing about queues or other nodes: the bulk run (``bulk.py``), the
single-node actions (``actions.py``) and the provisioner service all drive this one implementation.

A node that is locked to its site and still in provisioning mode lost the end of an earlier provisioning (the reply
to its ``configure`` or the ``restart``): it refuses ``gencsr`` and ``configure`` without its site's signature, and
is sent the ``restart`` it missed (see :meth:`ProvisioningFlow._restart_configured`).

The loop guard is the flow's: a decision whose configuration leaves provisioning on fails the node before
``configure``, whoever decided it.

Without PKI (``FlowOptions.pki`` false, Choria's ``features.pki: false``) there is no ``gencsr``: the decider
gets ``csr`` None, a helper's answer needs no certificate, and ``configure`` carries the configuration (and
whatever certificate, CA and ssldir the helper returned, as Choria sends them).

The provisioning JWT, as Choria's provisioner fetches it first (``features.jwt``): with ``jwt_verify_key`` the
node's ``choria_provision#jwt`` is verified (the site's signature, expiry, the node's identity within the JWT's
patterns, its token claim equal to ours) before anything else is asked of it; a node without a valid JWT fails at
step ``jwt`` with the reason, and so never gets a CSR signed. The verified claims are the decider's ``jwt``
(a helper's ``jwt`` input, as Choria's helper contract has it).
"""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..choria.jwt import ProvisioningJwtError, verify_provisioning_jwt
from ..choria.protocol import PROVISION_AGENT
from ..choria.security import refused_as_site_locked
from ..choria.subjects import valid_identity
from .helper import HelperDecision, NodeFailure, check_configuration
from .rpc import RpcClient, RpcError, reply_error

STEPS = ("jwt", "inventory", "gencsr", "decide", "configure", "restart")
CSR_SUBJECT_FIELDS = ("C", "L", "O", "OU", "ST")
PROVISIONED, DEFERRED, FAILED, SHUTDOWN, WOULD_PROVISION = (
    "provisioned",
    "deferred",
    "failed",
    "shutdown",
    "would_provision",
)


class Decider(Protocol):
    """What decides for one node. ``turn()`` bounds how many decisions run at once (a helper is a process each);
    ``finish()`` lets go of what lives in the event loop (persistent helper processes) before it ends."""

    async def decide(
        self, identity: str, inventory: dict, csr: dict | None, jwt: dict | None = None
    ) -> HelperDecision: ...

    def turn(self) -> contextlib.AbstractAsyncContextManager: ...

    def warnings(self) -> list[str]: ...

    async def finish(self) -> None: ...


@dataclass
class FlowOptions:
    """How the flow talks to nodes; field names follow the module's options."""

    token: str = field(default="", repr=False)
    timeout: float = 10.0
    retries: int = 2
    splay: int = 0
    csr_subject: dict = field(default_factory=dict)
    key_type: str = "ec"
    check_mode: bool = False
    pki: bool = True  # ask the node for a CSR (gencsr); Choria's features.pki
    jwt_verify_key: Any = field(default=None, repr=False)  # the site's JWT issuer key; None: no JWT is asked for

    def token_data(self, **extra) -> dict:
        """Request data for a choria_provision action: the token and the inputs that are set."""
        data = {"token": self.token}
        data.update({k: v for k, v in extra.items() if v is not None})
        return data

    def gencsr_data(self, identity: str) -> dict:
        subject = {k: v for k, v in (self.csr_subject or {}).items() if k in CSR_SUBJECT_FIELDS and v}
        data = self.token_data(cn=(self.csr_subject or {}).get("cn") or identity, **subject)
        if self.key_type == "rsa":
            data["key_type"] = "rsa"
        return data

    def configure_data(self, configuration: dict, certificate: Any, ca: Any, ssldir: Any) -> dict:
        return self.token_data(
            config=json.dumps(configuration, sort_keys=True),
            certificate=certificate or None,
            ca=ca or None,
            ssldir=ssldir or None,
        )


@dataclass
class NodeOutcome:
    """How one node's run ended: ``status`` is provisioned, deferred, failed, shutdown or would_provision.

    ``reason`` is the decider's message (deferred, shutdown), the failure, or why a provisioned node was only
    restarted (it held its site's configuration already); ``step`` the step that failed;
    ``timings`` the milliseconds of each step that completed (a refused request completed too).
    """

    identity: str
    status: str
    reason: str = ""
    step: str = ""
    timings: dict = field(default_factory=dict)
    elapsed_ms: float = 0.0


async def ask(
    client: RpcClient,
    options: FlowOptions,
    identity: str,
    action: str,
    data: dict | None = None,
    agent: str = PROVISION_AGENT,
    step: str | None = None,
    timings: dict | None = None,
) -> dict:
    """One request to one node, its reply data; NodeFailure naming the step when it goes unanswered or is refused."""
    step = step or action
    started = time.monotonic()
    try:
        reply = await client.call(
            identity, agent, action, data or {}, timeout=options.timeout, retries=options.retries, step=step
        )
    except RpcError as exc:
        raise NodeFailure(str(exc)) from None
    if timings is not None:
        timings[step] = (time.monotonic() - started) * 1000.0
    if not reply.ok:
        raise NodeFailure(reply_error(reply, step))
    return reply.data


async def verified_jwt_claims(
    client: RpcClient, options: FlowOptions, identity: str, timings: dict | None = None
) -> dict | None:
    """The verified claims of the node's provisioning JWT (None without a ``jwt_verify_key``); NodeFailure naming the
    reason when the node has none or it does not verify."""
    if options.jwt_verify_key is None:
        return None
    reply = await ask(client, options, identity, "jwt", options.token_data(), timings=timings)
    try:
        verified = verify_provisioning_jwt(
            reply.get("jwt"), options.jwt_verify_key, identity, expected_token=options.token
        )
    except ProvisioningJwtError as exc:
        raise NodeFailure(f"jwt: the provisioning JWT of {identity} is refused: {exc.message}") from None
    return verified.claims


class ProvisioningFlow:
    """One node's pipeline over ``client`` (not owned: the caller connects and closes it)."""

    def __init__(self, client: RpcClient, decider: Decider | None, options: FlowOptions):
        self.client = client
        self.decider = decider
        self.options = options

    async def run(self, identity: str) -> NodeOutcome:
        started = time.monotonic()
        timings: dict[str, float] = {}
        step = "identity"

        def outcome(status: str, reason: str = "", failed_step: str = "") -> NodeOutcome:
            elapsed = (time.monotonic() - started) * 1000.0
            return NodeOutcome(identity, status, reason, failed_step, timings, elapsed)

        async def node_ask(action: str, data: dict | None = None, agent: str = PROVISION_AGENT) -> dict:
            return await ask(self.client, self.options, identity, action, data, agent, timings=timings)

        try:
            if not valid_identity(identity):
                raise NodeFailure(f"identity {identity!r} is not a valid node name")
            step = "jwt"
            claims = await verified_jwt_claims(self.client, self.options, identity, timings)
            step = "inventory"
            inventory = await node_ask("inventory", agent="rpcutil")
            if self.options.check_mode:
                return outcome(WOULD_PROVISION)
            csr = None
            if self.options.pki:
                step = "gencsr"
                csr = await node_ask("gencsr", self.options.gencsr_data(identity))
                if not isinstance(csr.get("csr"), str) or "CERTIFICATE REQUEST" not in csr.get("csr", ""):
                    raise NodeFailure(f"gencsr: {identity} replied without a PEM CSR")
            step = "decide"
            decision = await self._decide(identity, inventory, csr, claims, timings)
            if decision.defer:
                return outcome(DEFERRED, decision.msg)
            if decision.shutdown:
                step = "shutdown"
                await node_ask("shutdown", self.options.token_data())
                return outcome(SHUTDOWN, decision.msg)
            check_configuration(identity, decision.configuration)
            step = "configure"
            ssldir = decision.ssldir or (csr or {}).get("ssldir") or None
            await node_ask(
                "configure",
                self.options.configure_data(decision.configuration, decision.certificate, decision.ca, ssldir),
            )
            step = "restart"
            await node_ask("restart", self.options.token_data(splay=self.options.splay))
            return outcome(PROVISIONED)
        except NodeFailure as exc:
            if step in ("gencsr", "configure") and refused_as_site_locked(str(exc)):
                return await self._restart_configured(exc, node_ask, outcome)
            return outcome(FAILED, str(exc), step)

    async def _restart_configured(self, refused: NodeFailure, node_ask, outcome) -> NodeOutcome:
        """Finish a provisioning whose end was lost. A node in provisioning mode that refuses ``gencsr`` or
        ``configure`` because it is locked to its site took its site's ``configure`` already (that is what locked
        it), but the reply or the ``restart`` after it was lost, a broker restart for one. The restart it never got
        moves it into that configuration. ``restart`` is no locked action and keeps its loop guard: a node sent
        back (``reprovision``) or holding no configuration refuses it, and fails with both reasons."""
        try:
            await node_ask("restart", self.options.token_data(splay=self.options.splay))
        except NodeFailure as again:
            return outcome(
                FAILED, f"{refused}; restarting it into a configuration of its site was refused too: {again}", "restart"
            )
        return outcome(PROVISIONED, f"already configured by its site, restarted into that configuration ({refused})")

    async def _decide(
        self, identity: str, inventory: dict, csr: dict | None, claims: dict | None, timings: dict
    ) -> HelperDecision:
        if self.decider is None:
            raise NodeFailure(f"no helper and no signer: nothing can decide for {identity}")
        async with self.decider.turn():
            started = time.monotonic()  # the decision itself, not the wait for a turn
            try:
                return await self.decider.decide(identity, inventory, csr, claims)
            finally:
                timings["decide"] = (time.monotonic() - started) * 1000.0
