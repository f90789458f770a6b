"""Day 0 with no controller: playbooks/first_boot.yaml on 3 and 5 network-namespace masters.

    .venv/bin/python bench/bench_first_boot.py [--quick] [--sizes 3,5] [--rounds 3]     (root: builds namespaces)

Each round builds fresh masters (sshd trusting a bootstrap key, its key pair in /etc/zeroinit) and starts the entry
point inside every one of them, as its first-boot hook would, either all together or one every 2 s (masters
booting one after the other). Measured from the LAST master's start: until the followers returned (the
election), and until every master returned (the leader also made the key, rotated every member and ran the next
playbook, molecule/first_boot/next.yml: one task writing a file on every member). The floor, measured in the same
run on the same masters: every master running a one-task play with a local connection at once, i.e. what starting
Ansible costs here.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support.ansible_run import run_playbook
from tests.support.netns import TestNetwork

# The molecule scenario's next playbook: a marker with the leader's name on every member.
NEXT_PLAYBOOK = ROOT / "molecule" / "first_boot" / "next.yml"

FLOOR = """
- name: Floor
  hosts: localhost
  gather_facts: false
  tasks:
    - name: One module
      ansible.builtin.ping:
"""


def start_all(net: TestNetwork, playbook: str, extra_vars: dict | None, stagger: float) -> dict:
    """Run ``playbook`` inside every host (local connection), host i starting at i * stagger; times in seconds."""
    starts, ends, results = {}, {}, {}

    def one(index, host):
        time.sleep(index * stagger)
        starts[host.name] = time.monotonic()
        results[host.name] = run_playbook(
            playbook,
            inventory="localhost,",
            extra_vars=extra_vars,
            args=["--connection", "local"],
            wrap=host.nsenter([]),
            timeout=600,
        )
        ends[host.name] = time.monotonic()

    threads = [threading.Thread(target=one, args=(i, h)) for i, h in enumerate(net.hosts)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    last_start = max(starts.values())
    return {"last_start": last_start, "ends": ends, "results": results}


def one_round(count: int, stagger: float, tmp: pathlib.Path, cluster: str) -> dict:
    bootstrap = tmp / f"bootstrap-{cluster}"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(bootstrap)], check=True)
    net = TestNetwork.create("fbbench", count, authorized_keys=bootstrap.with_suffix(".pub").read_text())
    try:
        for host in net.hosts:
            host.run(["install", "-D", "-m", "0600", str(bootstrap), "/etc/zeroinit/bootstrap_ed25519"])
        floor = start_all(net, FLOOR, None, 0.0)
        assert all(r.rc == 0 for r in floor["results"].values()), "floor play failed"
        booted = start_all(
            net,
            "zeroinit.bootstrap.first_boot",
            {
                "first_boot_expect": count,
                "first_boot_cluster": cluster,
                "first_boot_secret": "bench",
                "first_boot_timeout": 120,
                "first_boot_next_playbook": str(NEXT_PLAYBOOK),
            },
            stagger,
        )
        failed = {name: r.stdout[-2000:] for name, r in booted["results"].items() if r.rc != 0}
        if failed:
            raise RuntimeError(f"first boot failed on {sorted(failed)}: {failed}")
        leader = min(net.hosts, key=lambda h: h.int_id)
        followers = [booted["ends"][h.name] for h in net.hosts if h is not leader]
        return {
            "floor": max(floor["ends"].values()) - floor["last_start"],
            "followers": max(followers) - booted["last_start"],
            "all": max(booted["ends"].values()) - booted["last_start"],
        }
    finally:
        net.destroy()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 and 5 masters, one round each, together only")
    parser.add_argument("--sizes", default="3,5")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    sizes = [int(size) for size in args.sizes.split(",")]
    rounds = 1 if args.quick else args.rounds
    patterns = (("together", 0.0),) if args.quick else (("together", 0.0), ("2 s apart", 2.0))
    print(
        f"machine: {platform.machine()}, {os.cpu_count() or 0} cores (shared), Python {platform.python_version()}; "
        "masters are network namespaces with sshd on one bridge"
    )
    print("load average before: {:.1f} {:.1f} {:.1f}".format(*os.getloadavg()), flush=True)
    print(
        f"{'masters':<8} {'start':<10} {'rounds':>6}  {'all returned s (p50 / max)':<30} "
        f"{'followers returned s (p50)':<30} {'floor s (p50)':<24}"
    )
    with tempfile.TemporaryDirectory(prefix="zeroinit-bench-fb-") as tmp:
        tmp_path = pathlib.Path(tmp)
        for count in sizes:
            for label, stagger in patterns:
                runs = [
                    one_round(count, stagger, tmp_path, f"bench{count}{label[0]}{index}") for index in range(rounds)
                ]
                returned = [r["all"] for r in runs]
                every = f"{statistics.median(returned):.1f} / {max(returned):.1f}"
                followers = f"{statistics.median(r['followers'] for r in runs):.1f}"
                floor = f"{statistics.median(r['floor'] for r in runs):.1f}"
                print(f"{count:<8d} {label:<10} {rounds:>6d}  {every:<30} {followers:<30} {floor:<24}", flush=True)
    print("load average after: {:.1f} {:.1f} {:.1f}".format(*os.getloadavg()))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
