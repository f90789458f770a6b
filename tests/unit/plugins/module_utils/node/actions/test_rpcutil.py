"""rpcutil#ping and rpcutil#inventory as go-choria's DDL describes them."""

from tests.support.node_requests import call


def test_rpcutil_inventory_and_ping_follow_the_ddl(node):
    code, _msg, data, _result = call(node, "inventory", agent="rpcutil")
    assert code == 0
    assert data["facts"] == {"role": "web", "identity": "web1.example.net"}
    assert data["agents"] == ["choria_provision", "discovery", "rpcutil"]
    assert (data["collectives"], data["main_collective"]) == (["provisioning"], "provisioning")
    assert {"classes", "version", "data_plugins", "machines", "upgradable"} <= set(data)
    code, _msg, data, _result = call(node, "ping", agent="rpcutil")
    assert code == 0 and isinstance(data["pong"], int)
