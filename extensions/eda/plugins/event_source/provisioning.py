# Copyright: zeroinit.bootstrap contributors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)
"""provisioning.py: an ansible-rulebook event source, one event per node entering provisioning mode.

Listens on a Choria provisioning network (NATS) for nodes' startup and alive lifecycle events and their
registration data, and puts one event per node per boot on the rulebook's queue::

    {"zeroinit": {"identity": "web1.example.net", "facts": {...}, "source": "startup|registration|alive"}}

``facts`` are the node's registration facts, or its ``rpcutil#inventory`` facts when the event carried none.
A node's later announcements of the same boot are not repeated for ``dedupe_window`` seconds; a node that shut
down or was provisioned is recorded again when it comes back. Use it as ``zeroinit.bootstrap.provisioning`` in a
rulebook (the collection's example: ``extensions/eda/rulebooks/provision_new_nodes.yml``).

Arguments: see DOCUMENTATION below. Needs nats-py (the collection's requirements.txt).
"""

from __future__ import annotations

import asyncio
import os
import sys
from typing import Any

DOCUMENTATION = r"""
---
short_description: One event per node entering Choria provisioning mode
description:
  - An ansible-rulebook event source plugin that listens on a Choria provisioning network (NATS) for nodes'
    C(startup) and C(alive) lifecycle events (component C(provision_mode_server)) and their registration data
    (C(choria.provisioning_data)), and puts one event per node per boot on the rulebook's queue -
    C({"zeroinit": {"identity": ..., "facts": {...}, "source": "startup|registration|alive"}}).
  - C(facts) are the registration data's facts; for a lifecycle event they are asked from the node with
    C(rpcutil#inventory) (an empty mapping, logged, when the node does not answer within O(inventory_timeout)).
  - Later announcements of the same boot (registration data every minute, alive events) are not repeated for
    O(dedupe_window) seconds. A startup event is a new boot and always makes an event. A node that shuts down or
    is provisioned is forgotten, so it makes an event again when it comes back in provisioning mode.
  - Announcements wait in a queue of O(queue_size); more are dropped and logged. The first connection is retried
    with backoff until a broker accepts it; nats-py reconnects after that.
options:
  brokers:
    description:
      - Broker URLs of the provisioning network, for example C(nats://10.0.0.1:4222); C(host), C(host:port) or
        C(scheme://host[:port]) with C(nats) (the default), C(tls), C(ws) or C(wss), port 4222 by default.
    type: list
    elements: str
    required: true
  collective:
    description: The collective the nodes wait in (the C(rpcutil#inventory) request goes there).
    type: str
    default: provisioning
  tls_ca:
    description: CA certificate (PEM) to verify the brokers' TLS certificates against.
    type: str
  tls_cert:
    description: Client certificate (PEM) to present when the brokers require one.
    type: str
  tls_key:
    description: Private key of O(tls_cert).
    type: str
  dedupe_window:
    description: Seconds a node's repeated registration and alive announcements stay quiet after its event.
    type: float
    default: 3600
  inventory_timeout:
    description: Seconds to wait for a node's C(rpcutil#inventory) reply.
    type: float
    default: 10
  queue_size:
    description: Announcements waiting for their facts or for the rulebook, at most; more are dropped.
    type: int
    default: 10000
  callerid:
    description: The caller id of the C(rpcutil#inventory) requests.
    type: str
    default: zeroinit-eda
"""

EXAMPLES = r"""
- zeroinit.bootstrap.provisioning:
    brokers:
      - nats://prov-broker.example.net:4222
    dedupe_window: 600
"""


def _find_collection() -> None:
    """ansible-rulebook runs this file by path: make the collection's Python package importable from here
    (``<root>/ansible_collections/zeroinit/bootstrap/extensions/eda/plugins/event_source/provisioning.py``)."""
    try:
        import ansible_collections.zeroinit.bootstrap.plugins.module_utils  # noqa: F401
    except ImportError:
        root = os.path.abspath(os.path.join(os.path.dirname(__file__), *[os.pardir] * 7))
        if os.path.isdir(os.path.join(root, "ansible_collections", "zeroinit", "bootstrap")):
            sys.path.insert(0, root)


_find_collection()

from ansible_collections.zeroinit.bootstrap.plugins.module_utils.provisioning.arrivals import (  # noqa: E402
    run_arrival_feed,
)


async def main(queue: asyncio.Queue, args: dict[str, Any]) -> None:
    """Put one event per node entering provisioning mode on ``queue``, until cancelled."""
    await run_arrival_feed(queue.put, args)


if __name__ == "__main__":
    # Run by hand: print the events (python provisioning.py nats://127.0.0.1:4222).

    class MockQueue:
        async def put(self, event: dict) -> None:
            print(event)

    asyncio.run(main(MockQueue(), {"brokers": sys.argv[1:] or ["nats://127.0.0.1:4222"]}))
