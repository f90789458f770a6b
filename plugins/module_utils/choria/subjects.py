# Copyright: zeroinit.bootstrap contributors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)
"""NATS subjects of a Choria network, and the identity rule that makes a name usable in them.

Subjects as go-choria names them: node-directed ``<collective>.node.<identity>``, broadcast
``<collective>.broadcast.agent.<agent>``, replies ``<collective>.reply.<md5hex(callerid)>.<requestid>``,
lifecycle events ``choria.lifecycle.event.<type>.<component>`` and provisioning registration data
``choria.provisioning_data`` (older servers) and ``choria.provisioning_data.<identity>`` (newer ones).
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

PROVISIONING_COLLECTIVE = "provisioning"
LIFECYCLE_COMPONENT = "provision_mode_server"
CONFIGURED_COMPONENT = "server"  # the lifecycle component of a configured node (Choria's server)
REGISTRATION_SUBJECT = "choria.provisioning_data"
# Newer Choria servers publish registration data per node as well; we publish both (cheap).
REGISTRATION_SUBJECT_PER_NODE = "choria.provisioning_data.{identity}"
LIFECYCLE_SUBJECT_WILDCARD = "choria.lifecycle.event.>"
MAX_IDENTITY_LENGTH = 253
# nats-server closes a connection whose control line ("PUB <subject> <reply> <size>") passes 4 KiB, and nats-py
# does not come back from that on its own: nothing we publish gets near it.
MAX_SUBJECT_LENGTH = 1024
MAX_TOKEN_LENGTH = 128  # a collective, an agent name or a request id as one subject token
IDENTITY_RULE = "dot-separated labels of letters, digits, '_' and '-', no label starting or ending with '-'"

# A DNS-style label of letters, digits, "_" and "-" (not first or last), at most 63 characters.
_LABEL = r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
_IDENTITY_RE = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")
# A literal subject token: printable ASCII (33-126) but '*' (0x2a), '.' (0x2e) and '>' (0x3e); one regex match
# instead of a Python loop over the characters (every reply a node sends is checked).
_TOKEN = r"[\x21-\x29\x2b-\x2d\x2f-\x3d\x3f-\x7e]+"
_TOKEN_RE = re.compile(_TOKEN)
_SUBJECT_RE = re.compile(rf"{_TOKEN}(?:\.{_TOKEN})*")


def valid_identity(identity: Any) -> bool:
    """THE identity rule: a name usable as a NATS subject token, an Ansible host name and a certificate CN.

    Labels of letters, digits, ``_`` and ``-`` (a label neither starts nor ends with ``-``, at most 63
    characters) joined by single dots, at most 253 characters in all. So no wildcard (``*``, ``>``), no space,
    no ``:`` (Ansible reads ``host:port``) and no empty label (``a..b`` or a trailing dot make an invalid subject).
    """
    return (
        isinstance(identity, str)
        and len(identity) <= MAX_IDENTITY_LENGTH
        and _IDENTITY_RE.fullmatch(identity) is not None
    )


def valid_subject_token(token: Any, limit: int = MAX_TOKEN_LENGTH) -> bool:
    """One token of a literal NATS subject: printable ASCII without space, ``.``, ``*`` or ``>``."""
    return isinstance(token, str) and len(token) <= limit and _TOKEN_RE.fullmatch(token) is not None


def valid_reply_subject(subject: Any, collective: str = PROVISIONING_COLLECTIVE) -> bool:
    """Where a node may publish a reply: a literal subject under ``<collective>.reply.`` (go-choria's brokers let
    a server publish only there), at most :data:`MAX_SUBJECT_LENGTH` characters."""
    if not isinstance(subject, str) or len(subject) > MAX_SUBJECT_LENGTH:
        return False
    prefix = f"{collective}.reply."
    return subject.startswith(prefix) and _SUBJECT_RE.fullmatch(subject, len(prefix)) is not None


def valid_publish_subject(subject: Any) -> bool:
    """A literal subject nats-server accepts in a PUB: printable ASCII tokens, no wildcard, not too long."""
    return (
        isinstance(subject, str) and len(subject) <= MAX_SUBJECT_LENGTH and _SUBJECT_RE.fullmatch(subject) is not None
    )


def _md5hex(text: str) -> str:
    # surrogatepass: a caller id is network text; hashing it must not raise whatever it holds
    return hashlib.md5(text.encode("utf-8", "surrogatepass")).hexdigest()  # nosec - subject naming, as Choria does


def node_subject(identity: str, collective: str = PROVISIONING_COLLECTIVE) -> str:
    return f"{collective}.node.{identity}"


def broadcast_subject(agent: str, collective: str = PROVISIONING_COLLECTIVE) -> str:
    return f"{collective}.broadcast.agent.{agent}"


def reply_subject(callerid: str, requestid: str, collective: str = PROVISIONING_COLLECTIVE) -> str:
    return f"{collective}.reply.{_md5hex(callerid)}.{requestid}"


def reply_inbox_prefix(callerid: str, collective: str = PROVISIONING_COLLECTIVE) -> str:
    """The subject prefix under which every reply to ``callerid`` arrives (subscribe to ``prefix + '.>'``)."""
    return f"{collective}.reply.{_md5hex(callerid)}"


def lifecycle_subject(event_type: str, component: str = LIFECYCLE_COMPONENT) -> str:
    return f"choria.lifecycle.event.{event_type}.{component}"


def registration_subject(identity: str) -> str:
    """The per-node registration subject newer Choria servers publish on."""
    return REGISTRATION_SUBJECT_PER_NODE.format(identity=identity)
