"""Fixtures shared by every test: go-choria's reference data (vendored under tests/data) and a real nats-server."""

import pathlib

import pytest

from tests.support.broker import EmbeddedBroker

ROOT = pathlib.Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def choria_reference() -> pathlib.Path:
    path = ROOT / "tests" / "data" / "choria-reference"
    assert (path / "protocol-v1" / "request.json").is_file(), f"Choria reference schemas not found at {path}"
    return path


@pytest.fixture
def nats_broker():
    """A real nats-server on 127.0.0.1 and a free port, stopped after the test."""
    with EmbeddedBroker() as broker:
        yield broker


@pytest.fixture(scope="module")
def module_broker():
    """One nats-server shared by the tests of a module."""
    with EmbeddedBroker() as broker:
        yield broker
