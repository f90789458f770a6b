#!/usr/bin/python
# Copyright: zeroinit.bootstrap contributors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)

from __future__ import annotations

DOCUMENTATION = r"""
module: pki_revoke
short_description: Revoke certificates of the site CA and keep its certificate revocation list current
description:
  - Records revoked certificates (serial, identity, reason, time, end of the certificate) in O(records) and signs a
    CRL (RFC 5280) over every record with the CA, at O(crl).
  - A certificate given in O(certificates) is revoked only when this CA issued it (its signature verifies); one from
    another CA is left out with a warning. O(serials) revokes certificates that are not at hand, by serial.
  - Revocation is permanent. A serial already recorded keeps its first record and is returned under
    RV(already_revoked).
  - The CRL is signed again when a serial was added, when it does not list exactly the recorded serials, when another
    CA signed it, or when it ends within O(renew_before_days); each CRL carries the next C(crlNumber). Otherwise it is
    kept and the module reports no change. With nothing to revoke, the module only keeps the CRL current (the first
    run publishes an empty one).
  - The members' broker enforces the CRL through the site's OCSP responder (the C(broker) role), which answers from
    this file.
author:
  - zeroinit.bootstrap contributors (!UNKNOWN)
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
attributes:
  check_mode:
    support: full
    details: Everything is computed and checked; neither the records nor the CRL is written.
  diff_mode:
    support: none
  platform:
    platforms: posix
  idempotent:
    description: When run twice with the same inputs, the second run reports no change.
    support: full
options:
  ca_cert:
    description: The CA certificate (PEM) that issued the certificates and signs the CRL.
    type: path
    required: true
  ca_key:
    description: The CA's private key (PEM).
    type: path
    required: true
  ca_passphrase:
    description: Passphrase of O(ca_key) when it is encrypted.
    type: str
  records:
    description: The revocation records (JSON, written atomically with mode C(0600)); made when absent.
    type: path
    required: true
  crl:
    description: Where the CRL is written (PEM, mode C(0644), atomically).
    type: path
    required: true
  certificates:
    description: PEM certificates to revoke (a string may hold several); each must be issued by the CA.
    type: list
    elements: str
    default: []
  node_certificates:
    description:
      - Certificates as the nodes that held them reported them (C(destroy.yaml) passes what each node's
        C(choria_provision#destroy) reply returned). Each item has C(identity) and C(certificates) (PEM list).
      - A certificate is revoked only when this CA issued it and its common name is that identity, so a node cannot
        have another node's certificate revoked; any other is left out with a warning.
    type: list
    elements: dict
    default: []
  serials:
    description:
      - Certificates to revoke by serial, for those not at hand. Each item has C(serial) (hexadecimal, colons
        allowed) and C(identity) (recorded for people; the CRL lists serials only).
    type: list
    elements: dict
    default: []
  reason:
    description: The RFC 5280 reason recorded for what this run revokes.
    type: str
    default: cessation_of_operation
    choices: [unspecified, key_compromise, ca_compromise, affiliation_changed, superseded, cessation_of_operation,
              privilege_withdrawn]
  crl_valid_days:
    description: Days from C(thisUpdate) to C(nextUpdate) of a CRL signed now.
    type: int
    default: 30
  renew_before_days:
    description: Sign the CRL again when it ends within this many days. Must be smaller than O(crl_valid_days).
    type: int
    default: 10
seealso:
  - module: zeroinit.bootstrap.pki_sign
  - name: RFC 5280 section 5
    description: CRL and CRL extensions profile.
    link: https://www.rfc-editor.org/rfc/rfc5280#section-5
requirements:
  - cryptography >= 42.0
"""

EXAMPLES = r"""
- name: Revoke the certificate a node reported when it wiped its state
  zeroinit.bootstrap.pki_revoke:
    ca_cert: "{{ site_dir }}/ca.pem"
    ca_key: "{{ unlocked_ca_key }}"
    records: "{{ site_dir }}/revocations.json"
    crl: "{{ site_dir }}/crl.pem"
    certificates: "{{ destroyed.data.certificates }}"

- name: Revoke a lost node's certificate by serial, as compromised
  zeroinit.bootstrap.pki_revoke:
    ca_cert: /etc/zeroinit/ca/ca.pem
    ca_key: /etc/zeroinit/ca/ca-key.pem
    records: /etc/zeroinit/ca/revocations.json
    crl: /etc/zeroinit/ca/crl.pem
    serials:
      - serial: 6041c89782c9e08cc83b9eedb4eded4
        identity: node7.example.net
    reason: key_compromise
"""

RETURN = r"""
revoked:
  description: What this run revoked (serial, identity, reason, revoked_at, not_after).
  returned: success
  type: list
  elements: dict
already_revoked:
  description: Serials given that were revoked before (hexadecimal).
  returned: success
  type: list
  elements: str
serials:
  description: Every revoked serial the CRL lists (hexadecimal).
  returned: success
  type: list
  elements: str
crl_number:
  description: The C(crlNumber) of the current CRL (of the one that would be signed, in check mode).
  returned: success
  type: int
next_update:
  description: When the current CRL ends (ISO 8601 UTC).
  returned: success
  type: str
msg:
  description: Whether the CRL was signed, and why.
  returned: always
  type: str
  sample: "CRL signed: new revocations"
"""

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

from ansible_collections.zeroinit.bootstrap.plugins.module_utils.common.deps import (
    CRYPTOGRAPHY_IMPORT_ERROR,
    HAS_CRYPTOGRAPHY,
)
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.common.outcome import exit_with_outcome
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.pki.crl import (
    DEFAULT_CRL_RENEW_BEFORE_DAYS,
    DEFAULT_CRL_VALID_DAYS,
    DEFAULT_REVOCATION_REASON,
    REVOCATION_REASONS,
    CertificateRevocation,
)
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.pki.x509 import PkiError


def main():
    module = AnsibleModule(
        argument_spec=dict(
            ca_cert=dict(type="path", required=True),
            ca_key=dict(type="path", required=True),
            ca_passphrase=dict(type="str", no_log=True),
            records=dict(type="path", required=True),
            crl=dict(type="path", required=True),
            certificates=dict(type="list", elements="str", default=[]),
            node_certificates=dict(type="list", elements="dict", default=[]),
            serials=dict(type="list", elements="dict", default=[]),
            reason=dict(type="str", default=DEFAULT_REVOCATION_REASON, choices=list(REVOCATION_REASONS)),
            crl_valid_days=dict(type="int", default=DEFAULT_CRL_VALID_DAYS),
            renew_before_days=dict(type="int", default=DEFAULT_CRL_RENEW_BEFORE_DAYS),
        ),
        supports_check_mode=True,
    )
    if not HAS_CRYPTOGRAPHY:
        module.fail_json(msg=missing_required_lib("cryptography"), exception=CRYPTOGRAPHY_IMPORT_ERROR)
    try:
        result = CertificateRevocation(module.params).run(check_mode=module.check_mode)
    except PkiError as exc:
        module.fail_json(msg=str(exc), field=exc.field)
    exit_with_outcome(module, result)


if __name__ == "__main__":
    main()
