"""Persistent helpers (``helper_mode: persistent``) on the bulk path against a real agent fleet and nats-server.

A Python + cryptography helper written as a user would (``policy_helper.py --persistent``) provisions a fleet
through a pool of long-lived processes; a helper that exits, hangs, or breaks the line protocol for one node fails
that node only, with the reason, and the nodes after it are served by the process started in its place.
"""

import asyncio
import json
import pathlib
import sys

from ansible_collections.zeroinit.bootstrap.plugins.module_utils.provisioning.actions import run_node_provision
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.provisioning.bulk import BulkRun
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.provisioning.deciders import decider_for
from tests.integration.test_provision import TOKEN, assert_member, in_provisioning, member_config, settings
from tests.support.fleet import AgentFleet

HELPERS = pathlib.Path(__file__).parent / "helpers"


def run_bulk(provision_settings):
    """The bulk run as ``provision()`` makes it, keeping the decider to look at its helper processes afterwards."""
    decider = decider_for(provision_settings)

    async def run():
        try:
            return await BulkRun(provision_settings, decider).run()
        finally:
            await decider.finish()

    return asyncio.run(run()), decider


def signing_args(ca, base):
    return ["--ca-cert", ca["ca_cert"], "--ca-key", ca["ca_key"], "--config", str(base)]


def test_a_persistent_python_helper_provisions_the_fleet_through_two_processes(nats_broker, members, ca, tmp_path):
    base = tmp_path / "base.json"
    base.write_text(json.dumps(member_config(members)))
    helper = [sys.executable, str(HELPERS / "policy_helper.py"), *signing_args(ca, base), "--persistent"]
    with AgentFleet(nats_broker.url, 12, tmp_path / "fleet", token=TOKEN) as fleet:
        out, decider = run_bulk(
            settings(nats_broker, helper=helper, helper_mode="persistent", helper_concurrency=2, expect=12)
        )
        assert out["failed"] == {} and out["provisioned"] == fleet.identities
        for identity in fleet.identities:
            decided = dict(member_config(members), identity=identity, **{"plugin.choria.server.provision": "false"})
            assert_member(fleet, identity, ca["ca_cert"], decided)
    # Two processes served twelve nodes, and both were stopped at the end of the run.
    assert [process.starts for process in decider.pool.processes] == [1, 1]
    assert all(process.proc is None for process in decider.pool.processes)


def test_a_helper_failing_one_node_is_replaced_and_only_that_node_fails(nats_broker, members, ca, tmp_path):
    base = tmp_path / "base.json"
    base.write_text(json.dumps(member_config(members)))
    with AgentFleet(nats_broker.url, 11, tmp_path / "fleet", token=TOKEN) as fleet:
        faults = dict(
            zip(fleet.identities, ("exit", "hang", "garbage", "wrong-id", "no-id", "huge", "refuse"), strict=False)
        )
        faults_file = tmp_path / "faults.json"
        faults_file.write_text(json.dumps(faults))
        helper = [
            sys.executable,
            str(HELPERS / "broken_persistent_helper.py"),
            str(faults_file),
            *signing_args(ca, base),
        ]
        # 5 s: a replacement's start-up (Python, cryptography, the CA) counts in its first node's time, as in one-shot.
        out, decider = run_bulk(
            settings(nats_broker, helper=helper, helper_mode="persistent", helper_concurrency=1, helper_timeout=5.0)
        )
        good = sorted(set(fleet.identities) - set(faults))
        assert out["provisioned"] == good and sorted(out["failed"]) == sorted(faults)
        needles = {
            "exit": "helper exited with status 3 while answering for",
            "hang": "helper did not answer for {} within 5s and was killed",
            "garbage": "helper reply for {} is not JSON",
            "wrong-id": "helper reply for {} carries id",
            "no-id": "helper reply for {} has no 'id'",
            "huge": "helper printed a reply line longer than 1048576 bytes for {}",
            "refuse": "is not in the asset database",
        }
        for identity, fault in faults.items():
            error = out["failed"][identity]
            assert needles[fault].format(identity) in error and identity in error
            if fault != "refuse":  # the process is killed, so its last stderr lines are read before the error is made
                assert f"broken_persistent_helper: {fault} for {identity}" in error
        for identity in good:
            decided = dict(member_config(members), identity=identity, **{"plugin.choria.server.provision": "false"})
            assert_member(fleet, identity, ca["ca_cert"], decided)
        # Nothing was configured on the failed nodes: they are still in provisioning mode for a later run.
        assert in_provisioning(nats_broker, sorted(faults)) == sorted(faults)
    # One process at a time: each protocol failure replaced it, the refusal did not.
    assert decider.pool.processes[0].starts == 1 + 6 and decider.pool.processes[0].proc is None


def helper_processes_running(marker: str) -> list[int]:
    """Processes whose command line names ``marker`` (the test's own base configuration file)."""
    found = []
    for proc in pathlib.Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and marker.encode() in (proc / "cmdline").read_bytes():
                found.append(int(proc.name))
        except OSError:  # it exited while we looked
            continue
    return found


def test_the_per_host_path_stops_its_persistent_helper_when_the_node_is_done(nats_broker, members, ca, tmp_path):
    base = tmp_path / "base.json"
    base.write_text(json.dumps(member_config(members)))
    helper = [sys.executable, str(HELPERS / "policy_helper.py"), *signing_args(ca, base), "--persistent"]
    with AgentFleet(nats_broker.url, 2, tmp_path / "fleet", token=TOKEN) as fleet:
        node = fleet.identities[0]
        out = run_node_provision(settings(nats_broker, helper=helper, helper_mode="persistent"), node)
        assert out["status"] == "provisioned", out
        assert_member(
            fleet,
            node,
            ca["ca_cert"],
            {**member_config(members), "identity": node, "plugin.choria.server.provision": "false"},
        )
        assert in_provisioning(nats_broker, [fleet.identities[1]]) == [fleet.identities[1]]
    assert helper_processes_running(str(base)) == []
