"""The node's action handlers called directly (no NATS): every input is validated and every refusal explains itself."""

import json
import os
import stat

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from ansible_collections.zeroinit.bootstrap.plugins.module_utils import node_actions as na
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.choria.protocol import (
    Request,
    StatusCode,
    rpc_request_body,
)
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.pki.x509 import certificate_matches_key
from tests.support.fleet import TestCA
from tests.support.rules import BROKER_URLS, IDENTITIES, LOOP_GUARD, loop_guard_config

TOKEN = "s3cret"
CONFIG = {
    "plugin.choria.server.provision": "false",
    "plugin.choria.middleware_hosts": "nats://127.0.0.1:4222",
    "collectives": "ops",
}


@pytest.fixture(scope="module")
def ca():
    return TestCA()


@pytest.fixture
def node(tmp_path):
    node = na.ProvisionNode("web1.example.net", str(tmp_path / "node"), TOKEN, {"role": "web"})
    node.load()
    return node


def request(action, data=None, agent="choria_provision", caller="choria=alice", **kw):
    body = rpc_request_body(agent, action, data or {})
    return Request(agent=agent, body=body, callerid=caller, senderid="controller", **kw)


def call(node, action, data=None, **kw):
    result = node.handle(request(action, data, **kw))
    return result.body["statuscode"], result.body["statusmsg"], result.body["data"], result


def provisioned_files(node, ca):
    code, _msg, data, _result = call(node, "gencsr", {"token": TOKEN})
    assert code == 0
    cert = ca.sign_csr(data["csr"])
    code, msg, _data, _result = call(
        node, "configure", {"token": TOKEN, "config": json.dumps(CONFIG), "certificate": cert, "ca": ca.pem}
    )
    assert code == 0, msg
    return cert


# ------------------------------------------------------------------------------------------------ basics


def test_discovery_answers_pong_and_drops_stale_pings(node):
    assert node.handle(request("", agent="discovery")).body is None  # not "ping"
    ping = Request(agent="discovery", body="ping", callerid="choria=a", senderid="c")
    assert node.handle(ping).body == "pong"
    stale = Request(agent="discovery", body="ping", callerid="choria=a", senderid="c", time=1000)
    assert node.handle(stale).body is None


def test_rpcutil_inventory_and_ping_follow_the_ddl(node):
    code, _msg, data, _result = call(node, "inventory", agent="rpcutil")
    assert code == 0
    assert data["facts"] == {"role": "web", "identity": "web1.example.net"}
    assert data["agents"] == ["choria_provision", "discovery", "rpcutil"]
    assert (data["collectives"], data["main_collective"]) == (["provisioning"], "provisioning")
    assert {"classes", "version", "data_plugins", "machines", "upgradable"} <= set(data)
    code, _msg, data, _result = call(node, "ping", agent="rpcutil")
    assert code == 0 and isinstance(data["pong"], int)


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


@pytest.mark.parametrize("action", ["release_update", "jwt", "gen25519"])
def test_unsupported_actions_are_refused_with_a_reason(node, action):
    code, msg, _data, _result = call(node, action, {"token": TOKEN})
    assert code == StatusCode.UNKNOWN_ACTION and "not supported" in msg


@pytest.mark.parametrize("offset,phrase", [(-600, "request expired"), (600, "too far in the future")])
def test_requests_outside_ttl_are_refused_with_the_skew(node, offset, phrase):
    import time

    req = request("gencsr", {"token": TOKEN}, ttl=60, time=int(time.time()) + offset)
    body = node.handle(req).body
    assert body["statuscode"] == StatusCode.ABORTED
    assert phrase in body["statusmsg"] and "600s" in body["statusmsg"]
    assert not os.path.exists(node.ssl_path("private.pem"))


# ------------------------------------------------------------------------------------------------ token, lock


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


def test_lock_holds_off_a_second_provisioner_and_is_renewed_by_the_holder(node):
    assert call(node, "gencsr", {"token": TOKEN}, caller="choria=alice")[0] == 0
    code, msg, _data, _result = call(node, "gencsr", {"token": TOKEN}, caller="choria=bob")
    assert code == StatusCode.ABORTED
    assert msg.startswith("could not obtain provisioning lock (held by choria=alice for ")
    assert "more seconds" in msg
    # the holder's next action renews the lock; after expiry another caller may take it
    assert call(node, "gencsr", {"token": TOKEN}, caller="choria=alice")[0] == 0
    node.lock_until = 0
    assert call(node, "gencsr", {"token": TOKEN}, caller="choria=bob")[0] == 0
    assert node.lock_holder == "choria=bob"


# ------------------------------------------------------------------------------------------------ gencsr


def test_gencsr_makes_an_ec_key_0600_and_a_csr_with_the_requested_subject(node):
    subject = {"O": "Example Org", "OU": "ops", "C": "DE", "L": "Berlin", "ST": "Berlin"}
    code, _msg, data, _result = call(node, "gencsr", dict(subject, token=TOKEN))
    assert code == 0
    key_path = node.ssl_path("private.pem")
    assert stat.S_IMODE(os.stat(key_path).st_mode) == 0o600
    key = serialization.load_pem_private_key(open(key_path, "rb").read(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp256r1"
    csr = x509.load_pem_x509_csr(data["csr"].encode())
    assert csr.is_signature_valid
    subject = {a.oid: a.value for a in csr.subject}
    assert subject[NameOID.COMMON_NAME] == "web1.example.net"
    assert (subject[NameOID.ORGANIZATION_NAME], subject[NameOID.COUNTRY_NAME]) == ("Example Org", "DE")
    assert (
        data["public_key"]
        == csr.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    assert data["ssldir"] == node.ssldir
    assert open(node.ssl_path("csr.pem")).read() == data["csr"]
    assert "PRIVATE" not in json.dumps(data)


def test_gencsr_rsa_on_request_and_custom_cn(node):
    code, _msg, data, _result = call(node, "gencsr", {"token": TOKEN, "key_type": "rsa", "cn": "alias.example.net"})
    assert code == 0
    csr = x509.load_pem_x509_csr(data["csr"].encode())
    assert isinstance(csr.public_key(), rsa.RSAPublicKey) and csr.public_key().key_size == 2048
    assert csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "alias.example.net"


@pytest.mark.parametrize(
    "field,value",
    [
        ("cn", "bad name!"),
        ("cn", "-leading.example.net"),
        ("cn", "x" * 81),
        ("C", "de"),
        ("C", "DEU"),
        ("O", "semi;colon"),
        ("OU", 12),
        ("key_type", "dsa"),
    ],
)
def test_gencsr_validates_subject_inputs_per_the_ddl(node, field, value):
    code, msg, _data, _result = call(node, "gencsr", {"token": TOKEN, field: value})
    assert code == StatusCode.INVALID_DATA and f"'{field}'" in msg
    assert not os.path.exists(node.ssl_path("private.pem"))


@pytest.mark.parametrize("identity,valid", [row for row in IDENTITIES if isinstance(row[0], str) and row[0]])
def test_gencsr_cn_follows_the_identity_rule(node, identity, valid):
    code, msg, _data, _result = call(node, "gencsr", {"token": TOKEN, "cn": identity})
    refused_for_cn = code == StatusCode.INVALID_DATA and "'cn'" in msg
    assert refused_for_cn is (not valid or len(identity) > 80)


# ------------------------------------------------------------------------------------------------ configure


def test_configure_writes_certificate_ca_and_config_with_the_security_settings(node, ca):
    cert = provisioned_files(node, ca)
    assert open(node.ssl_path("certificate.pem")).read() == cert
    assert open(node.ssl_path("ca.pem")).read() == ca.pem
    conf = na.parse_config(open(node.server_conf).read())
    assert conf["plugin.choria.server.provision"] == "false"
    assert conf["identity"] == "web1.example.net"
    assert conf["plugin.security.provider"] == "file"
    assert conf["plugin.security.file.key"] == node.ssl_path("private.pem")
    assert conf["plugin.security.file.certificate"] == node.ssl_path("certificate.pem")
    assert conf["plugin.security.file.ca"] == node.ssl_path("ca.pem")
    assert certificate_matches_key(cert.encode(), open(node.ssl_path("private.pem"), "rb").read())
    assert not os.path.exists(node.journal)
    assert not [n for n in os.listdir(node.ssldir) if n.endswith(".staged")]


@pytest.mark.parametrize(
    "config,code,phrase",
    [
        (None, StatusCode.MISSING_DATA, "missing input 'config'"),
        ("not json", StatusCode.INVALID_DATA, "input 'config'"),
        ("{not json}", StatusCode.INVALID_DATA, "not valid JSON"),
        (json.dumps({"a": 1}), StatusCode.INVALID_DATA, "value of a must be a string"),
        (json.dumps({"identity": "x\nplugin.choria.server.provision = true"}), StatusCode.INVALID_DATA, "line break"),
        (json.dumps({"k": "v" * 2100}), StatusCode.INVALID_DATA, "2048"),
    ],
)
def test_configure_validates_the_config_input(node, ca, config, code, phrase):
    call(node, "gencsr", {"token": TOKEN})
    data = {"token": TOKEN}
    if config is not None:
        data["config"] = config
    got, msg, _data, _result = call(node, "configure", data)
    assert got == code and phrase in msg
    assert not os.path.exists(node.server_conf)


def test_configure_refuses_a_certificate_for_another_key(node, ca):
    call(node, "gencsr", {"token": TOKEN})
    other, _key = ca.issue_key_pair("web1.example.net")
    code, msg, _data, _result = call(
        node, "configure", {"token": TOKEN, "config": json.dumps(CONFIG), "certificate": other, "ca": ca.pem}
    )
    assert code == StatusCode.INVALID_DATA and "does not match the private key" in msg
    assert not os.path.exists(node.ssl_path("certificate.pem")) and not os.path.exists(node.server_conf)


def test_configure_refuses_a_certificate_from_another_ca(node, ca):
    _code, _msg, data, _result = call(node, "gencsr", {"token": TOKEN})
    cert = TestCA("stranger").sign_csr(data["csr"])
    code, msg, _data, _result = call(
        node, "configure", {"token": TOKEN, "config": json.dumps(CONFIG), "certificate": cert, "ca": ca.pem}
    )
    assert code == StatusCode.INVALID_DATA and "not signed by the given 'ca'" in msg


@pytest.mark.parametrize(
    "extra,code,phrase",
    [
        (
            {"certificate": "-----BEGIN CERTIFICATE-----\ngarbage\n-----END CERTIFICATE-----\n"},
            StatusCode.INVALID_DATA,
            "'certificate' does not parse",
        ),
        ({"certificate": "hello"}, StatusCode.INVALID_DATA, "'certificate' must be a PEM"),
        ({"ca": None}, StatusCode.MISSING_DATA, "missing input 'ca'"),
        ({"ssldir": "/etc"}, StatusCode.INVALID_DATA, "'ssldir'"),
        ({"key": "-----BEGIN RSA PRIVATE KEY-----"}, StatusCode.INVALID_DATA, "'key' is refused"),
    ],
)
def test_configure_validates_certificate_inputs(node, ca, extra, code, phrase):
    _c, _m, data, _result = call(node, "gencsr", {"token": TOKEN})
    inputs = {"token": TOKEN, "config": json.dumps(CONFIG), "certificate": ca.sign_csr(data["csr"]), "ca": ca.pem}
    inputs.update(extra)
    got, msg, _data, _result = call(node, "configure", {k: v for k, v in inputs.items() if v is not None})
    assert got == code and phrase in msg


# ------------------------------------------------------------------------------------------------ restart etc.


def test_restart_without_configuration_is_refused(node):
    code, msg, _data, _result = call(node, "restart", {"token": TOKEN})
    assert code == StatusCode.ABORTED and "no configuration" in msg


def test_restart_is_refused_when_provisioning_stays_on(node, ca):
    provisioned_files(node, ca)
    conf = dict(CONFIG, **{"plugin.choria.server.provision": "true"})
    call(node, "configure", {"token": TOKEN, "config": json.dumps(conf)})
    code, msg, _data, _result = call(node, "restart", {"token": TOKEN})
    assert code == StatusCode.ABORTED and "plugin.choria.server.provision enabled" in msg


@pytest.mark.parametrize("value,enabled", LOOP_GUARD)
def test_loop_guard_decides_the_mode_at_load_and_restarts_refusal(node, ca, value, enabled):
    provisioned_files(node, ca)
    conf = loop_guard_config(value, **{k: v for k, v in CONFIG.items() if k != "plugin.choria.server.provision"})
    lines = "".join(f"{key} = {text}\n" for key, text in conf.items())
    with open(node.server_conf, "w") as handle:
        handle.write(lines)
    code, msg, _data, _result = call(node, "restart", {"token": TOKEN})
    if enabled:
        assert code == StatusCode.ABORTED and "plugin.choria.server.provision enabled" in msg
    else:
        assert code == 0, msg
    node.load()
    assert node.mode == (na.MODE_PROVISIONING if enabled else na.MODE_CONFIGURED)


@pytest.mark.parametrize("value,expected", BROKER_URLS)
def test_restart_reads_middleware_hosts_with_the_broker_rule(node, ca, value, expected):
    provisioned_files(node, ca)
    hosts = ",".join(value) if isinstance(value, list) else value
    with open(node.server_conf, "w") as handle:
        handle.write(f"plugin.choria.server.provision = false\nplugin.choria.middleware_hosts = {hosts}\n")
    code, msg, _data, _result = call(node, "restart", {"token": TOKEN})
    if isinstance(expected, list):
        assert code == 0, msg
    elif expected == "brokers is empty":
        assert code == StatusCode.ABORTED and "names no plugin.choria.middleware_hosts" in msg
    else:
        assert code == StatusCode.ABORTED and expected in msg


def test_restart_replies_then_asks_for_a_restart_with_clamped_splay(node, ca):
    provisioned_files(node, ca)
    node.splay_max = 5
    code, _msg, data, result = call(node, "restart", {"token": TOKEN, "splay": 100})
    assert code == 0 and "restarting" in data["message"].lower()
    assert (result.effect, result.delay) == ("restart", 5.0)
    assert call(node, "restart", {"token": TOKEN, "splay": "soon"})[0] == StatusCode.INVALID_DATA
    node.load()
    assert node.mode == na.MODE_CONFIGURED
    assert node.collectives == (["ops"], "ops")


def test_configured_node_refuses_provisioning_until_reprovision(node, ca):
    provisioned_files(node, ca)
    node.load()
    code, msg, _data, _result = call(node, "gencsr", {"token": TOKEN})
    assert code == StatusCode.ABORTED and "reprovision" in msg
    assert call(node, "reprovision", {"token": "wrong"})[0] == StatusCode.ABORTED
    code, _msg, _data, result = call(node, "reprovision", {"token": TOKEN})
    assert code == 0 and result.effect == "reprovision"
    assert os.path.exists(os.path.join(node.ssldir, "previous", "certificate.pem"))
    assert not os.path.exists(node.ssl_path("certificate.pem"))
    node.load()
    assert node.mode == na.MODE_PROVISIONING
    assert call(node, "reprovision", {"token": TOKEN})[1].endswith("already in provisioning mode")


def test_shutdown_replies_and_asks_to_stop(node):
    code, _msg, _data, result = call(node, "shutdown", {"token": TOKEN})
    assert code == 0 and result.effect == "shutdown"


def test_a_journal_left_by_a_killed_configure_is_rolled_forward(node, ca):
    provisioned_files(node, ca)
    paths = {"cert": node.ssl_path("certificate.pem"), "conf": node.server_conf}
    old = {name: open(path, "rb").read() for name, path in paths.items()}
    # What a process killed between two renames leaves: every file staged, the journal written, one renamed.
    new_conf = old["conf"].replace(b"collectives = ops", b"collectives = dev")
    open(node.server_conf + ".staged", "wb").write(new_conf)
    open(node.ssl_path("certificate.pem") + ".staged", "wb").write(old["cert"])
    with open(node.journal, "w") as handle:
        json.dump(
            [
                [node.ssl_path("certificate.pem") + ".staged", node.ssl_path("certificate.pem")],
                [node.server_conf + ".staged", node.server_conf],
            ],
            handle,
        )
    assert na.recover_configure(node.node_dir) == "rolled forward"
    assert open(node.server_conf, "rb").read() == new_conf
    assert not os.path.exists(node.journal)
    # staged files without a journal are an unfinished staging: discarded, the old set stays
    open(node.server_conf + ".staged", "wb").write(b"half")
    assert na.recover_configure(node.node_dir) == "discarded"
    assert open(node.server_conf, "rb").read() == new_conf
