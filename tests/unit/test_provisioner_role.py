"""The provisioner role's variables are the service's configuration keys, one each: the key table
(provisioning/service/config.py), the role's list, its defaults and its argument spec name the same keys."""

from __future__ import annotations

import pathlib

import yaml

from ansible_collections.zeroinit.bootstrap.plugins.module_utils.provisioning.service.config import CONFIG_KEYS

ROLE = pathlib.Path(__file__).resolve().parents[2] / "roles" / "provisioner"


def load(relative: str) -> dict:
    return yaml.safe_load((ROLE / relative).read_text())


def variable(key: str) -> str:
    return "provisioner_" + key.replace(".", "_")


def test_the_role_writes_every_configuration_key_and_no_other():
    assert load("vars/main.yml")["provisioner_config_keys"] == [key.name for key in CONFIG_KEYS]


def test_every_key_has_a_default_and_a_documented_option_and_secrets_are_no_log():
    defaults = load("defaults/main.yml")
    options = load("meta/argument_specs.yml")["argument_specs"]["main"]["options"]
    for key in CONFIG_KEYS:
        assert variable(key.name) in defaults, key.name
        assert variable(key.name) in options, key.name
        assert options[variable(key.name)].get("no_log", False) is key.secret, key.name
    assert set(defaults) == set(options), "defaults and argument spec name the same variables"
