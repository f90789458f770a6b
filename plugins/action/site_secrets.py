# Copyright: zeroinit.bootstrap contributors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)
"""Controller side of site_secrets: the play's vault secrets in, the site's secrets made (``plugin_utils``).

Runs wholly on the controller and never connects to a host. The vault password comes the usual Ansible ways
(``--vault-password-file``, ``--ask-vault-pass``, ``ANSIBLE_VAULT_PASSWORD_FILE``, vault ids); the identity used to
encrypt is ``DEFAULT_VAULT_ENCRYPT_IDENTITY`` when set, else the first one given.
"""

from __future__ import annotations

from ansible import constants as C
from ansible.errors import AnsibleError
from ansible.parsing.vault import VaultLib, match_encrypt_secret
from ansible.plugins.action import ActionBase

from ansible_collections.zeroinit.bootstrap.plugins.plugin_utils.site_secrets import (
    SITE_SECRETS,
    SiteOptions,
    SiteSecrets,
    SiteSecretsError,
)

ARGUMENT_SPEC = dict(
    site_dir=dict(type="path", required=True),
    site_name=dict(type="str", default="zeroinit"),
    rotate=dict(type="list", elements="str", default=[]),
    signed_requests=dict(type="bool", default=True),
    provisioning_jwt=dict(type="bool", default=True),
    ca_valid_days=dict(type="int", default=365),
    ca_key_type=dict(type="str", default="ec", choices=["ec", "rsa", "ed25519"]),
    provisioning_ca_valid_days=dict(type="int", default=3650),
    client_valid_days=dict(type="int", default=365),
)
NO_VAULT_PASSWORD = (
    "site_secrets encrypts the site's private material with ansible-vault and needs a vault password: give it with "
    "--vault-password-file, --ask-vault-pass or ANSIBLE_VAULT_PASSWORD_FILE"
)


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _requires_connection = False

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars or {})
        del tmp
        _validation, args = self.validate_argument_spec(argument_spec=ARGUMENT_SPEC)
        vault_secrets = getattr(getattr(self._loader, "_vault", None), "secrets", None) or []
        if not vault_secrets:
            result.update(failed=True, msg=NO_VAULT_PASSWORD)
            return result
        vault = VaultLib(vault_secrets)
        vault_id, secret = match_encrypt_secret(vault_secrets, C.DEFAULT_VAULT_ENCRYPT_IDENTITY)
        label = None if vault_id == C.DEFAULT_VAULT_IDENTITY else vault_id

        def encrypt(data: bytes) -> bytes:
            return vault.encrypt(data, secret=secret, vault_id=label)

        def decrypt(data: bytes) -> bytes:
            try:
                return vault.decrypt(data)
            except AnsibleError as exc:
                raise SiteSecretsError(
                    f"a vaulted site secret cannot be decrypted with the vault password given: {exc}"
                ) from None

        options = SiteOptions(**{name: args[name] for name in ARGUMENT_SPEC if name != "rotate"})
        rotate = [name.strip() for name in args["rotate"] if name and name.strip()]
        try:
            outcome = SiteSecrets(options, encrypt, decrypt).apply(rotate, check_mode=bool(self._task.check_mode))
        except (SiteSecretsError, OSError) as exc:
            result.update(failed=True, msg=str(exc), secrets=list(SITE_SECRETS))
            return result
        warnings = outcome.pop("warnings")
        if warnings:
            result["warnings"] = warnings
        result.update(outcome)
        return result
