"""A bulk run with a scripted RPC transport: discovery, queue, workers and the result (real fleet: tests/integration)."""

import asyncio
import json

from ansible_collections.zeroinit.bootstrap.plugins.module_utils.provisioning.bulk import BulkRun, percentile
from tests.support.scripted import ScriptedClient, StaticDecider, scripted_settings


def run(settings, client, decider=None):
    bulk = BulkRun(settings, decider if decider is not None else StaticDecider(), client_factory=lambda: client)
    return asyncio.run(bulk.run())


def test_every_node_goes_through_the_pipeline_in_order():
    client = ScriptedClient(["n2", "n1"])
    out = run(scripted_settings(splay=3), client)
    assert out["provisioned"] == ["n1", "n2"] and out["changed"] is True
    assert out["counts"] == {"discovered": 2, "provisioned": 2, "deferred": 0, "failed": 0, "shutdown": 0}
    actions = [sent[1] for sent in client.sent if sent[0] == "n1"]
    assert actions == ["inventory", "gencsr", "configure", "restart"]
    sent = {a: d for ident, a, d in client.sent if ident == "n1"}
    assert sent["gencsr"]["cn"] == "n1" and sent["gencsr"]["token"] == "tok"
    assert json.loads(sent["configure"]["config"])["plugin.choria.server.provision"] == "false"
    assert sent["configure"]["ssldir"] == "/ssl/n1"
    assert sent["restart"] == {"token": "tok", "splay": 3}
    assert out["timings"]["gencsr"]["count"] == 2 and out["timings"]["total_seconds"] >= 0


def test_one_silent_node_fails_with_the_step_and_does_not_stop_the_others():
    client = ScriptedClient(["a", "b", "c"], silent={"b"})
    out = run(scripted_settings(), client)
    assert out["provisioned"] == ["a", "c"]
    assert out["failed"]["b"].startswith("inventory: no reply from b")


def test_a_refusal_fails_the_node_with_the_agents_message():
    client = ScriptedClient(["a", "b"], refuse={("b", "gencsr"): "could not obtain provisioning lock"})
    out = run(scripted_settings(), client)
    assert "could not obtain provisioning lock" in out["failed"]["b"] and "gencsr" in out["failed"]["b"]
    assert out["provisioned"] == ["a"]


def test_signer_refusal_fails_the_node_before_configure():
    client = ScriptedClient(["good", "liar"])
    out = run(scripted_settings(), client, StaticDecider(refuse={"liar"}))
    assert "CN mismatch" in out["failed"]["liar"]
    assert ("liar", "configure") not in [sent[:2] for sent in client.sent]
    assert out["provisioned"] == ["good"]


def test_check_mode_sends_only_inventory():
    client = ScriptedClient(["a", "b"])
    out = run(scripted_settings(check_mode=True), client)
    assert out["would_provision"] == ["a", "b"] and out["provisioned"] == []
    assert {sent[1] for sent in client.sent} == {"inventory"}


def test_nothing_discovered_is_no_change():
    out = run(scripted_settings(), ScriptedClient([]))
    assert out["changed"] is False and out["counts"]["discovered"] == 0


def test_listed_identities_limit_the_run_and_missing_ones_are_reported_absent():
    client = ScriptedClient(["a", "b", "c"])
    out = run(scripted_settings(identities=["a", "zz"]), client)
    assert out["provisioned"] == ["a"] and out["absent"] == ["zz"]
    assert {sent[0] for sent in client.sent} == {"a"}


def test_expect_stops_taking_new_nodes_once_reached():
    client = ScriptedClient([f"n{i:02d}" for i in range(20)])
    out = run(scripted_settings(expect=5, workers=1), client)
    assert len(out["provisioned"]) == 5


def test_invalid_identity_from_the_bus_is_failed_not_addressed():
    client = ScriptedClient(["ok", "bad name"])
    out = run(scripted_settings(), client)
    assert "not a valid node name" in out["failed"]["bad name"]
    assert "bad name" not in {sent[0] for sent in client.sent}


def test_percentiles_are_nearest_rank():
    values = sorted(float(v) for v in range(1, 101))
    assert percentile(values, 0.5) == 50.0 and percentile(values, 0.99) == 99.0
    assert percentile([], 0.5) == 0.0
