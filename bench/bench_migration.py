"""The CA migration of a fleet (playbooks/migrate_ca.yaml through ansible-playbook): how long it takes, and the
longest time any node went without answering ping meanwhile.

    .venv/bin/python bench/bench_migration.py [--quick] [--nodes 1000] [--interval 1.0] [--processes 4]

N configured nodes (tests/support/members.py: seeded as provisioning leaves them, certificates of a temporary built-in
CA) served by ``--processes`` agent processes (one process answering 1,000 nodes' pings while it makes their keys and
checks their requests measures its own GIL, not the migration: a real node is a process), each node on its own TLS
connection to a members' nats-server that requires client
certificates; the permanent CA is a ``cfssl serve`` on loopback. A watcher pings every node (a discovery broadcast)
every ``--interval`` seconds from before the playbook starts until after it ends. Figures: the playbook's wall time and
the time of each step as the modules report it, the longest gap per node (p50, p99, max), and, as the floor, the
same watcher's gap with no migration running.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import pathlib
import platform
import statistics
import sys
import tempfile
import time

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, ".venv", "collections"))
from bench_agent import machine

from tests.support.ansible_run import run_playbook
from tests.support.cfssl import CfsslServer
from tests.support.members import MemberFleet, MemberSite, PingWatch, fleet_identities, migration_run

PLAYBOOK = pathlib.Path(ROOT) / "playbooks" / "migrate_ca.yaml"


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def gap_figures(watch: PingWatch, identities: list[str]) -> str:
    gaps = watch.gaps()
    values = [gaps[i] for i in identities]
    worst = max(identities, key=gaps.get)
    return (
        f"p50 {statistics.median(values):.2f}s, p99 {percentile(values, 0.99):.2f}s, max {gaps[worst]:.2f}s ({worst}); "
        f"{watch.rounds} rounds"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="100 nodes instead of 1,000")
    parser.add_argument("--nodes", type=int, default=None)
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between pings of every node")
    parser.add_argument(
        "--processes", type=int, default=4, help="agent processes the nodes are spread over (each has its own GIL)"
    )
    args = parser.parse_args()
    count = args.nodes or (100 if args.quick else 1000)
    print(
        f"bench_migration: {count} nodes in {args.processes} agent process(es); machine: {machine()}, {platform.machine()}, "
        f"load average {os.getloadavg()[0]:.1f} (others share the cores)"
    )
    with tempfile.TemporaryDirectory(prefix="bench-migration-") as workdir:
        work = pathlib.Path(workdir)
        site = MemberSite(work / "old", name="temporary CA")
        # Node names p<k>n<i>: one agent process serves one prefix (tests/support/fleet.py names a fleet that way).
        groups = [
            fleet_identities(len(range(k, count, args.processes)), prefix=f"p{k}n") for k in range(args.processes)
        ]
        identities = sorted(i for group in groups for i in group)
        with CfsslServer(work / "cfssl", ca_name="permanent CA") as permanent, site.broker() as broker:
            for k, group in enumerate(groups):
                site.seed(work / f"fleet{k}", group, broker.url)
            inventory, extra = migration_run(work, site, broker, permanent)
            extra = {
                **extra,
                "zeroinit_migrate_identities": identities,
                "zeroinit_migrate_wait": max(120, count // 5),
            }
            started = time.monotonic()
            fleets = [
                MemberFleet(broker.url, group, work / f"fleet{k}", site, prefix=f"p{k}n")
                for k, group in enumerate(groups)
            ]
            with contextlib.ExitStack() as stack:
                for fleet in fleets:
                    stack.callback(fleet.stop)
                    fleet.launch()
                for fleet in fleets:  # a loaded machine makes 1,000 TLS connections slowly
                    fleet.wait_ready(timeout=max(120.0, count / 3.0))
                print(f"fleet of {count} TLS members ready in {time.monotonic() - started:.1f}s")
                with PingWatch(broker.url, identities, site.client_tls("floor"), interval=args.interval) as floor:
                    time.sleep(10)
                print(f"floor (no migration, 10 s): longest gap {gap_figures(floor, identities)}")
                with PingWatch(broker.url, identities, site.client_tls("watch"), interval=args.interval) as watch:
                    time.sleep(2 * args.interval)
                    began = time.monotonic()
                    play = run_playbook(PLAYBOOK, inventory=str(inventory), extra_vars=extra, timeout=3600)
                    took = time.monotonic() - began
                    time.sleep(2 * args.interval)
                for fleet in fleets:
                    if not fleet.running():
                        print(fleet.log_tail())
        if play.rc != 0:
            print(play.stdout[-4000:])
            return 1
        steps = {
            "1 trust both": play.result("1. Every node trusts the old and the new CA"),
            "2 renew": play.result(
                "2. Every node that trusts both makes a new key and gets a certificate from the permanent CA"
            ),
            "4 trust new": play.result("Every migrated node trusts the new CA only"),
        }
        summary = play.result("Summarize")["msg"]
        print(
            f"migration of {count} nodes: {took:.1f}s wall (ansible-playbook, 6 plays); migrated {summary['migrated']}, "
            f"missed {len(summary['missed'])}, complete {summary['complete']}"
        )
        for name, result in steps.items():
            print(f"  step {name}: {result.get('elapsed_s')}s, {result.get('counts')}")
        if summary["missed"]:
            print(f"  missed, e.g.: {dict(list(summary['missed'].items())[:3])}")
        print(f"longest ping gap during the migration: {gap_figures(watch, identities)}")
        short = [(round(t - began, 1), n) for t, n in watch.round_log if n < count]
        print(f"rounds with nodes missing (seconds from the playbook's start, answered): {short or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
