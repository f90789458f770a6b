"""Fixtures of the integration tests: the broker provisioned nodes move to, a CA for the built-in signer, and one
site with its brokers on a namespace host (the broker role is slow to apply over SSH, so the modules that need a
running site share it)."""

import pytest

from ansible_collections.zeroinit.bootstrap.plugins.module_utils.pki.ca import CertificateAuthority
from tests.support.broker import EmbeddedBroker
from tests.support.site import SiteBrokerHost


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


@pytest.fixture(scope="session")
def site_broker(tmp_path_factory):
    broker = SiteBrokerHost(tmp_path_factory.mktemp("site-broker"))
    try:
        yield broker.start()
    finally:
        broker.destroy()
