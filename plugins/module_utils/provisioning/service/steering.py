# Copyright: zeroinit.bootstrap contributors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)
"""Pause, resume and status of a running ``zeroinit-provisioner`` site from a play (``choria_provision
action=pause|resume|status``), over the service's authenticated control subject (``control.py``).

A pause or resume asks every instance for its status first, sends the operation, then asks again: the task is
``changed`` only when an instance's paused state was not already the wanted one, and it returns what the
instances say afterwards. Check mode asks for the status only and says which instances would change. A pause or
resume that no instance answers fails (nothing was paused); a status nobody answers is an empty list.
"""

from __future__ import annotations

import asyncio
import socket
from dataclasses import dataclass, field
from typing import Any, Optional

from ...choria.brokers import BrokerUrlError, normalize_brokers
from ...choria.transport import ConnectError, connect, tls_context
from ..settings import ProvisionError
from . import SITE_OPERATIONS
from .config import SITE_PATTERN
from .control import DEFAULT_GATHER, ControlClient, ControlCodec, ControlError, derive_control_key

WANTED_PAUSED = {"pause": True, "resume": False}


@dataclass
class SiteControlRequest:
    """One operation on every instance of a site; checked when made (``ProvisionError`` names the option)."""

    operation: str
    site: str
    brokers: list
    token: str = field(default="", repr=False)
    control_key: str = field(default="", repr=False)
    gather: float = DEFAULT_GATHER
    tls_ca: Optional[str] = None
    tls_cert: Optional[str] = None
    tls_key: Optional[str] = None
    check_mode: bool = False
    key: bytes = field(default=b"", init=False, repr=False)  # the site's control key, from token or control_key

    def __post_init__(self) -> None:
        if self.operation not in SITE_OPERATIONS:
            raise ProvisionError(f"action {self.operation!r} is not one of {', '.join(SITE_OPERATIONS)}")
        if not isinstance(self.site, str) or not SITE_PATTERN.match(self.site):
            raise ProvisionError(f"site: {self.site!r} is not a site name (1 to 64 letters, digits, '_' or '-')")
        if not 0 < self.gather <= 60:
            raise ProvisionError(f"gather must be more than 0 and at most 60 seconds, not {self.gather}")
        try:
            self.brokers = normalize_brokers(self.brokers)
        except BrokerUrlError as exc:
            raise ProvisionError(f"brokers: {exc}") from None
        try:
            self.key = derive_control_key(self.site, self.token or "", self.control_key or "")
        except ControlError:
            raise ProvisionError("token or control_key is required to reach the site's instances") from None


def sender_name() -> str:
    """Who asked, as the instances log it."""
    return f"choria_provision@{socket.gethostname()}"[:128]


def paused_by_instance(documents: list) -> dict:
    return {doc["instance"]: doc.get("paused") for doc in documents}


async def steer_site(request: SiteControlRequest, connection: Any = None) -> dict:
    """The module's result for ``request``; ``ProvisionError`` when the brokers cannot be reached or an
    operation is not carried out by any instance (or refused by one)."""
    try:
        tls = tls_context(request.tls_ca, request.tls_cert, request.tls_key)
    except (OSError, ValueError) as exc:
        raise ProvisionError(f"broker TLS options: {exc}") from None
    nc = connection
    if nc is None:
        try:
            nc = await connect(request.brokers, name=sender_name(), tls=tls, reconnect=False)
        except ConnectError as exc:
            raise ProvisionError(str(exc)) from None
    client = ControlClient(nc, ControlCodec(request.site, request.key), sender=sender_name())
    try:
        before = await client.status(request.gather)
        result: dict = {"changed": False, "site": request.site, "instances": before}
        if request.operation == "status":
            return result
        wanted = WANTED_PAUSED[request.operation]
        was = paused_by_instance(before)
        if request.check_mode:
            changing = sorted(name for name, paused in was.items() if paused is not wanted)
            return dict(result, changed=bool(changing), changed_instances=changing)
        answers = await client.broadcast(request.operation, request.gather)
        if not answers:
            raise ProvisionError(
                f"no instance of site {request.site} answered {request.operation} within {request.gather:g}s "
                f"on {', '.join(request.brokers)} (is the service running, with this token or control_key?)"
            )
        refused = {answer["instance"]: answer.get("error", "") for answer in answers if not answer["ok"]}
        if refused:
            reasons = "; ".join(f"{name}: {reason}" for name, reason in sorted(refused.items()))
            raise ProvisionError(f"{request.operation} failed on {len(refused)} instance(s): {reasons}")
        changing = sorted(answer["instance"] for answer in answers if was.get(answer["instance"]) is not wanted)
        after = await client.status(request.gather)
        return dict(result, changed=bool(changing), changed_instances=changing, instances=after)
    finally:
        if connection is None:
            await nc.close()


def run_site_control(request: SiteControlRequest) -> dict:
    """Synchronous entry point of :func:`steer_site`."""
    return asyncio.run(steer_site(request))
