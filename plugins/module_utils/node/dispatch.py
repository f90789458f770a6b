# Copyright: zeroinit.bootstrap contributors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)
"""One request for one node to its answer: ttl, token, mode, lock, then the action's handler with typed inputs.

No networking here: :func:`handle` returns the reply body and, for ``restart``, ``reprovision`` and
``shutdown``, what the daemon must do after the reply is sent. Every refusal is a reply with a statuscode and a
message naming the reason; an action that fails unexpectedly answers too, it never takes the agent down.

Refused beyond go-choria's DDL: the actions ``release_update``, ``jwt`` and ``gen25519`` (statuscode 2 with the
reason). Added to it: ``destroy`` (``actions/destroy.py``), answered in either mode.
"""

from __future__ import annotations

import time
from typing import Callable, NamedTuple

from ..choria.protocol import (
    DISCOVERY_PING,
    DISCOVERY_PONG,
    PROVISION_AGENT,
    Request,
    StatusCode,
    constant_time_equal,
    rpc_reply_body,
)
from .actions.base import ActionResult, Refusal
from .actions.configure import ConfigureInput, configure
from .actions.destroy import DestroyInput, destroy
from .actions.gencsr import GencsrInput, gencsr
from .actions.reprovision import reprovision
from .actions.restart import RestartInput, restart
from .actions.rpcutil import RPCUTIL_ACTIONS
from .actions.shutdown import shutdown
from .state import MODE_CONFIGURED, MODE_PROVISIONING, NodeState

UNSUPPORTED_ACTIONS = {
    "release_update": "release_update is not supported by this agent: update it with the provision_agent role",
    "jwt": "jwt is not supported by this agent: it uses the file security provider with X.509 certificates",
    "gen25519": "gen25519 is not supported by this agent: it uses X.509 certificates made by gencsr",
}


class ProvisionAction(NamedTuple):
    """A choria_provision action: how its input is read, its handler, and what it asks of the node first."""

    parse: Callable[[dict], object] | None  # None: no input beyond the token
    handler: Callable
    token_required: bool = True
    takes_lock: bool = False
    mode: str | None = MODE_PROVISIONING  # the mode the node must be in (None: either)


PROVISION_ACTIONS = {
    "gencsr": ProvisionAction(GencsrInput.parse, gencsr, takes_lock=True),
    # go-choria's DDL makes configure's token optional; a wrong one is still refused.
    "configure": ProvisionAction(ConfigureInput.parse, configure, token_required=False, takes_lock=True),
    "restart": ProvisionAction(RestartInput.parse, restart),
    "reprovision": ProvisionAction(None, reprovision, mode=MODE_CONFIGURED),
    "shutdown": ProvisionAction(None, shutdown),
    # ours (destroy.yaml): wipe the state in either mode, then come back in provisioning mode or stop
    "destroy": ProvisionAction(DestroyInput.parse, destroy, mode=None),
}


def handle(node: NodeState, req: Request, at: float | None = None) -> ActionResult:
    """The answer to one request addressed to (or matching) ``node``."""
    at = time.time() if at is None else at
    if req.agent == "discovery":
        # The discovery agent answers a raw ping; there is no status to carry a refusal, so stale requests are dropped.
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
        when = "ago" if skew > 0 else "ahead"
        return ActionResult(
            rpc_reply_body(action, StatusCode.ABORTED, f"{what}: sent {abs(skew)}s {when}, ttl {req.ttl}s")
        )
    try:
        if req.agent == "rpcutil":
            handler = RPCUTIL_ACTIONS.get(action)
            if handler is None:
                raise Refusal(StatusCode.UNKNOWN_ACTION, f"unknown action rpcutil#{action}")
            return handler(node)
        if req.agent == PROVISION_AGENT:
            return _provision(node, req, at)
        raise Refusal(StatusCode.UNKNOWN_ACTION, f"unknown agent {req.agent!r} on {node.identity}")
    except Refusal as refusal:
        return ActionResult(rpc_reply_body(action, refusal.code, refusal.message))
    except Exception as exc:  # an action must answer, never take the agent down
        return ActionResult(
            rpc_reply_body(action, StatusCode.UNKNOWN_ERROR, f"{req.agent}#{action} failed on {node.identity}: {exc}")
        )


def _provision(node: NodeState, req: Request, at: float) -> ActionResult:
    action, data = req.action, req.data
    if action in UNSUPPORTED_ACTIONS:
        raise Refusal(StatusCode.UNKNOWN_ACTION, UNSUPPORTED_ACTIONS[action])
    spec = PROVISION_ACTIONS.get(action)
    if spec is None:
        raise Refusal(StatusCode.UNKNOWN_ACTION, f"unknown action choria_provision#{action}")
    check_token(node, data, required=spec.token_required)
    if spec.mode is not None and node.mode != spec.mode:
        if spec.mode == MODE_CONFIGURED:
            raise Refusal(StatusCode.ABORTED, f"{node.identity} is already in provisioning mode")
        raise Refusal(
            StatusCode.ABORTED, f"{node.identity} is configured and not in provisioning mode: send reprovision first"
        )
    if spec.mode == MODE_PROVISIONING:
        node.lock.check(req.callerid, at, take=spec.takes_lock)
    if spec.parse is None:
        return spec.handler(node)
    return spec.handler(node, spec.parse(data))


def check_token(node: NodeState, data: dict, required: bool) -> None:
    """The provisioning token, compared in constant time; refused when missing (if required) or wrong."""
    if "token" not in data:
        if required:
            raise Refusal(StatusCode.MISSING_DATA, "missing input 'token'")
    elif not isinstance(data["token"], str):
        raise Refusal(StatusCode.INVALID_DATA, "input 'token' must be a string")
    if not constant_time_equal(data.get("token", ""), node.token):
        raise Refusal(StatusCode.ABORTED, "incorrect provisioning token")
