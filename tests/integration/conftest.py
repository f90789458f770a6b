"""Fixtures of the provisioning tests: the broker provisioned nodes move to, and a CA for the built-in signer."""

import pytest

from ansible_collections.zeroinit.bootstrap.plugins.module_utils.pki.ca import CertificateAuthority
from tests.support.broker import EmbeddedBroker


@pytest.fixture
def members():
    """The broker nodes move to once provisioned."""
    with EmbeddedBroker() as broker:
        yield broker


@pytest.fixture
def ca(tmp_path):
    """A CA made for the test: the signer's ``ca_cert`` and ``ca_key``."""
    cert, key = str(tmp_path / "ca.pem"), str(tmp_path / "ca.key")
    CertificateAuthority.load_or_create(cert, key, common_name="test provisioning CA")
    return {"ca_cert": cert, "ca_key": key}
