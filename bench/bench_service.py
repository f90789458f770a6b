"""Benchmark: the provisioner service, ``zeroinit-provisioner``, with 1, 2 and 3 instances on a NATS cluster.

    .venv/bin/python bench/bench_service.py                   # 10,000 nodes; failover with 3,000
    .venv/bin/python bench/bench_service.py --quick           # 1,000 nodes; failover with 600
    .venv/bin/python bench/bench_service.py --nodes 10000 --instances 1,2,3 --failover-nodes 3000

A real three-server nats-server cluster with JetStream on loopback, the instances as the operator runs them
(``.venv/bin/zeroinit-provisioner run``, instance i connected to server i), the built-in signer, one fleet process
(``zeroinit-agent --fleet``) on server 0 with its nodes' directories in ``--state-dir`` (default /dev/shm, as
bench_provision: on one shared disk, creating the simulated nodes' files took the fleet more CPU than everything
else it did, and as much more as the disk was busy). Each run: the instances start and are paused, the fleet starts
(its nodes' startup events fill every instance's queue), then ``resume``; the run's time is from the first node's
start to the last node's outcome, read from the instances' JSON log lines. Printed per run: nodes/s, the ratio to
one instance and to the floor measured in the same run (raw NATS request/reply through the cluster with a trivial
responder, divided by the 4 round trips of a node), and each instance's memory (RSS idle after start, peak while
busy). Failover: 3 instances; when a third of the nodes are provisioned the first instance is SIGKILLed; a capture
of the bus gives, for each node it held, the time from the kill to a survivor's first request to it, and the same
for the nodes that fell to it (rendezvous hashing) and it had not started.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import pathlib
import shutil
import signal
import statistics
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ansible_collections.zeroinit.bootstrap.plugins.module_utils.pki.ca import CertificateAuthority
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.provisioning.service.membership import node_owner
from bench.bench_agent import load_average, machine
from bench.bench_provision import _floor, add_state_dir_option, proc_stats
from tests.support.broker import EmbeddedBroker, EmbeddedCluster
from tests.support.bus import BusCapture
from tests.support.fleet import AgentFleet, discover
from tests.support.provisioner import ProvisionerProcess, logged_at

TOKEN = "bench-token"
ROUND_TRIPS = 4  # inventory, gencsr, configure, restart


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as handle:
        kib = next(int(line.split()[1]) for line in handle if line.startswith("VmRSS:"))
    return kib / 1024


def provisioned(instances, site: str) -> float:
    total = 0.0
    for instance in instances:
        if instance.running():
            total += instance.metrics().get("choria_provisioner_provisioned", {}).get((("site", site),), 0.0)
    return total


def wait_until(condition, timeout: float, what: str, every: float = 0.25) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"not within {timeout:g}s: {what}")
        time.sleep(every)


class Site:
    """``count`` instances of one site, instance i on server i of the cluster, started and paused."""

    def __init__(self, cluster, members, ca: dict, workdir: str, site: str, count: int, workers: int, **config):
        configuration = {
            "plugin.choria.middleware_hosts": members.url,
            "collectives": "bench",
            "main_collective": "bench",
        }
        self.site = site
        self.instances = [
            ProvisionerProcess(
                pathlib.Path(workdir) / site,
                f"{site}-{index}",
                site=site,
                brokers=[cluster.urls[index % len(cluster.urls)]],
                token=TOKEN,
                workers=workers,
                signer=ca,
                configuration=configuration,
                **config,
            )
            for index in range(count)
        ]

    def __enter__(self) -> Site:
        try:
            for instance in self.instances:
                instance.launch()
            for instance in self.instances:
                instance.wait_for(lambda line: line.get("event") == "started", 120, "to start")
            status, _answers, stderr = self.instances[0].command("pause", gather=1.0)
            if status != 0:
                raise RuntimeError(f"pause: {stderr}")
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc) -> None:
        for instance in self.instances:
            instance.stop()

    def resume(self) -> None:
        status, _answers, stderr = self.instances[-1].command("resume", gather=1.0)
        if status != 0:
            raise RuntimeError(f"resume: {stderr}")

    def queued_everywhere(self, count: int) -> bool:
        key = (("site", self.site),)
        return all(
            instance.metrics().get("choria_provisioner_work_queue_entries", {}).get(key, 0) >= count
            for instance in self.instances
        )

    def outcome_window(self) -> tuple[float, float, int]:
        """(first node's start, last node's outcome, nodes provisioned) from every instance's log."""
        starts, ends, done = [], [], 0
        for instance in self.instances:
            for line in instance.outcomes("provisioned"):
                end = logged_at(line)
                starts.append(end - line["duration"])
                ends.append(end)
                done += 1
        return min(starts), max(ends), done


def throughput_run(
    cluster, members, ca, workdir, state_root, count: int, nodes: int, workers: int, connections: int
) -> dict:
    site = f"bench{count}"
    state = os.path.join(state_root, f"fleet-{site}")
    with Site(cluster, members, ca, workdir, site, count, workers) as run:
        idle = [rss_mib(instance.process.pid) for instance in run.instances]
        with AgentFleet(cluster.urls[0], nodes, state, token=TOKEN, connections=connections) as fleet:
            wait_until(lambda: run.queued_everywhere(nodes), 120, "every node queued by every instance", 1.0)
            cpu_before = [proc_stats(instance.process.pid)[0] for instance in run.instances]
            fleet_cpu_before = proc_stats(fleet.process.pid)[0]
            run.resume()
            wait_until(lambda: provisioned(run.instances, site) >= nodes, 1800, f"{nodes} nodes provisioned", 0.5)
            stats = [proc_stats(instance.process.pid) for instance in run.instances]
            busy = [peak / 2**20 for _cpu, peak in stats]
            cpu = sum(used for used, _peak in stats) - sum(cpu_before)
            fleet_cpu = proc_stats(fleet.process.pid)[0] - fleet_cpu_before
            first, last, done = run.outcome_window()
            lines = [line for instance in run.instances for line in instance.outcomes("provisioned")]
            per_instance = [len(instance.outcomes("provisioned")) for instance in run.instances]
    shutil.rmtree(state, ignore_errors=True)
    seconds = last - first
    return {
        "instances": count,
        "nodes": done,
        "seconds": seconds,
        "nodes_per_s": done / seconds,
        "per_instance": per_instance,
        "node_p50_ms": 1000 * statistics.median(line["duration"] for line in lines),
        "steps_p50_ms": {
            step: statistics.median(line["timings_ms"][step] for line in lines if step in line["timings_ms"])
            for step in lines[0]["timings_ms"]
        },
        "cpu_ms_per_node": 1000 * cpu / done,
        "fleet_cpu_ms_per_node": 1000 * fleet_cpu / done,
        "idle_rss_mib": idle,
        "busy_peak_rss_mib": busy,
    }


def failover_run(
    cluster, members, ca, workdir, state_root, nodes: int, workers: int, connections: int, ttl: int
) -> dict:
    site = "benchfail"
    state = os.path.join(state_root, f"fleet-{site}")
    with Site(cluster, members, ca, workdir, site, 3, workers, claim_ttl=ttl) as run:
        victim = run.instances[0]
        with (
            AgentFleet(cluster.urls[0], nodes, state, token=TOKEN, connections=connections) as fleet,
            BusCapture(cluster.urls[0], "provisioning.node.>") as bus,
        ):
            wait_until(lambda: run.queued_everywhere(nodes), 120, "every node queued by every instance", 1.0)
            run.resume()
            wait_until(lambda: provisioned(run.instances, site) >= nodes / 3, 600, "a third provisioned", 0.1)
            victim.kill()
            # The members' broker is the truth: the victim may have restarted a node without logging it.
            answered = asyncio.run(discover(members.url, fleet.identities, 600, collective="bench"))
            if len(answered) != nodes:
                raise RuntimeError(f"{nodes - len(answered)} nodes never became members")
            requests = bus.requests()
            identities = fleet.identities
    shutil.rmtree(state, ignore_errors=True)
    killed_at = victim.killed_at
    members_at_kill = [instance.name for instance in run.instances]
    by_victim = {r.identity for r in requests if r.senderid == victim.name}
    finished_by_victim = {line["identity"] for line in victim.outcomes("provisioned")}
    survivors_first: dict = {}
    for request in requests:
        if request.senderid != victim.name and request.received > killed_at:
            survivors_first.setdefault(request.identity, request.received)
    held = sorted(survivors_first[i] - killed_at for i in by_victim - finished_by_victim if i in survivors_first)
    untouched = [
        identity
        for identity in identities
        if node_owner(identity, members_at_kill) == victim.name and identity not in by_victim
    ]
    lane = sorted(survivors_first[i] - killed_at for i in untouched if i in survivors_first)
    return {"nodes": nodes, "held": held, "lane": lane, "victim_done": len(finished_by_victim)}


def spread(values: list) -> str:
    if not values:
        return "none"
    return (
        f"{len(values)} nodes, min {values[0]:.2f} s, median {statistics.median(values):.2f} s, max {values[-1]:.2f} s"
    )


def main() -> int:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # unwind: every server and process started is stopped
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="1,000 nodes, failover with 600")
    parser.add_argument("--nodes", type=int, default=None, help="fleet size of the throughput runs (10,000)")
    parser.add_argument("--instances", default="1,2,3", help="instance counts of the throughput runs")
    parser.add_argument("--workers", type=int, default=100, help="workers of each instance")
    parser.add_argument("--connections", type=int, default=4, help="NATS connections of the fleet process")
    parser.add_argument("--failover-nodes", type=int, default=None, help="fleet of the failover run (0: skip)")
    parser.add_argument("--claim-ttl", type=int, default=5, help="claim_ttl of the failover run's instances")
    add_state_dir_option(parser)
    args = parser.parse_args()
    nodes = args.nodes or (1000 if args.quick else 10000)
    failover_nodes = args.failover_nodes if args.failover_nodes is not None else (600 if args.quick else 3000)
    counts = [int(c) for c in args.instances.split(",") if c]
    print(f"bench_service: {machine()}; load average {load_average()} before", flush=True)
    workdir = tempfile.mkdtemp(prefix="zeroinit-bench-svc-")
    state_root = tempfile.mkdtemp(prefix="zeroinit-bench-svc-fleet-", dir=args.state_dir)
    try:
        cert, key = os.path.join(workdir, "ca.pem"), os.path.join(workdir, "ca.key")
        CertificateAuthority.load_or_create(cert, key)
        ca = {"ca_cert": cert, "ca_key": key}
        with EmbeddedCluster(size=3) as cluster, EmbeddedBroker() as members:
            floor_rps, _cpu = asyncio.run(_floor(cluster.urls[0], 5000 if args.quick else 20000, 1000))
            floor_nodes = floor_rps / ROUND_TRIPS
            print(
                f"floor: raw NATS request/reply through the cluster {floor_rps:.0f} req/s (trivial responder, 1000 in "
                f"flight) -> {floor_nodes:.0f} nodes/s at {ROUND_TRIPS} round trips per node",
                flush=True,
            )
            one = None
            for count in counts:
                row = throughput_run(
                    cluster, members, ca, workdir, state_root, count, nodes, args.workers, args.connections
                )
                one = one or row["nodes_per_s"]
                print(
                    f"{count} instance(s), {row['nodes']} nodes, {args.workers} workers each: {row['seconds']:.1f} s, "
                    f"{row['nodes_per_s']:.0f} nodes/s = {row['nodes_per_s'] / one:.2f} x one instance, "
                    f"{row['nodes_per_s'] / floor_nodes:.3f} of the floor; nodes per instance {row['per_instance']}; "
                    f"per node p50 {row['node_p50_ms']:.0f} ms (steps p50 "
                    f"{', '.join(f'{k} {v:.0f}' for k, v in row['steps_p50_ms'].items())} ms); CPU per node: instances "
                    f"{row['cpu_ms_per_node']:.1f} ms, fleet {row['fleet_cpu_ms_per_node']:.1f} ms; "
                    f"RSS idle {', '.join(f'{m:.0f}' for m in row['idle_rss_mib'])} MiB, busy peak "
                    f"{', '.join(f'{m:.0f}' for m in row['busy_peak_rss_mib'])} MiB; load average {load_average()}",
                    flush=True,
                )
            if failover_nodes:
                row = failover_run(
                    cluster,
                    members,
                    ca,
                    workdir,
                    state_root,
                    failover_nodes,
                    args.workers,
                    args.connections,
                    args.claim_ttl,
                )
                print(
                    f"failover, 3 instances, {row['nodes']} nodes, claim_ttl {args.claim_ttl} s, first instance "
                    f"SIGKILLed after it provisioned {row['victim_done']}: from the kill to a survivor's first request "
                    f"to a node it held: {spread(row['held'])}; to a node that fell to it and it had not started: "
                    f"{spread(row['lane'])}; load average {load_average()}",
                    flush=True,
                )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        shutil.rmtree(state_root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
