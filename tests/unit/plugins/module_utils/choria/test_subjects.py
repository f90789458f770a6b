"""Subjects as go-choria names them."""

import hashlib

import pytest

from ansible_collections.zeroinit.bootstrap.plugins.module_utils.choria import subjects as p
from tests.support.rules import IDENTITIES


def test_subjects():
    assert p.node_subject("n1.example") == "provisioning.node.n1.example"
    assert p.broadcast_subject("discovery") == "provisioning.broadcast.agent.discovery"
    assert p.reply_subject("choria=a", "x" * 32) == "provisioning.reply.{}.{}".format(
        hashlib.md5(b"choria=a").hexdigest(), "x" * 32
    )
    assert p.lifecycle_subject("startup") == "choria.lifecycle.event.startup.provision_mode_server"


@pytest.mark.parametrize("identity,valid", IDENTITIES)
def test_identity_rule(identity, valid):
    assert p.valid_identity(identity) is valid
