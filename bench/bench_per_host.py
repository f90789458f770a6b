"""Benchmark: the per-host path, playbooks/provision.yaml over the provisioning inventory plugin.

    .venv/bin/python bench/bench_per_host.py            # 200 and 1,000 hosts
    .venv/bin/python bench/bench_per_host.py --quick    # 50 hosts (under a minute)
    .venv/bin/python bench/bench_per_host.py --hosts 200 --forks 5,20   # compare forks

For each fleet size, in the same run and against the same simulated fleet (one zeroinit-agent process serving every
node, a real nats-server on loopback): the floor, a bare one-task play (``ansible.builtin.debug``, ``connection:
local``) over the same inventory hosts with the same forks; then ``provision.yaml`` itself (csr_signing with the
built-in signer, config_push); then, with ``--bulk``, ``provision_fleet.yaml`` (one bulk ``choria_provision``) on a
fresh fleet of the same size. Each figure is printed beside its target with the load average before and after, and
the controller's CPU seconds (ansible-playbook and its forks) per host, which are steadier than wall time on a
loaded machine.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import resource
import shutil
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ansible_collections.zeroinit.bootstrap.plugins.module_utils.pki.ca import CertificateAuthority
from tests.support.ansible_run import run_playbook
from tests.support.broker import EmbeddedBroker
from tests.support.fleet import AgentFleet

TOKEN = "bench-token"
TARGETS = {200: 30.0, 1000: 120.0}  # issue 11, target 1: seconds for provision.yaml
DEFAULT_FORKS = 20  # what the README recommends for provision.yaml
FLOOR_PLAY = """\
- name: Floor, one action-only task per host
  hosts: provisioning
  connection: local
  gather_facts: false
  tasks:
    - name: Nothing
      ansible.builtin.debug:
        msg: "{{ inventory_hostname }}"
        verbosity: 1
"""


def children_cpu() -> float:
    """CPU seconds of the waited-for children so far (ansible-playbook and every fork it waited for)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed_play(playbook, inventory: str, extra: dict | None, forks: int) -> dict:
    load0, cpu0, started = os.getloadavg()[0], children_cpu(), time.monotonic()
    result = run_playbook(playbook, inventory=inventory, extra_vars=extra, args=["--forks", str(forks)], timeout=1800)
    seconds = time.monotonic() - started
    failed = [host for host, stats in result.stats.items() if stats.get("failures") or stats.get("unreachable")]
    if result.rc != 0 or failed:
        print(result.stdout[-3000:], result.stderr[-3000:], file=sys.stderr)
    return {
        "seconds": round(seconds, 1),
        "cpu_s": round(children_cpu() - cpu0, 1),
        "hosts": len(result.stats),
        "failed": len(failed),
        "rc": result.rc,
        "load": (round(load0, 1), round(os.getloadavg()[0], 1)),
    }


def inventory_file(workdir: str, broker_url: str, count: int) -> str:
    path = os.path.join(workdir, f"bench-{count}.provisioning.yml")
    with open(path, "w") as handle:
        json.dump(
            {
                "plugin": "zeroinit.bootstrap.provisioning",
                "brokers": [broker_url],
                "discovery_timeout": 30,
                "expect": count,
            },
            handle,
        )
    return path


def bench_size(count: int, forks: int, workdir: str, ca: tuple[str, str], bulk: bool) -> dict:
    row: dict = {"hosts": count, "forks": forks}
    extra = {
        "zeroinit_provision_token": TOKEN,
        "zeroinit_provision_ca_cert": ca[0],
        "zeroinit_provision_ca_key": ca[1],
    }
    with EmbeddedBroker() as broker, EmbeddedBroker() as members:
        extra["zeroinit_provision_brokers"] = [broker.url]
        # Nodes are pointed at a second broker: a restart really moves them off the provisioning network.
        extra["zeroinit_provision_configuration"] = {
            "plugin.choria.middleware_hosts": members.url,
            "collectives": "bench",
        }
        inventory = inventory_file(workdir, broker.url, count)
        state = os.path.join(workdir, f"fleet-{count}-{forks}")
        with AgentFleet(broker.url, count, state, token=TOKEN, prefix="host"):
            row["floor"] = timed_play(FLOOR_PLAY, inventory, None, forks)
            row["per_host"] = timed_play(ROOT / "playbooks" / "provision.yaml", inventory, extra, forks)
        shutil.rmtree(state, ignore_errors=True)
        if bulk:
            state = os.path.join(workdir, f"fleet-bulk-{count}")
            with AgentFleet(broker.url, count, state, token=TOKEN, prefix="host"):
                bulk_extra = dict(
                    extra,
                    zeroinit_provision_expect=count,
                    zeroinit_provision_signer={"ca_cert": ca[0], "ca_key": ca[1]},
                )
                row["bulk"] = timed_play(ROOT / "playbooks" / "provision_fleet.yaml", "localhost,", bulk_extra, forks)
            shutil.rmtree(state, ignore_errors=True)
    return row


def report(row: dict) -> None:
    count, forks = row["hosts"], row["forks"]
    floor, play = row["floor"], row["per_host"]
    target = TARGETS.get(count)
    verdict = (
        "" if target is None else f" (target <= {target:.0f} s: {'met' if play['seconds'] <= target else 'NOT met'})"
    )
    print(
        f"per-host path, provision.yaml, {count} hosts, {forks} forks: {play['seconds']:.1f} s{verdict}, "
        f"{count / play['seconds']:.1f} hosts/s, controller {1000 * play['cpu_s'] / count:.0f} CPU ms/host, "
        f"{play['failed']} failed, rc {play['rc']}, load {play['load'][0]} -> {play['load'][1]}"
    )
    print(
        f"  floor, a one-task debug play over the same {count} hosts: {floor['seconds']:.1f} s, controller "
        f"{1000 * floor['cpu_s'] / count:.0f} CPU ms/host, load {floor['load'][0]} -> {floor['load'][1]}; "
        f"provision.yaml = {play['seconds'] / floor['seconds']:.1f} x the floor"
    )
    if "bulk" in row:
        bulk = row["bulk"]
        print(
            f"  bulk path, provision_fleet.yaml, same {count} nodes: {bulk['seconds']:.1f} s, rc {bulk['rc']}, "
            f"load {bulk['load'][0]} -> {bulk['load'][1]}"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="50 hosts only (under a minute)")
    parser.add_argument("--hosts", default="", help="comma-separated fleet sizes (default 200,1000)")
    parser.add_argument("--forks", default=str(DEFAULT_FORKS), help="comma-separated forks (default the README's)")
    parser.add_argument("--bulk", action="store_true", help="also time provision_fleet.yaml on the same sizes")
    args = parser.parse_args()
    sizes = [int(s) for s in args.hosts.split(",") if s] if args.hosts else ([50] if args.quick else [200, 1000])
    forks_list = [int(f) for f in args.forks.split(",") if f]
    print(
        f"bench_per_host: {os.cpu_count() or 0} CPU cores, Python {sys.version.split()[0]}, "
        f"load average {os.getloadavg()[0]:.1f}"
    )
    workdir = tempfile.mkdtemp(prefix="zeroinit-bench-per-host-")
    try:
        ca = os.path.join(workdir, "ca.pem"), os.path.join(workdir, "ca.key")
        CertificateAuthority.load_or_create(*ca)
        for count in sizes:
            for forks in forks_list:
                row = bench_size(count, forks, workdir, ca, args.bulk)
                print(json.dumps(row))
                report(row)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
