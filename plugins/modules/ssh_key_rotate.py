#!/usr/bin/python
# Copyright: zeroinit.bootstrap contributors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: ssh_key_rotate
short_description: Rotate an SSH login key without locking anyone out
description:
  - Installs a new public key in a user's C(authorized_keys) on each target, proves from the controller that a
    B(fresh) SSH login with the new private key works, and only then removes the revoked keys (typically the
    bootstrap key the machines were built with).
  - If the proof fails, the new key is taken back out again (only when this run added it), the old keys are left
    in place, and the host is reported failed with the SSH error. No step removes the only key known to log in.
  - The key pair lives on the controller. It is generated there (Ed25519 by default) when O(private_key) does not
    exist, and the private key is never copied to any host.
  - The proof is a new C(ssh) process (C(BatchMode), C(IdentitiesOnly), no agent, no control master) to the
    host's C(ansible_host)/C(ansible_port) as O(user), with the connection's C(ansible_ssh_common_args) and
    C(ansible_ssh_extra_args) (so its known_hosts and proxy settings apply). It succeeds only when the server
    accepted exactly the new key and the remote command ran.
  - Idempotent. When the key is already present and no revoked key is left, nothing is written and the task
    reports C(changed=false); the login proof still runs (one SSH login per host) unless O(verify=false), so a
    no-change run still tells you the key works.
  - The file is read whole, the new content computed and written once atomically (temp file in the same
    directory, then rename), mode C(0600), owned by O(user). Lines that are not keys are kept verbatim. A
    symbolic link at the file is refused.
  - The work is split between an action plugin (controller) and this module (target), which the action plugin
    runs once per step with O(step).
author:
  - zeroinit.bootstrap contributors (!UNKNOWN)
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
attributes:
  action:
    description: Indicates this has a corresponding action plugin so some parts of the options can be executed on the controller.
    support: full
    details: The action plugin generates the key pair, orders the steps and proves the login from the controller.
  check_mode:
    support: full
    details: Reports per host what would be added and revoked; no file is written and no key is generated.
  diff_mode:
    support: full
    details: A unified diff of the authorized_keys file (public keys only).
  platform:
    platforms: posix
  async:
    description: Supports being used with the C(async) keyword.
    support: none
  idempotent:
    description: When run twice with the same inputs, the second run reports no change.
    support: full
options:
  user:
    description:
      - The account whose C(authorized_keys) is rotated, and as whom the new key's login is proven.
      - Defaults to the user Ansible logs in as (C(ansible_user)); when none is set, the controller's user,
        which is whom C(ssh) logs in as.
    type: str
  private_key:
    description:
      - Path on the B(controller) of the new private key; the public key is expected (or written) beside it as
        C(<private_key>.pub).
      - Generated with mode C(0600) when it does not exist. An existing key is used as it is.
      - Required when the action plugin runs the task.
    type: path
  key_type:
    description: Type of the key pair generated when O(private_key) does not exist.
    type: str
    choices: [ed25519, rsa]
    default: ed25519
  key_size:
    description: RSA modulus size for O(key_type=rsa).
    type: int
    choices: [3072, 4096]
    default: 3072
  comment:
    description:
      - Comment of a generated key (in the C(.pub) file and the C(authorized_keys) line).
      - Defaults to C(zeroinit-rotation@<controller hostname>).
    type: str
  revoke:
    description:
      - Keys to remove after the new key has proven it logs in. Each entry is a whole public key line
        (C(ssh-ed25519 AAAA... comment)) or its C(SHA256:) fingerprint as C(ssh-keygen -l) prints it.
      - Revoking the new key itself is refused.
    type: list
    elements: str
    default: []
  revoke_login_key:
    description:
      - Also revoke the key Ansible is logged in with (the public key of C(ansible_ssh_private_key_file), read
        on the controller), unless it is the new key. This is the bootstrap key on a first rotation and
        nothing on later runs, which makes a rotation playbook safe to run again.
    type: bool
    default: false
  verify:
    description:
      - Prove a fresh login with the new key before anything is revoked.
      - With V(false) the revoked keys are removed without proof, which can lock you out; a warning says so.
    type: bool
    default: true
  verify_timeout:
    description: Seconds the login proof may take to connect.
    type: int
    default: 10
  path:
    description:
      - The C(authorized_keys) file on the target. C(~) and relative paths (as in sshd's C(AuthorizedKeysFile)) mean
        the home of O(user).
      - Defaults to C(~/.ssh/authorized_keys) of O(user); C(~/.ssh) is created C(0700) when missing.
    type: str
  public_key:
    description:
      - The public key line the target step works with. Set by the action plugin from O(private_key); tasks do
        not set it.
    type: str
  step:
    description:
      - Which part of the rotation the module does on the target. Set by the action plugin for each step;
        tasks do not set it.
      - V(read) returns the current file, V(add) installs O(public_key), V(revoke) removes O(revoke) while
        keeping O(public_key), V(take_back) removes O(public_key) again.
    type: str
    choices: [read, add, revoke, take_back]
    default: read
notes:
  - The controller needs C(ssh) (OpenSSH client) and, to generate keys, the Python library C(cryptography).
  - When a host fails verification it is reported failed and keeps its old keys; the other hosts still rotate.
    Run the task again once the cause is fixed.
seealso:
  - module: ansible.posix.authorized_key
"""

EXAMPLES = r"""
- name: Rotate root's key on all masters and revoke the bootstrap key
  zeroinit.bootstrap.ssh_key_rotate:
    user: root
    private_key: "{{ playbook_dir }}/keys/fleet_ed25519"
    revoke:
      - "{{ lookup('ansible.builtin.file', playbook_dir ~ '/keys/bootstrap_ed25519.pub') }}"

- name: Rotate to a 4096-bit RSA key and revoke whatever key this play logged in with
  zeroinit.bootstrap.ssh_key_rotate:
    private_key: ~/.ssh/fleet_rsa
    key_type: rsa
    key_size: 4096
    revoke_login_key: true

- name: Revoke an old key by fingerprint
  zeroinit.bootstrap.ssh_key_rotate:
    private_key: ~/.ssh/fleet_ed25519
    revoke:
      - SHA256:4AhQHXUngam8Ygql5Y54wF8+BIXxyKjaUc/FwIlj/0o
"""

RETURN = r"""
public_key:
  description: The new public key line (not secret). Empty in check mode when the key would be generated.
  returned: always
  type: str
  sample: ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIIRp160GLGJ1xt5BkySblzamUWAyIKcU41O6D8bRJLkK zeroinit-rotation@ctl
fingerprint:
  description: SHA256 fingerprint of the new key.
  returned: always
  type: str
  sample: SHA256:4AhQHXUngam8Ygql5Y54wF8+BIXxyKjaUc/FwIlj/0o
generated:
  description: Whether the key pair was generated by this task (in check mode, whether it would be).
  returned: always
  type: bool
added:
  description: Whether the new key was (or, in check mode, would be) added to the file.
  returned: always
  type: bool
revoked:
  description: Fingerprints of the keys removed (or, in check mode, that would be removed).
  returned: always
  type: list
  elements: str
  sample: [SHA256:nThbg6kXUpJWGl7E1IGOCspRomTxdCARLviKw6E5SY8]
verified:
  description: Whether a fresh login with the new key was proven by this task.
  returned: always
  type: bool
authorized_keys:
  description: Path of the authorized_keys file on the target.
  returned: always
  type: str
  sample: /root/.ssh/authorized_keys
content:
  description: The file's current content (public keys only), for O(step=read).
  returned: when O(step=read)
  type: str
attributes_ok:
  description: Whether the file's mode (C(0600)) and owner are already right, for O(step=read).
  returned: when O(step=read)
  type: bool
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.zeroinit.bootstrap.plugins.module_utils.ssh.authorized_keys import (
    rotation_options,
    target_step,
)
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.ssh.keys import SshKeyError

# The user's options (shared with the action plugin) and the steps the action plugin orders.
ARGUMENT_SPEC = dict(
    rotation_options(),
    public_key=dict(type="str"),
    step=dict(type="str", choices=["read", "add", "revoke", "take_back"], default="read"),
)


def main():
    module = AnsibleModule(
        argument_spec=ARGUMENT_SPEC,
        required_if=[
            ("step", "add", ["public_key"]),
            ("step", "revoke", ["public_key"]),
            ("step", "take_back", ["public_key"]),
        ],
        supports_check_mode=True,
    )
    try:
        result = target_step(module.params, check_mode=module.check_mode)
    except SshKeyError as exc:
        module.fail_json(msg=str(exc))
    except OSError as exc:
        module.fail_json(msg=f"cannot update authorized_keys: {exc}")
    module.exit_json(**result)


if __name__ == "__main__":
    main()
