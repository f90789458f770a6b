# Copyright: zeroinit.bootstrap contributors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)
"""``choria_provision#trust`` (configured nodes; not in go-choria's DDL): replace the CA bundle the node trusts.

Used by the CA migration: widen the bundle to the old and the new CA, later narrow it to the new one. Input ``ca``:
PEM CA certificates (at most :data:`.configure.CA_LIMIT` characters), each a CA; ``check`` (boolean): only say
whether the bundle would change, with every other check made. Refused when the bundle does not hold
the CA that issued the node's own certificate: the node could then no longer check a renewed certificate, so it must
renew first. The file is replaced atomically; the reply says whether it changed. A bundle that only adds CAs is
added to the TLS context of the node's connection (effect ``trust_more``: it applies to every reconnection, with no
new connection now); one that drops a CA makes the node serve on a new connection without it (effect ``reconnect``).
Like ``reprovision``, it needs the token and, on a node locked to its site, a request signed by a provisioner of that
site (``site_lock.SITE_LOCKED_ACTIONS``). Such a ``trust`` moves the lock with the bundle: the lock's site CA keys
become the new bundle's (the provisioning CA pins stay), written with ca.pem and the lock's CA bundle as one
journalled set, so after the migration drops the temporary CA its provisioners are no longer of the site.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from ...choria.config import SECURITY_CA_KEY, SECURITY_CERT_KEY
from ...choria.protocol import StatusCode
from ...choria.security import SITE_LOCKED, TrustConfigError
from ...common.deps import serialization, x509
from ...common.files import read_bytes
from ...pki.x509 import is_issued_by
from ..journal import write_set
from ..site_lock import SiteLock, SiteLockError
from ..state import NodeState
from .base import ActionResult, Refusal, RequestOrigin, answer, need_cryptography, text_input
from .configure import CA_LIMIT, PEM_CERTIFICATE


@dataclass
class TrustInput:
    ca: str
    check: bool = False  # only say whether the bundle would change (the controller's check mode)

    @classmethod
    def parse(cls, data: dict) -> TrustInput:
        ca = text_input(data, "ca", CA_LIMIT, required=True)
        if not ca.lstrip().startswith(PEM_CERTIFICATE):
            raise Refusal(
                StatusCode.INVALID_DATA, f"input 'ca' must be PEM CA certificates of at most {CA_LIMIT} characters"
            )
        check = data.get("check", False)
        if not isinstance(check, bool):
            raise Refusal(StatusCode.INVALID_DATA, "input 'check' must be a boolean")
        return cls(ca, check)


def _is_ca(cert) -> bool:
    try:
        return cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        return False


def _moved_lock(node: NodeState, ca: str, origin: RequestOrigin | None) -> tuple[SiteLock, SiteLock] | None:
    """(the lock now, the lock after this trust) on a locked node; None when the node is not locked."""
    if node.site_lock_text is None:
        return None
    if origin is None or origin.signer is None:  # the dispatcher refuses this first; never move a lock unsigned
        raise Refusal(StatusCode.ABORTED, f"{node.identity} {SITE_LOCKED} its site: trust needs a signed request")
    try:
        current = SiteLock.load(node.site_lock_text)
        keys = node.trust.site_verifier(ca).ca_key_sha256s
    except SiteLockError as exc:
        raise Refusal(StatusCode.ABORTED, f"{node.identity}: {exc}") from None
    except TrustConfigError as exc:
        raise Refusal(StatusCode.INVALID_DATA, f"input 'ca' cannot lock {node.identity} to its site: {exc}") from None
    return current, current.with_site_ca_keys(keys, origin.accepted_at, origin.committer, origin.requestid)


def trust(node: NodeState, request: TrustInput, origin: RequestOrigin | None = None) -> ActionResult:
    need_cryptography()
    ca_path, cert_path = node.config.get(SECURITY_CA_KEY), node.config.get(SECURITY_CERT_KEY)
    if not ca_path or not cert_path:
        raise Refusal(
            StatusCode.ABORTED, f"{node.identity} is configured without certificate files: nothing to trust with"
        )
    try:
        bundle = x509.load_pem_x509_certificates(request.ca.encode("ascii"))
    except (ValueError, UnicodeError) as exc:
        raise Refusal(StatusCode.INVALID_DATA, f"input 'ca' does not parse: {exc}") from None
    for position, cert in enumerate(bundle, 1):
        if not _is_ca(cert):
            raise Refusal(
                StatusCode.INVALID_DATA,
                f"input 'ca' certificate {position} ({cert.subject.rfc4514_string()}) is not a CA certificate",
            )
    own = read_bytes(cert_path)
    try:
        own_cert = x509.load_pem_x509_certificate(own) if own else None
    except ValueError:
        own_cert = None
    if own_cert is None:
        raise Refusal(StatusCode.ABORTED, f"{node.identity} cannot read its own certificate {cert_path}")
    if not any(is_issued_by(own_cert, ca) for ca in bundle):
        raise Refusal(
            StatusCode.ABORTED,
            f"the bundle does not hold the CA that issued {node.identity}'s certificate "
            f"({own_cert.issuer.rfc4514_string()}): it could not renew under it; renew it first",
        )
    text = request.ca if request.ca.endswith("\n") else request.ca + "\n"
    digests = [hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest() for cert in bundle]
    locks = _moved_lock(node, text, origin)
    lock_moves = locks is not None and locks[0].site_ca_keys != locks[1].site_ca_keys
    if read_bytes(ca_path) == text.encode("ascii") and not lock_moves:
        return answer(
            "trust", {"message": f"{ca_path} already holds this bundle", "changed": False, "ca_sha256": digests}
        )
    if request.check:
        return answer("trust", {"message": f"{ca_path} would be replaced", "changed": True, "ca_sha256": digests})
    try:
        current = x509.load_pem_x509_certificates(read_bytes(ca_path) or b"")
    except ValueError:
        current = []
    widened = all(cert in bundle for cert in current)
    files = [(ca_path, text, 0o644)]
    if locks is not None:
        lock_text = locks[1].dump()
        files += [(node.site_ca_path, text, 0o644), (node.site_lock_path, lock_text, 0o600)]
    write_set(node.node_dir, files, durable=node.durable)
    if locks is not None:
        node.site_lock_text, node.site_ca_pem = lock_text, text
    return answer(
        "trust",
        {"message": f"{ca_path} now holds {len(bundle)} CA certificate(s)", "changed": True, "ca_sha256": digests},
        # Nothing dropped: the live connection learns the new CAs. Something dropped: a new connection without it.
        effect="trust_more" if widened else "reconnect",
    )
