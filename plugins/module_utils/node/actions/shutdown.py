# Copyright: zeroinit.bootstrap contributors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)
"""``choria_provision#shutdown``: reply, then stop serving this node."""

from __future__ import annotations

from ..state import NodeState
from .base import ActionResult, answer


def shutdown(node: NodeState) -> ActionResult:
    return answer("shutdown", {"message": f"Shutting down {node.identity}"}, effect="shutdown", delay=0.2)
