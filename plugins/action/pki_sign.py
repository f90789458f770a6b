# Copyright: zeroinit.bootstrap contributors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)
"""Controller side of pki_sign: the signer in Ansible's worker when the task runs on the controller
(``connection: local``; the rule is ``plugin_utils/in_process.py``'s), else the module on the target.

With a local connection the CA files, ``csr_path``, ``dest`` and ``chain_dest`` are the controller's either way, so
the worker signs directly instead of starting a new Python that imports cryptography.
"""

from __future__ import annotations

from ansible_collections.zeroinit.bootstrap.plugins.module_utils.pki.issuance import issuance_outcome
from ansible_collections.zeroinit.bootstrap.plugins.modules.pki_sign import MODULE_OPTIONS
from ansible_collections.zeroinit.bootstrap.plugins.plugin_utils.in_process import InProcessModuleAction


class ActionModule(InProcessModuleAction):
    MODULE_OPTIONS = MODULE_OPTIONS
    RUNNER = staticmethod(issuance_outcome)
