# Copyright: zeroinit.bootstrap contributors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)
"""``choria_provision#gencsr``: a new key pair made here and a CSR for it; the private key never leaves the node.

Inputs as go-choria's DDL (``cn``, ``C``, ``L``, ``O``, ``OU``, ``ST``, each with its length limit; ``cn`` follows
the identity rule and defaults to the node's identity), and ``key_type``: ``ecdsa`` (the default: P-256;
``ec`` means the same) or ``rsa`` (RSA-2048).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

from ...choria.protocol import StatusCode
from ...choria.subjects import IDENTITY_RULE, valid_identity
from ...common.deps import NameOID, ec, hashes, rsa, serialization, x509
from ..journal import write_set
from ..state import NodeState
from .base import ActionResult, Refusal, answer, need_cryptography, text_input

CSR_KEY_TYPES = ("ecdsa", "rsa")
CN_LIMIT = 80
# Subject inputs from choria_provision.json (validation regex, maxlength) and their X.509 attribute names.
SUBJECT_INPUTS = {
    "C": (r"^[A-Z]{2}$", 2, "COUNTRY_NAME"),
    "L": (r"^[\w\s-]+$", 50, "LOCALITY_NAME"),
    "O": (r"^[\w\s-]+$", 50, "ORGANIZATION_NAME"),
    "OU": (r"^[\w\s-]+$", 50, "ORGANIZATIONAL_UNIT_NAME"),
    "ST": (r"^[\w\s-]+$", 50, "STATE_OR_PROVINCE_NAME"),
}
_SUBJECT_RE = {name: re.compile(pattern) for name, (pattern, _limit, _oid) in SUBJECT_INPUTS.items()}
SUBJECT_ORDER = ("OU", "O", "L", "ST", "C")


@dataclass
class GencsrInput:
    cn: str | None = None
    subject: dict = field(default_factory=dict)  # C, L, O, OU, ST as given
    key_type: str = "ecdsa"

    @classmethod
    def parse(cls, data: dict) -> GencsrInput:
        cn = text_input(data, "cn", CN_LIMIT)
        if cn is not None and not valid_identity(cn):
            raise Refusal(StatusCode.INVALID_DATA, f"input 'cn' {cn!r} is not a valid identity ({IDENTITY_RULE})")
        subject = {}
        for name, (pattern, limit, _oid) in SUBJECT_INPUTS.items():
            value = text_input(data, name, limit)
            if value is None:
                continue
            if not _SUBJECT_RE[name].match(value):
                raise Refusal(StatusCode.INVALID_DATA, f"input '{name}' does not match {pattern}")
            subject[name] = value
        key_type = text_input(data, "key_type") or "ecdsa"
        key_type = "ecdsa" if key_type == "ec" else key_type
        if key_type not in CSR_KEY_TYPES:
            raise Refusal(StatusCode.INVALID_DATA, f"input 'key_type' must be one of {', '.join(CSR_KEY_TYPES)}")
        return cls(cn, subject, key_type)


def new_key_and_csr(key_type: str, names: list) -> tuple:
    """A key made here (``ecdsa``: P-256, ``rsa``: RSA-2048) and a SHA-256 CSR for it with the subject ``names``:
    (key, key PEM as PKCS#8, CSR PEM). Used by gencsr and by certificate renewal."""
    if key_type == "rsa":
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    else:
        key = ec.generate_private_key(ec.SECP256R1())
    csr = x509.CertificateSigningRequestBuilder().subject_name(x509.Name(names)).sign(key, hashes.SHA256())
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return key, key_pem, csr.public_bytes(serialization.Encoding.PEM)


def gencsr(node: NodeState, request: GencsrInput) -> ActionResult:
    need_cryptography()
    names = [x509.NameAttribute(NameOID.COMMON_NAME, request.cn or node.identity)]
    for name in SUBJECT_ORDER:
        if name in request.subject:
            names.append(x509.NameAttribute(getattr(NameOID, SUBJECT_INPUTS[name][2]), request.subject[name]))
    key, key_pem, csr_pem = new_key_and_csr(request.key_type, names)
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    if not os.path.isdir(node.ssldir):
        os.makedirs(node.ssldir, mode=0o700, exist_ok=True)
    # No journal: a key without its CSR (or the reverse) is harmless, the next gencsr replaces both.
    write_set(
        node.node_dir,
        [(node.ssl_path("private.pem"), key_pem, 0o600), (node.ssl_path("csr.pem"), csr_pem, 0o644)],
        durable=node.durable,
        journal=False,
    )
    return answer(
        "gencsr", {"csr": csr_pem.decode("ascii"), "public_key": public_pem.decode("ascii"), "ssldir": node.ssldir}
    )
