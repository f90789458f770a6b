"""restart: the loop guard and the broker rule first, then a reply and a restart within the splay."""

import json

import pytest

from ansible_collections.zeroinit.bootstrap.plugins.module_utils.choria.protocol import StatusCode
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.node.state import (
    MODE_CONFIGURED,
    MODE_PROVISIONING,
)
from tests.support.node_requests import CONFIG, TOKEN, call, provisioned_files
from tests.support.rules import BROKER_URLS, LOOP_GUARD, loop_guard_config


def test_restart_without_configuration_is_refused(node):
    code, msg, _data, _result = call(node, "restart", {"token": TOKEN})
    assert code == StatusCode.ABORTED and "no configuration" in msg


def test_restart_is_refused_when_provisioning_stays_on(node, ca):
    provisioned_files(node, ca)
    conf = dict(CONFIG, **{"plugin.choria.server.provision": "true"})
    assert call(node, "configure", {"token": TOKEN, "config": json.dumps(conf)}, signer=ca.provisioner_signer())[0] == 0
    code, msg, _data, _result = call(node, "restart", {"token": TOKEN})
    assert code == StatusCode.ABORTED and "plugin.choria.server.provision enabled" in msg


@pytest.mark.parametrize("value,enabled", LOOP_GUARD)
def test_loop_guard_decides_the_mode_at_load_and_restarts_refusal(node, ca, value, enabled):
    provisioned_files(node, ca)
    conf = loop_guard_config(value, **{k: v for k, v in CONFIG.items() if k != "plugin.choria.server.provision"})
    lines = "".join(f"{key} = {text}\n" for key, text in conf.items())
    with open(node.server_conf, "w") as handle:
        handle.write(lines)
    code, msg, _data, _result = call(node, "restart", {"token": TOKEN})
    if enabled:
        assert code == StatusCode.ABORTED and "plugin.choria.server.provision enabled" in msg
    else:
        assert code == 0, msg
    node.load()
    assert node.mode == (MODE_PROVISIONING if enabled else MODE_CONFIGURED)


@pytest.mark.parametrize("value,expected", BROKER_URLS)
def test_restart_reads_middleware_hosts_with_the_broker_rule(node, ca, value, expected):
    provisioned_files(node, ca)
    hosts = ",".join(value) if isinstance(value, list) else value
    with open(node.server_conf, "w") as handle:
        handle.write(f"plugin.choria.server.provision = false\nplugin.choria.middleware_hosts = {hosts}\n")
    code, msg, _data, _result = call(node, "restart", {"token": TOKEN})
    if isinstance(expected, list):
        assert code == 0, msg
    elif expected == "brokers is empty":
        assert code == StatusCode.ABORTED and "names no plugin.choria.middleware_hosts" in msg
    else:
        assert code == StatusCode.ABORTED and expected in msg


def test_restart_replies_then_asks_for_a_restart_with_clamped_splay(node, ca):
    provisioned_files(node, ca)
    node.splay_max = 5
    code, _msg, data, result = call(node, "restart", {"token": TOKEN, "splay": 100})
    assert code == 0 and "restarting" in data["message"].lower()
    assert (result.effect, result.delay) == ("restart", 5.0)
    assert call(node, "restart", {"token": TOKEN, "splay": "soon"})[0] == StatusCode.INVALID_DATA
    node.load()
    assert node.mode == MODE_CONFIGURED
    assert node.collectives == (["ops"], "ops")
