#!/usr/bin/python
# Copyright: zeroinit.bootstrap contributors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)

from __future__ import annotations

DOCUMENTATION = r"""
module: provisioning_jwt
short_description: Issue the provisioning JWT a node image carries, and keep it until it is due
description:
  - Writes a provisioning JWT (Choria's C(provisioning.jwt)) signed with the site's issuer key to O(dest), mode
    C(0600), atomically. Node images carry it (the C(provision_agent) role's C(provision_agent_provisioning_jwt));
    the provisioner verifies it before it signs anything for a node (C(jwt_verify_key) of
    M(zeroinit.bootstrap.choria_provision) and the provisioner service).
  - The JWT names the provisioning token (C(cht)), the broker URLs (C(chu)), whether they need TLS (C(chs)) and
    the identity patterns a node holding it may claim.
  - Idempotent. The JWT at O(dest) is kept while it verifies with the issuer key, carries exactly the claims asked
    for and does not end within O(renew_before_days). Otherwise a new one is issued and RV(reason) says why. A
    change of O(valid_days) alone does not issue a new JWT; the next one gets the new validity.
  - The file holds the token. Neither the result nor the diff shows the token or the JWT; read the file (for
    example with C(lookup('file', dest))) to give it to an image.
author:
  - zeroinit.bootstrap contributors (!UNKNOWN)
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
attributes:
  check_mode:
    support: full
    details: Nothing is written; RV(reason) and the diff say what would be issued.
  diff_mode:
    support: full
    details: The claims before and after, without the token.
  platform:
    platforms: posix
  idempotent:
    description: When run twice with the same inputs, the second run reports no change (until the JWT is due).
    support: full
options:
  dest:
    description: The JWT file (one line, mode C(0600)); a missing directory is made C(0700). A symbolic link is refused.
    type: path
    required: true
  signing_key:
    description:
      - The site's JWT issuer key, the private key of C(jwt-issuer.pub) that init-site.yaml makes (PEM, Ed25519 or
        EC P-256), or a file holding a hex Ed25519 seed.
      - It stays on the host that runs this module; run it where the key is (usually the controller).
    type: path
    required: true
  signing_key_passphrase:
    description: The passphrase of an encrypted O(signing_key).
    type: str
  token:
    description: The site's provisioning token, the one the provisioner is given.
    type: str
    required: true
  brokers:
    description: The provisioning brokers' URLs the nodes use (C(chu)), without commas.
    type: list
    elements: str
    required: true
  identities:
    description:
      - The identities a node holding this JWT may claim, as patterns (at most 16).
      - A pattern is a DNS-style glob with at most one C(*) per label. The C(*) never matches a dot, so
        C(*.rack1.example.net) matches C(n1.rack1.example.net) but not C(a.b.rack1.example.net).
    type: list
    elements: str
    required: true
  valid_days:
    description: Days a new JWT is valid for.
    type: int
    default: 365
  renew_before_days:
    description: Issue a new JWT when the one at O(dest) ends within this many days. Less than O(valid_days).
    type: int
    default: 30
  secure:
    description: Whether the brokers need TLS (C(chs)).
    type: bool
    default: true
  organization:
    description: The organisation claim (C(ou)).
    type: str
  issuer:
    description: The issuer claim (C(iss)).
    type: str
    default: zeroinit.bootstrap
seealso:
  - module: zeroinit.bootstrap.choria_provision
  - module: zeroinit.bootstrap.site_secrets
requirements:
  - cryptography >= 42.0
  - PyJWT >= 2.8
"""

EXAMPLES = r"""
- name: One JWT for every rack1 image, issued with the vaulted issuer key of init-site.yaml
  hosts: localhost
  connection: local
  gather_facts: false
  vars:
    site_secrets_dir: "{{ lookup('env', 'HOME') }}/zeroinit-site"
  tasks:
    - name: Issue while the issuer key is decrypted for this run only
      block:
        - name: Decrypt the issuer key
          ansible.builtin.include_role:
            name: zeroinit.bootstrap.site_secrets
            tasks_from: unlock
          vars:
            site_secrets_unlock: [jwt_issuer]

        - name: Issue or keep rack1's JWT
          zeroinit.bootstrap.provisioning_jwt:
            dest: "{{ site_secrets_dir }}/jwt/rack1.jwt"
            signing_key: "{{ site_secrets_unlocked.jwt_issuer }}"
            token: "{{ lookup('ansible.builtin.file', site_secrets_dir ~ '/token') }}"
            brokers: ["tls://prov.example.net:4222"]
            identities: ["*.rack1.example.net"]
            valid_days: 90
      always:
        - name: Remove the decrypted key
          ansible.builtin.include_role:
            name: zeroinit.bootstrap.site_secrets
            tasks_from: lock
"""

RETURN = r"""
dest:
  description: The JWT file.
  returned: always
  type: str
reason:
  description: Why a JWT was (or, in check mode, would be) issued; empty when the one there was kept.
  returned: always
  type: str
  sample: "its claims differ: identities"
expires:
  description: When the JWT at O(dest) ends (UTC, ISO 8601). Null in check mode when one would be issued.
  returned: always
  type: str
jti:
  description: The JWT's id (C(jti)). Null in check mode when one would be issued.
  returned: always
  type: str
brokers:
  description: The broker URLs in the JWT.
  returned: always
  type: list
  elements: str
identities:
  description: The identity patterns in the JWT.
  returned: always
  type: list
  elements: str
secure:
  description: The C(chs) claim.
  returned: always
  type: bool
organization:
  description: The C(ou) claim, null without one.
  returned: always
  type: str
issuer:
  description: The C(iss) claim.
  returned: always
  type: str
"""

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

from ansible_collections.zeroinit.bootstrap.plugins.module_utils.common.deps import (
    CRYPTOGRAPHY_IMPORT_ERROR,
    HAS_CRYPTOGRAPHY,
    HAS_JWT,
    JWT_IMPORT_ERROR,
)
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.provisioning.jwt_file import (
    JwtFileError,
    ensure_jwt_file,
)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            dest=dict(type="path", required=True),
            signing_key=dict(type="path", required=True),
            signing_key_passphrase=dict(type="str", no_log=True),
            token=dict(type="str", required=True, no_log=True),
            brokers=dict(type="list", elements="str", required=True),
            identities=dict(type="list", elements="str", required=True),
            valid_days=dict(type="int", default=365),
            renew_before_days=dict(type="int", default=30),
            secure=dict(type="bool", default=True),
            organization=dict(type="str"),
            issuer=dict(type="str", default="zeroinit.bootstrap"),
        ),
        supports_check_mode=True,
    )
    if not HAS_CRYPTOGRAPHY:
        module.fail_json(msg=missing_required_lib("cryptography"), exception=CRYPTOGRAPHY_IMPORT_ERROR)
    if not HAS_JWT:
        module.fail_json(msg=missing_required_lib("PyJWT"), exception=JWT_IMPORT_ERROR)
    try:
        result = ensure_jwt_file(module.params, check_mode=module.check_mode)
    except JwtFileError as exc:
        module.fail_json(msg=str(exc), field=exc.field)
    if not module._diff:
        result.pop("diff", None)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
