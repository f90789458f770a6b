# Copyright: zeroinit.bootstrap contributors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)
"""``choria_provision#reprovision``: provisioning back on, the certificate files kept aside, restart into it."""

from __future__ import annotations

import os

from ...choria.config import (
    PROVISION_KEY,
    SECURITY_CA_KEY,
    SECURITY_CERT_KEY,
    SECURITY_KEY_KEY,
    SECURITY_PROVIDER_KEY,
    render_config,
)
from ...common.files import atomic_write, fsync_directory
from ..state import NodeState
from .base import ActionResult, answer

SET_ASIDE = ("certificate.pem", "ca.pem", "private.pem", "csr.pem")


def reprovision(node: NodeState) -> ActionResult:
    config = dict(node.config)
    config[PROVISION_KEY] = "true"
    for key in (SECURITY_PROVIDER_KEY, SECURITY_CERT_KEY, SECURITY_KEY_KEY, SECURITY_CA_KEY):
        config.pop(key, None)
    atomic_write(node.server_conf, render_config(config, header="Reprovisioning requested"), mode=0o640)
    previous = node.ssl_path("previous")
    os.makedirs(previous, mode=0o700, exist_ok=True)
    moved = []
    for name in SET_ASIDE:
        if os.path.exists(node.ssl_path(name)):
            os.replace(node.ssl_path(name), os.path.join(previous, name))
            moved.append(name)
    fsync_directory(previous)
    fsync_directory(node.ssldir)
    node.config = config
    node.lock.release()
    kept = ", ".join(moved) or "no files"
    return answer(
        "reprovision", {"message": f"Reprovisioning {node.identity}; {kept} kept in {previous}"}, "reprovision", 0.2
    )
