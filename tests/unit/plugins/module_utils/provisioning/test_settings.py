"""ProvisionSettings are checked when made: every bad option is named."""

import re

import pytest

from ansible_collections.zeroinit.bootstrap.plugins.module_utils.provisioning.settings import (
    ProvisionError,
    ProvisionSettings,
)
from tests.support.rules import BROKER_URLS


def settings(**kw):
    base = dict(brokers=["nats://127.0.0.1:1"], token="tok", timeout=0.1, retries=0, discovery_timeout=0.1)
    base.update(kw)
    return ProvisionSettings(**base)


def test_helper_and_signer_are_exclusive_and_helper_must_exist(tmp_path):
    with pytest.raises(ProvisionError, match="mutually exclusive"):
        settings(helper="/bin/true", signer={"ca_cert": "x"})
    with pytest.raises(ProvisionError, match="helper"):
        settings(helper=str(tmp_path / "nope"))


@pytest.mark.parametrize("value,expected", BROKER_URLS)
def test_brokers_follow_the_one_rule(value, expected):
    if isinstance(expected, list):
        assert settings(brokers=value).brokers == expected
    else:
        with pytest.raises(ProvisionError, match=re.escape(expected)):
            settings(brokers=value)
