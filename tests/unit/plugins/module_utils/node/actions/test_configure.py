"""configure: certificate, CA and configuration checked, then written as one set."""

import json
import os
import pathlib

import pytest

from ansible_collections.zeroinit.bootstrap.plugins.module_utils.choria.config import parse_config
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.choria.protocol import StatusCode
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.pki.x509 import certificate_matches_key
from tests.support.fleet import TestCA
from tests.support.node_requests import CONFIG, TOKEN, call, provisioned_files


def test_configure_writes_certificate_ca_and_config_with_the_security_settings(node, ca):
    cert = provisioned_files(node, ca)
    assert pathlib.Path(node.ssl_path("certificate.pem")).read_text() == cert
    assert pathlib.Path(node.ssl_path("ca.pem")).read_text() == ca.pem
    conf = parse_config(pathlib.Path(node.server_conf).read_text())
    assert conf["plugin.choria.server.provision"] == "false"
    assert conf["identity"] == "web1.example.net"
    assert conf["plugin.security.provider"] == "file"
    assert conf["plugin.security.file.key"] == node.ssl_path("private.pem")
    assert conf["plugin.security.file.certificate"] == node.ssl_path("certificate.pem")
    assert conf["plugin.security.file.ca"] == node.ssl_path("ca.pem")
    assert certificate_matches_key(cert.encode(), pathlib.Path(node.ssl_path("private.pem")).read_bytes())
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
