"""Leader election convergence time over real mDNS between network-namespace hosts.

    .venv/bin/python bench/bench_election.py [--quick]     (root: builds namespaces)

For 3, 5 and 7 hosts, each round starts one election process per host and measures the time from the LAST
member's start (the later of its start instant and when it really started) until every member has returned
(process exit, i.e. including its goodbye packets). Two start patterns: all together (one wall-clock instant)
and staggered (one member every 0.3 s). Target: 5 hosts converge within 2 s of the last start. The floor is
what the protocol waits by design: the settle time plus the leader's goodbye broadcast (3 packets 125 ms apart).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import statistics
import subprocess
import sys
import threading
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ansible_collections.zeroinit.bootstrap.plugins.module_utils.election.member import SETTLE_SECONDS
from tests.support.netns import TestNetwork

ELECTION = "ansible_collections.zeroinit.bootstrap.plugins.module_utils.election.member"
GOODBYE_SECONDS = 0.25


def one_round(net: TestNetwork, count: int, stagger: float, cluster: str) -> dict:
    base = time.time() + 0.5 + 0.3 * count  # every process imported and waiting before its start (2 cores)
    starts = [base + i * stagger for i in range(count)]
    procs, ends, outs = [], [0.0] * count, [""] * count

    def reap(index: int) -> None:
        out, _err = procs[index].communicate(timeout=60)
        ends[index] = time.time()
        outs[index] = out

    threads = []
    try:
        for index, host in enumerate(net.hosts[:count]):
            procs.append(
                host.popen(
                    [
                        sys.executable,
                        "-m",
                        ELECTION,
                        "--expect",
                        str(count),
                        "--timeout",
                        "20",
                        "--cluster",
                        cluster,
                        "--start-at",
                        repr(starts[index]),
                    ],
                    stdout=subprocess.PIPE,
                    stderr=subprocess.DEVNULL,
                    text=True,
                )
            )
        for index in range(count):
            threads.append(threading.Thread(target=reap, args=(index,)))
            threads[-1].start()
        for thread in threads:
            thread.join(90)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
    results = [json.loads(out.strip().splitlines()[-1]) if out.strip() else {"failed": True} for out in outs]
    ok = all(not r.get("failed") for r in results) and len({r.get("leader") for r in results}) == 1
    # A process that was still importing at its start instant (loaded machine) started when it says it did.
    actual = [max(start, r.get("started_at", start)) for start, r in zip(starts, results)]
    late = max(a - s for a, s in zip(actual, starts))
    return {"ok": ok, "converge": max(ends) - max(actual), "late": late, "leader": results[0].get("leader")}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 and 5 hosts, 2 rounds each")
    args = parser.parse_args(argv)
    sizes, rounds = ((3, 5), 2) if args.quick else ((3, 5, 7), 5)
    print(
        f"machine: {platform.machine()}, {os.cpu_count() or 0} cores (shared), Python {platform.python_version()}; hosts are network namespaces on one bridge"
    )
    print(
        f"floor by design: settle {SETTLE_SECONDS:.2f} s + leader goodbye {GOODBYE_SECONDS:.2f} s = {SETTLE_SECONDS + GOODBYE_SECONDS:.2f} s"
    )
    net = TestNetwork.create("elbench", max(sizes), sshd=False)
    failures = 0
    try:
        print("load average before: {:.1f} {:.1f} {:.1f}".format(*os.getloadavg()))
        print(f"{'hosts':<6} {'start':<10} {'p50 s':>7} {'max s':>7} {'rounds':>7}  {'ok':<5} {'late start max s'}")
        for count in sizes:
            for label, stagger in (("together", 0.0), ("staggered", 0.3)):
                runs = [one_round(net, count, stagger, f"bench{count}{label[0]}") for _round in range(rounds)]
                times = [r["converge"] for r in runs]
                good = sum(r["ok"] for r in runs)
                failures += rounds - good
                print(
                    f"{count:<6d} {label:<10} {statistics.median(times):7.2f} {max(times):7.2f} {rounds:7d} "
                    f" {good}/{rounds:<3d} {max(r['late'] for r in runs):.2f}",
                    flush=True,
                )
    finally:
        net.destroy()
    print("load average after: {:.1f} {:.1f} {:.1f}".format(*os.getloadavg()))
    print("target: 5 hosts within 2.00 s of the last start")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
