"""Single-node actions with a scripted RPC transport."""

import asyncio

import pytest

from ansible_collections.zeroinit.bootstrap.plugins.module_utils.provisioning.actions import single_action
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.provisioning.settings import (
    ProvisionError,
)
from tests.support.scripted import CERT, ScriptedClient, scripted_settings


def test_single_configure_refuses_a_config_that_keeps_provisioning_on():
    with pytest.raises(ProvisionError, match="leaves provisioning on"):
        asyncio.run(
            single_action(
                scripted_settings(configuration={"identity": "a"}), "configure", "a", {"certificate": CERT, "ca": CERT}
            )
        )


def test_single_action_in_check_mode_only_pings():
    client = ScriptedClient(["a"])
    out = asyncio.run(single_action(scripted_settings(check_mode=True), "restart", "a", client_factory=lambda: client))
    assert out["changed"] is True and [sent[1] for sent in client.sent] == ["ping"]


def test_a_single_gencsr_waits_for_a_valid_jwt(tmp_path):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    from ansible_collections.zeroinit.bootstrap.plugins.module_utils.choria.jwt import issue_provisioning_jwt

    issuer = ed25519.Ed25519PrivateKey.generate()
    key_file = tmp_path / "issuer.pub"
    key_file.write_bytes(
        issuer.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    settings = scripted_settings(jwt_verify_key=str(key_file))
    forged = issue_provisioning_jwt(ed25519.Ed25519PrivateKey.generate(), "tok", ["nats://h:4222"], ["a"])
    client = ScriptedClient(["a"], jwts={"a": forged})
    with pytest.raises(
        ProvisionError, match="jwt: the provisioning JWT of a is refused: JWT signature does not verify"
    ):
        asyncio.run(single_action(settings, "gencsr", "a", client_factory=lambda: client))
    assert [sent[1] for sent in client.sent] == ["jwt"]
    client = ScriptedClient(["a"], jwts={"a": issue_provisioning_jwt(issuer, "tok", ["nats://h:4222"], ["a"])})
    out = asyncio.run(single_action(settings, "gencsr", "a", client_factory=lambda: client))
    assert out["changed"] and [sent[1] for sent in client.sent] == ["jwt", "gencsr"]


def test_discover_lists_who_answers_and_leaves_out_names_that_are_not_identities():
    from ansible_collections.zeroinit.bootstrap.plugins.module_utils.provisioning.actions import discovery

    client = ScriptedClient(["b.example.net", "a.example.net", "not an identity"])
    out = asyncio.run(discovery(scripted_settings(check_mode=True), client_factory=lambda: client))
    assert out == {
        "changed": False,
        "identities": ["a.example.net", "b.example.net"],
        "count": 2,
        "collective": "provisioning",
    }


def test_destroy_sends_the_token_and_after():
    client = ScriptedClient(["a"])
    asyncio.run(single_action(scripted_settings(token="t"), "destroy", "a", {"after": "shutdown"}, lambda: client))
    assert client.sent[-1][1:] == ("destroy", {"token": "t", "after": "shutdown"})
