# Copyright: zeroinit.bootstrap contributors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)
"""The one-way site lock: once a node committed a configuration, only its site may move it again.

As Constellation's node lock: when ``configure`` commits, the node records the site it was configured under, and
from then on :data:`SITE_LOCKED_ACTIONS` (``gencsr``, ``configure``, ``reprovision``, ``trust``, ``destroy``:
what changes the node's keys, certificates or trust) are accepted only in a request signed by a provisioner of that
site. A request with the token alone is refused, and so is one signed under another CA; each refusal says which. ``restart``, ``shutdown``
and the read-only agents are not locked: they change no trust (``restart`` keeps its loop guard).

What identifies the site: the SHA-256 of the public key (DER SubjectPublicKeyInfo) of every CA certificate in

* the CA bundle the configuration installed (``ssl/ca.pem``: the site CA that issued the node's certificate), and
* the provisioning CA bundle the node verified the request with, when signed requests are on;

a signer is "of the site" when the trust anchor its path ended at (:attr:`VerifiedSigner.ca_key_sha256
<..choria.security.VerifiedSigner>`) is one of those keys. Keys rather than certificate fingerprints, as kubeadm
pins its CA: a site that re-issues its CA certificate with the same key keeps its nodes. The site name is kept for
messages only; a name proves nothing.

A later ``configure`` accepted under the lock commits a new lock (:meth:`SiteLock.at_commit`), so a site moves its
own nodes to a new CA by configuring them, signed under the old one, with a bundle that holds the new one. A
``trust`` accepted under the lock (the CA migration) moves the site CA keys to the new bundle's and keeps the
provisioning CA pins (:meth:`SiteLock.with_site_ca_keys`): widened to old + new, provisioners of either CA are of
the site; narrowed to the new CA, one of the dropped CA no longer is. There is
no unlock: the lock survives restarts and ``reprovision``; only wiping the node's state removes it. An unreadable
lock file refuses every locked action rather than unlocking (:func:`site_lock_refusal`).

In token-only provisioning (no provisioning CA) the first ``configure`` is trust on first use: whoever configures
a fresh node first pins it. Signed requests and the provisioning JWT are what close that gap.

On disk: :meth:`SiteLock.dump` gives the JSON text (``"version": 1``), :meth:`SiteLock.load` reads it back; writing
is the caller's (an atomic write), so this file does no I/O.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, replace

from ..choria.security import SITE_LOCKED, TrustConfigError, ca_key_fingerprints

SITE_LOCK_VERSION = 1
SITE_LOCKED_ACTIONS = frozenset({"gencsr", "configure", "reprovision", "trust", "destroy"})
MAX_SITE_LOCK_TEXT = 64 * 1024
MAX_SITE_LOCK_KEYS = 64
MAX_SITE_NAME = 253

_KEY_RE = re.compile(r"^[0-9a-f]{64}$")


class SiteLockError(ValueError):
    """A site lock that cannot be made or read; the message says why."""


@dataclass(frozen=True)
class SiteLock:
    """The site a node is locked to."""

    site_ca_keys: tuple  # hex SHA-256 of the public keys of the configured CA bundle
    provisioning_ca_keys: tuple = ()  # the same for the provisioning CA bundle, when signed requests are on
    site: str = ""
    committed_at: int = 0
    committed_by: str = ""  # the signer's subject, or the caller id of a token-only configure
    request_id: str = ""

    @classmethod
    def at_commit(
        cls,
        ca_bundle_pem,
        provisioning_ca_pem=None,
        site: str = "",
        committed_at: int = 0,
        committed_by: str = "",
        request_id: str = "",
    ) -> SiteLock:
        """The lock a committed configuration leaves: its CA bundle, and the provisioning CA bundle if any."""
        site_keys = _bundle_keys(ca_bundle_pem or "", "the configuration's CA bundle")
        provisioning_keys = _bundle_keys(provisioning_ca_pem, "the provisioning CA") if provisioning_ca_pem else ()
        return cls(
            site_ca_keys=tuple(dict.fromkeys(site_keys)),
            provisioning_ca_keys=tuple(dict.fromkeys(provisioning_keys)),
            site=site or "",
            committed_at=int(committed_at),
            committed_by=committed_by or "",
            request_id=request_id or "",
        )

    def with_site_ca_keys(self, site_ca_keys, committed_at: int = 0, committed_by: str = "", request_id: str = ""):
        """The lock after a ``trust`` from a provisioner of this site: the site CA keys replaced, the rest kept."""
        return replace(
            self,
            site_ca_keys=tuple(dict.fromkeys(site_ca_keys)),
            committed_at=int(committed_at),
            committed_by=committed_by,
            request_id=request_id,
        )

    @property
    def ca_keys(self) -> frozenset:
        return frozenset(self.site_ca_keys) | frozenset(self.provisioning_ca_keys)

    @property
    def description(self) -> str:
        name = f"site {self.site!r}" if self.site else "its site"
        keys = ", ".join(k[:16] for k in (*self.site_ca_keys, *self.provisioning_ca_keys))
        return f"{name} (CA keys sha256 {keys})"

    def refusal(self, action: str, signer) -> str | None:
        """None when ``action`` may proceed on a node with this lock, else the refusal message.

        ``signer`` is the :class:`..choria.security.VerifiedSigner` of a request that verified, or None for a
        request without a signature (the token alone).
        """
        if action not in SITE_LOCKED_ACTIONS:
            return None
        if signer is None:
            return (
                f"node {SITE_LOCKED} {self.description}: {action} needs a request signed by a provisioner of that "
                "site; the token alone is refused"
            )
        if signer.ca_key_sha256 not in self.ca_keys:
            return (
                f"node {SITE_LOCKED} {self.description}: {action} signed under another CA is refused "
                f"({signer.subject} under {signer.ca_subject}, key sha256 {signer.ca_key_sha256[:16]})"
            )
        return None

    # -- on disk ------------------------------------------------------------------------------------------------------
    def dump(self) -> str:
        document = {
            "version": SITE_LOCK_VERSION,
            "site": self.site,
            "site_ca_keys_sha256": list(self.site_ca_keys),
            "provisioning_ca_keys_sha256": list(self.provisioning_ca_keys),
            "committed_at": self.committed_at,
            "committed_by": self.committed_by,
            "request_id": self.request_id,
        }
        return json.dumps(document, indent=2, sort_keys=True) + "\n"

    @classmethod
    def load(cls, text) -> SiteLock:
        """The lock from its JSON text; SiteLockError naming what is wrong (an unreadable lock never unlocks)."""
        if isinstance(text, bytes):
            text = text.decode("utf-8", "replace")
        if not isinstance(text, str) or len(text) > MAX_SITE_LOCK_TEXT:
            raise SiteLockError(f"the site lock is not text of at most {MAX_SITE_LOCK_TEXT} characters")
        try:
            document = json.loads(text)
        except (ValueError, RecursionError) as exc:
            raise SiteLockError(f"the site lock is not JSON: {exc}") from None
        if not isinstance(document, dict):
            raise SiteLockError("the site lock is not a JSON object")
        if document.get("version") != SITE_LOCK_VERSION:
            raise SiteLockError(
                f"site lock version {document.get('version')!r} is not supported (expected {SITE_LOCK_VERSION})"
            )
        site_keys = _keys(document, "site_ca_keys_sha256")
        provisioning_keys = _keys(document, "provisioning_ca_keys_sha256")
        if not site_keys:
            raise SiteLockError("the site lock names no site CA key")
        values = {}
        for name, kind, limit in (("site", str, MAX_SITE_NAME), ("committed_by", str, 1024), ("request_id", str, 64)):
            value = document.get(name, "")
            if not isinstance(value, kind) or len(value) > limit:
                raise SiteLockError(f"the site lock's {name} is not a string of at most {limit} characters")
            values[name] = value
        committed_at = document.get("committed_at", 0)
        if not isinstance(committed_at, int) or isinstance(committed_at, bool):
            raise SiteLockError("the site lock's committed_at is not an integer")
        return cls(site_keys, provisioning_keys, committed_at=committed_at, **values)


def _bundle_keys(pem, what: str) -> tuple:
    try:
        return ca_key_fingerprints(pem)
    except TrustConfigError as exc:
        raise SiteLockError(f"cannot lock the node to its site: {what}: {exc}") from None


def _keys(document: dict, name: str) -> tuple:
    keys = document.get(name, [])
    if not isinstance(keys, list) or len(keys) > MAX_SITE_LOCK_KEYS:
        raise SiteLockError(f"the site lock's {name} is not a list of at most {MAX_SITE_LOCK_KEYS} keys")
    for key in keys:
        if not isinstance(key, str) or not _KEY_RE.match(key):
            raise SiteLockError(f"the site lock's {name} holds {str(key)[:70]!r}, not a hex SHA-256")
    return tuple(keys)


def site_lock_refusal(lock_text, action: str, signer) -> str | None:
    """The judgement for one request from the lock file's text (None: the node is not locked)."""
    if action not in SITE_LOCKED_ACTIONS or lock_text is None:
        return None
    try:
        lock = SiteLock.load(lock_text)
    except SiteLockError as exc:
        return f"{exc}; refusing {action}: the lock is removed only by wiping the node's state"
    return lock.refusal(action, signer)
