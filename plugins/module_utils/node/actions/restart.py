# Copyright: zeroinit.bootstrap contributors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)
"""``choria_provision#restart``: reply, then restart into configured mode after a random delay in [0, splay].

The loop guard comes first: a configuration on disk that would leave provisioning on, or names no broker the
node could reach, is refused, so the node never restarts into a loop or into nowhere.
"""

from __future__ import annotations

from dataclasses import dataclass

from ...choria.brokers import BrokerUrlError, normalize_brokers
from ...choria.config import MIDDLEWARE_KEY, PROVISION_KEY, ConfigError, provisioning_enabled
from ...choria.protocol import StatusCode
from ..state import NodeState
from .base import ActionResult, Refusal, answer


@dataclass
class RestartInput:
    splay: float = 0.0

    @classmethod
    def parse(cls, data: dict) -> RestartInput:
        splay = data.get("splay")
        if splay is None or splay == "":
            return cls()
        if isinstance(splay, bool) or not isinstance(splay, (int, float)) or splay < 0:
            raise Refusal(StatusCode.INVALID_DATA, "input 'splay' must be a number of seconds >= 0")
        return cls(float(splay))


def restart(node: NodeState, request: RestartInput) -> ActionResult:
    splay = min(request.splay, node.splay_max)
    refusing = f"refusing to restart {node.identity}"
    try:
        config = node.read_server_conf()
    except ConfigError as exc:
        raise Refusal(StatusCode.ABORTED, f"{refusing}: {exc}") from None
    if config is None:
        raise Refusal(StatusCode.ABORTED, f"{refusing}: no configuration at {node.server_conf} (run configure first)")
    if provisioning_enabled(config):
        raise Refusal(
            StatusCode.ABORTED,
            f"{refusing}: {node.server_conf} leaves {PROVISION_KEY} enabled, the node would come back in "
            "provisioning mode",
        )
    try:
        brokers = normalize_brokers(config.get(MIDDLEWARE_KEY), allow_empty=True)
    except BrokerUrlError as exc:
        raise Refusal(StatusCode.ABORTED, f"{refusing}: {MIDDLEWARE_KEY}: {exc}") from None
    if not brokers:
        raise Refusal(StatusCode.ABORTED, f"{refusing}: {node.server_conf} names no {MIDDLEWARE_KEY} to connect to")
    node.config = config
    return answer(
        "restart",
        {"message": f"Restarting {node.identity} into configured mode within {splay:.1f}s"},
        effect="restart",
        delay=splay,
    )
