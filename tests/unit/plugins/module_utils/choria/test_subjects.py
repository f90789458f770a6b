"""Subjects as go-choria names them."""

import hashlib

from ansible_collections.zeroinit.bootstrap.plugins.module_utils.choria import subjects as p


def test_subjects():
    assert p.node_subject("n1.example") == "provisioning.node.n1.example"
    assert p.broadcast_subject("discovery") == "provisioning.broadcast.agent.discovery"
    assert p.reply_subject("choria=a", "x" * 32) == "provisioning.reply.{}.{}".format(
        hashlib.md5(b"choria=a").hexdigest(), "x" * 32
    )
    assert p.lifecycle_subject("startup") == "choria.lifecycle.event.startup.provision_mode_server"
