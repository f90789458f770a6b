"""Fixtures shared by every test: the shared reference data and a real nats-server on loopback."""
import os
import pathlib

import pytest

from ansible_collections.zeroinit.bootstrap.plugins.module_utils.broker import EmbeddedBroker

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _reference_dir() -> pathlib.Path:
    """go-choria's schemas and DDLs: ``shared/choria-reference`` beside the checkout, or $CHORIA_REFERENCE."""
    env = os.environ.get("CHORIA_REFERENCE")
    if env:
        return pathlib.Path(env)
    for parent in [ROOT] + list(ROOT.parents):
        candidate = parent / "shared" / "choria-reference"
        if candidate.is_dir():
            return candidate
    return ROOT / "tests" / "data" / "choria-reference"


@pytest.fixture(scope="session")
def choria_reference() -> pathlib.Path:
    path = _reference_dir()
    assert (path / "protocol-v1" / "request.json").is_file(), "Choria reference schemas not found at %s" % path
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
