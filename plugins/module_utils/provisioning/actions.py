# Copyright: zeroinit.bootstrap contributors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)
"""Single-node actions (``choria_provision`` with ``identity``): one request to one node, its reply data.

In check mode only read-only requests go out (``rpcutil#ping`` proves the node is reachable). ``configure``
sends the base configuration, which must pass the loop guard. With ``jwt_verify_key``, ``gencsr`` and
``configure`` go out only after the node's provisioning JWT verified (as in the flow): a node without a valid JWT
never gets a key pair made for a certificate, nor a certificate installed.
"""

from __future__ import annotations

import asyncio
from typing import Callable

from ..choria.subjects import valid_identity
from ..choria.transport import ConnectError
from .flow import (
    DEFERRED,
    FAILED,
    PROVISIONED,
    SHUTDOWN,
    WOULD_PROVISION,
    NodeOutcome,
    ProvisioningFlow,
    ask,
    verified_jwt_claims,
)
from .helper import NodeFailure, check_configuration, merge_configuration
from .rpc import RpcClient, RpcError
from .settings import ProvisionError, ProvisionSettings

NODE_OUTCOME_MESSAGES = {
    PROVISIONED: "provisioned",
    WOULD_PROVISION: "would be provisioned",
    DEFERRED: "deferred",
    SHUTDOWN: "shut down",
    FAILED: "failed",
}
SINGLE_ACTIONS = ("inventory", "gencsr", "configure", "restart", "reprovision", "shutdown", "destroy")
JWT_CHECKED_ACTIONS = ("gencsr", "configure")


def action_data(settings: ProvisionSettings, action: str, identity: str, params: dict) -> dict:
    """The request data for a single-node action (token added for choria_provision actions)."""
    options = settings.flow_options()
    if action == "inventory":
        return {}
    if action == "gencsr":
        return options.gencsr_data(identity)
    if action == "configure":
        configuration = merge_configuration(settings.configuration, {})
        check_configuration(identity, configuration)
        return options.configure_data(
            configuration, params.get("certificate") or None, params.get("ca") or None, params.get("ssldir") or None
        )
    if action == "restart":
        return options.token_data(splay=settings.splay)
    if action == "destroy":
        return options.token_data(after=params.get("after") or "reprovision")
    return options.token_data()


async def connected_client(
    settings: ProvisionSettings, client_factory: Callable[[], RpcClient] | None = None
) -> RpcClient:
    """A client of the settings' brokers, connected; ProvisionError when no broker can be reached."""
    client = (client_factory or settings.client)()
    try:
        await client.connect()
    except (ConnectError, RpcError) as exc:
        raise ProvisionError(str(exc)) from None
    return client


async def single_action(
    settings: ProvisionSettings,
    action: str,
    identity: str,
    params: dict | None = None,
    client_factory: Callable[[], RpcClient] | None = None,
) -> dict:
    """One action on one node over a client of its own; ProvisionError naming the step when it fails."""
    if action not in SINGLE_ACTIONS:
        raise ProvisionError(f"action {action!r} is not one of {', '.join(SINGLE_ACTIONS)}")
    if not valid_identity(identity):
        raise ProvisionError(f"identity {identity!r} is not a valid node name")
    try:
        data = action_data(settings, action, identity, dict(params or {}))
    except NodeFailure as exc:
        raise ProvisionError(str(exc)) from None
    options = settings.flow_options()
    client = await connected_client(settings, client_factory)
    try:
        if action == "inventory":
            reply = await ask(client, options, identity, "inventory", agent="rpcutil")
            return {"changed": False, "identity": identity, "data": reply}
        if action in JWT_CHECKED_ACTIONS:
            await verified_jwt_claims(client, options, identity)
        if settings.check_mode:
            await ask(client, options, identity, "ping", agent="rpcutil")
            return {"changed": True, "identity": identity, "data": {}, "msg": f"{action} would be sent to {identity}"}
        return {"changed": True, "identity": identity, "data": await ask(client, options, identity, action, data)}
    except NodeFailure as exc:
        raise ProvisionError(str(exc)) from None
    finally:
        await client.close()


async def discovery(settings: ProvisionSettings, client_factory: Callable[[], RpcClient] | None = None) -> dict:
    """Who answers a broadcast discovery in the settings' collective (read-only, so check mode asks too)."""
    client = await connected_client(settings, client_factory)
    try:
        found = await client.discover(timeout=settings.discovery_timeout, expect=settings.expect)
    finally:
        await client.close()
    identities = [identity for identity in found if valid_identity(identity)]
    return {"changed": False, "identities": identities, "count": len(identities), "collective": settings.collective}


async def node_provision(settings: ProvisionSettings, identity: str, decider) -> NodeOutcome:
    """One node's whole pipeline (the flow the bulk run runs for each node), without a discovery: the caller knows
    the node (the per-host playbook: the inventory plugin found it)."""
    client = await connected_client(settings)
    try:
        return await ProvisioningFlow(client, decider, settings.flow_options()).run(identity)
    finally:
        await client.close()


def node_provision_result(outcome: NodeOutcome, check_mode: bool, warnings: list) -> dict:
    """The bulk run's result keys for one node, plus ``identity``, ``status`` and a ``msg`` saying what happened."""
    identity, status = outcome.identity, outcome.status

    def listed(wanted: str) -> dict:
        return {identity: outcome.reason} if status == wanted else {}

    provisioned = [identity] if status == PROVISIONED else []
    counts = {"discovered": 1, "provisioned": len(provisioned)}
    counts.update(
        {
            name: int(status == wanted)
            for name, wanted in (("deferred", DEFERRED), ("failed", FAILED), ("shutdown", SHUTDOWN))
        }
    )
    timings = {
        step: {"count": 1, "p50_ms": round(ms, 1), "p99_ms": round(ms, 1)} for step, ms in outcome.timings.items()
    }
    timings["total_seconds"] = round(outcome.elapsed_ms / 1000.0, 3)
    message = NODE_OUTCOME_MESSAGES.get(status, status)
    result = {
        "changed": status in (PROVISIONED, SHUTDOWN, WOULD_PROVISION),
        "identity": identity,
        "status": status,
        "msg": f"{identity} {message}: {outcome.reason}" if outcome.reason else f"{identity} {message}",
        "provisioned": provisioned,
        "deferred": listed(DEFERRED),
        "failed": listed(FAILED),
        "shutdown": listed(SHUTDOWN),
        "absent": [],
        "counts": counts,
        "timings": timings,
        "warnings": warnings,
    }
    if check_mode:
        result["would_provision"] = [identity] if status == WOULD_PROVISION else []
    return result


def run_node_provision(settings: ProvisionSettings, identity: str) -> dict:
    """Synchronous entry point for ``action=provision`` with ``identity``."""
    from .deciders import decider_for  # the signer's code, imported only when something is to be decided

    if not valid_identity(identity):
        raise ProvisionError(f"identity {identity!r} is not a valid node name")
    decider = decider_for(settings)

    async def run():
        try:
            return await node_provision(settings, identity, decider)
        finally:
            if decider is not None:
                await decider.finish()  # persistent helpers live in this loop

    try:
        outcome = asyncio.run(run())
    finally:
        if decider is not None:
            decider.close()
    warnings = decider.warnings() if decider is not None else []
    return node_provision_result(outcome, settings.check_mode, warnings)


def run_discovery(settings: ProvisionSettings) -> dict:
    """Synchronous entry point for ``action=discover``."""
    return asyncio.run(discovery(settings))


def run_action(settings: ProvisionSettings, action: str, identity: str, params: dict | None = None) -> dict:
    """Synchronous entry point for a single-node action."""
    return asyncio.run(single_action(settings, action, identity, params))
