"""Inventory plugin figures: how fast a provisioning fleet becomes an Ansible inventory.

    .venv/bin/python bench/bench_inventory.py [--quick] [--sizes 1000,5000]

For each fleet size: one ``zeroinit-agent --fleet N`` process on a real nats-server on loopback, then

* ``discover_fleet`` in-process with ``expect=N`` (discovery ends when all answered): total time, nodes/s, and
  p50/p99 of the per-node rpcutil#inventory round trip;
* the same without ``expect`` (discovery waits its full 2 s timeout), which is what a user gets by default;
* ``ansible-inventory --list`` on a provisioning.yml with ``expect`` and a keyed group: wall time and the CLI's
  peak RSS.

The floor measured in the same run: raw NATS request/reply round trips per second on this machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench_agent import machine, nats_floor

from ansible_collections.zeroinit.bootstrap.plugins.module_utils.provisioning.discovery import FleetDiscovery
from tests.support.ansible_run import VENV_BIN, ansible_env
from tests.support.broker import EmbeddedBroker
from tests.support.fleet import AgentFleet

# Runs one command and reports its peak RSS: the wrapper's only child is the command.
PEAK_RSS = (
    "import resource, subprocess, sys; rc = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL).returncode; "
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, rc)"
)


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, round(len(ordered) * fraction) - 1)] if ordered else 0.0


def in_process(url: str, size: int, expect: int | None) -> tuple[float, int, list[float]]:
    run = FleetDiscovery([url], timeout=2.0, expect=expect, inventory_timeout=30.0)
    started = time.monotonic()
    fleet = asyncio.run(run.run())
    elapsed = time.monotonic() - started
    failed = sum(1 for record in fleet.values() if "inventory_error" in record)
    if len(fleet) != size or failed:
        print(f"  WARNING: {len(fleet)} of {size} nodes found, {failed} without inventory")
    return elapsed, len(fleet), list(run.latencies.values())


def cli(url: str, size: int, workdir: str) -> tuple[float, float, int]:
    path = os.path.join(workdir, "provisioning.yml")
    with open(path, "w") as handle:
        json.dump(
            {
                "plugin": "zeroinit.bootstrap.provisioning",
                "brokers": [url],
                "expect": size,
                "discovery_timeout": 10,
                "keyed_groups": [{"key": "zeroinit_facts.role", "prefix": "role"}],
            },
            handle,
        )
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-c", PEAK_RSS, str(VENV_BIN / "ansible-inventory"), "-i", path, "--list"],
        env=ansible_env(),
        stdout=subprocess.PIPE,
        text=True,
        check=True,
        cwd=str(ROOT),
    )
    elapsed = time.monotonic() - started
    peak_kib, rc = proc.stdout.split()
    return elapsed, int(peak_kib) / 1024.0, int(rc)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="1,000 nodes only")
    parser.add_argument("--sizes", default="")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",") if s] or ([1000] if args.quick else [1000, 5000])
    print(f"machine: {machine()}")
    workdir = tempfile.mkdtemp(prefix="bench-inventory-")
    try:
        with EmbeddedBroker() as broker:
            floor = asyncio.run(nats_floor(broker.url))
            print(f"floor: raw NATS request/reply {floor:.0f} round trips/s (100 in flight)")
            for size in sizes:
                with AgentFleet(
                    broker.url,
                    size,
                    os.path.join(workdir, f"fleet-{size}"),
                    facts={"role": "bench", "os": {"family": "Debian"}},
                ) as _fleet:
                    quick, found, latencies = in_process(broker.url, size, expect=size)
                    default, found_default, _latencies = in_process(broker.url, size, expect=None)
                    wall, peak_mib, rc = cli(broker.url, size, workdir)
                print(f"{size} nodes:")
                print(
                    f"  discover_fleet expect=N: {found} found and inventoried in {quick:.2f} s = {found / quick:.0f} nodes/s; inventory round "
                    f"trip per node p50 {percentile(latencies, 0.5) * 1000:.0f} ms, p99 {percentile(latencies, 0.99) * 1000:.0f} ms"
                )
                print(f"  discover_fleet default (2 s discovery timeout): {found_default} in {default:.2f} s")
                print(
                    f"  ansible-inventory --list (expect=N, one keyed group): {wall:.2f} s wall, peak RSS {peak_mib:.0f} MiB, rc {rc}"
                )
                print(
                    f"  inventory rate vs floor: {100.0 * found / quick / floor:.0f}% of raw request/reply round trips/s"
                )
                shutil.rmtree(os.path.join(workdir, f"fleet-{size}"), ignore_errors=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
