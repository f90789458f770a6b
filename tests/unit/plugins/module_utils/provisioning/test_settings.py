"""ProvisionSettings are checked when made: every bad option is named."""

import re

import pytest

from ansible_collections.zeroinit.bootstrap.plugins.module_utils.provisioning.settings import (
    ProvisionError,
)
from tests.support.rules import BROKER_URLS
from tests.support.scripted import scripted_settings


def test_helper_and_signer_are_exclusive_and_helper_must_exist(tmp_path):
    with pytest.raises(ProvisionError, match="mutually exclusive"):
        scripted_settings(helper="/bin/true", signer={"ca_cert": "x"})
    with pytest.raises(ProvisionError, match="helper"):
        scripted_settings(helper=str(tmp_path / "nope"))


@pytest.mark.parametrize("value,expected", BROKER_URLS)
def test_brokers_follow_the_one_rule(value, expected):
    if isinstance(expected, list):
        assert scripted_settings(brokers=value).brokers == expected
    else:
        with pytest.raises(ProvisionError, match=re.escape(expected)):
            scripted_settings(brokers=value)


def test_the_built_in_signer_needs_pki():
    with pytest.raises(ProvisionError, match="cannot be used with pki off"):
        scripted_settings(signer={"ca_cert": "x"}, pki=False)
    assert scripted_settings(helper="/bin/true", pki=False).flow_options().pki is False
