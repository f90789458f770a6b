# Copyright: zeroinit.bootstrap contributors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)
"""What every action handler shares: the refusal, the result, and the typed reading of request inputs.

A handler takes the node and a typed input (a dataclass its ``parse`` builds from the request data) and returns
an :class:`ActionResult`. Bad input is a :class:`Refusal` with a statuscode and a message naming the input, as
go-choria's agents answer; the dispatcher turns it into the reply.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ...choria.protocol import StatusCode, rpc_reply_body
from ...common.deps import HAS_CRYPTOGRAPHY


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
    effect: str = ""  # "", "restart", "reprovision", "shutdown", "renew", "reconnect", "trust_more"
    delay: float = 0.0


@dataclass(frozen=True)
class RequestOrigin:
    """Who sent the request an action serves, as the dispatcher established it (for what the action records)."""

    requestid: str
    callerid: str
    accepted_at: float  # the node's clock when the request was accepted
    signer: Any = None  # the ..choria.security.VerifiedSigner of a signed request; None: the token alone

    @property
    def committer(self) -> str:
        """Who a site lock records as having committed it: the signer's subject, else the caller id."""
        return (self.signer.subject if self.signer else self.callerid)[:1024]


def answer(action: str, data: dict, effect: str = "", delay: float = 0.0) -> ActionResult:
    """A successful reply to ``action`` carrying ``data``."""
    return ActionResult(rpc_reply_body(action, data=data), effect=effect, delay=delay)


def text_input(data: dict, name: str, limit: int | None = None, required: bool = False) -> str | None:
    """Input ``name`` as a string (None when absent or empty); refused when not a string or too long."""
    value = data.get(name)
    if value is None or value == "":
        if required:
            raise Refusal(StatusCode.MISSING_DATA, f"missing input '{name}'")
        return None
    if not isinstance(value, str):
        raise Refusal(StatusCode.INVALID_DATA, f"input '{name}' must be a string")
    if limit is not None and len(value) > limit:
        raise Refusal(StatusCode.INVALID_DATA, f"input '{name}' is longer than {limit} characters")
    return value


def need_cryptography() -> None:
    """Refuse (rather than crash) when the node has no cryptography library; the reply says what is missing."""
    if not HAS_CRYPTOGRAPHY:
        raise Refusal(StatusCode.UNKNOWN_ERROR, "the Python library cryptography is not installed on this node")
