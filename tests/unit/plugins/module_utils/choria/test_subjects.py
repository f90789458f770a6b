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


@pytest.mark.parametrize(
    "subject, valid",
    [
        (p.reply_subject("choria=a", "x" * 32), True),
        (p.reply_subject("choria=a\ud800", "x" * 32), True),  # hashing any caller id works
        ("provisioning.reply.hostile", True),
        ("provisioning.reply." + "r" * 1005, True),
        ("provisioning.reply." + "r" * 1006, False),  # longer than 1024
        ("provisioning.reply.>", False),
        ("provisioning.reply.a.*", False),
        ("provisioning.reply.a b", False),
        ("provisioning.reply.a..b", False),
        ("provisioning.reply.", False),
        ("provisioning.reply.\u0430", False),
        ("provisioning.node.n1", False),
        ("choria.lifecycle.event.startup.provision_mode_server", False),
        ("_INBOX.abc", False),
        (None, False),
    ],
)
def test_replies_go_only_to_literal_subjects_under_the_collectives_reply_prefix(subject, valid):
    assert p.valid_reply_subject(subject) is valid


def test_publish_subjects_are_literal_printable_and_short():
    assert p.valid_publish_subject("choria.lifecycle.event.startup.provision_mode_server")
    for subject in ("a.>", "a.*.b", "a b", "", ".a", "a.", "x" * 1025, "a\x00b"):
        assert not p.valid_publish_subject(subject), subject
