# Test-only stdout callback: prints one JSON document {plays: [{play, tasks: [{task, hosts}]}], stats} at the end.
from __future__ import annotations

DOCUMENTATION = """
name: zeroinit_results
type: stdout
short_description: one JSON document of every task result, for the collection's tests
description:
  - Collects results per play and task and prints them as a single JSON document when the run ends.
"""

import json

from ansible.plugins.callback import CallbackBase


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "stdout"
    CALLBACK_NAME = "zeroinit_results"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.plays = []

    def v2_playbook_on_play_start(self, play):
        self.plays.append({"play": {"name": play.get_name()}, "tasks": []})

    def _task_entry(self, task):
        if not self.plays:
            self.plays.append({"play": {"name": ""}, "tasks": []})
        tasks = self.plays[-1]["tasks"]
        if not tasks or tasks[-1]["task"]["id"] != task._uuid:
            tasks.append({"task": {"name": task.get_name(), "id": task._uuid}, "hosts": {}})
        return tasks[-1]

    def v2_playbook_on_task_start(self, task, is_conditional):
        self._task_entry(task)

    def v2_playbook_on_handler_task_start(self, task):
        self._task_entry(task)

    def _record(self, result, **extra):
        entry = self._task_entry(result._task)
        data = dict(result._result)
        data.update(extra)
        entry["hosts"][result._host.get_name()] = json.loads(json.dumps(data, default=str))

    def v2_runner_on_ok(self, result, **kwargs):
        self._record(result)

    def v2_runner_on_failed(self, result, ignore_errors=False, **kwargs):
        self._record(result, failed=True)

    def v2_runner_on_unreachable(self, result, **kwargs):
        self._record(result, unreachable=True, failed=True)

    def v2_runner_on_skipped(self, result, **kwargs):
        self._record(result, skipped=True)

    def v2_playbook_on_stats(self, stats):
        summary = {host: stats.summarize(host) for host in sorted(stats.processed.keys())}
        self._display.display(json.dumps({"plays": self.plays, "stats": summary}, indent=1, default=str))
