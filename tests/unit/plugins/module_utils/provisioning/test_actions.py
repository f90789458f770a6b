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
