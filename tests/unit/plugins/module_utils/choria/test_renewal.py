"""The node's renewal settings from server.conf: defaults, and every bad value refused naming its key."""

import pytest

from ansible_collections.zeroinit.bootstrap.plugins.module_utils.choria.config import ConfigError
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.choria.renewal import RenewalSettings

PREFIX = "plugin.zeroinit.renewal."


def test_defaults_are_two_thirds_with_jitter_and_capped_backoff():
    settings = RenewalSettings.from_config({})
    assert settings == RenewalSettings(True, 2 / 3, 0.1, 5.0, 300.0, 10.0)
    custom = RenewalSettings.from_config(
        {PREFIX + "fraction": "0.8", PREFIX + "enabled": "no", PREFIX + "timeout": "3"}
    )
    assert (custom.fraction, custom.enabled, custom.timeout) == (0.8, False, 3.0)


@pytest.mark.parametrize(
    "key,value,reason",
    [
        ("fraction", "1.5", "between 0 and 1"),
        ("fraction", "two thirds", "must be a number"),
        ("fraction", "nan", "must be a number"),
        ("jitter", "0.4", "between 5% and 95%"),
        ("jitter", "-0.1", "between 5% and 95%"),
        ("retry_min", "0", "retry_min must be above 0"),
        ("retry_max", "1", "at least as large"),
        ("timeout", "-1", "timeout must be above 0"),
        ("enabled", "maybe", "true or false"),
    ],
)
def test_a_bad_value_names_its_key(key, value, reason):
    with pytest.raises(ConfigError) as info:
        RenewalSettings.from_config({PREFIX + key: value})
    assert reason in str(info.value) and PREFIX + key in str(info.value)
