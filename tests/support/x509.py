"""X.509 material for tests: CSRs with chosen names and keys, certificates loaded, policy refusals caught."""

from __future__ import annotations

import ipaddress

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519
from cryptography.x509.oid import NameOID

from ansible_collections.zeroinit.bootstrap.plugins.module_utils.pki.policy import PolicyError

IDENTITY = "node1.example.net"
EC_KEY = ec.generate_private_key(ec.SECP256R1())  # one node key for the tests that do not care which


def make_csr(identity: str = IDENTITY, key=None, dns=(), ips=(), extra_names=(), cn_count: int = 1) -> str:
    key = key if key is not None else EC_KEY
    attributes = [x509.NameAttribute(NameOID.COMMON_NAME, identity) for _index in range(cn_count)]
    attributes.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, "system:masters"))
    builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name(attributes))
    names = [x509.DNSName(n) for n in dns] + [x509.IPAddress(ipaddress.ip_address(a)) for a in ips] + list(extra_names)
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    algorithm = None if isinstance(key, (ed25519.Ed25519PrivateKey, ed448.Ed448PrivateKey)) else hashes.SHA256()
    return builder.sign(key, algorithm).public_bytes(serialization.Encoding.PEM).decode("ascii")


def load(pem: str):
    return x509.load_pem_x509_certificate(pem.encode("ascii"))


def refusal(signer, csr, identity=IDENTITY, **kwargs) -> PolicyError:
    with pytest.raises(PolicyError) as info:
        signer.sign(csr, identity, **kwargs)
    return info.value
