"""THE event listening: which announcements become node events, which are refused, and that parsing is bounded."""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace

import pytest

from ansible_collections.zeroinit.bootstrap.plugins.module_utils.choria import events, protocol
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.provisioning.listener import NodeEventListener
from tests.support.rules import IDENTITIES


def message(doc) -> SimpleNamespace:
    data = doc if isinstance(doc, bytes) else json.dumps(doc).encode("utf-8")
    return SimpleNamespace(data=data)


def listen(*steps):
    """Feed (handler, message) pairs to a listener; returns (events, rejections, undecodable)."""
    got, rejected = [], []
    listener = NodeEventListener(got.append, lambda *args: rejected.append(args))

    async def go():
        for handler, msg in steps:
            await getattr(listener, handler)(msg)

    asyncio.run(go())
    return got, rejected, listener.undecodable


@pytest.mark.parametrize(
    "handler,doc,kind,departure",
    [
        ("on_lifecycle", events.lifecycle_event("startup", "n1.example.net"), "startup", False),
        ("on_lifecycle", events.lifecycle_event("alive", "n1.example.net"), "alive", False),
        ("on_lifecycle", events.lifecycle_event("shutdown", "n1.example.net"), "shutdown", True),
        ("on_lifecycle", events.lifecycle_event("provisioned", "n1.example.net"), "provisioned", True),
        ("on_lifecycle", events.lifecycle_event("startup", "n1.example.net")["data"], "startup", False),  # bare
        ("on_registration", events.registration_document("n1.example.net", {"rack": "r1"}), "registration", False),
    ],
)
def test_announcements_become_events(handler, doc, kind, departure):
    got, rejected, undecodable = listen((handler, message(doc)))
    assert [(e.identity, e.kind, e.departure) for e in got] == [("n1.example.net", kind, departure)]
    assert rejected == [] and undecodable == 0
    event = got[0]
    if kind == "registration":
        assert event.facts == {"rack": "r1"} and event.source == "registration"
    else:
        assert event.summary["type"] == kind and event.source == "lifecycle"


def test_registration_inside_a_choria_request_is_read_too():
    doc = events.registration_document("n2.example.net", {})
    wrapped = protocol.encode_request(
        protocol.Request(agent="registration", body=doc, callerid="choria=n2", senderid="n2.example.net")
    )
    got, _rejected, _undecodable = listen(("on_registration", message(wrapped)))
    assert [e.identity for e in got] == ["n2.example.net"]


def test_configured_servers_events_are_not_provisioning_nodes():
    got, rejected, undecodable = listen(
        ("on_lifecycle", message(events.lifecycle_event("startup", "m1.example.net", component="server")))
    )
    assert got == [] and rejected == [] and undecodable == 0


@pytest.mark.parametrize(
    "raw",
    [b"\x00\xff", b"[1, 2]", b"{}", b'{"identity": 3}', b"x" * (protocol.MAX_MESSAGE_BYTES + 1)],
)
def test_garbage_is_counted_never_raised(raw):
    got, rejected, undecodable = listen(("on_lifecycle", message(raw)), ("on_registration", message(raw)))
    assert got == [] and rejected == [] and undecodable == 2


@pytest.mark.parametrize("identity,valid", [row for row in IDENTITIES if isinstance(row[0], str)])
def test_identities_follow_the_one_rule(identity, valid):
    got, rejected, _undecodable = listen(
        ("on_lifecycle", message(events.lifecycle_event("startup", identity))),
        ("on_registration", message(events.registration_document(identity, {}))),
    )
    assert len(got) == (2 if valid else 0)
    assert [(source, kind) for _shown, source, kind in rejected] == (
        [] if valid else [("lifecycle", "startup"), ("registration", "registration")]
    )
