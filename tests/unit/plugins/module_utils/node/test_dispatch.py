"""The dispatcher called directly (no NATS): discovery, ttl, token, unknown and unsupported actions."""

import os

import pytest

from ansible_collections.zeroinit.bootstrap.plugins.module_utils.choria.protocol import Request, StatusCode
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.node.dispatch import handle
from tests.support.node_requests import TOKEN, call, request


def test_discovery_answers_pong_and_drops_stale_pings(node):
    assert handle(node, request("", agent="discovery")).body is None  # not "ping"
    ping = Request(agent="discovery", body="ping", callerid="choria=a", senderid="c")
    assert handle(node, ping).body == "pong"
    stale = Request(agent="discovery", body="ping", callerid="choria=a", senderid="c", time=1000)
    assert handle(node, stale).body is None


@pytest.mark.parametrize(
    "agent,action,code",
    [
        ("rpcutil", "daemon_stats", StatusCode.UNKNOWN_ACTION),
        ("choria_provision", "frobnicate", StatusCode.UNKNOWN_ACTION),
        ("puppet", "run", StatusCode.UNKNOWN_ACTION),
    ],
)
def test_unknown_agent_or_action_is_statuscode_2(node, agent, action, code):
    got, msg, _data, _result = call(node, action, {"token": TOKEN}, agent=agent)
    assert got == code and (action in msg or agent in msg)


@pytest.mark.parametrize("action", ["release_update", "jwt", "gen25519"])
def test_unsupported_actions_are_refused_with_a_reason(node, action):
    code, msg, _data, _result = call(node, action, {"token": TOKEN})
    assert code == StatusCode.UNKNOWN_ACTION and "not supported" in msg


@pytest.mark.parametrize("offset,phrase", [(-600, "request expired"), (600, "too far in the future")])
def test_requests_outside_ttl_are_refused_with_the_skew(node, offset, phrase):
    import time

    req = request("gencsr", {"token": TOKEN}, ttl=60, time=int(time.time()) + offset)
    body = handle(node, req).body
    assert body["statuscode"] == StatusCode.ABORTED
    assert phrase in body["statusmsg"] and "600s" in body["statusmsg"]
    assert not os.path.exists(node.ssl_path("private.pem"))


@pytest.mark.parametrize(
    "data,code,phrase",
    [
        ({"token": "wrong"}, StatusCode.ABORTED, "incorrect provisioning token"),
        ({}, StatusCode.MISSING_DATA, "missing input 'token'"),
        ({"token": 42}, StatusCode.INVALID_DATA, "input 'token' must be a string"),
    ],
)
def test_bad_token_is_refused_and_nothing_is_written(node, data, code, phrase):
    got, msg, _data, _result = call(node, "gencsr", data)
    assert (got, phrase in msg) == (code, True)
    assert not os.path.exists(node.ssl_path("private.pem"))
