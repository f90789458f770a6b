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
from .flow import ask, verified_jwt_claims
from .helper import NodeFailure, check_configuration, merge_configuration
from .rpc import RpcClient, RpcError
from .settings import ProvisionError, ProvisionSettings

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


def run_discovery(settings: ProvisionSettings) -> dict:
    """Synchronous entry point for ``action=discover``."""
    return asyncio.run(discovery(settings))


def run_action(settings: ProvisionSettings, action: str, identity: str, params: dict | None = None) -> dict:
    """Synchronous entry point for a single-node action."""
    return asyncio.run(single_action(settings, action, identity, params))
