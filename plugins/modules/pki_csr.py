#!/usr/bin/python
# Copyright: zeroinit.bootstrap contributors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)

from __future__ import annotations

DOCUMENTATION = r"""
module: pki_csr
short_description: Make a private key on the host that uses it, and a certificate signing request for it
description:
  - Makes the private key at O(path) when it is absent (mode C(0600), written atomically) and keeps it from then on;
    a key of another type than O(key_type) is an error, never replaced.
  - Returns a CSR for the key with the subject C(CN=<identity>) and the O(subject_alt_names), and keeps it at
    O(csr_path) when given. A CSR already there is kept while it asks for the same key, identity and names.
  - For services that are not node agents (the C(broker) role's TLS key and its OCSP responder's key). The CSR is
    signed elsewhere, for example by M(zeroinit.bootstrap.pki_sign) on the CA's host; the key never leaves this
    host.
author:
  - zeroinit.bootstrap contributors (!UNKNOWN)
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
attributes:
  check_mode:
    support: full
    details: Nothing is written. When the key would be made, RV(csr) is null.
  diff_mode:
    support: none
  platform:
    platforms: posix
  idempotent:
    description: When run twice with the same inputs, the second run reports no change.
    support: full
options:
  path:
    description: The private key (PEM, PKCS#8, unencrypted, mode C(0600)).
    type: path
    required: true
  csr_path:
    description: Keep the CSR here (PEM, mode C(0644)).
    type: path
  identity:
    description: The common name of the CSR's subject (the only subject attribute).
    type: str
    required: true
  subject_alt_names:
    description:
      - Names the CSR asks for, as C(DNS:name), C(IP:address) or a bare name (an IP address when it parses as one).
    type: list
    elements: str
    default: []
  key_type:
    description: The key made when O(path) is absent. V(ec) is ECDSA P-256, V(rsa) RSA 3072 bits.
    type: str
    choices: [ec, rsa, ed25519]
    default: ec
seealso:
  - module: zeroinit.bootstrap.pki_sign
requirements:
  - cryptography >= 42.0
"""

EXAMPLES = r"""
- name: Make the broker's TLS key and a CSR for its address
  zeroinit.bootstrap.pki_csr:
    path: /etc/zeroinit/broker/tls-key.pem
    csr_path: /etc/zeroinit/broker/tls.csr
    identity: broker1.example.net
    subject_alt_names: ["IP:10.0.0.5"]
  register: broker_csr

- name: Sign it with the site CA on the controller
  zeroinit.bootstrap.pki_sign:
    csr: "{{ broker_csr.csr }}"
    identity: broker1.example.net
    allowed_sans: ['10\.0\.0\.5']
    profile: server
    ca_cert: site/ca.pem
    ca_key: "{{ unlocked_ca_key }}"
    dest: site/brokers/broker1.pem
  delegate_to: localhost
"""

RETURN = r"""
csr:
  description: The CSR, PEM. Null in check mode when the key would be made.
  returned: success
  type: str
key_created:
  description: Whether the key was made (or, in check mode, would be).
  returned: success
  type: bool
public_key_sha256:
  description: SHA-256 of the key's DER SubjectPublicKeyInfo, hexadecimal (identifies the key, reveals nothing).
  returned: success
  type: str
subject_alt_names:
  description: The names the CSR asks for, as C(DNS:name) and C(IP:address).
  returned: success
  type: list
  elements: str
"""

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

from ansible_collections.zeroinit.bootstrap.plugins.module_utils.common.deps import (
    CRYPTOGRAPHY_IMPORT_ERROR,
    HAS_CRYPTOGRAPHY,
)
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.pki.ca import CA_KEY_TYPES
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.pki.csr import KeyAndCsr
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.pki.x509 import PkiError


def main():
    module = AnsibleModule(
        argument_spec=dict(
            path=dict(type="path", required=True),
            csr_path=dict(type="path"),
            identity=dict(type="str", required=True),
            subject_alt_names=dict(type="list", elements="str", default=[]),
            key_type=dict(type="str", default="ec", choices=list(CA_KEY_TYPES)),
        ),
        supports_check_mode=True,
    )
    if not HAS_CRYPTOGRAPHY:
        module.fail_json(msg=missing_required_lib("cryptography"), exception=CRYPTOGRAPHY_IMPORT_ERROR)
    try:
        result = KeyAndCsr(module.params).run(check_mode=module.check_mode)
    except PkiError as exc:
        module.fail_json(msg=str(exc), field=exc.field)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
