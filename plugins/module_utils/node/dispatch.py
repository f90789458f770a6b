# Copyright: zeroinit.bootstrap contributors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)
"""One request for one node to its answer: the checks in order, then the action's handler with typed inputs.

The checks, each refusal a reply whose statusmsg names the reason:

1. the time window: ``time`` within the request's ttl of the node's clock, the ttl capped at ``--max-ttl``
   (every agent; a stale discovery ping gets no answer, as discovery has no status to carry a refusal);
2. for ``choria_provision``: the signature, when the agent has a provisioning CA (``--provisioning-ca``): the
   ``pubcert`` must chain to it, be valid now, carry the provisioner extended key usage and have signed the
   ``message``. Without one, a site-locked action on a locked node is verified against the site CA it was
   locked with (``trust.py``); anything else is judged by the token alone;
3. the token (constant-time);
4. the site lock: on a node that committed a configuration, ``gencsr``, ``configure``, ``reprovision``, ``trust``
   and ``destroy`` only when signed under that site (``site_lock.py``);
5. the replay memory: a request id this node accepted within its window is refused (``replay.py``);
6. the mode the action needs, and the per-caller provisioning lock.

``rpcutil`` and ``discovery`` stay open after the window (they reveal only the facts a node publishes). No
networking here: :func:`handle` returns the reply body and, for ``restart``, ``reprovision`` and ``shutdown``,
what the daemon must do after the reply is sent. An action that fails unexpectedly answers too, it never takes
the agent down.

Refused beyond go-choria's DDL: the actions ``release_update`` and ``gen25519`` (statuscode 2 with the reason).
Added to it: ``trust`` and ``renew`` (a configured node's certificates), and ``destroy`` (``actions/destroy.py``,
answered in either mode).
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
from ..choria.replay import request_window_refusal
from ..choria.security import SITE_LOCKED, RequestTrustError, TrustConfigError, VerifiedSigner, is_unsigned
from .actions.base import ActionResult, Refusal, RequestOrigin
from .actions.configure import ConfigureInput, configure
from .actions.destroy import DestroyInput, destroy
from .actions.gencsr import GencsrInput, gencsr
from .actions.jwt import provisioning_jwt
from .actions.renew import renew
from .actions.reprovision import reprovision
from .actions.restart import RestartInput, restart
from .actions.rpcutil import RPCUTIL_ACTIONS
from .actions.shutdown import shutdown
from .actions.trust import TrustInput, trust
from .site_lock import SITE_LOCKED_ACTIONS, site_lock_refusal
from .state import MODE_CONFIGURED, MODE_PROVISIONING, NodeState

UNSUPPORTED_ACTIONS = {
    "release_update": "release_update is not supported by this agent: update it with the provision_agent role",
    "gen25519": "gen25519 is not supported by this agent: it uses X.509 certificates made by gencsr",
}


class ProvisionAction(NamedTuple):
    """A choria_provision action: how its input is read, its handler, and what it asks of the node first."""

    parse: Callable[[dict], object] | None  # None: no input beyond the token
    handler: Callable
    token_required: bool = True
    takes_lock: bool = False
    mode: str | None = MODE_PROVISIONING  # the mode the node must be in (None: either)
    takes_origin: bool = False  # the handler records who sent the request (configure, trust: the site lock)


PROVISION_ACTIONS = {
    "gencsr": ProvisionAction(GencsrInput.parse, gencsr, takes_lock=True),
    # go-choria's DDL makes configure's token optional; a wrong one is still refused.
    "configure": ProvisionAction(
        ConfigureInput.parse, configure, token_required=False, takes_lock=True, takes_origin=True
    ),
    # Read-only: it neither takes nor renews the provisioning lock, but another caller's round still refuses it.
    "jwt": ProvisionAction(None, provisioning_jwt),
    "restart": ProvisionAction(RestartInput.parse, restart),
    "reprovision": ProvisionAction(None, reprovision, mode=MODE_CONFIGURED),
    # The certificate lifecycle of a configured node (not in go-choria's DDL): the CA migration's steps.
    "trust": ProvisionAction(TrustInput.parse, trust, mode=MODE_CONFIGURED, takes_origin=True),
    "renew": ProvisionAction(None, renew, mode=MODE_CONFIGURED),
    "shutdown": ProvisionAction(None, shutdown),
    # ours (destroy.yaml): wipe the state in either mode, then come back in provisioning mode or stop
    "destroy": ProvisionAction(DestroyInput.parse, destroy, mode=None),
}


def handle(node: NodeState, req: Request, at: float | None = None) -> ActionResult:
    """The answer to one request addressed to (or matching) ``node``."""
    at = time.time() if at is None else at
    stale = request_window_refusal(req.time, req.ttl, at, node.trust.max_ttl)
    if req.agent == "discovery":
        # The discovery agent answers a raw ping; there is no status to carry a refusal, so stale requests are dropped.
        if req.body == DISCOVERY_PING and stale is None:
            return ActionResult(DISCOVERY_PONG)
        return ActionResult(None)
    action = req.action
    if req.body_problem:
        return ActionResult(rpc_reply_body(action, StatusCode.INVALID_DATA, req.body_problem))
    if stale is not None:
        return ActionResult(rpc_reply_body(action, StatusCode.ABORTED, stale))
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
    signer = authenticate(node, req, action, at)
    check_token(node, data, required=spec.token_required)
    locked = site_lock_refusal(node.site_lock_text, action, signer)
    if locked is not None:
        raise Refusal(StatusCode.ABORTED, f"{node.identity}: {locked}")
    replay = node.replay.admit(req.requestid, req.time, req.ttl, at)
    if replay is not None:
        raise Refusal(StatusCode.ABORTED, replay)
    if spec.mode is not None and node.mode != spec.mode:
        if spec.mode == MODE_CONFIGURED:
            raise Refusal(StatusCode.ABORTED, f"{node.identity} is already in provisioning mode")
        raise Refusal(
            StatusCode.ABORTED, f"{node.identity} is configured and not in provisioning mode: send reprovision first"
        )
    if spec.mode == MODE_PROVISIONING:
        node.lock.check(req.callerid, at, take=spec.takes_lock)
    inputs = () if spec.parse is None else (spec.parse(data),)
    if spec.takes_origin:
        return spec.handler(node, *inputs, origin=RequestOrigin(req.requestid, req.callerid, at, signer))
    return spec.handler(node, *inputs)


def authenticate(node: NodeState, req: Request, action: str, at: float) -> VerifiedSigner | None:
    """Who signed the request, when the node checks signatures for it; None when the token alone decides.

    Refused (Aborted) when a signature is required and missing or not trusted, the reason in the message.
    """
    trust = node.trust
    if trust.verifier is not None:
        try:
            return trust.verifier.verify(req.secure_message, req.signature, req.pubcert, at=at)
        except RequestTrustError as exc:
            raise Refusal(StatusCode.ABORTED, f"request not authenticated by {node.identity}: {exc.message}") from None
    if action not in SITE_LOCKED_ACTIONS or node.site_lock_text is None or is_unsigned(req.signature, req.pubcert):
        return None  # unsigned on a locked node: the site lock refuses it and says why
    if not node.site_ca_pem:
        raise Refusal(StatusCode.ABORTED, f"{node.identity} {SITE_LOCKED} its site but lost the site's CA bundle")
    try:
        return trust.site_verifier(node.site_ca_pem).verify(req.secure_message, req.signature, req.pubcert, at=at)
    except (RequestTrustError, TrustConfigError) as exc:
        reason = exc.message if isinstance(exc, RequestTrustError) else str(exc)
        raise Refusal(StatusCode.ABORTED, f"{node.identity} {SITE_LOCKED} its site: {reason}") from None


def check_token(node: NodeState, data: dict, required: bool) -> None:
    """The provisioning token, compared in constant time; refused when missing (if required) or wrong."""
    if "token" not in data:
        if required:
            raise Refusal(StatusCode.MISSING_DATA, "missing input 'token'")
    elif not isinstance(data["token"], str):
        raise Refusal(StatusCode.INVALID_DATA, "input 'token' must be a string")
    if not constant_time_equal(data.get("token", ""), node.token):
        raise Refusal(StatusCode.ABORTED, "incorrect provisioning token")
