"""Certificates from the policy CA in real TLS: a nats-server with client-certificate verification on loopback.

The broker's certificate is issued by the pki_sign module (through Ansible), node client certificates by the signer
in-process (as the bulk provisioner does); nats-py connects with them, and nats-server (Go's crypto/tls) decides.
"""

from __future__ import annotations

import asyncio
import ipaddress
import time

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ansible_collections.zeroinit.bootstrap.plugins.module_utils.choria.transport import (
    ConnectError,
    connect,
    tls_context,
)
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.pki.ca import CertificateAuthority
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.pki.policy import CsrPolicy
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.pki.signer import Signer
from tests.support.ansible_run import run_module
from tests.support.broker import EmbeddedBroker

BROKER = "broker.zeroinit.test"


def node_key_and_csr(directory, identity: str, dns=(), ips=()):
    """What a node does on gencsr: a key that stays (0600) and a CSR."""
    key = ec.generate_private_key(ec.SECP256R1())
    key_path = directory / (f"{identity}.key")
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    key_path.chmod(0o600)
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, identity)])
    )
    names = [x509.DNSName(n) for n in dns] + [x509.IPAddress(ipaddress.ip_address(a)) for a in ips]
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    csr = builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM).decode("ascii")
    return str(key_path), csr


@pytest.fixture
def tls_broker(tmp_path):
    """A CA made by pki_sign (create_ca), the broker's server certificate from pki_sign, nats-server requiring
    client certificates; stopped after the test."""
    ca_cert, ca_key = tmp_path / "ca.crt", tmp_path / "ca.key"
    key_path, csr = node_key_and_csr(tmp_path, BROKER, ips=["127.0.0.1"])
    # The broker listens on loopback, which the default deny list refuses for nodes: allowed explicitly here.
    result = run_module(
        "zeroinit.bootstrap.pki_sign",
        dict(
            csr=csr,
            identity=BROKER,
            ca_cert=str(ca_cert),
            ca_key=str(ca_key),
            create_ca=True,
            profile="server",
            allowed_sans=["{identity}", r"127\.0\.0\.1"],
            default_deny=False,
            deny=[r"\*"],
            dest=str(tmp_path / "broker.crt"),
        ),
    )
    assert result["changed"] and not result.get("failed"), result.get("msg")
    with EmbeddedBroker(
        tls={"cert": str(tmp_path / "broker.crt"), "key": key_path, "ca": str(ca_cert), "verify": True}
    ) as broker:
        yield broker, CertificateAuthority.load(str(ca_cert), str(ca_key))


def write_client(tmp_path, signer: Signer, identity: str, profile: str = "client"):
    key_path, csr = node_key_and_csr(tmp_path, identity)
    cert_path = tmp_path / (f"{identity}.crt")
    cert_path.write_text(signer.sign(csr, identity, profile=profile).certificate)
    return str(cert_path), key_path


def broker_log(broker, reason: str, within: float = 5.0) -> str:
    """The broker's log once it names the refusal's reason (nats-server writes it after the client has gone)."""
    deadline = time.monotonic() + within
    while True:
        with open(broker.log_path, encoding="utf-8", errors="replace") as handle:
            text = handle.read()
        if reason in text or time.monotonic() > deadline:
            return text
        time.sleep(0.1)


async def round_trip(url: str, ca: str, cert: str, key: str) -> bytes:
    nc = await connect([url], name="pki-test", tls=tls_context(ca, cert, key), reconnect=False, connect_timeout=15)
    try:
        sub = await nc.subscribe("pki.test")
        await nc.publish("pki.test", b"signed by the policy CA")
        msg = await sub.next_msg(timeout=5)
        return msg.data
    finally:
        await nc.close()


def test_node_certificate_from_the_signer_is_accepted_by_a_verifying_broker(tls_broker, tmp_path):
    broker, ca = tls_broker
    cert, key = write_client(tmp_path, Signer(ca, CsrPolicy()), "node1.zeroinit.test")
    assert asyncio.run(round_trip(broker.url, ca.cert_path, cert, key)) == b"signed by the policy CA"


def test_server_only_certificate_is_refused_as_a_client(tls_broker, tmp_path):
    broker, ca = tls_broker
    cert, key = write_client(tmp_path, Signer(ca, CsrPolicy()), "node2.zeroinit.test", profile="server")
    with pytest.raises(ConnectError):
        asyncio.run(round_trip(broker.url, ca.cert_path, cert, key))
    assert "incompatible key usage" in broker_log(broker, "incompatible key usage")


def test_certificate_from_another_ca_is_refused(tls_broker, tmp_path):
    broker, ca = tls_broker
    stranger = CertificateAuthority.create("stranger CA")
    cert, key = write_client(tmp_path, Signer(stranger, CsrPolicy()), "node3.zeroinit.test")
    with pytest.raises(ConnectError):
        asyncio.run(round_trip(broker.url, ca.cert_path, cert, key))
    assert "certificate signed by unknown authority" in broker_log(broker, "certificate signed by unknown authority")
