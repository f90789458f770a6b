# Copyright: zeroinit.bootstrap contributors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)
"""Lifecycle events and provisioning registration data: build them (the node) and read them (the controller).

Reading is bounded: a document larger than the protocol's message limit, or not a JSON object, is refused
with a ProtocolError rather than parsed.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from .protocol import TRANSPORT, ProtocolError, decode_request, now, parse_json_object
from .subjects import LIFECYCLE_COMPONENT

REGISTRATION_PROTOCOL = "choria:registration:provisioning:1"
LIFECYCLE_PROTOCOL_PREFIX = "io.choria.lifecycle.v1."


def lifecycle_event(
    event_type: str, identity: str, component: str = LIFECYCLE_COMPONENT, version: str = "", extra: dict | None = None
) -> dict:
    """A Choria lifecycle event in CloudEvents v1 format (types: startup, shutdown, provisioned, alive)."""
    event_id = str(uuid.uuid4())
    stamp = now()
    protocol = f"{LIFECYCLE_PROTOCOL_PREFIX}{event_type}"
    data = {"protocol": protocol, "id": event_id, "identity": identity, "component": component, "timestamp": stamp}
    if version:
        data["version"] = version
    if extra:
        data.update(extra)
    return {
        "id": event_id,
        "source": "io.choria.lifecycle",
        "specversion": "1.0",
        "subject": identity,
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(stamp)),
        "type": protocol,
        "datacontenttype": "application/json",
        "data": data,
    }


def parse_lifecycle_event(raw: Any) -> dict:
    """The ``data`` of a CloudEvents lifecycle event, or of a bare Choria-format one."""
    doc = parse_json_object(raw, "lifecycle event")
    data = doc.get("data") if isinstance(doc.get("data"), dict) else doc
    if not isinstance(data.get("identity"), str) or not str(data.get("protocol", "")).startswith(
        LIFECYCLE_PROTOCOL_PREFIX
    ):
        raise ProtocolError("lifecycle event: missing identity or protocol")
    data = dict(data)
    data["type"] = data["protocol"].rsplit(".", 1)[-1]
    return data


def registration_document(identity: str, facts: dict, version: str = "") -> dict:
    """The provisioning-mode registration payload (what a provisioner learns without asking)."""
    return {
        "protocol": REGISTRATION_PROTOCOL,
        "identity": identity,
        "version": version,
        "timestamp": now(),
        "facts": facts,
    }


def parse_registration(raw: Any) -> tuple[str, dict] | None:
    """``(identity, facts)`` from registration data, or None when it is not registration data.

    Accepts the bare registration document (:func:`registration_document`) and the same document carried
    as the body of a Choria request, which is how older go-choria servers publish it.
    """
    try:
        doc: Any = parse_json_object(raw, "registration data")
        if doc.get("protocol") == TRANSPORT:
            doc = decode_request(raw).body
    except ProtocolError:
        return None
    if not isinstance(doc, dict):
        return None
    identity = doc.get("identity")
    facts = doc.get("facts")
    if not isinstance(identity, str):
        return None
    return identity, facts if isinstance(facts, dict) else {}
