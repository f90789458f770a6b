"""trust and renew: a configured node's CA bundle replaced (widened, narrowed) and a renewal started on request.

A configured node is locked to its site, so every trust here is signed by a provisioner of the node's site CA, as
the CA migration sends it; the lock moves with the bundle."""

import functools
import os
import pathlib

import pytest

from ansible_collections.zeroinit.bootstrap.plugins.module_utils.choria.protocol import StatusCode
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.choria.security import ca_key_fingerprints
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.node.site_lock import SiteLock
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.node.state import NodeState
from tests.support.fleet import TestCA
from tests.support.node_requests import TOKEN, provisioned_files
from tests.support.node_requests import call as unsigned_call


@pytest.fixture
def configured(node, ca):
    provisioned_files(node, ca)
    node.load()
    return node


@pytest.fixture
def call(ca):
    """``node_requests.call`` signed by a provisioner of the configured node's site CA."""
    return functools.partial(unsigned_call, signer=ca.provisioner_signer())


def files(node) -> dict:
    """The trust files a refused request must leave as they were: ca.pem, the lock and the lock's CA bundle."""
    paths = (node.ssl_path("ca.pem"), node.site_lock_path, node.site_ca_path)
    return {path: (open(path).read(), os.stat(path).st_mtime_ns) for path in paths}


def renewed_under(node, issuer) -> None:
    """The node's certificate re-issued by ``issuer`` for its own key, as the migration's renewal leaves it."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509.oid import NameOID

    with open(node.ssl_path("private.pem"), "rb") as handle:
        key = serialization.load_pem_private_key(handle.read(), None)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, node.identity)])
    csr = x509.CertificateSigningRequestBuilder().subject_name(name).sign(key, hashes.SHA256())
    with open(node.ssl_path("certificate.pem"), "w") as handle:
        handle.write(issuer.sign_csr(csr.public_bytes(serialization.Encoding.PEM).decode("ascii")))


def test_widening_then_narrowing_the_bundle_keeps_the_nodes_own_ca(configured, ca, call):
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
def test_bad_trust_input_is_refused_naming_it(configured, call, data, code, reason):
    before = os.stat(configured.ssl_path("ca.pem")).st_mtime_ns
    got, msg, _data, _result = call(configured, "trust", data)
    assert got == code and reason in msg
    assert os.stat(configured.ssl_path("ca.pem")).st_mtime_ns == before


def test_a_leaf_certificate_is_not_a_ca_to_trust(configured, ca, call):
    leaf, _key = ca.issue_key_pair("intruder.example.net")
    code, msg, _data, _result = call(configured, "trust", {"token": TOKEN, "ca": ca.pem + leaf})
    assert code == StatusCode.INVALID_DATA and "certificate 2" in msg and "not a CA" in msg


def test_renew_starts_a_renewal_and_provisioning_nodes_refuse_both(node, ca, call):
    code, msg, _data, _result = call(node, "renew", {"token": TOKEN})
    assert code == StatusCode.ABORTED and msg.endswith("already in provisioning mode")
    assert call(node, "trust", {"token": TOKEN, "ca": ca.pem})[0] == StatusCode.ABORTED
    provisioned_files(node, ca)
    node.load()
    code, msg, data, result = call(node, "renew", {"token": TOKEN})
    assert code == 0 and result.effect == "renew" and "renews its certificate now" in data["message"]


def test_check_says_whether_the_bundle_would_change_and_changes_nothing(configured, ca, call):
    new = TestCA("permanent CA")
    before = os.stat(configured.ssl_path("ca.pem")).st_mtime_ns
    code, _msg, data, result = call(configured, "trust", {"token": TOKEN, "ca": ca.pem + new.pem, "check": True})
    assert code == 0 and data["changed"] is True and result.effect == ""
    assert os.stat(configured.ssl_path("ca.pem")).st_mtime_ns == before
    assert call(configured, "trust", {"token": TOKEN, "ca": new.pem, "check": True})[0] == StatusCode.ABORTED
    assert call(configured, "trust", {"token": TOKEN, "ca": ca.pem, "check": "yes"})[0] == StatusCode.INVALID_DATA


def test_the_token_alone_is_refused_on_a_locked_node_and_nothing_changes(configured, ca):
    before = files(configured)
    code, msg, _data, _result = unsigned_call(configured, "trust", {"token": TOKEN, "ca": ca.pem + TestCA("x").pem})
    assert code == StatusCode.ABORTED and "locked to its site" in msg and "the token alone is refused" in msg
    assert files(configured) == before


def test_a_signed_trust_moves_the_site_lock_with_the_bundle(configured, ca, call):
    permanent = TestCA("permanent CA")
    temporary_provisioner, permanent_provisioner = ca.provisioner_signer(), permanent.provisioner_signer()
    probe = {"token": TOKEN, "ca": ca.pem, "check": True}  # a locked action that changes nothing
    code, msg, _data, _result = unsigned_call(configured, "trust", probe, signer=permanent_provisioner)
    assert code == StatusCode.ABORTED and "locked to its site" in msg

    # Widened: provisioners of both CAs are of the site, after a restart too.
    assert call(configured, "trust", {"token": TOKEN, "ca": ca.pem + permanent.pem})[0] == 0
    lock = SiteLock.load(configured.site_lock_text)
    assert set(lock.site_ca_keys) == {*ca_key_fingerprints(ca.pem), *ca_key_fingerprints(permanent.pem)}
    assert lock.committed_by == "CN=prov.example.net"
    restarted = NodeState(configured.identity, configured.node_dir, TOKEN)
    restarted.load()
    for signer in (temporary_provisioner, permanent_provisioner):
        assert unsigned_call(restarted, "trust", probe, signer=signer)[0] == 0

    # Narrowed to the permanent CA once the node's certificate is from it: the temporary CA's provisioner is not.
    renewed_under(restarted, permanent)
    code, msg, data, _result = unsigned_call(
        restarted, "trust", {"token": TOKEN, "ca": permanent.pem}, signer=permanent_provisioner
    )
    assert code == 0 and data["changed"] is True, msg
    assert SiteLock.load(restarted.site_lock_text).site_ca_keys == ca_key_fingerprints(permanent.pem)
    restarted.load()
    code, msg, _data, _result = unsigned_call(
        restarted, "trust", dict(probe, ca=permanent.pem), signer=temporary_provisioner
    )
    assert code == StatusCode.ABORTED and "is not issued by the site CA (its issuer CN=zeroinit test CA" in msg
    assert unsigned_call(restarted, "trust", dict(probe, ca=permanent.pem), signer=permanent_provisioner)[0] == 0
    on_disk = {pathlib.Path(path).read_text() for path in (restarted.ssl_path("ca.pem"), restarted.site_ca_path)}
    assert on_disk == {permanent.pem}


def test_with_a_provisioning_ca_the_trust_moves_the_site_keys_and_keeps_the_provisioning_pins(tmp_path, ca):
    from ansible_collections.zeroinit.bootstrap.plugins.module_utils.node.trust import AgentTrust
    from tests.support.certificates import Authority, signer_of

    provisioning = Authority("site A provisioning CA")
    provisioner = signer_of(provisioning.issue("prov.a.example.net"))
    node = NodeState("web1.example.net", str(tmp_path / "node"), TOKEN, trust=AgentTrust(provisioning.pem))
    node.load()
    provisioned_files(node, ca, signer=provisioner)
    node.load()
    pins = SiteLock.load(node.site_lock_text).provisioning_ca_keys
    assert pins == ca_key_fingerprints(provisioning.pem)
    permanent = TestCA("permanent CA")
    code, msg, _data, _result = unsigned_call(
        node, "trust", {"token": TOKEN, "ca": ca.pem + permanent.pem}, signer=provisioner
    )
    assert code == 0, msg
    lock = SiteLock.load(node.site_lock_text)
    assert set(lock.site_ca_keys) == {*ca_key_fingerprints(ca.pem), *ca_key_fingerprints(permanent.pem)}
    assert lock.provisioning_ca_keys == pins
