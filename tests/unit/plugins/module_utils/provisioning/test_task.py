"""The choria_provision module's work without Ansible: parameters checked, the result shaped for the module."""

from __future__ import annotations

import pytest

from ansible_collections.zeroinit.bootstrap.plugins.module_utils.provisioning import bulk, task


def params(**overrides) -> dict:
    base = dict.fromkeys(task.SETTINGS_FROM_PARAMS)
    base.update(
        brokers=["nats://127.0.0.1:1"],
        token="tok",
        collective="provisioning",
        callerid="zeroinit-provisioner",
        timeout=10.0,
        retries=2,
        workers=500,
        wait=0.0,
        discovery_timeout=2.0,
        splay=0,
        helper_timeout=10.0,
        helper_concurrency=0,
        helper_mode="oneshot",
        pki=True,
        csr_subject={},
        key_type="ec",
        configuration={},
        action="provision",
        identity=None,
        certificate=None,
        ca=None,
        ssldir=None,
        fail_on_node_error=False,
    )
    base.update(overrides)
    return base


def test_configuration_values_are_choria_strings():
    settings = task.settings_from_params(params(configuration={"a": True, "b": 3, "c": None}), check_mode=False)
    assert settings.configuration == {"a": "true", "b": "3", "c": ""}


def test_pki_off_reaches_the_flow_and_refuses_the_built_in_signer():
    settings = task.settings_from_params(params(pki=False, helper=["/bin/true"]), check_mode=False)
    assert settings.flow_options().pki is False
    assert task.settings_from_params(params(helper=["/bin/true"]), check_mode=False).flow_options().pki is True
    with pytest.raises(task.TaskFailure, match="the built-in signer needs the node's CSR: it cannot be used with pki"):
        task.settings_from_params(params(pki=False, signer={"ca_cert": "/x", "ca_key": "/y"}), check_mode=False)


@pytest.mark.parametrize(
    "overrides,phrase",
    [
        ({"configuration": {"nested": {"x": 1}}}, "configuration: values must be scalars"),
        ({"timeout": 0}, "timeout must be greater than 0"),
        ({"workers": 0}, "workers must be at least 1"),
        ({"expect": 0}, "expect must be at least 1"),
        ({"brokers": ["http://x"]}, "brokers: broker 'http://x'"),
    ],
)
def test_bad_parameters_fail_the_task_naming_the_option(overrides, phrase):
    with pytest.raises(task.TaskFailure, match=phrase):
        task.run_task(params(**overrides), check_mode=False)


def test_failed_nodes_are_reported_under_failed_nodes_and_can_fail_the_task(monkeypatch):
    outcome = {"changed": False, "provisioned": [], "failed": {"n1": "gencsr: no reply"}, "warnings": ["w"]}
    monkeypatch.setattr(bulk, "provision", lambda settings: dict(outcome))  # task imports it when it runs
    result, warnings = task.run_task(params(helper="/bin/true"), check_mode=False)
    assert result["failed_nodes"] == {"n1": "gencsr: no reply"} and "failed" not in result and warnings == ["w"]
    with pytest.raises(task.TaskFailure, match="1 node\\(s\\) failed: n1") as err:
        task.run_task(params(helper="/bin/true", fail_on_node_error=True), check_mode=False)
    assert err.value.result["failed_nodes"] == {"n1": "gencsr: no reply"} and err.value.result["warnings"] == ["w"]


def test_a_single_action_failure_names_the_node(monkeypatch):
    def refuse(settings, action, identity, extra):
        raise task.ProvisionError("restart refused by n1: no")

    monkeypatch.setattr(task, "run_action", refuse)
    with pytest.raises(task.TaskFailure, match=r"restart refused by n1: no \(node n1\)"):
        task.run_task(params(action="restart", identity="n1"), check_mode=False)


def test_provision_with_an_identity_runs_that_node_alone_and_fails_with_its_reason(monkeypatch):
    from ansible_collections.zeroinit.bootstrap.plugins.module_utils.provisioning.actions import node_provision_result
    from ansible_collections.zeroinit.bootstrap.plugins.module_utils.provisioning.flow import NodeOutcome

    ran = []

    def one_node(settings, identity):
        ran.append(identity)
        return node_provision_result(NodeOutcome(identity, "failed", "gencsr: no reply", "gencsr"), False, [])

    monkeypatch.setattr(task, "run_node_provision", one_node)
    monkeypatch.setattr(bulk, "provision", lambda settings: pytest.fail("the bulk run discovers: not for one node"))
    result, _warnings = task.run_task(params(helper="/bin/true", identity="n1"), check_mode=False)
    assert ran == ["n1"] and result["failed_nodes"] == {"n1": "gencsr: no reply"} and result["status"] == "failed"
    with pytest.raises(task.TaskFailure, match=r"^n1 failed: gencsr: no reply$") as err:
        task.run_task(params(helper="/bin/true", identity="n1", fail_on_node_error=True), check_mode=False)
    assert "msg" not in err.value.result
