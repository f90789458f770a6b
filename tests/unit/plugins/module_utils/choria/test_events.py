"""Lifecycle events and registration data, built by nodes and read by the controller."""

import json

from ansible_collections.zeroinit.bootstrap.plugins.module_utils.choria import events as p
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.choria import protocol


def test_lifecycle_event_matches_choria_cloudevent_shape(choria_reference):
    with open(choria_reference / "lifecycle" / "cloudEventFormatShutdown.json") as handle:
        example = json.load(handle)
    event = p.lifecycle_event("startup", "n1.example", version="0.1.0")
    assert set(example) <= set(event)
    assert set(example["data"]) <= set(event["data"])
    assert event["type"] == "io.choria.lifecycle.v1.startup"
    assert p.parse_lifecycle_event(json.dumps(event))["type"] == "startup"


def test_registration_data_is_read_bare_and_inside_a_choria_request():
    doc = p.registration_document("n1.example.net", {"role": "web"})
    assert p.parse_registration(json.dumps(doc).encode()) == ("n1.example.net", {"role": "web"})
    wrapped = protocol.encode_request(
        protocol.Request(agent="registration", body=doc, callerid="choria=n1", senderid="n1.example.net")
    )
    assert p.parse_registration(wrapped) == ("n1.example.net", {"role": "web"})
    assert p.parse_registration(b"not json") is None
    assert p.parse_registration(b'{"facts": {}}') is None
