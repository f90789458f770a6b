#!/usr/bin/python
# Copyright: zeroinit.bootstrap contributors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)

from __future__ import annotations

DOCUMENTATION = r"""
module: pki_sign
short_description: Sign a node's certificate signing request with the policy CA
description:
  - Checks one CSR against a signing policy and, when it passes, issues a certificate from a CA kept in files
    (O(backend=builtin)) or has a CFSSL CA server sign it (O(backend=cfssl), C(cfssl serve) at O(cfssl_url)).
  - "The policy: the CSR's own signature must verify; its subject must have exactly one CN, equal to O(identity);
    every name (the identity and each requested DNS or IP SAN) must match none of the deny patterns and one of
    O(allowed_sans); the key type and size must be allowed; O(valid_days) must not exceed O(max_valid_days)
    (a longer request is refused, not shortened)."
  - The certificate is built from the policy, not copied from the CSR. Its subject is C(CN=<identity>) only, its SANs
    are the identity (always, so TLS host name verification works) plus the allowed requested SANs; it carries
    BasicConstraints CA:FALSE (critical), KeyUsage and ExtendedKeyUsage from O(profile), subject and authority key
    identifiers and a random 128-bit serial. It is valid from five minutes ago (clock skew), and never beyond the
    end of the CA certificate (a warning says so when that shortens it).
  - The same signer (C(plugins/module_utils/pki/)), with either backend, is used in-process by the bulk provisioner
    and by the renewal responder (M(zeroinit.bootstrap.node_certificates)).
  - With O(dest), the module is idempotent. A certificate already at O(dest) is kept (C(changed=false)) when
    it was issued by this CA (its signature verifies), certifies the CSR's public key, names the identity and the
    requested SANs, matches O(profile), and does not end within O(renew_before_days). Otherwise a new one replaces
    it. Without O(dest), every run issues a new certificate and reports a change.
author:
  - zeroinit.bootstrap contributors (!UNKNOWN)
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - zeroinit.bootstrap.signer
attributes:
  check_mode:
    support: full
    details: Everything is checked, including the policy; nothing is written, not even a new CA. When a certificate
      would be issued, RV(certificate) and RV(serial) are null.
  diff_mode:
    support: full
    details: Parsed properties of the certificate at O(dest) before and after (subject, SANs, issuer, serial, not_after,
      public key hash); never key material.
  platform:
    platforms: posix
  idempotent:
    description: When run twice with the same inputs, the second run reports no change.
    support: partial
    details: Idempotent with O(dest); without it each run issues a new certificate.
options:
  csr:
    description:
      - The certificate signing request, PEM text. Mutually exclusive with O(csr_path).
    type: str
  csr_path:
    description:
      - Path of a PEM certificate signing request on the managed host. Mutually exclusive with O(csr).
    type: path
  identity:
    description:
      - The node's identity (its host name). The CSR's CN must equal it; it is always the first DNS SAN.
    type: str
    required: true
  dest:
    description:
      - Write the certificate to this path (mode C(0644), atomically) and keep it while it stays valid; see the
        description for when it is replaced.
    type: path
  chain_dest:
    description:
      - Write the CA chain to this path (mode C(0644), atomically) when its content differs.
    type: path
  renew_before_days:
    description:
      - With O(dest), replace the certificate when it ends within this many days. Must be shorter than the lifetime a
        new certificate gets (O(valid_days), O(valid_seconds), or the CFSSL profile's expiry).
    type: int
    default: 30
seealso:
  - name: RFC 5280
    description: Internet X.509 Public Key Infrastructure Certificate and CRL Profile.
    link: https://www.rfc-editor.org/rfc/rfc5280
notes:
  - With C(connection=local) (no C(become), C(async) or task C(environment), the controller's own Python or no
    C(ansible_python_interpreter)) the action plugin signs in Ansible's worker process instead of starting the
    module; the arguments, checks, results and errors are the same. Elsewhere the module runs on the target.
  - Private keys never pass through this module, except the CA key it reads (and creates with O(create_ca)). Node
    keys are made on the nodes; only their CSRs travel.
requirements:
  - cryptography >= 42.0
"""

EXAMPLES = r"""
- name: Sign a node's CSR with the site CA, creating the CA on first use
  zeroinit.bootstrap.pki_sign:
    csr: "{{ gencsr.csr }}"
    identity: node1.example.net
    ca_cert: /etc/zeroinit/pki/ca.crt
    ca_key: /etc/zeroinit/pki/ca.key
    create_ca: true
    ca_common_name: example.net provisioning CA
  register: signed

- name: Keep a server certificate on disk, re-issued 30 days before it ends
  zeroinit.bootstrap.pki_sign:
    csr_path: /etc/zeroinit/ssl/csr.pem
    identity: "{{ inventory_hostname }}"
    ca_cert: /etc/zeroinit/pki/ca.crt
    ca_key: /etc/zeroinit/pki/ca.key
    ca_passphrase: "{{ vault_ca_passphrase }}"
    profile: server
    valid_days: 90
    max_valid_days: 90
    dest: /etc/zeroinit/ssl/cert.pem
    chain_dest: /etc/zeroinit/ssl/ca.pem

- name: Allow extra names under the node's own domain name and addresses in 10.20.0.0/16
  zeroinit.bootstrap.pki_sign:
    csr: "{{ gencsr.csr }}"
    identity: node1.example.net
    ca_cert: /etc/zeroinit/pki/ca.crt
    ca_key: /etc/zeroinit/pki/ca.key
    allowed_sans:
      - '{identity}'
      - '[a-z0-9-]+\.{identity}'
      - '10\.20\.\d{1,3}\.\d{1,3}'
    deny:
      - '^vault\.'
"""

RETURN = r"""
certificate:
  description: The certificate, PEM. Null in check mode when a new certificate would be issued.
  returned: success
  type: str
  sample: "-----BEGIN CERTIFICATE-----\nMIIB...\n-----END CERTIFICATE-----\n"
ca:
  description: The CA certificate chain, PEM (the content of O(ca_cert)).
  returned: success
  type: str
serial:
  description: Serial number of the certificate, lower-case hexadecimal. Null in check mode when a certificate would be issued.
  returned: success
  type: str
  sample: 6041c89782c9e08cc83b9eedb4eded4
not_after:
  description: End of the certificate's validity, ISO 8601 UTC (predicted in check mode).
  returned: success
  type: str
  sample: "2027-11-21T05:39:34Z"
ca_created:
  description: Whether the CA was created (or, in check mode, would be).
  returned: success
  type: bool
dest:
  description: The O(dest) path, or null.
  returned: success
  type: str
chain_dest:
  description: The O(chain_dest) path, or null.
  returned: success
  type: str
msg:
  description: Whether the certificate was issued or kept, and why.
  returned: always
  type: str
  sample: "kept: the existing certificate is valid until 2027-11-21T05:39:34Z"
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.zeroinit.bootstrap.plugins.module_utils.common.outcome import exit_with_outcome
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.pki.issuance import (
    SIGNER_REQUIRED_IF,
    issuance_outcome,
    signer_argument_spec,
)


def argument_spec() -> dict:
    spec = dict(
        csr=dict(type="str"),
        csr_path=dict(type="path"),
        identity=dict(type="str", required=True),
        dest=dict(type="path"),
        chain_dest=dict(type="path"),
        renew_before_days=dict(type="int", default=30),
    )
    spec.update(signer_argument_spec())
    return spec


# The argument spec and its constraints, shared with the action plugin (plugins/action/pki_sign.py).
MODULE_OPTIONS = dict(
    argument_spec=argument_spec(),
    mutually_exclusive=[("csr", "csr_path")],
    required_one_of=[("csr", "csr_path")],
    required_if=SIGNER_REQUIRED_IF,
)


def main():
    module = AnsibleModule(supports_check_mode=True, **MODULE_OPTIONS)
    outcome = issuance_outcome(module.params, module.check_mode, module._diff)
    exit_with_outcome(module, outcome)


if __name__ == "__main__":
    main()
