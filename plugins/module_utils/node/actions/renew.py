# Copyright: zeroinit.bootstrap contributors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)
"""``choria_provision#renew`` (configured nodes; not in go-choria's DDL): renew the certificate now.

The reply only says the renewal started (effect ``renew``): the node then runs the renewal exchange on its own
(``node/renewal.py``), and its outcome is a ``renewed`` or ``renewal_failed`` lifecycle event, and the responder's
record. Used by the CA migration to move every node to the permanent CA at once.
"""

from __future__ import annotations

from ...choria.config import SECURITY_CERT_KEY
from ...choria.protocol import StatusCode
from ..state import NodeState
from .base import ActionResult, Refusal, answer


def renew(node: NodeState) -> ActionResult:
    if not node.config.get(SECURITY_CERT_KEY):
        raise Refusal(StatusCode.ABORTED, f"{node.identity} is configured without a certificate: nothing to renew")
    return answer("renew", {"message": f"{node.identity} renews its certificate now"}, effect="renew")
