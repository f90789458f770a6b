# Copyright: zeroinit.bootstrap contributors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)
"""The trust options of the provisioning network's controller side, written once.

``DOCUMENTATION``: the provisioner certificate that signs every request (zeroinit.bootstrap.choria_provision and
the zeroinit.bootstrap.provisioning inventory plugin); ``JWT`` (``zeroinit.bootstrap.request_signing.jwt``): the
site's provisioning-JWT verification key (choria_provision). The argument specs are
``request_signing_argument_spec()`` and ``jwt_verification_argument_spec()`` in
``plugins/module_utils/provisioning/settings.py``; a unit test keeps each pair in step.
"""

from __future__ import annotations


class ModuleDocFragment:
    DOCUMENTATION = r"""
options:
  signing_cert:
    description:
      - A provisioner certificate (PEM; intermediates may follow it) with which every request is signed, as
        go-choria's x509 security signs a protocol v1 secure request (C(pubcert) is this PEM, C(signature) is over
        the request's C(message) with O(signing_key)).
      - It must carry the provisioner extended key usage, OID
        C(1.2.840.113556.1.8000.2554.59256.7049.57583.19495.35325.13944690.16046217), and chain to the CA the
        nodes pin with the agent option C(--provisioning-ca), or, for nodes without one, to the site CA a node was
        configured with (a configured node is locked to its site and moves again only for a request signed under
        it). The same certificate may serve as the TLS client certificate to the brokers.
      - RSA (2048 to 8192 bits; signatures are PKCS#1 v1.5 with SHA-256, as Choria's) or EC P-256 keys.
    type: path
  signing_key:
    description:
      - The private key of O(signing_cert) (PEM). Read on the controller only; it never leaves it.
    type: path
  signing_key_passphrase:
    description:
      - Passphrase of O(signing_key) when it is encrypted.
    type: str
"""

    JWT = r"""
options:
  jwt_verify_key:
    description:
      - The site's provisioning-JWT issuer key, to verify each node's provisioning JWT (Choria's C(provisioning.jwt),
        served by C(choria_provision#jwt)) before anything else is asked of the node.
      - A PEM public key or certificate file, a file holding a hex Ed25519 public key, or that hex text itself, as
        Choria's C(jwt_verify_cert) takes it. Ed25519 (EdDSA) and EC P-256 (ES256) keys only.
      - A node whose JWT is missing, forged, expired or not yet valid, whose C(cht) token claim is not O(token), or
        whose identity does not match the JWT's identity patterns (C(extensions.zeroinit_identity_patterns)) is
        failed with the reason and never gets a certificate.
      - The verified claims are the helper's C(jwt) input, as Choria's helper contract has it.
    type: str
"""
