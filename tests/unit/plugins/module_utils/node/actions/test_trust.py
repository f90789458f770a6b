"""trust and renew: a configured node's CA bundle replaced (widened, narrowed) and a renewal started on request."""

import os

import pytest

from ansible_collections.zeroinit.bootstrap.plugins.module_utils.choria.protocol import StatusCode
from tests.support.fleet import TestCA
from tests.support.node_requests import TOKEN, call, provisioned_files


@pytest.fixture
def configured(node, ca):
    provisioned_files(node, ca)
    node.load()
    return node


def test_widening_then_narrowing_the_bundle_keeps_the_nodes_own_ca(configured, ca):
    new = TestCA("permanent CA")
    code, msg, data, result = call(configured, "trust", {"token": TOKEN, "ca": ca.pem + new.pem})
    assert code == 0, msg
    # Nothing dropped: the live connection trusts the new CA too, no new connection.
    assert data["changed"] is True and len(data["ca_sha256"]) == 2 and result.effect == "trust_more"
    with open(configured.ssl_path("ca.pem")) as handle:
        assert handle.read() == ca.pem + new.pem
    again = call(configured, "trust", {"token": TOKEN, "ca": ca.pem + new.pem})
    assert again[0] == 0 and again[2]["changed"] is False and again[3].effect == ""
    # Narrowing to the new CA alone would leave the node unable to check a renewed certificate: refused.
    code, msg, _data, _result = call(configured, "trust", {"token": TOKEN, "ca": new.pem})
    assert code == StatusCode.ABORTED and "renew it first" in msg and "zeroinit test CA" in msg
    with open(configured.ssl_path("ca.pem")) as handle:
        assert handle.read() == ca.pem + new.pem
    # Dropping a CA the node does not need: a new connection without it.
    code, msg, data, result = call(configured, "trust", {"token": TOKEN, "ca": ca.pem})
    assert code == 0 and data["changed"] is True and result.effect == "reconnect"


@pytest.mark.parametrize(
    "data,code,reason",
    [
        ({"token": TOKEN}, StatusCode.MISSING_DATA, "missing input 'ca'"),
        ({"token": TOKEN, "ca": "not pem"}, StatusCode.INVALID_DATA, "PEM CA certificates"),
        ({"token": TOKEN, "ca": "x" * 30000}, StatusCode.INVALID_DATA, "longer than"),
        ({"token": "wrong", "ca": "-----BEGIN CERTIFICATE-----"}, StatusCode.ABORTED, "incorrect provisioning token"),
    ],
)
def test_bad_trust_input_is_refused_naming_it(configured, data, code, reason):
    before = os.stat(configured.ssl_path("ca.pem")).st_mtime_ns
    got, msg, _data, _result = call(configured, "trust", data)
    assert got == code and reason in msg
    assert os.stat(configured.ssl_path("ca.pem")).st_mtime_ns == before


def test_a_leaf_certificate_is_not_a_ca_to_trust(configured, ca):
    leaf, _key = ca.issue_key_pair("intruder.example.net")
    code, msg, _data, _result = call(configured, "trust", {"token": TOKEN, "ca": ca.pem + leaf})
    assert code == StatusCode.INVALID_DATA and "certificate 2" in msg and "not a CA" in msg


def test_renew_starts_a_renewal_and_provisioning_nodes_refuse_both(node, ca):
    code, msg, _data, _result = call(node, "renew", {"token": TOKEN})
    assert code == StatusCode.ABORTED and msg.endswith("already in provisioning mode")
    assert call(node, "trust", {"token": TOKEN, "ca": ca.pem})[0] == StatusCode.ABORTED
    provisioned_files(node, ca)
    node.load()
    code, msg, data, result = call(node, "renew", {"token": TOKEN})
    assert code == 0 and result.effect == "renew" and "renews its certificate now" in data["message"]


def test_check_says_whether_the_bundle_would_change_and_changes_nothing(configured, ca):
    new = TestCA("permanent CA")
    before = os.stat(configured.ssl_path("ca.pem")).st_mtime_ns
    code, _msg, data, result = call(configured, "trust", {"token": TOKEN, "ca": ca.pem + new.pem, "check": True})
    assert code == 0 and data["changed"] is True and result.effect == ""
    assert os.stat(configured.ssl_path("ca.pem")).st_mtime_ns == before
    assert call(configured, "trust", {"token": TOKEN, "ca": new.pem, "check": True})[0] == StatusCode.ABORTED
    assert call(configured, "trust", {"token": TOKEN, "ca": ca.pem, "check": "yes"})[0] == StatusCode.INVALID_DATA
