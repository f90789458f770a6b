"""gencsr: the key made on the node, 0600, and a CSR; every input checked as the DDL says."""

import json
import os
import pathlib
import stat

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from ansible_collections.zeroinit.bootstrap.plugins.module_utils.choria.protocol import StatusCode
from tests.support.node_requests import TOKEN, call
from tests.support.rules import IDENTITIES


def test_gencsr_makes_an_ec_key_0600_and_a_csr_with_the_requested_subject(node):
    subject = {"O": "Example Org", "OU": "ops", "C": "DE", "L": "Berlin", "ST": "Berlin"}
    code, _msg, data, _result = call(node, "gencsr", dict(subject, token=TOKEN))
    assert code == 0
    key_path = node.ssl_path("private.pem")
    assert stat.S_IMODE(os.stat(key_path).st_mode) == 0o600
    key = serialization.load_pem_private_key(pathlib.Path(key_path).read_bytes(), None)
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
    assert pathlib.Path(node.ssl_path("csr.pem")).read_text() == data["csr"]
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
