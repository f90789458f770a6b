# Copyright: zeroinit.bootstrap contributors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)
"""``choria_provision#jwt``: the node's provisioning JWT (Choria's ``provisioning.jwt``), as its image carries it.

Outputs as go-choria's DDL: ``jwt`` (the token's text, verbatim) and ``ecdh_public``, which is always empty here.
go-choria makes a new X25519 key pair on every call so a provisioner can encrypt a private key for ``configure``;
this agent refuses ``configure``'s ``key`` (keys are made on the node by ``gencsr`` and never travel), so there is
no exchange to start and no secret to keep.

The node does not verify its own JWT (it has no issuer key; neither has go-choria's node): the provisioner does,
before it asks the node for anything that writes.
"""

from __future__ import annotations

from ...choria.jwt import MAX_JWT_CHARS
from ...choria.protocol import StatusCode
from ..state import NodeState
from .base import ActionResult, Refusal, answer


def provisioning_jwt(node: NodeState) -> ActionResult:
    if not node.jwt_path:
        raise Refusal(StatusCode.ABORTED, f"{node.identity} has no provisioning JWT (agent option --provisioning-jwt)")
    try:
        with open(node.jwt_path, encoding="utf-8") as handle:
            text = handle.read(MAX_JWT_CHARS + 2).strip()
    except FileNotFoundError:
        raise Refusal(
            StatusCode.ABORTED, f"{node.identity}: the provisioning JWT {node.jwt_path} does not exist"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or exc
        raise Refusal(
            StatusCode.ABORTED, f"{node.identity}: the provisioning JWT {node.jwt_path} cannot be read: {reason}"
        ) from None
    if not text or len(text) > MAX_JWT_CHARS:
        raise Refusal(
            StatusCode.ABORTED,
            f"{node.identity}: the provisioning JWT {node.jwt_path} is empty or longer than {MAX_JWT_CHARS} characters",
        )
    return answer("jwt", {"jwt": text, "ecdh_public": ""})
