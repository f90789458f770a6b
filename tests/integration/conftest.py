"""Fixtures shared by integration test modules: one site with its brokers on a namespace host (the broker role is
slow to apply over SSH, so the modules that need a running site share it)."""

import pytest

from tests.support.site import SiteBrokerHost


@pytest.fixture(scope="session")
def site_broker(tmp_path_factory):
    broker = SiteBrokerHost(tmp_path_factory.mktemp("site-broker"))
    try:
        yield broker.start()
    finally:
        broker.destroy()
