"""shutdown: a reply, then the node stops."""

from tests.support.node_requests import TOKEN, call


def test_shutdown_replies_and_asks_to_stop(node):
    code, _msg, _data, result = call(node, "shutdown", {"token": TOKEN})
    assert code == 0 and result.effect == "shutdown"
