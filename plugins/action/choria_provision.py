# Copyright: zeroinit.bootstrap contributors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)
"""Controller side of choria_provision: the module's work in Ansible's worker when the task runs on the controller
(``connection: local``; the rule is ``plugin_utils/in_process.py``'s), else the module itself.

Every request of this module goes over the provisioning network from wherever it runs, so on the controller the
worker that runs this plugin does it directly: no module payload, no new Python importing nats-py and cryptography.
"""

from __future__ import annotations

from ansible_collections.zeroinit.bootstrap.plugins.module_utils.provisioning.task import task_outcome
from ansible_collections.zeroinit.bootstrap.plugins.modules.choria_provision import MODULE_OPTIONS
from ansible_collections.zeroinit.bootstrap.plugins.plugin_utils.in_process import InProcessModuleAction


class ActionModule(InProcessModuleAction):
    MODULE_OPTIONS = MODULE_OPTIONS
    RUNNER = staticmethod(task_outcome)
