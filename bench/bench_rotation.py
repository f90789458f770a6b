"""Benchmark: no-lockout SSH key rotation over 10 network-namespace hosts, verification included.

    .venv/bin/python bench/bench_rotation.py [--quick] [--hosts 10] [--forks 10]

Per round (a fresh network each time): the floor (an ``ansible.builtin.ping`` play over the same hosts, i.e.
what any Ansible task costs here), the rotation (key generated, added, a fresh SSH login proven per host, the
bootstrap key revoked), the no-change rerun (still proves the login), and single fresh ``ssh`` logins.
Needs root (namespaces). Target: rotation of 10 hosts <= 15 s.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from tests.support.ansible_run import run_playbook
from tests.support.netns import TestNetwork

PING = """
- name: Floor
  hosts: members
  gather_facts: false
  tasks:
    - name: ping
      ansible.builtin.ping:
"""

ROTATE = """
- name: Rotate
  hosts: members
  gather_facts: false
  tasks:
    - name: rotate
      zeroinit.bootstrap.ssh_key_rotate:
        private_key: "{{ new_key }}"
        revoke: ["{{ bootstrap_pub }}"]
"""


def keygen(path: str) -> str:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "bootstrap", "-f", path], check=True)
    with open(path + ".pub") as handle:
        return handle.read().strip()


def timed(fn):
    start = time.perf_counter()
    value = fn()
    return time.perf_counter() - start, value


def fresh_login(net: TestNetwork, address: str, key: str) -> float:
    start = time.perf_counter()
    subprocess.run(
        [
            "ssh",
            "-o",
            "BatchMode=yes",
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "ControlPath=none",
            "-o",
            f"UserKnownHostsFile={net.known_hosts}",
            "-i",
            key,
            f"root@{address}",
            "true",
        ],
        check=True,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=30,
    )
    return time.perf_counter() - start


def one_round(hosts: int, forks: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="zeroinit-bench-rot-") as tmp:
        bootstrap = os.path.join(tmp, "bootstrap")
        bootstrap_pub = keygen(bootstrap)
        new_key = os.path.join(tmp, "controller", "fleet_ed25519")
        net = TestNetwork.create("rotbench", hosts, authorized_keys=bootstrap_pub)
        try:
            inventory = os.path.join(tmp, "inventory.json")
            with open(inventory, "w") as handle:
                json.dump(
                    {
                        "members": {
                            "hosts": {
                                h.name: {
                                    "ansible_host": h.address,
                                    "ansible_user": "root",
                                    "ansible_ssh_private_key_file": bootstrap,
                                    "ansible_ssh_common_args": f"-o UserKnownHostsFile={net.known_hosts} -o StrictHostKeyChecking=yes",
                                }
                                for h in net.hosts
                            }
                        }
                    },
                    handle,
                )
            extra = {"new_key": new_key, "bootstrap_pub": bootstrap_pub}
            args = ["--forks", str(forks)]
            floor, res = timed(lambda: run_playbook(PING, inventory, extra, args=args))
            assert res.rc == 0, res.stdout[-2000:]
            rotate, res = timed(lambda: run_playbook(ROTATE, inventory, extra, args=args))
            assert res.rc == 0, res.stdout[-2000:]
            assert all(res.result("rotate", h.name)["verified"] for h in net.hosts)
            extra["ansible_ssh_private_key_file"] = new_key
            rerun, res = timed(lambda: run_playbook(ROTATE, inventory, extra, args=args))
            assert res.rc == 0 and not any(res.result("rotate", h.name)["changed"] for h in net.hosts)
            logins = [fresh_login(net, h.address, new_key) for h in net.hosts]
            # Again from the bootstrap state, with Ansible's SSH pipelining (one SSH round trip per module run).
            for host in net.hosts:
                with open(host.path("/root/.ssh/authorized_keys"), "w") as handle:
                    handle.write(bootstrap_pub + "\n")
            for path in (new_key, new_key + ".pub"):
                os.unlink(path)
            del extra["ansible_ssh_private_key_file"]
            piped, res = timed(
                lambda: run_playbook(ROTATE, inventory, extra, args=args, env={"ANSIBLE_PIPELINING": "1"})
            )
            assert res.rc == 0 and all(res.result("rotate", h.name)["verified"] for h in net.hosts)
        finally:
            net.destroy()
    return {"floor": floor, "rotate": rotate, "rerun": rerun, "piped": piped, "logins": logins}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one round instead of three")
    parser.add_argument("--hosts", type=int, default=10)
    parser.add_argument("--forks", type=int, default=10)
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    rounds = [one_round(args.hosts, args.forks) for _index in range(1 if args.quick else 3)]
    logins = sorted(x for r in rounds for x in r["logins"])
    print(
        f"machine: {os.cpu_count() or 0} cores (shared; 1-min load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} "
        f"after), {args.hosts} hosts as network namespaces "
        f"with sshd, forks={args.forks}, {len(rounds)} round(s)"
    )
    for key, label in (
        ("floor", "floor: ansible.builtin.ping play"),
        ("rotate", "rotation (generate, add, verify, revoke)"),
        ("rerun", "rerun, no change (verify only)"),
        ("piped", "rotation with ANSIBLE_PIPELINING=1"),
    ):
        values = [r[key] for r in rounds]
        print(
            f"{label:<44} median {statistics.median(values):6.2f} s   min {min(values):6.2f} s   max {max(values):6.2f} s"
        )
    p50 = logins[len(logins) // 2]
    p99 = logins[min(len(logins) - 1, int(len(logins) * 0.99))]
    print(f"{'single fresh ssh login with the new key':<44} p50 {p50:6.3f} s   p99 {p99:6.3f} s   (n={len(logins)})")
    target = statistics.median(r["rotate"] for r in rounds)
    print(f"target rotation of {args.hosts} hosts <= 15 s: {'met' if target <= 15 else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
