"""Node agent figures: nodes one process serves, memory per node, start-to-discovery time, provisioning rate.

    .venv/bin/python bench/bench_agent.py [--quick] [--sizes 1000,5000,10000] [--provision 10000]

For each fleet size: one ``zeroinit-agent --fleet N`` process on a real nats-server on loopback; the time from
process start until every node answered one broadcast discovery; the process's RSS, and RSS per node (the RSS
above a 1-node process, divided by N). Then a provisioning round of ``--provision`` nodes driven by a minimal
client (tests/support/fleet.py: inventory -> gencsr -> configure -> restart, certificates from a test CA, EC
keys) with ``--inflight`` nodes at a time, until every node answers rpcutil#ping in its configured collective.
The floor measured in the same run: raw NATS request/reply round trips per second on this machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import pathlib
import shutil
import statistics
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ansible_collections.zeroinit.bootstrap.plugins.module_utils.choria.transport import connect
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.provisioning.rpc import RpcClient
from tests.support.broker import EmbeddedBroker
from tests.support.fleet import AgentFleet, TestCA, provision_node
from tests.support.process import rss_bytes


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process: a figure the other load on a shared machine does not inflate much."""
    with open(f"/proc/{pid}/stat") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def load_average() -> str:
    with open("/proc/loadavg") as handle:
        return " ".join(handle.read().split()[:3])


def machine() -> str:
    model = ""
    try:
        with open("/proc/cpuinfo") as handle:
            model = next((line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")), "")
    except OSError:
        pass
    return f"{os.cpu_count() or 0} cores ({model or '?'}), Python {sys.version.split()[0]}"


def scale(broker: EmbeddedBroker, sizes: list[int], workdir: str) -> None:
    with AgentFleet(broker.url, 1, os.path.join(workdir, "base")) as base:
        baseline = rss_bytes(base.process.pid) // 1024
    print(f"baseline: one-node agent process RSS {baseline / 1024:.1f} MiB")
    print(f"{'nodes':>8} {'ready (s)':>14} {'RSS (MiB)':>12} {'KiB per node':>14}")
    for size in sizes:
        state = os.path.join(workdir, f"scale-{size}")
        started = time.monotonic()
        with AgentFleet(broker.url, size, state, facts={"role": "bench"}) as fleet:
            ready = time.monotonic() - started
            rss = rss_bytes(fleet.process.pid) // 1024
        shutil.rmtree(state, ignore_errors=True)
        print(f"{size:8d} {ready:14.2f} {rss / 1024:12.1f} {(rss - baseline) / size:14.1f}")


async def nats_floor(url: str, count: int = 5000) -> float:
    """Request/reply round trips per second, 100 in flight, with a trivial responder: the bus's own limit."""
    nc = await connect([url], name="bench-floor")
    try:

        async def echo(msg):
            await nc.publish(msg.reply, b"pong")

        await nc.subscribe("bench.echo", cb=echo)
        sem = asyncio.Semaphore(100)

        async def one():
            async with sem:
                await nc.request("bench.echo", b"ping", timeout=10)

        started = time.monotonic()
        await asyncio.gather(*(one() for _index in range(count)))
        return count / (time.monotonic() - started)
    finally:
        await nc.drain()


async def provision_round(url: str, identities: list[str], inflight: int) -> dict:
    ca = TestCA()
    configuration = {
        "plugin.choria.server.provision": "false",
        "plugin.choria.middleware_hosts": url,
        "collectives": "bench",
        "main_collective": "bench",
    }
    durations: list[float] = []
    failures: list[str] = []
    sem = asyncio.Semaphore(inflight)
    async with RpcClient([url], callerid="bench-provisioner") as client:

        async def one(identity: str) -> None:
            async with sem:
                started = time.monotonic()
                try:
                    await provision_node(client, identity, ca, configuration, timeout=60)
                except Exception as exc:  # a benchmark reports failures, it does not stop at the first
                    failures.append(f"{identity}: {exc}")
                    return
                durations.append(time.monotonic() - started)

        started = time.monotonic()
        await asyncio.gather(*(one(i) for i in identities))
        provisioned = time.monotonic() - started
    # Every node must arrive in its configured collective.
    async with RpcClient([url], callerid="bench-check", collective="bench") as checker:
        seen: set[str] = set()
        deadline = time.monotonic() + 120
        while len(seen) < len(identities) - len(failures) and time.monotonic() < deadline:
            seen.update(await checker.discover(timeout=2, expect=len(identities) - len(failures)))
        arrived = time.monotonic() - started
        pings = await checker.request(
            "rpcutil", {"agent": "rpcutil", "action": "ping", "data": {}}, timeout=10, expect=len(seen)
        )
    durations.sort()
    return {
        "provisioned_s": provisioned,
        "arrived_s": arrived,
        "configured": len(seen),
        "pinged": len(pings),
        "failures": failures,
        "p50": statistics.median(durations) if durations else 0,
        "p99": durations[int(len(durations) * 0.99) - 1] if durations else 0,
    }


def provision(broker: EmbeddedBroker, count: int, inflight: int, workdir: str) -> None:
    state = os.path.join(workdir, f"provision-{count}")
    with AgentFleet(broker.url, count, state) as fleet:
        peak_before = rss_bytes(fleet.process.pid) // 1024
        cpu_before, driver_before = cpu_seconds(fleet.process.pid), time.process_time()
        result = asyncio.run(provision_round(broker.url, fleet.identities, inflight))
        rss = rss_bytes(fleet.process.pid) // 1024
        agent_cpu, driver_cpu = cpu_seconds(fleet.process.pid) - cpu_before, time.process_time() - driver_before
    shutil.rmtree(state, ignore_errors=True)
    print(
        f"provisioned {count} nodes (inventory, gencsr EC P-256, configure, restart; {inflight} in flight): "
        f"{result['provisioned_s']:.1f} s, {count / result['provisioned_s']:.0f} nodes/s"
    )
    print(
        f"  per node p50 {result['p50'] * 1000:.0f} ms, p99 {result['p99'] * 1000:.0f} ms; all {result['configured']} "
        f"in their configured collective after {result['arrived_s']:.1f} s; {result['pinged']} answered "
        "rpcutil#ping there"
    )
    print(
        f"  agent CPU {agent_cpu * 1000 / count:.2f} ms per node ({agent_cpu:.1f} s), "
        f"driver CPU {driver_cpu * 1000 / count:.2f} ms per node; load average {load_average()} (a shared machine)"
    )
    print(
        f"  agent RSS {peak_before / 1024:.1f} MiB before, {rss / 1024:.1f} MiB after; failures: {len(result['failures'])} {json.dumps(result['failures'][:3])}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="1,000 nodes only")
    parser.add_argument("--sizes", default="")
    parser.add_argument("--provision", type=int, default=0, help="nodes in the provisioning round")
    parser.add_argument("--inflight", type=int, default=200)
    parser.add_argument("--skip-provision", action="store_true", help="only the fleet sizes")
    parser.add_argument(
        "--state-base",
        default=None,
        help="directory for the fleets' state directories (default: the system temp dir; /dev/shm puts them on tmpfs)",
    )
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",") if s] or ([1000] if args.quick else [1000, 5000, 10000])
    count = args.provision or (1000 if args.quick else 10000)
    print(f"machine: {machine()}; load average at start {load_average()}")
    workdir = tempfile.mkdtemp(prefix="bench-agent-", dir=args.state_base)
    print(f"state directories under {workdir}")
    try:
        with EmbeddedBroker() as broker:
            print(
                f"floor: raw NATS request/reply {asyncio.run(nats_floor(broker.url)):.0f} round trips/s (100 in flight)"
            )
            scale(broker, sizes, workdir)
            if not args.skip_provision:
                provision(broker, count, args.inflight, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
