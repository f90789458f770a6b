"""THE provisioning flow for one node with a scripted RPC transport: each way a run ends, its step and timings."""

from __future__ import annotations

import asyncio
import json

import pytest

from ansible_collections.zeroinit.bootstrap.plugins.module_utils.provisioning.flow import (
    FlowOptions,
    ProvisioningFlow,
)
from tests.support.rules import IDENTITIES, LOOP_GUARD, loop_guard_config
from tests.support.scripted import ScriptedClient, StaticDecider


def run(identity="n1", client=None, decider=None, **options):
    client = client or ScriptedClient([identity])
    flow = ProvisioningFlow(
        client, decider if decider is not None else StaticDecider(), FlowOptions(token="tok", **options)
    )
    return asyncio.run(flow.run(identity)), client


def test_a_node_is_provisioned_with_every_step_timed():
    outcome, client = run(splay=2)
    assert (outcome.identity, outcome.status, outcome.reason, outcome.step) == ("n1", "provisioned", "", "")
    assert [sent[1] for sent in client.sent] == ["inventory", "gencsr", "configure", "restart"]
    assert set(outcome.timings) == {"inventory", "gencsr", "decide", "configure", "restart"}
    assert outcome.elapsed_ms >= 0
    configure = client.sent[2][2]
    assert json.loads(configure["config"])["plugin.choria.server.provision"] == "false"
    assert configure["ssldir"] == "/ssl/n1" and client.sent[3][2] == {"token": "tok", "splay": 2}


@pytest.mark.parametrize(
    "answer,status,reason,actions",
    [
        ({"defer": True, "msg": "not yet"}, "deferred", "not yet", ["inventory", "gencsr"]),
        ({"shutdown": True, "msg": "not ours"}, "shutdown", "not ours", ["inventory", "gencsr", "shutdown"]),
    ],
)
def test_a_decision_to_wait_or_to_stop(answer, status, reason, actions):
    outcome, client = run(decider=StaticDecider(**answer))
    assert (outcome.status, outcome.reason) == (status, reason)
    assert [sent[1] for sent in client.sent] == actions


@pytest.mark.parametrize(
    "client,decider,step,phrase",
    [
        (ScriptedClient(["n1"], silent={"n1"}), None, "inventory", "inventory: no reply from n1"),
        (ScriptedClient(["n1"], refuse={("n1", "gencsr"): "locked"}), None, "gencsr", "gencsr refused by n1: locked"),
        (ScriptedClient(["n1"]), StaticDecider(refuse={"n1"}), "decide", "CN mismatch"),
        (ScriptedClient(["n1"], refuse={("n1", "restart"): "no"}), None, "restart", "restart refused by n1"),
    ],
)
def test_a_failure_names_its_step(client, decider, step, phrase):
    outcome, _client = run(client=client, decider=decider)
    assert outcome.status == "failed" and outcome.step == step and phrase in outcome.reason


LOCKED = "node is locked to its site (CA keys sha256 0621): gencsr needs a request signed by a provisioner"


@pytest.mark.parametrize("pki,locked_step", [(True, "gencsr"), (False, "configure")])
def test_a_node_locked_to_its_site_in_provisioning_mode_gets_the_restart_it_missed(pki, locked_step):
    """Its site's configure arrived but the reply or the restart was lost: the restart moves it into that
    configuration, and nothing is configured again."""
    client = ScriptedClient(["n1"], refuse={("n1", locked_step): LOCKED})
    outcome, client = run(client=client, pki=pki, splay=3)
    assert outcome.status == "provisioned" and outcome.step == ""
    assert "already configured by its site" in outcome.reason and "locked to its site" in outcome.reason
    actions = [sent[1] for sent in client.sent]
    assert actions == (["inventory", "gencsr", "restart"] if pki else ["inventory", "configure", "restart"])
    assert client.sent[-1][2] == {"token": "tok", "splay": 3}


def test_a_locked_node_that_refuses_the_restart_too_fails_with_both_reasons():
    refuse = {("n1", "gencsr"): LOCKED, ("n1", "restart"): "leaves plugin.choria.server.provision enabled"}
    outcome, client = run(client=ScriptedClient(["n1"], refuse=refuse))
    assert outcome.status == "failed" and outcome.step == "restart"
    assert "locked to its site" in outcome.reason and "leaves plugin.choria.server.provision enabled" in outcome.reason
    assert [sent[1] for sent in client.sent] == ["inventory", "gencsr", "restart"]


def test_other_refusals_of_gencsr_send_no_restart():
    outcome, client = run(client=ScriptedClient(["n1"], refuse={("n1", "gencsr"): "incorrect provisioning token"}))
    assert outcome.status == "failed" and outcome.step == "gencsr"
    assert "restart" not in [sent[1] for sent in client.sent]


def test_check_mode_sends_no_restart_to_a_locked_node():
    outcome, client = run(client=ScriptedClient(["n1"], refuse={("n1", "gencsr"): LOCKED}), check_mode=True)
    assert outcome.status == "would_provision" and [sent[1] for sent in client.sent] == ["inventory"]


def test_without_pki_the_node_is_configured_with_the_configuration_alone():
    decider = StaticDecider()
    outcome, client = run(decider=decider, pki=False)
    assert outcome.status == "provisioned"
    assert [sent[1] for sent in client.sent] == ["inventory", "configure", "restart"]
    assert decider.csrs == [None]
    configure = client.sent[1][2]
    assert set(configure) == {"token", "config"}
    assert json.loads(configure["config"]) == {"identity": "n1", "plugin.choria.server.provision": "false"}


def test_without_pki_the_loop_guard_still_holds():
    decider = StaticDecider(configuration={"identity": "n1"})
    outcome, client = run(decider=decider, pki=False)
    assert outcome.status == "failed" and outcome.step == "decide" and "leaves provisioning on" in outcome.reason
    assert "configure" not in [sent[1] for sent in client.sent]


def test_check_mode_asks_only_for_the_inventory():
    outcome, client = run(check_mode=True)
    assert outcome.status == "would_provision" and [sent[1] for sent in client.sent] == ["inventory"]


def test_without_a_decider_nothing_is_configured():
    client = ScriptedClient(["n1"])
    flow = ProvisioningFlow(client, None, FlowOptions(token="tok"))
    outcome = asyncio.run(flow.run("n1"))
    assert outcome.status == "failed" and "nothing can decide" in outcome.reason
    assert "configure" not in [sent[1] for sent in client.sent]


@pytest.mark.parametrize("value,enabled", LOOP_GUARD)
def test_loop_guard_refuses_any_deciders_configuration_that_keeps_provisioning_on(value, enabled):
    decider = StaticDecider(configuration=loop_guard_config(value, identity="n1"))
    outcome, client = run(decider=decider)
    sent = [action for _identity, action, _data in client.sent]
    if enabled:
        assert outcome.status == "failed" and outcome.step == "decide" and "leaves provisioning on" in outcome.reason
        assert "configure" not in sent
    else:
        assert outcome.status == "provisioned" and "configure" in sent


@pytest.mark.parametrize("identity,valid", IDENTITIES)
def test_a_node_is_addressed_only_by_a_valid_identity(identity, valid):
    outcome, client = run(identity=identity, client=ScriptedClient([identity]))
    if valid:
        assert outcome.status == "provisioned"
    else:
        assert outcome.status == "failed" and "not a valid node name" in outcome.reason and client.sent == []


# -------------------------------------------------------------------------------------------- the provisioning JWT


@pytest.fixture(scope="module")
def issuer():
    from cryptography.hazmat.primitives.asymmetric import ed25519

    return ed25519.Ed25519PrivateKey.generate()


def jwt_for(issuer, patterns=("*.lab.example.net",), token="tok", **options):
    from ansible_collections.zeroinit.bootstrap.plugins.module_utils.choria.jwt import issue_provisioning_jwt

    return issue_provisioning_jwt(issuer, token, ["nats://10.0.0.1:4222"], list(patterns), **options)


def test_the_jwt_is_verified_first_and_its_claims_go_to_the_decider(issuer):
    identity = "n1.lab.example.net"
    decider = StaticDecider()
    outcome, client = run(
        identity=identity,
        client=ScriptedClient([identity], jwts={identity: jwt_for(issuer)}),
        decider=decider,
        jwt_verify_key=issuer.public_key(),
    )
    assert outcome.status == "provisioned", outcome.reason
    assert [sent[1] for sent in client.sent] == ["jwt", "inventory", "gencsr", "configure", "restart"]
    assert client.sent[0][2] == {"token": "tok"} and "jwt" in outcome.timings
    claims = decider.jwts[identity]
    assert claims["purpose"] == "choria_provisioning" and claims["cht"] == "tok"
    assert claims["extensions"] == {"zeroinit_identity_patterns": ["*.lab.example.net"]}


@pytest.mark.parametrize(
    "make,phrase",
    [
        (lambda issuer: "", "the node returned no provisioning JWT"),
        (lambda issuer: jwt_for(issuer, now=1_000_000, validity=60), "JWT expired at 1970-01-12T13:47:40Z"),
        (lambda issuer: jwt_for(other_key()), "JWT signature does not verify"),
        (lambda issuer: jwt_for(issuer, patterns=("*.other.example.net",)), "does not match the JWT's identity"),
        (lambda issuer: jwt_for(issuer, token="old"), "cht does not match this provisioner's token"),
    ],
)
def test_a_node_without_a_valid_jwt_is_failed_at_the_jwt_step_before_any_csr(issuer, make, phrase):
    identity = "n1.lab.example.net"
    outcome, client = run(
        identity=identity,
        client=ScriptedClient([identity], jwts={identity: make(issuer)}),
        jwt_verify_key=issuer.public_key(),
    )
    assert (outcome.status, outcome.step) == ("failed", "jwt")
    assert (
        outcome.reason.startswith(f"jwt: the provisioning JWT of {identity} is refused: ") and phrase in outcome.reason
    )
    assert [sent[1] for sent in client.sent] == ["jwt"]


def test_a_node_that_refuses_the_jwt_action_fails_with_its_reason(issuer):
    client = ScriptedClient(["n1"], refuse={("n1", "jwt"): "n1 has no provisioning JWT"})
    outcome, _client = run(client=client, jwt_verify_key=issuer.public_key())
    assert (outcome.status, outcome.step) == ("failed", "jwt") and "no provisioning JWT" in outcome.reason


def test_check_mode_verifies_the_jwt_too(issuer):
    identity = "n1.lab.example.net"
    outcome, client = run(
        identity=identity,
        client=ScriptedClient([identity], jwts={identity: jwt_for(issuer, patterns=("x.example.net",))}),
        jwt_verify_key=issuer.public_key(),
        check_mode=True,
    )
    assert outcome.status == "failed" and [sent[1] for sent in client.sent] == ["jwt"]


def other_key():
    from cryptography.hazmat.primitives.asymmetric import ed25519

    return ed25519.Ed25519PrivateKey.generate()
