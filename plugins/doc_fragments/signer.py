# Copyright: zeroinit.bootstrap contributors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)
"""The signer's options, written once: zeroinit.bootstrap.pki_sign's options, and the suboptions of
zeroinit.bootstrap.choria_provision's ``signer`` (``zeroinit.bootstrap.signer.as_suboptions``): the backend (the
built-in signer or a CFSSL server), the CA files, and the policy.

The argument spec is ``signer_argument_spec()`` in ``plugins/module_utils/pki/issuance.py``; a unit test checks
that both name the same options with the same types, choices and defaults.
"""

from __future__ import annotations

import json
import re
import textwrap


class ModuleDocFragment:
    DOCUMENTATION = r"""
options:
  backend:
    description:
      - Who signs. V(builtin) signs in-process with the CA in O(ca_cert) and O(ca_key). V(cfssl) sends the CSR to a
        CFSSL CA server (C(cfssl serve)) at O(cfssl_url); the CA key stays on that server.
      - With V(cfssl) the same policy is applied before the request leaves, and the CSR's subject must be its CN
        alone (CFSSL copies the CSR's subject into the certificate). The certificate that comes back is refused
        unless it chains to the server's CA, carries the CSR's public key, is C(CN=<identity>) with exactly the SANs
        the policy allowed, is not a CA and has the extended key usage of O(profile).
      - With V(cfssl) the CFSSL profile's C(expiry) sets the certificate's lifetime, not O(valid_days); a profile
        whose expiry exceeds O(max_valid_days) is refused, and a certificate shorter than O(valid_days) gets a
        warning. The profile's usages must give exactly the extended key usage O(profile) names, and no
        C(cert sign) or C(crl sign). O(create_ca) and O(valid_seconds) are refused.
    type: str
    choices: [builtin, cfssl]
    default: builtin
  ca_cert:
    description:
      - Path of the CA certificate (PEM). When the file holds a chain, the first certificate is the signing CA and
        the whole chain is the CA bundle given with every certificate.
      - Required with O(backend=builtin).
    type: path
  ca_key:
    description:
      - Path of the CA private key (PEM, PKCS#8 or traditional). It must match O(ca_cert); a key that does not is
        refused. Created with mode C(0600) when O(create_ca) makes the CA.
      - Required with O(backend=builtin).
    type: path
  ca_passphrase:
    description:
      - Passphrase of O(ca_key). When O(create_ca) makes the CA, the new key is encrypted with it.
    type: str
  create_ca:
    description:
      - Create the CA (key C(0600), self-signed certificate C(0644), each written atomically) when O(ca_cert) and
        O(ca_key) are both absent. When only the key exists, a certificate is made for it. A certificate without its
        key is an error, as it may already be trusted.
    type: bool
    default: false
  ca_common_name:
    description:
      - Common name of a CA made by O(create_ca).
    type: str
    default: zeroinit CA
  ca_key_type:
    description:
      - Key type of a CA made by O(create_ca). V(ec) is ECDSA P-256, V(rsa) is RSA 3072 bits.
    type: str
    choices: [ec, rsa, ed25519]
    default: ec
  ca_valid_days:
    description:
      - Validity of a CA made by O(create_ca), in days.
    type: int
    default: 3650
  allowed_sans:
    description:
      - Regular expressions; every name the certificate would carry (the identity and each requested DNS or IP SAN,
        lower-cased) must fully match one of them.
      - C({identity}) in a pattern stands for the escaped identity, for example C(^[a-z0-9-]+\.{identity}$).
      - When not set, only the identity itself is allowed, so a node cannot obtain a certificate that names another
        node.
    type: list
    elements: str
  deny:
    description:
      - Regular expressions; a name (lower-cased) in which one of them is found is refused. Added to the built-in
        list unless O(default_deny=false).
    type: list
    elements: str
    default: []
  default_deny:
    description:
      - Apply the built-in deny list as well as O(deny). It refuses wildcards (C(*)), names ending C(.choria) or
        C(.mcollective) and names containing a C(privileged) label (Choria treats such certificates as clients and
        privileged users), C(localhost), names whose first label is C(root), C(admin) or C(administrator), and the
        loopback and unspecified addresses.
    type: bool
    default: true
  allowed_key_types:
    description:
      - Key types a CSR may carry.
    type: list
    elements: str
    choices: [ec, rsa, ed25519, ed448]
    default: [ec, rsa, ed25519]
  min_rsa_bits:
    description:
      - Smallest RSA key accepted, in bits.
    type: int
    default: 2048
  ec_curves:
    description:
      - Elliptic curves accepted for EC keys (names as OpenSSL spells them).
    type: list
    elements: str
    default: [secp256r1, secp384r1]
  valid_days:
    description:
      - Validity of the issued certificate, in days.
    type: int
    default: 365
  valid_seconds:
    description:
      - Validity of the issued certificate in seconds, instead of O(valid_days), for short-lived certificates that
        their nodes renew on their own. At least 30, and not more than O(max_valid_days) allows.
      - Only with O(backend=builtin); a CFSSL profile's C(expiry) (and C(backdate)) set a short lifetime there.
    type: int
  max_valid_days:
    description:
      - Longest validity the policy allows; a larger O(valid_days) is refused.
    type: int
    default: 365
  profile:
    description:
      - What the certificate is for. V(server) gives ExtendedKeyUsage serverAuth, V(client) clientAuth, V(both) both.
        KeyUsage is digitalSignature, plus keyEncipherment for RSA keys.
      - V(ocsp) is a delegated OCSP responder's certificate (RFC 6960 4.2.2.2), as the C(broker) role's responder
        uses it. It carries ExtendedKeyUsage OCSPSigning and the id-pkix-ocsp-nocheck extension, and no O(ocsp_url).
    type: str
    choices: [server, client, both, ocsp]
    default: both
  cfssl_url:
    description:
      - Base URL of the CFSSL server, for example C(https://ca.example.net:8888). Required with O(backend=cfssl).
      - Only the C(info) and C(authsign) endpoints are used (C(/api/v1/cfssl/...)).
    type: str
  cfssl_auth_key:
    description:
      - The hexadecimal HMAC key of the CFSSL profile's C(auth_key) (a C(standard) key in the server's
        C(auth_keys)). Required with O(backend=cfssl). Never logged.
    type: str
  cfssl_profile:
    description:
      - The CFSSL signing profile to sign with; the server's default profile when not set. It must have an
        C(auth_key).
    type: str
  cfssl_label:
    description:
      - The CFSSL signer label, for a server with several signers (multiroot); not needed otherwise.
    type: str
  cfssl_ca_bundle:
    description:
      - CA certificates (PEM file) that verify the TLS certificate of an C(https://) O(cfssl_url); the system's
        trust store when not set. Refused with an C(http://) URL.
    type: path
  cfssl_ca_cert:
    description:
      - The CA certificate (PEM file, may hold the chain up to the root) the server must sign with. The CA the
        server names in C(info) must be in it, and the file's certificates are the chain handed to nodes. Without
        it the CA certificate is taken from the server, with a warning when O(cfssl_url) is plain C(http://).
    type: path
  cfssl_timeout:
    description:
      - Seconds each request to the CFSSL server may take, including the whole answer.
    type: float
    default: 10
  ocsp_url:
    description:
      - URL of the site's OCSP responder (C(http://) or C(https://)), written into every certificate as its
        Authority Information Access. A TLS endpoint that checks peers over OCSP (the members' broker of the
        C(broker) role) asks it at every handshake whether the certificate is revoked; a certificate without it is
        never checked there.
      - A certificate kept at a destination is re-issued when it does not name this URL.
    type: str
"""


def _as_suboptions(documentation: str, option: str, description: str) -> str:
    """The same options as the suboptions of ``option``, their O() references pointing inside it."""
    body = documentation.split("options:\n", 1)[1]
    names = re.findall(r"^  ([a-z_]+):$", body, re.M)
    body = re.sub(rf"O\(({'|'.join(names)})\b", rf"O({option}.\1", body)
    return (
        f"options:\n  {option}:\n    description: {json.dumps(description)}\n    type: dict\n    suboptions:\n"
        + textwrap.indent(body, "    ")
    )


# ansible-doc reads fragment attributes from the imported class, so one text can serve both shapes.
ModuleDocFragment.AS_SUBOPTIONS = _as_suboptions(
    ModuleDocFragment.DOCUMENTATION,
    "signer",
    "The policy signer: the built-in one with a CA in files, or a CFSSL CA server, and the policy CSRs must pass.",
)
