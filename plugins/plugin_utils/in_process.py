# Copyright: zeroinit.bootstrap contributors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)
"""Run a module's work inside Ansible's worker process when the task runs on the controller.

A module normally costs a fresh Python per task: Ansible builds a payload, starts an interpreter, which imports
nats-py and cryptography again (about half a second per task on a small machine). When the task's target is the
controller itself, the worker that runs the action plugin (a fork of ansible-playbook, which has the collection's
code loaded already) can do the same work directly. :class:`InProcessModuleAction` does so when
:func:`module_process_reason` finds nothing that needs the module's own process, and otherwise runs the module as
usual. The same argument spec and the same validator as ``AnsibleModule`` check the arguments, so an error reads
the same either way, and values of ``no_log`` options are removed from the result as the module removes them.

Each task still runs in a worker forked for it and gone after it: nothing outlives one task on one host, so a
connection cannot be kept for the next host.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any, Callable

from ansible.module_utils.common.arg_spec import ModuleArgumentSpecValidator
from ansible.module_utils.common.parameters import remove_values
from ansible.module_utils.errors import UnsupportedError
from ansible.plugins.action import ActionBase

try:  # ansible-core 2.19+: arguments carry data tags; the module gets them through this encoder, as plain data
    from ansible.module_utils.common.json import Direction, get_module_encoder
except ImportError:  # older: arguments are plain data already
    get_module_encoder = None

# The module's result from (validated parameters, check mode, diff mode): a dict with ``failed`` and ``msg`` when
# it fails, ``warnings`` (a list) when there are any.
ModuleRunner = Callable[[dict, bool, bool], dict]


def module_process_reason(
    connection: str, become: bool, async_seconds: int, environment: Any, interpreter: str | None, controller_python: str
) -> str:
    """Why the task needs the module's own process, or "" when its work can run in the worker.

    In the worker when: the connection is ``local`` (``connection: local``, or ``delegate_to: localhost`` with
    the implicit localhost), without ``become`` (the module would run as another user), without ``async`` and
    without a task ``environment`` (the module's process would get it), and the task's Python interpreter, when
    one is set, is the controller's own (``ansible_playbook_python``): a module meant for another Python (another
    venv, other library versions) runs there.
    """
    if connection != "local":
        return f"connection {connection or '?'} is not local"
    if become:
        return "become: the module runs as another user"
    if async_seconds:
        return "async: the module runs in the background"
    if environment:
        return "environment: the module's process gets it"
    if interpreter and os.path.abspath(interpreter) != os.path.abspath(controller_python):
        return f"ansible_python_interpreter {interpreter} is not the controller's Python"
    return ""


class InProcessModuleAction(ActionBase):
    """An action plugin named like its module: runs ``RUNNER`` in the worker, or the module, as above.

    Subclasses set ``MODULE_OPTIONS`` (the module's ``argument_spec`` and constraints, the keyword arguments it
    gives ``AnsibleModule`` apart from ``supports_check_mode``) and ``RUNNER``.
    """

    TRANSFERS_FILES = False
    MODULE_OPTIONS: dict = {}
    RUNNER: ModuleRunner

    def run(self, tmp=None, task_vars=None):
        task_vars = task_vars or {}
        result = super().run(tmp, task_vars)
        del tmp
        reason = self._module_process_reason(task_vars)
        if reason:
            self._display.vvv(f"{self._task.action}: running the module ({reason})")
            result.update(self._execute_module(task_vars=task_vars))
            return result
        result.update(self._run_in_process())
        return result

    def _module_process_reason(self, task_vars: dict) -> str:
        host_vars = task_vars
        if self._task.delegate_to:
            host_vars = (task_vars.get("ansible_delegated_vars") or {}).get(self._task.delegate_to) or {}
        interpreter = host_vars.get("ansible_python_interpreter")
        if interpreter is not None:
            interpreter = str(self._templar.template(interpreter))
        environment: dict = {}
        self._compute_environment_string(environment)  # the task's environment keywords, merged and templated
        return module_process_reason(
            getattr(self._connection, "transport", ""),
            bool(self._play_context.become),
            int(self._task.async_val or 0),
            environment,
            interpreter,
            sys.executable,
        )

    def _module_args(self) -> dict:
        """The task's arguments as the module would receive them (serialized as Ansible sends them to modules)."""
        if get_module_encoder is None:
            return dict(self._task.args)
        encoder = get_module_encoder("legacy", Direction.CONTROLLER_TO_MODULE)
        return json.loads(json.dumps(dict(self._task.args), cls=encoder))

    def _run_in_process(self) -> dict:
        validator = ModuleArgumentSpecValidator(**self.MODULE_OPTIONS)
        validation = validator.validate(self._module_args())
        no_log_values = validation._no_log_values
        if validation.error_messages:
            msg = validation.errors.msg
            if isinstance(validation.errors[0], UnsupportedError):
                msg = f"Unsupported parameters for ({self._task.action}) module: {msg}"
            return {"failed": True, "msg": remove_values(msg, no_log_values)}
        params = validation.validated_parameters
        outcome = type(self).RUNNER(params, bool(self._task.check_mode), bool(self._task.diff))
        outcome.setdefault("invocation", {"module_args": params})
        if not outcome.get("warnings"):
            outcome.pop("warnings", None)
        # As AnsibleModule does: no value of a no_log option anywhere in the result, booleans and None kept.
        preserved = {key: value for key, value in outcome.items() if value is None or isinstance(value, bool)}
        outcome = remove_values(outcome, no_log_values)
        outcome.update(preserved)
        return outcome
