"""Fixtures of the provisioner service's integration tests: a real three-server JetStream cluster on loopback."""

import pytest

from tests.support.broker import EmbeddedBroker, EmbeddedCluster


@pytest.fixture(scope="module")
def cluster():
    """Three routed nats-servers with JetStream, shared by the tests of a module (each uses its own site)."""
    with EmbeddedCluster(size=3) as servers:
        yield servers


@pytest.fixture
def plain_broker():
    """A nats-server without JetStream."""
    with EmbeddedBroker() as broker:
        yield broker


@pytest.fixture
def jetstream_broker():
    """A single nats-server with JetStream."""
    with EmbeddedBroker(jetstream=True) as broker:
        yield broker
