"""The collection's NATS connection against a real nats-server: it comes back after every kind of disconnect with
its subscriptions, one undeliverable message does not stop it reading, and TLS with a password is used as given."""

from __future__ import annotations

import asyncio

import pytest

from ansible_collections.zeroinit.bootstrap.plugins.module_utils.choria.transport import (
    ConnectError,
    UndeliverableMessage,
    connect,
    tls_context,
)
from tests.support.broker import EmbeddedBroker
from tests.support.fleet import TestCA


async def _until(condition, timeout: float = 10.0) -> bool:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            return False
        await asyncio.sleep(0.02)
    return True


async def _delivered(sender, subject: str, received: list, timeout: float = 10.0) -> bool:
    """Publish until the subscriber has a message again (it may still be reconnecting)."""
    before = len(received)
    deadline = asyncio.get_running_loop().time() + timeout
    while len(received) == before and asyncio.get_running_loop().time() < deadline:
        await sender.publish(subject, b"ping")
        await sender.flush()
        await asyncio.sleep(0.05)
    return len(received) > before


class Victim:
    """A connection subscribed to ``provisioning.node.victim`` that keeps its errors and messages, and a sender."""

    SUBJECT = "provisioning.node.victim"

    def __init__(self, broker):
        self.broker, self.errors, self.received = broker, [], []

    async def __aenter__(self):
        async def on_error(exc):
            self.errors.append(exc)

        async def on_message(msg):
            self.received.append(msg.data)

        self.nc = await connect([self.broker.url], name="victim", error_cb=on_error)
        self.sender = await connect([self.broker.url], name="sender")
        await self.nc.subscribe(self.SUBJECT, cb=on_message)
        await self.nc.flush()
        return self

    async def delivered(self, timeout: float = 10.0) -> bool:
        return await _delivered(self.sender, self.SUBJECT, self.received, timeout)

    async def __aexit__(self, *exc):
        await self.sender.close()
        await self.nc.close()


def test_a_protocol_error_from_the_server_reconnects_with_the_subscriptions(nats_broker):
    """nats-py closes for good after -ERR 'maximum control line exceeded'; this connection comes back."""

    async def run():
        async with Victim(nats_broker) as victim:
            await victim.nc.publish("provisioning.reply." + "r" * 5000, b"x")  # the server closes this connection
            assert await _until(lambda: any("maximum control line" in str(e) for e in victim.errors))
            assert await victim.delivered()
            return victim.nc.is_connected, victim.nc.is_closed, victim.nc.stats["reconnects"]

    connected, closed, reconnects = asyncio.run(run())
    assert connected and not closed and reconnects >= 1


def hpub(headers: bytes, payload: bytes = b"hi") -> bytes:
    head = b"HPUB provisioning.node.victim %d %d\r\n" % (len(headers), len(headers) + len(payload))
    return head + headers + payload + b"\r\n"


@pytest.mark.parametrize(
    "raw",
    [
        b"PUB provisioning.node.victim r\xff\xfe 2\r\nhi\r\n",  # a reply subject that is not UTF-8
        hpub(b"XXXX\r\n\r\n"),  # headers without NATS/1.0
        hpub(b"NATS/1.0 \xff\xff\r\n\r\n"),  # a status that is not text
    ],
    ids=["reply-not-utf8", "headers-junk", "status-not-utf8"],
)
def test_an_undeliverable_message_is_dropped_and_reading_goes_on(nats_broker, raw):
    """Plain nats-py stops reading (connected but deaf) after any of these."""

    async def run():
        async with Victim(nats_broker) as victim:
            answer = await asyncio.get_running_loop().run_in_executor(None, nats_broker.send_raw, raw)
            assert b"-ERR" not in answer
            assert await _until(lambda: victim.nc.undeliverable == 1)
            assert await victim.delivered(timeout=5)
            return victim.errors, victim.nc.stats["reconnects"]

    errors, reconnects = asyncio.run(run())
    assert reconnects == 0
    assert [type(e) for e in errors] == [UndeliverableMessage]


def test_a_broker_restart_is_survived(nats_broker):
    async def run():
        received = []

        async def on_message(msg):
            received.append(msg.data)

        nc = await connect([nats_broker.url], name="victim")
        try:
            await nc.subscribe("provisioning.node.victim", cb=on_message)
            await nc.flush()
            await asyncio.get_running_loop().run_in_executor(None, nats_broker.restart, 1.0)
            sender = await connect([nats_broker.url], name="sender")
            try:
                return await _delivered(sender, "provisioning.node.victim", received), nc.stats["reconnects"]
            finally:
                await sender.close()
        finally:
            await nc.close()

    delivered, reconnects = asyncio.run(run())
    assert delivered and reconnects >= 1


REFUSED_ATTEMPTS = 5


@pytest.fixture(scope="module")
def secured_broker(tmp_path_factory):
    """A provisioning port that requires TLS (verified against its CA) and a user and password."""
    ca = TestCA("provisioning broker CA")
    files = ca.write_key_pair(tmp_path_factory.mktemp("broker-tls"), "broker", ips=["127.0.0.1"], server=True)
    tls = {"cert": files["cert"], "key": files["key"], "ca": files["ca"], "verify": False}
    with EmbeddedBroker(tls=tls, users={"node": "node-password", "provisioner": "prov-password"}) as broker:
        yield broker, files["ca"]


def test_tls_and_a_password_reach_a_secured_broker_and_nothing_less_does(secured_broker):
    broker, ca = secured_broker

    async def attempt(tls, user=None, password=None, reconnect=True):
        options = dict(name="client", tls=tls, user=user, password=password, connect_timeout=10, reconnect=reconnect)
        try:
            nc = await connect([broker.url], **options)
        except ConnectError as exc:
            return str(exc)
        await nc.close()
        return "connected"

    async def refused(*args) -> list:
        # The server sends its -ERR and closes; when the client's PING is still unread there, the close is a reset
        # that can reach the client before the -ERR does, so the reason is looked for over a few single attempts.
        return [await attempt(*args, reconnect=False) for _attempt in range(REFUSED_ATTEMPTS)]

    async def run():
        return (
            await attempt(tls_context(ca=ca), "node", "node-password"),
            await refused(tls_context(ca=ca), "node", "wrong"),
            await refused(tls_context(ca=ca)),
            await attempt(None, "node", "node-password"),
        )

    good, wrong_password, no_password, no_tls = asyncio.run(run())
    assert good == "connected"
    for errors in (wrong_password, no_password):
        assert all(error.startswith(f"could not connect to {broker.url}") for error in errors), errors
        assert any("Authorization Violation" in error for error in errors), errors
    assert no_tls.startswith("could not connect to tls://127.0.0.1:")
