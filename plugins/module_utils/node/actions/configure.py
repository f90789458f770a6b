# Copyright: zeroinit.bootstrap contributors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)
"""``choria_provision#configure``: certificate, CA and configuration checked, then written as one set.

The certificate must carry this node's key (made by gencsr) and be signed by the given CA; the configuration is
``key = value`` settings without line breaks. ``key`` is refused: private keys are made on the node, never sent.

A configure that installs a CA commits the site lock in the same journalled set of files (``site_lock.py``): the
node is locked to that CA, and to the provisioning CA when the agent has one, from the moment the configuration
is on disk; a crash cannot leave one without the other. A configure without certificate and CA installs no trust
to lock to and leaves the lock as it was.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass

from ...choria.config import (
    IDENTITY_KEY,
    SECURITY_CA_KEY,
    SECURITY_CERT_KEY,
    SECURITY_KEY_KEY,
    SECURITY_PROVIDER_KEY,
    check_entry,
    render_config,
)
from ...choria.protocol import StatusCode
from ...choria.security import TrustConfigError
from ...common.deps import x509
from ...common.files import read_bytes
from ...pki.x509 import certificate_matches_key, is_issued_by
from ..journal import write_set
from ..site_lock import SiteLock
from ..state import NodeState
from .base import ActionResult, Refusal, RequestOrigin, answer, need_cryptography

CONFIG_LIMIT = 2048
CERTIFICATE_LIMIT = 10240
CA_LIMIT = 20480
PEM_CERTIFICATE = "-----BEGIN CERTIFICATE-----"


@dataclass
class ConfigureInput:
    config: dict
    certificate: str | None = None  # with ca, or neither
    ca: str | None = None
    ssldir: str | None = None

    @classmethod
    def parse(cls, data: dict) -> ConfigureInput:
        raw = data.get("config")
        if raw is None or raw == "":
            raise Refusal(StatusCode.MISSING_DATA, "missing input 'config'")
        if not isinstance(raw, str) or len(raw) > CONFIG_LIMIT or not re.match(r"^{.+}$", raw, re.S):
            raise Refusal(
                StatusCode.INVALID_DATA,
                f"input 'config' must be a JSON object as a string of at most {CONFIG_LIMIT} characters",
            )
        try:
            config = json.loads(raw)
        except ValueError as exc:
            raise Refusal(StatusCode.INVALID_DATA, f"input 'config' is not valid JSON: {exc}") from None
        if not isinstance(config, dict):
            raise Refusal(StatusCode.INVALID_DATA, "input 'config' must be a JSON object")
        for key, value in config.items():
            problem = check_entry(key, value)
            if problem:
                raise Refusal(StatusCode.INVALID_DATA, f"input 'config': {problem}")
        if data.get("key"):
            raise Refusal(
                StatusCode.INVALID_DATA,
                "input 'key' is refused: the private key is made on the node by gencsr and never sent over the network",
            )
        ssldir = data.get("ssldir")
        if ssldir not in (None, "") and not isinstance(ssldir, str):
            raise Refusal(StatusCode.INVALID_DATA, "input 'ssldir' must be a string")
        certificate, ca = data.get("certificate"), data.get("ca")
        if certificate or ca:
            for name, value, limit in (("certificate", certificate, CERTIFICATE_LIMIT), ("ca", ca, CA_LIMIT)):
                if not value:
                    raise Refusal(StatusCode.MISSING_DATA, f"missing input '{name}' (certificate and ca come together)")
                if not isinstance(value, str) or len(value) > limit or not value.lstrip().startswith(PEM_CERTIFICATE):
                    raise Refusal(
                        StatusCode.INVALID_DATA,
                        f"input '{name}' must be a PEM certificate of at most {limit} characters",
                    )
        else:
            certificate = ca = None
        return cls(config, certificate, ca, ssldir or None)


_CA_CACHE: dict[str, list] = {}


def _load_ca(pem: str) -> list:
    """Parsed CA bundles, cached: a fleet is configured with the same CA thousands of times."""
    cas = _CA_CACHE.get(pem)
    if cas is None:
        cas = x509.load_pem_x509_certificates(pem.encode("ascii"))
        if len(_CA_CACHE) > 16:
            _CA_CACHE.clear()
        _CA_CACHE[pem] = cas
    return cas


def _check_certificates(node: NodeState, certificate: str, ca: str) -> None:
    need_cryptography()
    try:
        cert = x509.load_pem_x509_certificate(certificate.encode("ascii"))
    except ValueError as exc:
        raise Refusal(StatusCode.INVALID_DATA, f"input 'certificate' does not parse: {exc}") from None
    try:
        cas = _load_ca(ca)
    except ValueError as exc:
        raise Refusal(StatusCode.INVALID_DATA, f"input 'ca' does not parse: {exc}") from None
    key_pem = read_bytes(node.ssl_path("private.pem"))
    if key_pem is None:
        raise Refusal(StatusCode.ABORTED, f"no private key in {node.ssldir}: run gencsr first")
    if not certificate_matches_key(cert, key_pem):
        raise Refusal(StatusCode.INVALID_DATA, f"input 'certificate' does not match the private key of {node.identity}")
    if not any(is_issued_by(cert, issuer) for issuer in cas):
        raise Refusal(
            StatusCode.INVALID_DATA,
            f"input 'certificate' is not signed by the given 'ca' (issuer {cert.issuer.rfc4514_string()})",
        )


def _site_lock(node: NodeState, ca: str, origin: RequestOrigin | None) -> SiteLock:
    """The lock this configure commits; refused when the CA bundle could not anchor the site's provisioners.

    The keys come from the verifiers, which hold them already (SiteLock.at_commit would parse both bundles again
    for every node of a fleet); a bundle no verifier can be made from would lock the node for good, so it is refused.
    """
    try:
        site = node.trust.site_verifier(ca)
    except TrustConfigError as exc:
        raise Refusal(StatusCode.INVALID_DATA, f"input 'ca' cannot lock {node.identity} to its site: {exc}") from None
    provisioning = node.trust.verifier
    return SiteLock(
        site_ca_keys=tuple(dict.fromkeys(site.ca_key_sha256s)),
        provisioning_ca_keys=tuple(dict.fromkeys(provisioning.ca_key_sha256s)) if provisioning else (),
        committed_at=int(origin.accepted_at) if origin else 0,
        committed_by=origin.committer if origin else "",
        request_id=origin.requestid if origin else "",
    )


def configure(node: NodeState, request: ConfigureInput, origin: RequestOrigin | None = None) -> ActionResult:
    if request.ssldir is not None and os.path.normpath(request.ssldir) != os.path.normpath(node.ssldir):
        raise Refusal(
            StatusCode.INVALID_DATA, f"input 'ssldir' {request.ssldir!r} is not this node's ssldir {node.ssldir}"
        )
    files: list[tuple[str, bytes | str, int]] = []
    final = dict(request.config)
    lock_text = None
    if request.certificate is not None:
        _check_certificates(node, request.certificate, request.ca)
        lock_text = _site_lock(node, request.ca, origin).dump()
        files += [
            (node.ssl_path("certificate.pem"), request.certificate, 0o644),
            (node.ssl_path("ca.pem"), request.ca, 0o644),
            (node.site_ca_path, request.ca, 0o644),
            (node.site_lock_path, lock_text, 0o600),
        ]
        final.update(
            {
                SECURITY_PROVIDER_KEY: "file",
                SECURITY_CERT_KEY: node.ssl_path("certificate.pem"),
                SECURITY_KEY_KEY: node.ssl_path("private.pem"),
                SECURITY_CA_KEY: node.ssl_path("ca.pem"),
            }
        )
    final[IDENTITY_KEY] = node.identity
    text = render_config(final, header="Written by the zeroinit node agent (choria_provision#configure)")
    files.append((node.server_conf, text, 0o640))
    write_set(node.node_dir, files, durable=node.durable)
    node.config = final
    if lock_text is not None:
        node.site_lock_text, node.site_ca_pem = lock_text, request.ca
    return answer("configure", {"message": f"Wrote {len(files)} files to {node.node_dir}"})
