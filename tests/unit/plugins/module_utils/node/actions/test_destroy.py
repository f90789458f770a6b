"""destroy: the node's whole state goes, the certificates it held come back for revocation, then provisioning or a stop.

A configured node is locked to its site, so destroy is signed by a provisioner of that site (a provisioner
certificate of the site CA the node was configured with); the token alone is refused.
"""

import os

from ansible_collections.zeroinit.bootstrap.plugins.module_utils.choria.protocol import StatusCode
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.node.state import (
    MODE_CONFIGURED,
    MODE_PROVISIONING,
    SITE_LOCK_CA_FILE,
    SITE_LOCK_FILE,
)
from tests.support.fleet import TestCA
from tests.support.node_requests import TOKEN, call, provisioned_files


def state_files(node):
    return sorted(
        os.path.relpath(os.path.join(root, name), node.node_dir)
        for root, dirs, files in os.walk(node.node_dir)
        for name in files + dirs
    )


def test_a_configured_node_wipes_everything_and_returns_the_certificate_it_held(node, ca):
    cert = provisioned_files(node, ca)
    node.load()
    assert node.mode == MODE_CONFIGURED
    with open(os.path.join(node.node_dir, "notes.txt"), "w") as handle:
        handle.write("kept by hand")  # whatever else the node keeps in its state directory goes too
    code, msg, data, result = call(node, "destroy", {"token": TOKEN}, signer=ca.provisioner_signer())
    assert code == 0, msg
    assert data["certificates"] == [cert] and data["after"] == "reprovision"
    assert data["removed"] == ["server.conf", "ssl", "notes.txt", SITE_LOCK_CA_FILE, SITE_LOCK_FILE]
    assert result.effect == "reprovision"
    assert state_files(node) == ["ssl"]  # an empty ssl/ (0700) for the next gencsr; the site lock is gone with it
    node.load()
    assert node.mode == MODE_PROVISIONING
    assert node.site_lock_text is None


def test_a_reprovisioned_node_returns_the_certificate_it_set_aside_and_loses_it(node, ca):
    site = ca.provisioner_signer()
    cert = provisioned_files(node, ca)
    node.load()
    assert call(node, "reprovision", {"token": TOKEN}, signer=site)[0] == 0
    node.load()
    code, _msg, data, result = call(node, "destroy", {"token": TOKEN, "after": "shutdown"}, signer=site)
    assert code == 0 and data["certificates"] == [cert] and result.effect == "shutdown"
    assert state_files(node) == ["ssl"]


def test_the_token_alone_or_another_site_removes_nothing_on_a_configured_node(node, ca):
    provisioned_files(node, ca)
    node.load()
    before = state_files(node)
    code, msg, _data, _result = call(node, "destroy", {"token": TOKEN})
    assert code == StatusCode.ABORTED and "locked to" in msg and "the token alone is refused" in msg
    code, msg, _data, _result = call(node, "destroy", {"token": TOKEN}, signer=TestCA().provisioner_signer())
    assert code == StatusCode.ABORTED and "locked to its site" in msg
    assert state_files(node) == before
    node.load()
    assert node.mode == MODE_CONFIGURED


def test_wrong_token_or_bad_input_removes_nothing(node, ca):
    site = ca.provisioner_signer()
    provisioned_files(node, ca)
    node.load()
    before = state_files(node)
    assert call(node, "destroy", {"token": "wrong"}, signer=site)[:2] == (
        StatusCode.ABORTED,
        "incorrect provisioning token",
    )
    code, msg, _data, _result = call(node, "destroy", {"token": TOKEN, "after": "reboot"}, signer=site)
    assert code == StatusCode.INVALID_DATA and "after" in msg
    assert state_files(node) == before


def test_a_fresh_node_has_nothing_to_give_back(node):
    code, _msg, data, _result = call(node, "destroy", {"token": TOKEN})
    assert code == 0 and data["certificates"] == [] and data["removed"] == ["ssl"]
