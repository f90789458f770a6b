"""When an action plugin does its module's work in Ansible's worker, and when it runs the module instead."""

from __future__ import annotations

import sys

import pytest

from ansible_collections.zeroinit.bootstrap.plugins.module_utils.provisioning.actions import node_provision_result
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.provisioning.flow import NodeOutcome
from ansible_collections.zeroinit.bootstrap.plugins.plugin_utils.in_process import module_process_reason

CONTROLLER = sys.executable
LOCAL = dict(connection="local", become=False, async_seconds=0, environment={}, interpreter=None)


def reason(**changes) -> str:
    return module_process_reason(controller_python=CONTROLLER, **dict(LOCAL, **changes))


def test_a_local_task_runs_in_the_worker():
    assert reason() == ""
    assert reason(interpreter=CONTROLLER) == ""


@pytest.mark.parametrize(
    "changes,expected",
    [
        (dict(connection="ssh"), "connection ssh is not local"),
        (dict(connection="ansible.netcommon.network_cli"), "is not local"),
        (dict(become=True), "become"),
        (dict(async_seconds=30), "async"),
        (dict(environment={"HTTPS_PROXY": "http://proxy:3128"}), "environment"),
        (dict(interpreter="/usr/bin/python3.9"), "ansible_python_interpreter /usr/bin/python3.9"),
    ],
)
def test_the_module_runs_when_the_task_needs_its_own_process(changes, expected):
    assert expected in reason(**changes)


def test_one_node_result_has_the_bulk_keys():
    outcome = NodeOutcome("n1.example.net", "deferred", "waiting for the asset database", "", {"decide": 3.21}, 40.0)
    result = node_provision_result(outcome, check_mode=False, warnings=[])
    assert result["changed"] is False and result["deferred"] == {"n1.example.net": "waiting for the asset database"}
    assert result["msg"] == "n1.example.net deferred: waiting for the asset database"
    assert result["provisioned"] == [] and result["counts"]["deferred"] == 1 and result["counts"]["failed"] == 0
    assert result["timings"]["decide"] == {"count": 1, "p50_ms": 3.2, "p99_ms": 3.2}
    checked = node_provision_result(NodeOutcome("n1.example.net", "would_provision"), check_mode=True, warnings=[])
    assert checked["changed"] is True and checked["would_provision"] == ["n1.example.net"]
