"""A node in provisioning mode in a temporary directory, and a test CA to sign its CSRs."""

import pytest

from ansible_collections.zeroinit.bootstrap.plugins.module_utils.node.state import NodeState
from tests.support.fleet import TestCA
from tests.support.node_requests import TOKEN


@pytest.fixture(scope="module")
def ca():
    return TestCA()


@pytest.fixture
def node(tmp_path):
    node = NodeState("web1.example.net", str(tmp_path / "node"), TOKEN, {"role": "web"})
    node.load()
    return node
