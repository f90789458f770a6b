"""THE broker URL rule: every item a user may write, the URL it means, and a clear error for the rest."""

import re

import pytest

from ansible_collections.zeroinit.bootstrap.plugins.module_utils.choria import brokers
from tests.support.rules import BROKER_URLS


@pytest.mark.parametrize("value,expected", BROKER_URLS)
def test_broker_urls(value, expected):
    if isinstance(expected, list):
        assert brokers.normalize_brokers(value) == expected
    else:
        with pytest.raises(brokers.BrokerUrlError, match=re.escape(expected)):
            brokers.normalize_brokers(value)


def test_empty_is_allowed_where_a_missing_setting_is_normal():
    assert brokers.normalize_brokers(None, allow_empty=True) == []
    assert brokers.normalize_brokers(" , ", allow_empty=True) == []


def test_a_url_taken_apart():
    assert brokers.parse_broker("tls://[::1]:4443") == brokers.Broker("tls", "::1", 4443)
    assert brokers.parse_broker("user:secret@h").url == "nats://user:secret@h:4222"


def test_not_a_list_is_refused():
    with pytest.raises(brokers.BrokerUrlError, match="must be a list"):
        brokers.normalize_brokers({"a": 1})
