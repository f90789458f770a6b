# Copyright: zeroinit.bootstrap contributors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)
"""The ``rpcutil`` agent: ``ping`` and ``inventory`` as go-choria's DDL describes them (no inputs)."""

from __future__ import annotations

from ...choria.protocol import now
from ..state import AGENT_VERSION, NodeState
from .base import ActionResult, answer


def ping(node: NodeState) -> ActionResult:
    return answer("ping", {"pong": now()})


def inventory(node: NodeState) -> ActionResult:
    names, main = node.collectives
    return answer(
        "inventory",
        {
            "agents": list(node.agents),
            "facts": node.facts,
            "classes": [],
            "version": AGENT_VERSION,
            "main_collective": main,
            "collectives": names,
            "data_plugins": [],
            "machines": {},
            "upgradable": False,
        },
    )


RPCUTIL_ACTIONS = {"ping": ping, "inventory": inventory}
