"""The dispatcher called directly (no NATS): discovery, the ttl window and its cap, signatures under the provisioning
CA, the token, the site lock, the replay memory, unknown and unsupported actions."""

import os
import pathlib

import pytest

from ansible_collections.zeroinit.bootstrap.plugins.module_utils.choria.protocol import Request, StatusCode
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.node.dispatch import handle
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.node.state import NodeState
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.node.trust import AgentTrust
from tests.support.certificates import UNTRUSTED_SIGNERS
from tests.support.node_requests import TOKEN, call, request


def test_discovery_answers_pong_and_drops_stale_pings(node):
    assert handle(node, request("", agent="discovery")).body is None  # not "ping"
    ping = Request(agent="discovery", body="ping", callerid="choria=a", senderid="c")
    assert handle(node, ping).body == "pong"
    stale = Request(agent="discovery", body="ping", callerid="choria=a", senderid="c", time=1000)
    assert handle(node, stale).body is None


@pytest.mark.parametrize(
    "agent,action,code",
    [
        ("rpcutil", "daemon_stats", StatusCode.UNKNOWN_ACTION),
        ("choria_provision", "frobnicate", StatusCode.UNKNOWN_ACTION),
        ("puppet", "run", StatusCode.UNKNOWN_ACTION),
    ],
)
def test_unknown_agent_or_action_is_statuscode_2(node, agent, action, code):
    got, msg, _data, _result = call(node, action, {"token": TOKEN}, agent=agent)
    assert got == code and (action in msg or agent in msg)


@pytest.mark.parametrize("action", ["release_update", "gen25519"])
def test_unsupported_actions_are_refused_with_a_reason(node, action):
    code, msg, _data, _result = call(node, action, {"token": TOKEN})
    assert code == StatusCode.UNKNOWN_ACTION and "not supported" in msg


@pytest.mark.parametrize("offset,phrase", [(-600, "request expired"), (600, "too far in the future")])
def test_requests_outside_ttl_are_refused_with_the_skew(node, offset, phrase):
    import time

    req = request("gencsr", {"token": TOKEN}, ttl=60, time=int(time.time()) + offset)
    body = handle(node, req).body
    assert body["statuscode"] == StatusCode.ABORTED
    assert phrase in body["statusmsg"] and "600s" in body["statusmsg"]
    assert not os.path.exists(node.ssl_path("private.pem"))


@pytest.mark.parametrize(
    "data,code,phrase",
    [
        ({"token": "wrong"}, StatusCode.ABORTED, "incorrect provisioning token"),
        ({}, StatusCode.MISSING_DATA, "missing input 'token'"),
        ({"token": 42}, StatusCode.INVALID_DATA, "input 'token' must be a string"),
    ],
)
def test_bad_token_is_refused_and_nothing_is_written(node, data, code, phrase):
    got, msg, _data, _result = call(node, "gencsr", data)
    assert (got, phrase in msg) == (code, True)
    assert not os.path.exists(node.ssl_path("private.pem"))


# -------------------------------------------------------------------------------------------- the ttl cap


def test_a_sender_cannot_stretch_the_window_with_a_long_ttl(node):
    import time

    old = int(time.time()) - 600
    body = handle(node, request("gencsr", {"token": TOKEN}, ttl=100000, time=old)).body
    assert body["statuscode"] == StatusCode.ABORTED
    assert body["statusmsg"] == "request expired: sent 600s ago, ttl 300s (capped from the 100000s it asked for)"
    assert not os.path.exists(node.ssl_path("private.pem"))
    stale_ping = Request(agent="discovery", body="ping", callerid="choria=a", senderid="c", ttl=100000, time=old)
    assert handle(node, stale_ping).body is None


def test_the_cap_is_the_agents_setting(tmp_path):
    import time

    node = NodeState("web2.example.net", str(tmp_path / "n"), TOKEN, trust=AgentTrust(max_ttl=30))
    node.load()
    body = handle(node, request("ping", agent="rpcutil", ttl=60, time=int(time.time()) - 45)).body
    assert "ttl 30s (capped from the 60s" in body["statusmsg"]
    assert handle(node, request("ping", agent="rpcutil", ttl=60, time=int(time.time()) - 20)).body["statuscode"] == 0


# -------------------------------------------------------------------------------------------- replays


def files_of(node):
    """Every file under the node's directory with its content: what a refused request must leave alone."""
    found = {}
    for directory, _dirs, names in os.walk(node.node_dir):
        for name in names:
            path = os.path.join(directory, name)
            with open(path, "rb") as handle_:
                found[path] = handle_.read()
    return found


def test_a_replayed_gencsr_is_refused_and_the_key_stays(node):
    req = request("gencsr", {"token": TOKEN})
    assert handle(node, req).body["statuscode"] == 0
    before = files_of(node)
    body = handle(node, req).body
    assert body["statuscode"] == StatusCode.ABORTED
    assert body["statusmsg"].startswith(f"replay refused: request {req.requestid} was already accepted")
    assert files_of(node) == before


def test_a_replayed_configure_is_refused_and_nothing_is_rewritten(node, ca):
    # Signed by the site's provisioner, so the site lock the first copy commits lets the second through to the memory.
    req = configure_request(node, ca, signer=ca.provisioner_signer())
    assert handle(node, req).body["statuscode"] == 0
    before = files_of(node)
    body = handle(node, req).body
    assert body["statuscode"] == StatusCode.ABORTED and "replay refused" in body["statusmsg"]
    assert files_of(node) == before


def test_refused_requests_are_not_remembered(node):
    req = request("gencsr", {"token": "wrong"})
    assert handle(node, req).body["statusmsg"] == "incorrect provisioning token"
    assert handle(node, req).body["statusmsg"] == "incorrect provisioning token"  # not "replay": never accepted
    assert len(node.replay) == 0


def test_rpcutil_is_not_remembered(node):
    req = request("ping", agent="rpcutil")
    assert handle(node, req).body["statuscode"] == handle(node, req).body["statuscode"] == 0


# -------------------------------------------------------------------------------------------- signatures


@pytest.fixture(scope="module")
def provisioning():
    """The provisioning CA a node image pins, a provisioner of it, and what a hostile network has instead."""
    from tests.support.certificates import Authority, provisioner_signers

    ca = Authority("site A provisioning CA")
    return dict(provisioner_signers(ca), ca=ca)


@pytest.fixture
def signed_node(tmp_path, provisioning):
    node = NodeState("web1.example.net", str(tmp_path / "node"), TOKEN, trust=AgentTrust(provisioning["ca"].pem))
    node.load()
    return node


@pytest.mark.parametrize(
    "who,reason",
    UNTRUSTED_SIGNERS,
)
def test_with_a_provisioning_ca_every_choria_provision_action_must_be_signed_under_it(
    signed_node, provisioning, who, reason
):
    signer = provisioning[who] if who else None
    for action in ("gencsr", "jwt", "restart", "shutdown"):
        code, msg, _data, result = call(signed_node, action, {"token": TOKEN}, signer=signer)
        assert code == StatusCode.ABORTED, (action, msg)
        assert msg.startswith("request not authenticated by web1.example.net: ") and reason in msg
        assert result.effect == ""
    assert not os.path.exists(signed_node.ssl_path("private.pem"))


def test_a_signature_over_another_message_does_not_verify(signed_node, provisioning):
    from ansible_collections.zeroinit.bootstrap.plugins.module_utils.choria.protocol import Request

    req = request("gencsr", {"token": TOKEN}, signer=provisioning["provisioner"])
    forged = Request(**{**req.__dict__, "secure_message": req.secure_message.replace("gencsr", "gencsr ")})
    body = handle(signed_node, forged).body
    assert body["statuscode"] == StatusCode.ABORTED and "signature does not verify" in body["statusmsg"]


def test_a_signed_request_still_needs_the_token(signed_node, provisioning):
    code, msg, _data, _result = call(signed_node, "gencsr", {"token": "wrong"}, signer=provisioning["provisioner"])
    assert (code, msg) == (StatusCode.ABORTED, "incorrect provisioning token")


def test_rpcutil_and_discovery_stay_open_and_signed_provisioning_works(signed_node, provisioning):
    assert call(signed_node, "inventory", agent="rpcutil")[0] == 0
    ping = Request(agent="discovery", body="ping", callerid="choria=a", senderid="c")
    assert handle(signed_node, ping).body == "pong"
    code, msg, data, _result = call(signed_node, "gencsr", {"token": TOKEN}, signer=provisioning["provisioner"])
    assert code == 0, msg
    assert "BEGIN CERTIFICATE REQUEST" in data["csr"]


# -------------------------------------------------------------------------------------------- the site lock


def configure_request(node, ca, signer=None, config=None):
    import json

    from tests.support.node_requests import CONFIG

    code, msg, data, _result = call(node, "gencsr", {"token": TOKEN}, signer=signer)
    assert code == 0, msg
    cert = ca.sign_csr(data["csr"])
    payload = {"token": TOKEN, "config": json.dumps(config or CONFIG), "certificate": cert, "ca": ca.pem}
    return request("configure", payload, signer=signer)


def reloaded(node, trust=None):
    """The node as the process finds it after a restart (optionally with other agent settings)."""
    again = NodeState(node.identity, node.node_dir, TOKEN, trust=trust or node.trust)
    again.load()
    return again


def test_a_token_only_configure_locks_the_node_to_the_ca_it_installed(node, ca):
    from ansible_collections.zeroinit.bootstrap.plugins.module_utils.node.site_lock import SiteLock

    req = configure_request(node, ca)
    assert handle(node, req).body["statuscode"] == 0
    lock = SiteLock.load(pathlib.Path(node.site_lock_path).read_text())
    assert lock.provisioning_ca_keys == () and len(lock.site_ca_keys) == 1
    assert (lock.committed_by, lock.request_id) == ("choria=alice", req.requestid)
    assert os.stat(node.site_lock_path).st_mode & 0o777 == 0o600
    assert pathlib.Path(node.site_ca_path).read_text() == ca.pem


def test_a_locked_node_is_reprovisioned_only_by_its_sites_provisioner(node, ca, provisioning):
    from tests.support.fleet import TestCA

    assert handle(node, configure_request(node, ca)).body["statuscode"] == 0
    node = reloaded(node)  # the lock survives a restart of the process
    before = files_of(node)
    code, msg, _data, _result = call(node, "reprovision", {"token": TOKEN})
    assert code == StatusCode.ABORTED
    assert "node is locked to its site" in msg and "the token alone is refused" in msg
    stranger = TestCA("site B CA").provisioner_signer()
    code, msg, _data, _result = call(node, "reprovision", {"token": TOKEN}, signer=stranger)
    assert code == StatusCode.ABORTED and "locked to its site" in msg and "not issued by the site CA" in msg
    code, msg, _data, _result = call(node, "reprovision", {"token": TOKEN}, signer=provisioning["provisioner"])
    assert code == StatusCode.ABORTED and "not issued by the site CA" in msg
    assert files_of(node) == before
    own = ca.provisioner_signer()
    code, msg, _data, result = call(node, "reprovision", {"token": TOKEN}, signer=own)
    assert code == 0 and result.effect == "reprovision", msg


def test_a_reprovisioned_node_stays_locked_to_its_site(node, ca):
    own = ca.provisioner_signer()
    assert handle(node, configure_request(node, ca)).body["statuscode"] == 0
    node = reloaded(node)
    assert call(node, "reprovision", {"token": TOKEN}, signer=own)[0] == 0
    node = reloaded(node)
    assert node.mode == "provisioning" and node.site_lock_text is not None
    code, msg, _data, _result = call(node, "gencsr", {"token": TOKEN})
    assert code == StatusCode.ABORTED and "gencsr needs a request signed by a provisioner of that site" in msg
    assert not os.path.exists(node.ssl_path("private.pem"))
    assert handle(node, configure_request(node, ca, signer=own)).body["statuscode"] == 0


def test_the_lock_records_the_provisioning_ca_and_refuses_another_sites_provisioner(signed_node, ca, provisioning):
    from ansible_collections.zeroinit.bootstrap.plugins.module_utils.node.site_lock import SiteLock

    ours = provisioning["provisioner"]
    assert handle(signed_node, configure_request(signed_node, ca, signer=ours)).body["statuscode"] == 0
    lock = SiteLock.load(pathlib.Path(signed_node.site_lock_path).read_text())
    assert lock.provisioning_ca_keys == signed_node.trust.verifier.ca_key_sha256s
    assert lock.committed_by == "CN=prov.a.example.net"
    # The image is swapped for one that trusts site B's provisioning CA: B's provisioner verifies, the lock refuses.
    moved = reloaded(signed_node, AgentTrust(provisioning["other_site_ca"].pem))
    before = files_of(moved)
    code, msg, _data, _result = call(moved, "reprovision", {"token": TOKEN}, signer=provisioning["other_site"])
    assert code == StatusCode.ABORTED and "reprovision signed under another CA is refused" in msg
    assert "CN=prov.b.example.net" in msg
    assert files_of(moved) == before
    assert call(reloaded(signed_node), "reprovision", {"token": TOKEN}, signer=ours)[0] == 0


def test_an_unreadable_lock_refuses_and_never_unlocks(node, ca):
    own = ca.provisioner_signer()
    assert handle(node, configure_request(node, ca)).body["statuscode"] == 0
    with open(node.site_lock_path, "w") as handle_:
        handle_.write("{garbage")
    node = reloaded(node)
    code, msg, _data, _result = call(node, "reprovision", {"token": TOKEN}, signer=own)
    assert code == StatusCode.ABORTED and "the site lock is not JSON" in msg and "wiping" in msg


def test_a_configure_with_a_bundle_that_cannot_anchor_the_lock_is_refused(node, ca):
    import json

    from tests.support.node_requests import CONFIG

    code, _msg, data, _result = call(node, "gencsr", {"token": TOKEN})
    cert = ca.sign_csr(data["csr"])
    bundle = ca.pem + cert  # an end-entity certificate in the CA bundle: it could never anchor a provisioner
    payload = {"token": TOKEN, "config": json.dumps(CONFIG), "certificate": cert, "ca": bundle}
    code, msg, _data, _result = call(node, "configure", payload)
    assert code == StatusCode.INVALID_DATA and "input 'ca' cannot lock web1.example.net to its site" in msg
    assert not os.path.exists(node.site_lock_path) and not os.path.exists(node.server_conf)


# -------------------------------------------------------------------------------------------- the JWT


def test_jwt_serves_the_nodes_provisioning_jwt_with_an_empty_ecdh_key(tmp_path):
    path = tmp_path / "provisioning.jwt"
    path.write_text("eyJhbGciOiJFZERTQSJ9.e30.c2ln\n")
    node = NodeState("web3.example.net", str(tmp_path / "n"), TOKEN, jwt_path=str(path))
    node.load()
    code, _msg, data, _result = call(node, "jwt", {"token": TOKEN})
    assert (code, data) == (0, {"jwt": "eyJhbGciOiJFZERTQSJ9.e30.c2ln", "ecdh_public": ""})
    assert call(node, "jwt", {"token": "wrong"})[1] == "incorrect provisioning token"


@pytest.mark.parametrize("content,phrase", [(None, "does not exist"), ("", "is empty"), ("x" * 9000, "longer than")])
def test_jwt_refuses_when_the_node_has_none(tmp_path, content, phrase):
    path = tmp_path / "provisioning.jwt"
    if content is not None:
        path.write_text(content)
    node = NodeState("web3.example.net", str(tmp_path / "n"), TOKEN, jwt_path=str(path))
    node.load()
    code, msg, _data, _result = call(node, "jwt", {"token": TOKEN})
    assert code == StatusCode.ABORTED and phrase in msg


def test_jwt_without_the_option_says_so(node):
    code, msg, _data, _result = call(node, "jwt", {"token": TOKEN})
    assert code == StatusCode.ABORTED and "--provisioning-jwt" in msg
