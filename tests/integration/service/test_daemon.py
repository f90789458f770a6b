"""``zeroinit-provisioner`` as operators run it: real processes, a real three-server JetStream cluster (or a plain
nats-server), real agent fleets, real helpers and a real CA; what crossed the bus is captured and decoded.

Each test uses a site of its own, so the cluster's buckets of one test never meet another's.
"""

import asyncio
import contextlib
import json
import pathlib
import re
import sys
import time

import pytest

from ansible_collections.zeroinit.bootstrap.plugins.module_utils.choria.config import parse_config
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.choria.protocol import rpc_request_body
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.provisioning.rpc import RpcClient
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.provisioning.service.control import (
    control_subject,
)
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.provisioning.service.metrics import CHORIA_SERIES
from tests.support.broker import EmbeddedBroker
from tests.support.bus import BusCapture
from tests.support.certificates import Authority
from tests.support.fleet import AgentFleet, AgentProcess
from tests.support.provisioner import ProvisionerProcess, logged_at, provisioner_command, write_config

TOKEN = "site-token"
HELPERS = pathlib.Path(__file__).resolve().parents[1] / "helpers"
MEMBERS = "members"
WRITES = ("gencsr", "configure")
TAKEOVER = re.compile(r"took over (\S+) from (\S+), whose claim expired unrenewed")
pytestmark = pytest.mark.timeout(300)


def member_config(members) -> dict:
    return {"plugin.choria.middleware_hosts": members.url, "collectives": MEMBERS, "main_collective": MEMBERS}


def policy_helper(tmp_path, ca, members) -> list:
    """The example operator's helper (a Python process per node: a few hundred milliseconds each)."""
    base = tmp_path / "base.json"
    base.write_text(json.dumps(member_config(members)))
    script = str(HELPERS / "policy_helper.py")
    return [sys.executable, script, "--ca-cert", ca["ca_cert"], "--ca-key", ca["ca_key"], "--config", str(base)]


def service(tmp_path, name, site, brokers, **config) -> ProvisionerProcess:
    return ProvisionerProcess(tmp_path, name, site=site, brokers=list(brokers), token=TOKEN, **config)


def answering_ping(members, identities, timeout=60.0) -> list:
    """The identities that answer ``rpcutil#ping`` in the members' collective on the members' broker."""

    async def main():
        answered = set()
        deadline = time.monotonic() + timeout
        async with RpcClient([members.url], callerid="test-operator", collective=MEMBERS) as client:
            while time.monotonic() < deadline and answered != set(identities):
                missing = sorted(set(identities) - answered)
                replies = await client.request(
                    "rpcutil", rpc_request_body("rpcutil", "ping"), identities=missing, timeout=2.0
                )
                answered.update(reply.senderid for reply in replies if reply.ok)
        return sorted(answered)

    return asyncio.run(main())


def writes_by_sender(bus) -> dict:
    """identity -> sender -> [arrival times of its gencsr/configure requests]."""
    seen: dict = {}
    for request in bus.requests():
        if request.action in WRITES:
            seen.setdefault(request.identity, {}).setdefault(request.senderid, []).append(request.received)
    return seen


def control_ops(bus, site) -> list:
    """(arrival time, operation) of every control request captured on the site's subject."""
    ops = []
    for received, subject, raw in list(bus.messages):
        if subject == control_subject(site):
            ops.append((received, json.loads(json.loads(raw)["msg"]).get("op")))
    return ops


def wait_until(condition, timeout, what):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"not within {timeout:g}s: {what}"
        time.sleep(0.1)


@contextlib.contextmanager
def booting(url, identity, tmp_path):
    """A node agent started without waiting for it to answer: the service may provision it first."""
    agent = AgentProcess(url, identity, tmp_path / identity, token=TOKEN).launch()
    try:
        yield agent
    finally:
        agent.stop()


def sample(metrics, name, site):
    return metrics.get(name, {}).get((("site", site),))


# ---------------------------------------------------------------------------------------------- several instances


def test_three_instances_on_three_servers_one_killed_mid_run_every_node_configured_once(cluster, members, ca, tmp_path):
    site, ttl = "killed", 5
    helper = policy_helper(tmp_path, ca, members)
    fleets = [AgentFleet(cluster.urls[i], 25, tmp_path / f"fleet{i}", token=TOKEN, prefix=f"s{i}n") for i in range(3)]
    # The site's provisioner certificate, as a site runs its instances: a node the victim configured but did not
    # restart is locked to the site CA, and its successor's signed requests are accepted like any other.
    signing = Authority.from_files(ca["ca_cert"], ca["ca_key"]).write_leaf(tmp_path / "signing", "prov.killed.test")
    instances = [
        service(
            tmp_path,
            f"prov-{i}",
            site,
            [cluster.urls[i]],
            workers=8,
            helper=helper,
            claim_ttl=ttl,
            signing_cert=str(signing["cert"]),
            signing_key=str(signing["key"]),
        )
        for i in range(3)
    ]
    identities = sorted(identity for fleet in fleets for identity in fleet.identities)
    try:
        for fleet in fleets:
            fleet.start()
        with BusCapture(cluster.urls[0], "provisioning.node.>") as bus:
            for instance in instances:
                instance.start()
            victim = instances[0]

            def victim_in_flight():
                """A node prov-0 asked for a CSR and has not configured yet (its helper is running)."""
                writes = writes_by_sender(bus)
                done = {identity for identity, by in writes.items() if len(by.get("prov-0", ())) > 1}
                started = {identity for identity, by in writes.items() if "prov-0" in by}
                return len(done) >= 2 and started - done

            wait_until(victim_in_flight, 120, "prov-0 working a node")
            victim.kill()
            answered = answering_ping(members, identities, timeout=180)
            stopped = [instance.stop() for instance in instances[1:]]
        requests = bus.requests()
    finally:
        for instance in instances:
            instance.stop()
        for fleet in fleets:
            fleet.stop()

    assert answered == identities, "every node is a configured member answering ping in its collective"
    assert stopped == [0, 0], "the survivors drain and exit 0 on SIGTERM"
    assert {r.callerid for r in requests} == {f"choria={site}.provisioner"}, "one caller id for the site"
    assert {r.senderid for r in requests} == {"prov-0", "prov-1", "prov-2"}, "each instance names itself"
    killed_at = victim.killed_at
    claimed = {}  # identity -> when a survivor took its expired claim over (its own log's time: no capture lag)
    for instance in instances[1:]:
        for line in instance.lines():
            found = TAKEOVER.fullmatch(line.get("msg", ""))
            if found and found.group(2) == "prov-0":
                claimed[found.group(1)] = logged_at(line)
    takeovers = []
    for identity, by_sender in writes_by_sender(bus).items():
        if len(by_sender) == 1:
            continue
        assert len(by_sender) == 2 and "prov-0" in by_sender, f"{identity}: written by {sorted(by_sender)}"
        successor = next(sender for sender in by_sender if sender != "prov-0")
        senders = [r.senderid for r in requests if r.identity == identity and r.action in WRITES]  # capture order
        # Arrival is never before sending: a successor's write that arrived before the kill was sent before it.
        assert senders == sorted(senders, key=lambda sender: sender != "prov-0") and killed_at < min(
            by_sender[successor]
        ), f"{identity} got gencsr/configure from prov-0 and {successor} while both were alive"
        first_request = min(r.received for r in requests if r.identity == identity and r.senderid == successor)
        takeovers.append(min(claimed.get(identity, first_request), first_request) - killed_at)
    assert takeovers, "prov-0 died holding nodes, and another instance finished them"
    takeovers.sort()
    print(f"\ntaken over {len(takeovers)} node(s) after {', '.join(f'{t:.2f}' for t in takeovers)} s")
    # The claim itself is free within claim_ttl + 1 s of the kill (test_claims.py); here every survivor's workers are
    # busy with slow helpers, so the node waits for the first one free: a second more on a loaded 2-core machine.
    assert max(takeovers) <= ttl + 2.0, f"a dead holder's node is picked up within claim_ttl + 2 s: {takeovers}"


def test_pause_holds_every_instance_within_a_second_and_resume_continues(cluster, members, ca, tmp_path):
    site = "pausing"
    helper = policy_helper(tmp_path, ca, members)
    instances = [service(tmp_path, f"prov-{i}", site, [cluster.urls[i]], workers=2, helper=helper) for i in range(3)]
    with AgentFleet(cluster.urls[1], 45, tmp_path / "fleet", token=TOKEN) as fleet:
        with BusCapture(cluster.urls[2], "provisioning.node.>", control_subject(site)) as bus:
            try:
                for instance in instances:
                    instance.start()
                wait_until(lambda: sum(len(i.outcomes("provisioned")) for i in instances) >= 3, 120, "3 nodes")
                status, paused, stderr = instances[0].command("pause")
                assert status == 0, stderr
                time.sleep(3)
                metrics_paused = [sample(i.metrics(), "choria_provisioner_paused", site) for i in instances]
                status, while_paused, _stderr = instances[1].command("status")
                assert status == 0
                status, resumed, stderr = instances[2].command("resume")
                assert status == 0, stderr
                answered = answering_ping(members, fleet.identities, timeout=180)
                metrics = [i.metrics() for i in instances]
                exposition = instances[0].get("/metrics")[1]
            finally:
                for instance in instances:
                    instance.stop()
        requests = bus.requests()
        pause_at = min(received for received, op in control_ops(bus, site) if op == "pause")
        resume_at = min(received for received, op in control_ops(bus, site) if op == "resume")

    names = ["prov-0", "prov-1", "prov-2"]
    assert [a["instance"] for a in paused] == names and all(a["paused"] for a in paused)
    assert metrics_paused == [1.0, 1.0, 1.0], "choria_provisioner_paused is 1 on every instance"
    assert [doc["instance"] for doc in while_paused] == names and all(doc["paused"] for doc in while_paused)
    # A node's run starts with its inventory request; one started before pause may send its gencsr later.
    late = [r for r in requests if r.action == "inventory" and pause_at + 1.0 < r.received < resume_at]
    assert not late, f"{late[0].identity} started {late[0].received - pause_at:.2f}s after pause"
    in_flight = {r.identity for r in requests if r.action == "inventory" and r.received <= pause_at}
    finished = {r.identity for r in requests if r.action == "restart" and r.received < resume_at}
    assert in_flight <= finished, f"in-flight nodes finish while paused: {sorted(in_flight - finished)}"
    assert [a["instance"] for a in resumed] == names and not any(a["paused"] for a in resumed)
    assert answered == fleet.identities, "after resume every node is provisioned"
    for scraped in metrics:
        assert sample(scraped, "choria_provisioner_paused", site) == 0.0
    for name, kind, _labels, help_text in CHORIA_SERIES:
        assert f"# HELP {name} {help_text}\n# TYPE {name} {kind}\n" in exposition, f"Choria's {name} is exported"
    provisioned = sum(sample(m, "choria_provisioner_provisioned", site) for m in metrics)
    assert provisioned == len(fleet.identities)


# ---------------------------------------------------------------------------------------------- finding nodes


def test_a_node_that_boots_while_the_service_runs_is_provisioned_through_its_event(
    jetstream_broker, members, ca, tmp_path
):
    interval = 60
    signer = dict(ca)
    with service(
        tmp_path,
        "prov",
        "events",
        [jetstream_broker.url],
        signer=signer,
        interval=f"{interval}s",
        configuration=member_config(members),
    ) as prov:
        time.sleep(3)  # the first discovery has come and gone
        booted = time.monotonic()
        with booting(jetstream_broker.url, "late.example.net", tmp_path):
            line = prov.wait_for(lambda line: line.get("outcome") == "provisioned", 30, "to provision late")
            took = time.monotonic() - booted
            assert answering_ping(members, ["late.example.net"]) == ["late.example.net"]
    print(f"\nbooted to provisioned in {took:.1f}s (interval {interval}s), found by its {line['source']}")
    assert line["identity"] == "late.example.net" and line["source"] in ("startup", "registration")
    assert took < interval / 4


def test_a_node_whose_event_was_lost_is_found_by_the_next_discovery(members, ca, tmp_path):
    interval = 5
    # The nodes' account may not publish lifecycle events or registration data: the broker drops them.
    quiet = {"publish": {"deny": ["choria.lifecycle.>", "choria.provisioning_data", "choria.provisioning_data.>"]}}
    users = [{"user": "prov", "password": "p-secret"}, {"user": "node", "password": "n-secret", "permissions": quiet}]
    with EmbeddedBroker(users=users) as broker:
        url = broker.user_url("prov")
        with (
            BusCapture(url, "choria.lifecycle.>") as bus,
            service(
                tmp_path,
                "prov",
                "rediscover",
                [url],
                signer=dict(ca),
                interval=f"{interval}s",
                configuration=member_config(members),
            ) as prov,
        ):
            time.sleep(1)
            booted = time.monotonic()
            with booting(broker.user_url("node"), "quiet.example.net", tmp_path):
                line = prov.wait_for(lambda line: line.get("outcome") == "provisioned", 60, "to find quiet")
                took = time.monotonic() - booted
        events = list(bus.messages)
    print(f"\nfound by discovery {took:.1f}s after it booted (interval {interval}s)")
    assert not [subject for _at, subject, _raw in events if "startup" in subject], "its startup event never arrived"
    assert line["identity"] == "quiet.example.net" and line["source"] == "discovery"
    assert took <= interval + 10


# ---------------------------------------------------------------------------------------------- refusals


def test_a_bad_configuration_is_refused_naming_every_key(tmp_path):
    config = write_config(
        tmp_path / "bad.yaml",
        {
            "site": "dc 1",
            "brokers": ["nats://127.0.0.1:4222"],
            "token": "t",
            "workerz": 5,
            "interval": "fast",
            "features": {"pki": "yes"},
            "signer": {"ca_cert": str(tmp_path / "ca.pem"), "ca_keys": "x"},
        },
    )
    status, printed, stderr = provisioner_command(config, "run")
    assert status == 2 and printed is None
    for phrase in (
        "site: 'dc 1' is not a site name",
        "workerz: unknown key; did you mean workers?",
        "interval: invalid time unit in 'fast'",
        "features.pki: expected a boolean, got 'yes'",
    ):
        assert phrase in stderr, stderr
    config = write_config(
        tmp_path / "signer.yaml",
        {"site": "dc1", "brokers": ["nats://127.0.0.1:4222"], "token": "t", "signer": {"ca_cert": "/x", "ca_keys": 1}},
    )
    status, _printed, stderr = provisioner_command(config, "run")
    expected = "signer: backend is builtin but all of the following are missing: ca_key; unknown option ca_keys"
    assert status == 2 and expected in stderr, stderr
    config = write_config(
        tmp_path / "helper.yaml",
        {"site": "dc1", "brokers": ["nats:/x"], "token": "t", "helper": str(tmp_path / "nope")},
    )
    status, _printed, stderr = provisioner_command(config, "run")
    assert status == 2 and "brokers: broker 'nats:/x'" in stderr and "helper: helper program" in stderr, stderr


def test_without_jetstream_a_second_instance_refuses_to_start_naming_the_first(plain_broker, ca, tmp_path):
    with service(tmp_path, "first", "alone", [plain_broker.url], signer=dict(ca)) as first:
        assert first.wait_for(lambda line: line.get("mode") == "single")["msg"].startswith("first: no JetStream")
        second = service(tmp_path, "second", "alone", [plain_broker.url], signer=dict(ca)).launch()
        assert second.process.wait(timeout=60) == 1
        refusal = second.wait_for(lambda line: line.get("event") == "refused")
        assert first.running()
        status, answers, _stderr = first.command("status")
    print(f"\n{refusal['msg']}")
    assert "instance first of site alone is running in single mode" in refusal["msg"]
    assert "no JetStream" in refusal["msg"]
    assert status == 0 and [a["instance"] for a in answers] == ["first"] and answers[0]["mode"] == "single"


# ---------------------------------------------------------------------------------------------- without PKI


def test_pki_off_with_an_unchanged_choria_helper_configures_nodes_without_certificates(plain_broker, members, tmp_path):
    base = tmp_path / "base.json"
    base.write_text(json.dumps(member_config(members)))
    helper = [sys.executable, str(HELPERS / "choria_config_helper.py"), str(base)]
    prov = service(tmp_path, "prov", "nopki", [plain_broker.url], helper=helper, features={"pki": False})
    with (
        AgentFleet(plain_broker.url, 3, tmp_path / "fleet", token=TOKEN) as fleet,
        BusCapture(plain_broker.url, "provisioning.node.>") as bus,
        prov as running,
    ):
        answered = answering_ping(members, fleet.identities)
        lines = running.lines()
    actions = {r.action for r in bus.requests()}
    assert answered == fleet.identities
    assert "gencsr" not in actions and {"inventory", "configure", "restart"} <= actions
    for identity in fleet.identities:
        node = pathlib.Path(fleet.node_dir(identity))
        conf = parse_config((node / "server.conf").read_text())
        assert conf == dict(member_config(members), identity=identity, **{"plugin.choria.server.provision": "false"})
        assert not (node / "ssl" / "certificate.pem").exists()
    started = next(line for line in lines if line.get("event") == "started")
    outcomes = [line for line in lines if line.get("event") == "node"]
    print("\n" + "\n".join(json.dumps(line) for line in [started, *outcomes]))
    assert "PKI off" in started["msg"]
    assert sorted(line["identity"] for line in outcomes) == fleet.identities
    assert all(line["outcome"] == "provisioned" and "gencsr" not in line["timings_ms"] for line in outcomes)


def test_persistent_helpers_provision_and_end_with_the_service(plain_broker, members, ca, tmp_path):
    helper = [*policy_helper(tmp_path, ca, members), "--persistent"]
    marker = str(tmp_path / "base.json")  # in every helper's command line, and in no other process's

    def helpers_running() -> list:
        found = []
        for proc in pathlib.Path("/proc").iterdir():
            try:
                if proc.name.isdigit() and marker in (proc / "cmdline").read_bytes().decode(errors="replace"):
                    found.append(int(proc.name))
            except OSError:
                pass
        return found

    prov = service(
        tmp_path, "prov", "steady", [plain_broker.url], helper=helper, helper_mode="persistent", helper_concurrency=2
    )
    with (
        AgentFleet(plain_broker.url, 4, tmp_path / "fleet", token=TOKEN) as fleet,
        prov as running,
    ):
        assert answering_ping(members, fleet.identities) == fleet.identities
        assert 1 <= len(helpers_running()) <= 2  # long-lived: the pool's processes, not one per node
        status = running.stop(timeout=60)
    outcomes = [line for line in running.lines() if line.get("event") == "node"]
    assert status == 0 and sorted(line["identity"] for line in outcomes) == fleet.identities
    assert all(line["outcome"] == "provisioned" for line in outcomes)
    assert helpers_running() == []  # the drain closed their input and they exited


# ---------------------------------------------------------------------------------------------- draining


def test_sigterm_lets_the_nodes_in_flight_finish_starts_nothing_new_and_exits_0(
    jetstream_broker, members, ca, tmp_path
):
    slow = tmp_path / "slow_helper.sh"
    slow.write_text("#!/bin/sh\nsleep 2\nexec " + " ".join(policy_helper(tmp_path, ca, members)) + "\n")
    slow.chmod(0o755)
    with AgentFleet(jetstream_broker.url, 6, tmp_path / "fleet", token=TOKEN) as fleet:
        with BusCapture(jetstream_broker.url, "provisioning.node.>") as bus:
            prov = service(tmp_path, "prov", "draining", [jetstream_broker.url], workers=2, helper=str(slow)).start()
            try:
                wait_until(lambda: len({r.identity for r in bus.requests() if r.action == "gencsr"}) >= 2, 60, "2")
                term_at = time.time()
                status = prov.stop(timeout=60)
            finally:
                prov.stop()
        requests = bus.requests()
    in_flight = {r.identity for r in requests if r.action == "gencsr" and r.received < term_at}
    restarted = {r.identity for r in requests if r.action == "restart"}
    started_late = [r for r in requests if r.action == "inventory" and r.received > term_at + 1.0]
    assert status == 0
    assert in_flight and in_flight <= restarted, "the nodes in flight at SIGTERM were finished"
    assert not started_late, "nothing new started after SIGTERM"
    assert any(line.get("msg", "").startswith("prov drained") for line in prov.lines())
    assert len(restarted) < len(fleet.identities)
