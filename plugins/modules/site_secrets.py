#!/usr/bin/python
# Copyright: zeroinit.bootstrap contributors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)

from __future__ import annotations

DOCUMENTATION = r"""
module: site_secrets
short_description: Make a site's secrets once, encrypted with ansible-vault, on the controller
description:
  - Makes the secrets of a site in O(site_dir) (mode C(0700); every file C(0600), written atomically) and encrypts the
    private material with ansible-vault, using the vault password the play was given.
  - "The secrets: V(ca), the site's temporary bootstrap CA (C(ca.pem), C(ca-key.pem)) that issues the members'
    certificates; V(operator), a client certificate of the site CA with which the controller reaches the members'
    broker (C(operator.pem), C(operator-key.pem)); V(provisioning_ca) (C(provisioning-ca.pem), C(provisioning-ca-key.pem)), which signs only the
    provisioner's certificate and is what node images pin; V(provisioner), the provisioner's signing certificate with
    the provisioner extended key usage and clientAuth (C(provisioner.pem), C(provisioner-key.pem)); V(jwt_issuer), the
    Ed25519 key that signs provisioning JWTs (C(jwt-issuer-key.pem), public key C(jwt-issuer.pub)); V(token), the
    random provisioning token (C(token))."
  - A secret is made when none of its files exist and kept when all of them do; it is never overwritten unless named
    in O(rotate), and the result says what was kept. A secret with some of its files missing is an error naming them.
  - A rotated secret's old files are kept in C(previous/). Rotating a CA re-issues the certificate it signs here
    (V(ca) re-issues V(operator), V(provisioning_ca) re-issues V(provisioner)).
  - Read the private files back with Ansible's own means, which decrypt vault files on the controller (the C(file)
    lookup, M(ansible.builtin.copy) with C(decrypt)); the C(site_secrets) role's C(unlock) tasks do so for the CA key.
  - This is an action plugin; it runs on the controller and connects to no host.
author:
  - zeroinit.bootstrap contributors (!UNKNOWN)
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - ansible.builtin.action_common_attributes.conn
  - ansible.builtin.action_common_attributes.flow
attributes:
  action:
    support: full
  async:
    support: none
  bypass_host_loop:
    support: none
  check_mode:
    support: full
    details: Everything is planned and checked, and nothing is written; RV(created) and RV(rotated) say what would be.
  become:
    support: none
  connection:
    support: none
  delegation:
    support: none
    details: Always the controller's files.
  diff_mode:
    support: none
  platform:
    platforms: posix
  idempotent:
    description: When run twice with the same inputs, the second run reports no change.
    support: full
    details: Not with O(rotate), which makes the named secrets anew on every run.
options:
  site_dir:
    description: The site directory on the controller; made (C(0700)) when absent.
    type: path
    required: true
  site_name:
    description: The site's name, in the CAs' and the provisioner's certificate names.
    type: str
    default: zeroinit
  rotate:
    description:
      - Secrets to make anew although they exist (V(all) for every one this site uses). A comma-separated string works
        too, as C(-e rotate=token) gives it.
    type: list
    elements: str
    default: []
  signed_requests:
    description: Make V(provisioning_ca) and V(provisioner) (signed provisioner requests, the agent's C(--provisioning-ca)).
    type: bool
    default: true
  provisioning_jwt:
    description: Make V(jwt_issuer) (provisioning JWTs for node images).
    type: bool
    default: true
  ca_valid_days:
    description: Validity of a new site CA; it is temporary, the permanent CA replaces it.
    type: int
    default: 365
  ca_key_type:
    description: Key type of a new site CA.
    type: str
    choices: [ec, rsa, ed25519]
    default: ec
  provisioning_ca_valid_days:
    description: Validity of a new provisioning CA; node images pin it.
    type: int
    default: 3650
  client_valid_days:
    description: Validity of a new operator or provisioner certificate (never beyond its CA's).
    type: int
    default: 365
notes:
  - Without a vault password the task fails and says how to give one.
seealso:
  - module: zeroinit.bootstrap.pki_sign
  - module: zeroinit.bootstrap.pki_revoke
"""

EXAMPLES = r"""
- name: Make the site's secrets (ansible-playbook ... --vault-password-file ~/.zeroinit-vault)
  zeroinit.bootstrap.site_secrets:
    site_dir: "{{ inventory_dir }}/site"
    site_name: lab

- name: A new provisioning token, everything else kept
  zeroinit.bootstrap.site_secrets:
    site_dir: "{{ inventory_dir }}/site"
    rotate: [token]

- name: Read the token back (the file lookup decrypts vault files)
  ansible.builtin.set_fact:
    provisioning_token: "{{ lookup('ansible.builtin.file', inventory_dir ~ '/site/token') }}"
  no_log: true
"""

RETURN = r"""
created:
  description: Secrets made by this run (in check mode, that would be).
  returned: success
  type: list
  elements: str
rotated:
  description: Secrets made anew by this run (their old files are in C(previous/)).
  returned: success
  type: list
  elements: str
kept:
  description: Secrets that existed and were left as they were.
  returned: success
  type: list
  elements: str
files:
  description: The files of each secret this site uses.
  returned: success
  type: dict
facts:
  description:
    - Public facts of each secret (certificates' subject, end and SHA-256 fingerprint; the JWT issuer's public key
      in hexadecimal, as the agent and Choria take it). Nothing secret.
  returned: success
  type: dict
msg:
  description: What was made, rotated and kept.
  returned: always
  type: str
  sample: >-
    the site's secrets exist in /srv/site (ca, provisioning_ca, provisioner, jwt_issuer, token): nothing was
    overwritten; -e rotate=<secret> makes one anew
"""
