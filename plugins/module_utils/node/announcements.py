# Copyright: zeroinit.bootstrap contributors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)
"""What nodes say without being asked: lifecycle events (startup, shutdown, provisioned; renewed and
renewal_failed from certificate renewal) and, in provisioning mode, their registration data, at start and on an
interval."""

from __future__ import annotations

import asyncio
import json
from typing import Callable, Iterable

from ..choria.events import lifecycle_event, registration_document
from ..choria.subjects import (
    CONFIGURED_COMPONENT,
    LIFECYCLE_COMPONENT,
    REGISTRATION_SUBJECT,
    lifecycle_subject,
    registration_subject,
)
from .links import Link
from .state import AGENT_VERSION, MODE_PROVISIONING, NodeState

# Registrations published in one go before replies get a turn.
REGISTRATION_BATCH = 500


class Announcer:
    """Publishes one node's lifecycle events and registration data on the link it is served on."""

    async def announce(self, node: NodeState, link: Link, event_type: str) -> None:
        component = LIFECYCLE_COMPONENT if node.mode == MODE_PROVISIONING else CONFIGURED_COMPONENT
        await self._event(link, event_type, node.identity, component)
        if event_type == "startup" and node.mode == MODE_PROVISIONING:
            await self.register(node, link)

    async def provisioned(self, node: NodeState, link: Link) -> None:
        """Said on the provisioning link as the node leaves it for its configured collective."""
        await self._event(link, "provisioned", node.identity, LIFECYCLE_COMPONENT)

    async def lifecycle(self, node: NodeState, event_type: str, extra: dict | None = None) -> None:
        """An event a configured node says about itself (renewal), with ``extra`` data, where it is served now."""
        if node.link is not None:
            await self._event(node.link, event_type, node.identity, CONFIGURED_COMPONENT, extra)

    async def register(self, node: NodeState, link: Link) -> None:
        payload = json.dumps(registration_document(node.identity, node.facts, AGENT_VERSION)).encode("utf-8")
        await link.publish(REGISTRATION_SUBJECT, payload)
        await link.publish(registration_subject(node.identity), payload)

    async def registration_loop(self, nodes: Callable[[], Iterable[NodeState]], interval: float) -> None:
        """Every ``interval`` seconds, registration data of every node waiting in provisioning mode."""
        if interval <= 0:
            return
        while True:
            await asyncio.sleep(interval)
            count = 0
            for node in list(nodes()):
                if node.mode == MODE_PROVISIONING and node.link is not None and not node.stopped:
                    await self.register(node, node.link)
                    count += 1
                    if count % REGISTRATION_BATCH == 0:
                        await asyncio.sleep(0)  # let replies through between batches

    @staticmethod
    async def _event(link: Link, event_type: str, identity: str, component: str, extra: dict | None = None) -> None:
        event = lifecycle_event(event_type, identity, component=component, version=AGENT_VERSION, extra=extra)
        await link.publish(lifecycle_subject(event_type, component), json.dumps(event).encode("utf-8"))
