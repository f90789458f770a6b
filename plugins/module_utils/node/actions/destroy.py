# Copyright: zeroinit.bootstrap contributors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)
"""``choria_provision#destroy`` (ours, not in go-choria's DDL): the node's state wiped, then provisioning or a stop.

Everything in the node's state directory goes: ``server.conf`` first (a node killed midway comes back in
provisioning mode, not configured with half its files), then the journal, then ``ssl/`` (the private key, the CSR,
the certificates and the ones a reprovision set aside), then anything else there (the site lock among them: wiping
the state is the one way it is removed). The reply carries the certificates the node held, so the controller can
revoke them; it says so before the files are gone. Input ``after``: ``reprovision`` (the default: come back in
provisioning mode, fresh) or ``shutdown`` (stop serving this node).
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass

from ...choria.protocol import StatusCode
from ...common.files import fsync_directory, read_text
from ..journal import JOURNAL
from ..state import NodeState
from .base import ActionResult, Refusal, answer, text_input
from .configure import CERTIFICATE_LIMIT, PEM_CERTIFICATE

DESTROY_AFTER = ("reprovision", "shutdown")


@dataclass
class DestroyInput:
    after: str = "reprovision"

    @classmethod
    def parse(cls, data: dict) -> DestroyInput:
        after = text_input(data, "after") or "reprovision"
        if after not in DESTROY_AFTER:
            raise Refusal(StatusCode.INVALID_DATA, f"input 'after' must be one of {', '.join(DESTROY_AFTER)}")
        return cls(after)


def held_certificates(node: NodeState) -> list[str]:
    """The certificates in the node's ssl/ (current, then the one a reprovision set aside), each bounded."""
    found = []
    for path in (node.ssl_path("certificate.pem"), os.path.join(node.ssldir, "previous", "certificate.pem")):
        try:
            text = read_text(path)
        except (OSError, UnicodeDecodeError):
            continue
        if text and len(text) <= CERTIFICATE_LIMIT and text.lstrip().startswith(PEM_CERTIFICATE):
            found.append(text)
    return found


def wipe(node: NodeState) -> list[str]:
    """Remove every entry of the node's state directory; the names removed, in the order they went."""
    removed = []
    first = ["server.conf", JOURNAL, "ssl"]
    rest = sorted(name for name in os.listdir(node.node_dir) if name not in first)
    for name in first + rest:
        path = os.path.join(node.node_dir, name)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        elif os.path.lexists(path):
            os.unlink(path)
        else:
            continue
        removed.append(name)
        if name == "server.conf":
            fsync_directory(node.node_dir)
    fsync_directory(node.node_dir)
    return removed


def destroy(node: NodeState, request: DestroyInput) -> ActionResult:
    certificates = held_certificates(node)
    removed = wipe(node)
    os.makedirs(node.ssldir, mode=0o700, exist_ok=True)
    node.config = {}
    node.lock.release()
    files = ", ".join(removed) or "nothing"
    what = "coming back in provisioning mode" if request.after == "reprovision" else "shutting down"
    return answer(
        "destroy",
        {
            "message": f"Destroyed the state of {node.identity} ({files} removed); {what}",
            "certificates": certificates,
            "removed": removed,
            "after": request.after,
        },
        effect=request.after,
        delay=0.2,
    )
