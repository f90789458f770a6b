"""The key = value configuration files of the node agent: parse, render, and what a node concludes from them."""

import pytest

from ansible_collections.zeroinit.bootstrap.plugins.module_utils.choria import config as nc
from tests.support.rules import LOOP_GUARD, loop_guard_config


def test_parse_trims_and_skips_comments_and_blank_lines():
    text = """
# provisioning settings
   identity =  web1.example.net
; an old-style comment
plugin.choria.middleware_hosts = nats1:4222, tls://nats2:4222
collectives=mcollective,ops
empty =
"""
    assert nc.parse_config(text) == {
        "identity": "web1.example.net",
        "plugin.choria.middleware_hosts": "nats1:4222, tls://nats2:4222",
        "collectives": "mcollective,ops",
        "empty": "",
    }


def test_later_lines_win_and_values_may_contain_equals():
    assert nc.parse_config("a = 1\na = 2\nb = x=y\n") == {"a": "2", "b": "x=y"}


@pytest.mark.parametrize("line", ["just words", "bad key = 1", "= value"])
def test_parse_names_the_bad_line(line):
    with pytest.raises(nc.ConfigError, match=r"server\.conf line 2"):
        nc.parse_config(f"ok = 1\n{line}\n", source="server.conf")


def test_render_is_sorted_and_round_trips():
    config = {"plugin.choria.server.provision": "false", "identity": "n1", "collectives": "a,b"}
    text = nc.render_config(config, header="written by a test")
    assert text.splitlines() == [
        "# written by a test",
        "collectives = a,b",
        "identity = n1",
        "plugin.choria.server.provision = false",
    ]
    assert nc.parse_config(text) == config


def test_render_refuses_a_value_that_would_smuggle_a_second_setting():
    with pytest.raises(nc.ConfigError, match="line break"):
        nc.render_config({"identity": "n1\nplugin.choria.server.provision = true"})
    assert nc.check_entry("a key", "v") == "invalid key 'a key'"
    assert nc.check_entry("k", 1) == "value of k must be a string, got int"


@pytest.mark.parametrize("value,enabled", LOOP_GUARD)
def test_loop_guard_is_off_only_for_an_explicit_false_word(value, enabled):
    assert nc.provisioning_enabled(loop_guard_config(value)) is enabled
    assert nc.provisioning_enabled(loop_guard_config(value, identity="n1")) is enabled


def test_collectives():
    assert nc.collectives({}) == (["mcollective"], "mcollective")
    assert nc.collectives({"collectives": "ops, dev"}) == (["ops", "dev"], "ops")
    assert nc.collectives({"collectives": "ops", "main_collective": "dev"}) == (["dev", "ops"], "dev")


def test_load_config_reads_a_file(tmp_path):
    path = tmp_path / "agent.conf"
    path.write_text("plugin.zeroinit.agent.brokers = nats://127.0.0.1:4222\n")
    assert nc.as_list(nc.load_config(str(path))[nc.AGENT_BROKERS_KEY]) == ["nats://127.0.0.1:4222"]
