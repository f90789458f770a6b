"""Benchmark: the helper path of the bulk provisioner, one-shot against persistent helpers, in the same run.

    .venv/bin/python bench/bench_helpers.py            # 1,000 nodes persistent, 200 one-shot, 1,000 floor
    .venv/bin/python bench/bench_helpers.py --quick    # 300 persistent, 40 one-shot, 300 floor (<= 60 s)

Each run is the bulk path (``bulk.provision``, run in its own process) against a simulated fleet (one
zeroinit-agent process serving every node, their directories in ``--state-dir``, /dev/shm by default, as in
bench_provision) on a real nats-server, the nodes moved to a second broker:

- floor: the built-in signer, no helper (what the path costs without a helper program);
- persistent: ``tests/integration/helpers/policy_helper.py --persistent`` (Python + cryptography: loads the CA,
  checks and signs each CSR), ``helper_mode: persistent``, a pool of two processes per CPU;
- one-shot: the same helper without ``--persistent``, a Python process per node (Choria's contract).

Then the helper alone, without fleet or NATS: the same decisions (real CSRs, real signing) straight through the
decider, one-shot and persistent, so the helper's own rate shows apart from the fleet's share of the machine.

Printed per run: nodes/s beside the target (>= 300 nodes/s for a Python + cryptography helper) and the floor,
the decide step's p50/p99, CPU ms per node of the provisioner and of its helper processes, and the load average
(1 min) before and after: the machine may be shared, and CPU per node is steadier than wall time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import pathlib
import resource
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ansible_collections.zeroinit.bootstrap.plugins.module_utils.pki.ca import CertificateAuthority
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.provisioning.bulk import provision
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.provisioning.deciders import (
    HelperDecider,
    helper_concurrency,
)
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.provisioning.settings import ProvisionSettings
from bench.bench_provision import add_state_dir_option
from tests.support.broker import EmbeddedBroker
from tests.support.fleet import AgentFleet

TOKEN = "bench-token"
TARGET_NODES_PER_S = 300
POLICY_HELPER = ROOT / "tests" / "integration" / "helpers" / "policy_helper.py"


def cpu_seconds(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def child_run(settings_json: str) -> None:
    """Runs in its own process: its CPU is the provisioner's, its waited-for children's CPU the helpers'."""
    settings = ProvisionSettings(**json.loads(settings_json))
    self0, children0 = cpu_seconds(resource.RUSAGE_SELF), cpu_seconds(resource.RUSAGE_CHILDREN)
    out = provision(settings)
    out["cpu_seconds"] = cpu_seconds(resource.RUSAGE_SELF) - self0
    out["helper_cpu_seconds"] = cpu_seconds(resource.RUSAGE_CHILDREN) - children0
    print(json.dumps(out))


def bench_run(name: str, count: int, state_root: str, decider: dict, workers: int, connections: int) -> dict:
    """One bulk run over a fresh fleet of ``count`` nodes in ``state_root``; ``decider``: the helper or signer
    settings."""
    state = os.path.join(state_root, f"fleet-{name}")
    load_before = os.getloadavg()[0]
    with EmbeddedBroker() as broker, EmbeddedBroker() as members:
        configuration = {
            "plugin.choria.middleware_hosts": members.url,
            "collectives": "bench",
            "main_collective": "bench",
        }
        with AgentFleet(broker.url, count, state, token=TOKEN, connections=connections):
            settings = dict(
                brokers=[broker.url],
                token=TOKEN,
                workers=workers,
                expect=count,
                discovery_timeout=30.0,
                timeout=30.0,
                configuration=configuration,
                **decider,
            )
            proc = subprocess.run(
                [sys.executable, __file__, "--child", json.dumps(settings)],
                stdout=subprocess.PIPE,
                text=True,
                check=True,
            )
    shutil.rmtree(state, ignore_errors=True)
    out = json.loads(proc.stdout)
    timings = out["timings"]
    decide = timings.get("decide", {})
    return {
        "run": name,
        "nodes": count,
        "provisioned": out["counts"]["provisioned"],
        "failed": out["counts"]["failed"],
        "seconds": timings["total_seconds"],
        "nodes_per_s": timings["nodes_per_second"],
        "decide_p50_ms": decide.get("p50_ms", 0.0),
        "decide_p99_ms": decide.get("p99_ms", 0.0),
        "prov_cpu_ms_per_node": round(1000 * out["cpu_seconds"] / max(1, count), 2),
        "helper_cpu_ms_per_node": round(1000 * out["helper_cpu_seconds"] / max(1, count), 2),
        "load_before": round(load_before, 1),
        "load_after": round(os.getloadavg()[0], 1),
        "first_failure": next(iter(out["failed"].values()), "") if out["failed"] else "",
    }


def make_csrs(count: int) -> list[tuple[str, dict]]:
    """(identity, gencsr reply) for ``count`` nodes, as the fleet would answer (EC P-256 keys)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())  # one key: the CSRs differ by name, signing cost is the same
    public = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    out = []
    for index in range(count):
        identity = f"node{index}.bench.example.net"
        csr = (
            x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, identity)]))
            .sign(key, hashes.SHA256())
        )
        pem = csr.public_bytes(serialization.Encoding.PEM).decode()
        out.append((identity, {"csr": pem, "public_key": public.decode(), "ssldir": "/etc/choria/ssl"}))
    return out


def bench_decider_alone(mode: str, helper: list, count: int, concurrency: int) -> dict:
    """``count`` decisions straight through the decider (no fleet, no NATS), ``concurrency`` at once."""
    csrs = make_csrs(count)
    size = helper_concurrency(mode, 500, concurrency)
    decider = HelperDecider(helper, {"loglevel": "info"}, 10.0, size, mode)

    async def run() -> tuple[int, float]:
        failed = 0

        async def one(identity: str, csr: dict) -> None:
            nonlocal failed
            async with decider.turn():
                try:
                    await decider.decide(identity, {}, csr)
                except Exception:  # pylint: disable=broad-except
                    failed += 1

        started = time.monotonic()
        try:
            await asyncio.gather(*(one(identity, csr) for identity, csr in csrs))
        finally:
            await decider.finish()
        return failed, time.monotonic() - started

    load_before = os.getloadavg()[0]
    children0 = cpu_seconds(resource.RUSAGE_CHILDREN)
    failed, seconds = asyncio.run(run())
    return {
        "run": f"{mode} helper alone",
        "decisions": count,
        "processes": size,
        "failed": failed,
        "seconds": round(seconds, 2),
        "decisions_per_s": round(count / seconds, 1),
        "helper_cpu_ms_per_node": round(1000 * (cpu_seconds(resource.RUSAGE_CHILDREN) - children0) / count, 2),
        "load_before": round(load_before, 1),
        "load_after": round(os.getloadavg()[0], 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="a small run (<= 60 s)")
    parser.add_argument("--persistent-nodes", type=int, default=None, help="nodes through persistent helpers")
    parser.add_argument("--oneshot-nodes", type=int, default=None, help="nodes through one-shot helpers (0: skip)")
    parser.add_argument("--floor-nodes", type=int, default=None, help="nodes for the built-in signer floor")
    parser.add_argument("--workers", type=int, default=500, help="nodes in flight")
    parser.add_argument("--connections", type=int, default=4, help="NATS connections of the fleet process")
    parser.add_argument("--helper-concurrency", type=int, default=0, help="helper processes (0: the default)")
    add_state_dir_option(parser)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child_run(args.child)
        return 0
    persistent_nodes = args.persistent_nodes if args.persistent_nodes is not None else (300 if args.quick else 1000)
    oneshot_nodes = args.oneshot_nodes if args.oneshot_nodes is not None else (40 if args.quick else 200)
    floor_nodes = args.floor_nodes if args.floor_nodes is not None else persistent_nodes
    print(
        f"bench_helpers: {os.uname().machine}, {os.cpu_count() or 0} CPU cores, Python {sys.version.split()[0]}, "
        f"load average {os.getloadavg()[0]:.1f}"
    )
    workdir = tempfile.mkdtemp(prefix="zeroinit-bench-helpers-")
    state_root = tempfile.mkdtemp(prefix="zeroinit-bench-helpers-fleet-", dir=args.state_dir)
    try:
        ca_cert, ca_key = os.path.join(workdir, "ca.pem"), os.path.join(workdir, "ca.key")
        CertificateAuthority.load_or_create(ca_cert, ca_key)
        base = os.path.join(workdir, "base.json")
        with open(base, "w") as handle:
            json.dump({"loglevel": "info"}, handle)
        helper = [sys.executable, str(POLICY_HELPER), "--ca-cert", ca_cert, "--ca-key", ca_key, "--config", base]
        concurrency = {"helper_concurrency": args.helper_concurrency} if args.helper_concurrency else {}
        runs = [
            ("floor", floor_nodes, {"signer": {"ca_cert": ca_cert, "ca_key": ca_key}}),
            (
                "persistent",
                persistent_nodes,
                dict(helper=[*helper, "--persistent"], helper_mode="persistent", **concurrency),
            ),
            ("oneshot", oneshot_nodes, dict(helper=helper, **concurrency)),
        ]
        rows = {}
        for name, count, decider in runs:
            if count <= 0:
                continue
            rows[name] = row = bench_run(name, count, state_root, decider, args.workers, args.connections)
            print(json.dumps(row))
        floor = rows.get("floor", {}).get("nodes_per_s") or 0.0
        print(f"floor (built-in signer, no helper), {floor_nodes} nodes: {floor:.0f} nodes/s")
        for name in ("persistent", "oneshot"):
            if name not in rows:
                continue
            row = rows[name]
            met = "met" if row["nodes_per_s"] >= TARGET_NODES_PER_S else "NOT met"
            ratio = f"{row['nodes_per_s'] / floor:.2f} of the floor" if floor else "no floor"
            print(
                f"{name} Python + cryptography helper, {row['nodes']} nodes: {row['nodes_per_s']:.0f} nodes/s "
                f"(target >= {TARGET_NODES_PER_S}: {met}; floor {floor:.0f}, {ratio}), decide p50 "
                f"{row['decide_p50_ms']:.0f} ms p99 {row['decide_p99_ms']:.0f} ms, CPU ms/node provisioner "
                f"{row['prov_cpu_ms_per_node']:.2f} helpers {row['helper_cpu_ms_per_node']:.2f}, failed {row['failed']}, "
                f"load {row['load_before']:.1f} -> {row['load_after']:.1f}"
            )
        if "persistent" in rows and "oneshot" in rows and rows["oneshot"]["nodes_per_s"]:
            print(f"persistent / one-shot: {rows['persistent']['nodes_per_s'] / rows['oneshot']['nodes_per_s']:.1f}x")
        for mode, count, argv in (
            ("persistent", persistent_nodes, [*helper, "--persistent"]),
            ("oneshot", oneshot_nodes, helper),
        ):
            if count <= 0:
                continue
            row = bench_decider_alone(mode, argv, count, args.helper_concurrency)
            print(json.dumps(row))
            met = "met" if row["decisions_per_s"] >= TARGET_NODES_PER_S else "NOT met"
            print(
                f"{mode} helper alone (no fleet, no NATS), {count} decisions, {row['processes']} at once: "
                f"{row['decisions_per_s']:.0f} decisions/s (target >= {TARGET_NODES_PER_S}: {met}), helper CPU "
                f"{row['helper_cpu_ms_per_node']:.2f} ms/node, failed {row['failed']}, "
                f"load {row['load_before']:.1f} -> {row['load_after']:.1f}"
            )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        shutil.rmtree(state_root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
