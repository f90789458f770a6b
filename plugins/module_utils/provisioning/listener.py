# Copyright: zeroinit.bootstrap contributors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)
"""THE event listening of the controller: nodes that announce themselves on a provisioning network.

A node in provisioning mode says it is there without being asked: lifecycle events
(``choria.lifecycle.event.<type>.provision_mode_server``: startup, alive, and shutdown or provisioned as it
leaves) and registration data (``choria.provisioning_data`` and the per-node ``choria.provisioning_data.<id>``).
:class:`NodeEventListener` subscribes to all three on a connection it is given and hands each one to its caller as
a :class:`NodeEvent` with a valid identity. Parsing is bounded (the protocol's message limit) and never raises:
an undecodable message is counted, an identity that breaks the identity rule is reported to ``on_rejected``.
Used by discovery (the inventory plugin), the bulk run's ``wait`` window and the provisioner service.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable

from ..choria.events import parse_lifecycle_event, parse_registration
from ..choria.protocol import ProtocolError
from ..choria.subjects import LIFECYCLE_COMPONENT, REGISTRATION_SUBJECT, lifecycle_subject, valid_identity
from ..common.deps import NatsError

REGISTRATION = "registration"
# A node that shut down, or was provisioned and left for its configured collective, is no longer waiting.
DEPARTURE_EVENTS = ("shutdown", "provisioned")
# What says a node is (still) waiting to be provisioned.
ARRIVAL_EVENTS = ("startup", "alive", REGISTRATION)
SUMMARY_FIELDS = ("type", "timestamp", "version", "id")


@dataclass(frozen=True)
class NodeEvent:
    """One announcement of one node: ``kind`` is the lifecycle type or ``registration``."""

    identity: str
    kind: str
    facts: dict | None = None  # registration data's facts
    summary: dict | None = None  # a lifecycle event's type, timestamp, version and id

    @property
    def source(self) -> str:
        return REGISTRATION if self.kind == REGISTRATION else "lifecycle"

    @property
    def departure(self) -> bool:
        return self.kind in DEPARTURE_EVENTS


class NodeEventListener:
    """Lifecycle events and registration data of provisioning-mode nodes, as :class:`NodeEvent` callbacks.

    ``on_event(event)`` is called for each announcement with a valid identity; ``on_rejected(identity, source,
    kind)`` for one whose identity breaks the rule (``identity`` shortened for a message).
    """

    def __init__(
        self,
        on_event: Callable[[NodeEvent], None],
        on_rejected: Callable[[str, str, str], None] | None = None,
        component: str = LIFECYCLE_COMPONENT,
    ):
        self.on_event = on_event
        self.on_rejected = on_rejected or (lambda _identity, _source, _kind: None)
        self.component = component
        self.undecodable = 0
        self._subs: list = []

    async def start(self, nc) -> None:
        """Subscribe on ``nc`` (a nats-py connection the caller owns); events flow from the next flush on."""
        self._subs = [
            await nc.subscribe(lifecycle_subject("*", self.component), cb=self.on_lifecycle),
            await nc.subscribe(REGISTRATION_SUBJECT, cb=self.on_registration),
            await nc.subscribe(REGISTRATION_SUBJECT + ".>", cb=self.on_registration),
        ]
        await nc.flush()

    async def stop(self) -> None:
        subs, self._subs = self._subs, []
        for sub in subs:
            with contextlib.suppress(NatsError):
                await sub.unsubscribe()

    async def on_lifecycle(self, msg) -> None:
        try:
            event = parse_lifecycle_event(msg.data)
        except ProtocolError:
            self.undecodable += 1
            return
        if event.get("component") not in (None, self.component):
            return  # a configured server's event: not a node waiting here
        summary = {key: event[key] for key in SUMMARY_FIELDS if key in event}
        self._deliver(NodeEvent(event["identity"], event["type"], summary=summary))

    async def on_registration(self, msg) -> None:
        parsed = parse_registration(msg.data)
        if parsed is None:
            self.undecodable += 1
            return
        self._deliver(NodeEvent(parsed[0], REGISTRATION, facts=parsed[1]))

    def _deliver(self, event: NodeEvent) -> None:
        if valid_identity(event.identity):
            self.on_event(event)
        else:
            self.on_rejected(repr(event.identity)[:80], event.source, event.kind)
