"""Benchmark: the bulk provisioner (choria_provision action=provision) against a simulated fleet.

    .venv/bin/python bench/bench_provision.py            # 1,000 and 10,000 nodes, helper path, floor
    .venv/bin/python bench/bench_provision.py --quick    # 200 nodes, small helper run
    .venv/bin/python bench/bench_provision.py --sizes 0 --helper-nodes 0 --per-host 0   # the trust comparison only

For each fleet size: nodes/s, p50/p99 per node, peak RSS and CPU seconds of the provisioner (run in its own
process) and of the fleet process, provisioner CPU per node, and the floor measured in the same run: the raw
NATS request/reply rate on this machine with a trivial responder, divided by the 4 round trips per node.
A real nats-server on loopback; the fleet is one zeroinit-agent process serving every simulated node.

The trust comparison (``--trust-nodes``, default 1,000) runs the signer path on fleets of that size one after the
other in the same run: signatures off (the token alone), every request signed with an EC P-256 provisioner key
and verified by nodes pinning the provisioning CA, the same with an RSA-2048 key (what Choria signs with), and EC
signatures plus each node's provisioning JWT (Ed25519) verified first; ``--trust-rounds`` (default 2) repeats
that in alternating order and reports medians. The differences in provisioner and fleet CPU per node, and in
nodes/s, are the cost of trust on the real bulk path.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import pathlib
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ansible_collections.zeroinit.bootstrap.plugins.module_utils.choria.transport import connect
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.provisioning.bulk import provision
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.provisioning.settings import ProvisionSettings
from tests.support.broker import EmbeddedBroker
from tests.support.fleet import AgentFleet

TOKEN = "bench-token"
RESPONDER = r"""
import asyncio, sys
import nats
async def main():
    nc = await nats.connect(sys.argv[1])
    async def echo(msg):
        await nc.publish(msg.reply, b'{"ok":true}')
    await nc.subscribe("bench.echo", cb=echo)
    await nc.flush()
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await nc.drain()
asyncio.run(main())
"""


def proc_stats(pid: int) -> tuple[float, int]:
    """(CPU seconds, peak RSS bytes) of a live process from /proc."""
    with open(f"/proc/{pid}/stat") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    cpu = (int(fields[11]) + int(fields[12])) / ticks
    hwm = 0
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith("VmHWM:"):
                hwm = int(line.split()[1]) * 1024
    return cpu, hwm


async def _floor(url: str, count: int, in_flight: int) -> float:
    """Requests per second through nats-server with a trivial responder in another process."""
    responder = subprocess.Popen(
        [sys.executable, "-c", RESPONDER, url], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert responder.stdout.readline().strip() == "ready"
        nc = await connect([url], name="bench-floor")
        payload = b"x" * 900  # about the size of a Choria request
        slots = asyncio.Semaphore(in_flight)

        async def one():
            async with slots:
                await nc.request("bench.echo", payload, timeout=30)

        await asyncio.gather(*(one() for _warm in range(min(1000, count))))  # warm up
        started = time.monotonic()
        await asyncio.gather(*(one() for _req in range(count)))
        rate = count / (time.monotonic() - started)
        await nc.drain()
        return rate
    finally:
        responder.stdin.close()
        try:
            responder.wait(timeout=10)
        except subprocess.TimeoutExpired:
            responder.kill()
            responder.wait()


def child_run(args) -> None:
    """Runs in its own process so its CPU and peak RSS are the provisioner's alone."""
    settings = ProvisionSettings(**json.loads(args.child))
    before = resource.getrusage(resource.RUSAGE_SELF)
    out = provision(settings)
    after = resource.getrusage(resource.RUSAGE_SELF)
    out["cpu_seconds"] = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    out["peak_rss"] = after.ru_maxrss * 1024
    print(json.dumps(out))


def run_provisioner(settings: dict) -> dict:
    proc = subprocess.run(
        [sys.executable, __file__, "--child", json.dumps(settings)], stdout=subprocess.PIPE, text=True, check=True
    )
    return json.loads(proc.stdout)


def make_ca(workdir: str) -> tuple[str, str]:
    from ansible_collections.zeroinit.bootstrap.plugins.module_utils.pki.ca import CertificateAuthority

    cert, key = os.path.join(workdir, "ca.pem"), os.path.join(workdir, "ca.key")
    CertificateAuthority.load_or_create(cert, key)
    return cert, key


def write_helper(workdir: str, ca_cert: str, ca_key: str) -> list[str]:
    base = os.path.join(workdir, "base.json")
    with open(base, "w") as handle:
        json.dump({"plugin.choria.middleware_hosts": "nats://127.0.0.1:1", "collectives": "bench"}, handle)
    return [
        sys.executable,
        str(ROOT / "tests" / "integration" / "helpers" / "policy_helper.py"),
        "--ca-cert",
        ca_cert,
        "--ca-key",
        ca_key,
        "--config",
        base,
    ]


TRUST_MODES = ("off", "signed-ec", "signed-rsa", "signed-ec+jwt")


def trust_material(workdir: str, mode: str, broker_url: str, identities: list) -> tuple[dict, list]:
    """(provisioner settings, fleet arguments) of a trust mode: a provisioning CA the fleet pins, a provisioner
    certificate and key, and with ``+jwt`` one provisioning JWT per node and the issuer's public key."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    from ansible_collections.zeroinit.bootstrap.plugins.module_utils.choria.jwt import issue_provisioning_jwt
    from tests.support.certificates import Authority, rsa_key

    if mode == "off":
        return {}, []
    directory = pathlib.Path(workdir) / f"trust-{mode}"
    shutil.rmtree(directory, ignore_errors=True)  # a later round makes its own
    provisioning = Authority("bench provisioning CA")
    (directory / "ca").mkdir(parents=True)
    (directory / "ca" / "provisioning-ca.pem").write_text(provisioning.pem)
    key = rsa_key(2048) if mode == "signed-rsa" else None
    files = provisioning.write_leaf(directory / "provisioner", "prov.bench.example.net", key=key)
    settings = {"signing_cert": files["cert"], "signing_key": files["key"]}
    fleet_args = ["--provisioning-ca", str(directory / "ca" / "provisioning-ca.pem")]
    if mode.endswith("+jwt"):
        issuer = ed25519.Ed25519PrivateKey.generate()
        (directory / "issuer.pub").write_bytes(
            issuer.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
        (directory / "jwt").mkdir()
        for identity in identities:
            token = issue_provisioning_jwt(issuer, TOKEN, [broker_url], [identity])
            (directory / "jwt" / f"{identity}.jwt").write_text(token)
        settings["jwt_verify_key"] = str(directory / "issuer.pub")
        fleet_args += ["--provisioning-jwt", str(directory / "jwt")]
    return settings, fleet_args


def bench_size(
    count: int, workers: int, connections: int, workdir: str, helper: list | None = None, trust: str = "off"
) -> dict:
    ca_cert, ca_key = make_ca(workdir)
    state = os.path.join(workdir, f"fleet-{count}-{trust}")
    with EmbeddedBroker() as broker, EmbeddedBroker() as members:
        identities = AgentFleet(broker.url, count, state).identities
        trust_settings, fleet_args = trust_material(workdir, trust, broker.url, identities)
        # Nodes are pointed at a second broker: a restart really moves them off the provisioning network.
        configuration = {
            "plugin.choria.middleware_hosts": members.url,
            "collectives": "bench",
            "main_collective": "bench",
        }
        with AgentFleet(broker.url, count, state, token=TOKEN, connections=connections, extra_args=fleet_args) as fleet:
            fleet_cpu0 = proc_stats(fleet.process.pid)[0]
            settings = dict(
                brokers=[broker.url],
                token=TOKEN,
                workers=workers,
                expect=count,
                discovery_timeout=30.0,
                timeout=30.0,
                configuration=configuration,
                **trust_settings,
            )
            if helper:
                settings["helper"] = helper
            else:
                settings["signer"] = {"ca_cert": ca_cert, "ca_key": ca_key}
            out = run_provisioner(settings)
            fleet_cpu1, fleet_rss = proc_stats(fleet.process.pid)
    shutil.rmtree(state, ignore_errors=True)
    t = out["timings"]
    return {
        "nodes": count,
        "provisioned": out["counts"]["provisioned"],
        "deferred": out["counts"]["deferred"],
        "failed": out["counts"]["failed"],
        "decided_per_s": round((out["counts"]["provisioned"] + out["counts"]["deferred"]) / t["total_seconds"], 1),
        "seconds": t["total_seconds"],
        "discovery_s": t["discovery_seconds"],
        "nodes_per_s": t["nodes_per_second"],
        "p50_ms": t["node"]["p50_ms"],
        "p99_ms": t["node"]["p99_ms"],
        "prov_cpu_s": round(out["cpu_seconds"], 2),
        "prov_cpu_ms_per_node": round(1000 * out["cpu_seconds"] / max(1, count), 3),
        "prov_peak_rss_mb": round(out["peak_rss"] / 2**20, 1),
        "fleet_cpu_s": round(fleet_cpu1 - fleet_cpu0, 2),
        "fleet_cpu_ms_per_node": round(1000 * (fleet_cpu1 - fleet_cpu0) / max(1, count), 3),
        "fleet_peak_rss_mb": round(fleet_rss / 2**20, 1),
        "trust": trust,
        "steps": {k: v for k, v in t.items() if isinstance(v, dict) and k != "node"},
    }


def bench_per_host(count: int, forks: int, workdir: str) -> dict:
    """playbooks/provision.yaml over ``count`` hosts found by the inventory plugin (csr_signing + config_push)."""
    from tests.support.ansible_run import run_playbook

    ca_cert, ca_key = make_ca(workdir)
    state = os.path.join(workdir, f"per-host-{count}")
    with EmbeddedBroker() as broker, EmbeddedBroker() as members:
        inventory = os.path.join(workdir, "bench.provisioning.yml")
        with open(inventory, "w") as handle:
            json.dump(
                {
                    "plugin": "zeroinit.bootstrap.provisioning",
                    "brokers": [broker.url],
                    "discovery_timeout": 10,
                    "expect": count,
                },
                handle,
            )
        extra = {
            "zeroinit_provision_brokers": [broker.url],
            "zeroinit_provision_token": TOKEN,
            "zeroinit_provision_ca_cert": ca_cert,
            "zeroinit_provision_ca_key": ca_key,
            "zeroinit_provision_configuration": {"plugin.choria.middleware_hosts": members.url, "collectives": "bench"},
        }
        with AgentFleet(broker.url, count, state, token=TOKEN, prefix="host"):
            started = time.monotonic()
            result = run_playbook(
                ROOT / "playbooks" / "provision.yaml",
                inventory=inventory,
                extra_vars=extra,
                args=["--forks", str(forks)],
                timeout=1800,
            )
            seconds = time.monotonic() - started
    shutil.rmtree(state, ignore_errors=True)
    ok = sum(1 for host, stats in result.stats.items() if not stats.get("failures") and not stats.get("unreachable"))
    return {
        "hosts": count,
        "forks": forks,
        "rc": result.rc,
        "hosts_ok": ok,
        "seconds": round(seconds, 1),
        "hosts_per_s": round(count / seconds, 2),
    }


def bench_trust(count: int, workers: int, connections: int, workdir: str, rounds: int = 2) -> None:
    """The signer path with each trust mode, same fleet size, same run; differences against signatures off.

    Rounds alternate the order of the modes (off first, then off last...), so load that rises or falls during
    the run weighs on every mode alike; each figure is the median over the rounds.
    """
    runs: dict = {mode: [] for mode in TRUST_MODES}
    for round_index in range(rounds):
        order = TRUST_MODES if round_index % 2 == 0 else tuple(reversed(TRUST_MODES))
        for mode in order:
            row = bench_size(count, workers, connections, workdir, trust=mode)
            row["round"] = round_index + 1
            row["load_average"] = round(os.getloadavg()[0], 1)
            runs[mode].append(row)
            print(json.dumps(row))
    figures = ("nodes_per_s", "p50_ms", "p99_ms", "prov_cpu_ms_per_node", "fleet_cpu_ms_per_node")
    rows = {
        mode: {name: statistics.median(row[name] for row in rows) for name in figures} for mode, rows in runs.items()
    }
    off = rows["off"]
    print(f"trust comparison, {count} nodes, median of {rounds} round(s) in alternating order:")
    for mode, row in rows.items():
        prov_cpu, fleet_cpu = row["prov_cpu_ms_per_node"], row["fleet_cpu_ms_per_node"]
        failed = sum(run["failed"] for run in runs[mode])
        print(
            f"trust {mode:<14} {row['nodes_per_s']:6.0f} nodes/s, p50 {row['p50_ms']:.0f} ms "
            f"p99 {row['p99_ms']:.0f} ms, provisioner {prov_cpu:.2f} CPU ms/node "
            f"({prov_cpu - off['prov_cpu_ms_per_node']:+.2f}), fleet {fleet_cpu:.2f} CPU ms/node "
            f"({fleet_cpu - off['fleet_cpu_ms_per_node']:+.2f}), "
            f"throughput {row['nodes_per_s'] / off['nodes_per_s']:.2f}x of off, failed {failed}"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="a small run (200 nodes, 50 through the helper)")
    parser.add_argument("--sizes", default="", help="comma-separated fleet sizes (default 1000,10000)")
    parser.add_argument("--workers", type=int, default=1000, help="nodes in flight")
    parser.add_argument("--connections", type=int, default=4, help="NATS connections of the fleet process")
    parser.add_argument("--helper-nodes", type=int, default=None, help="nodes for the helper run (0: skip)")
    parser.add_argument("--per-host", type=int, default=None, help="hosts for the provision.yaml run (0: skip)")
    parser.add_argument("--forks", type=int, default=25, help="ansible forks for the provision.yaml run")
    parser.add_argument(
        "--trust-nodes", type=int, default=None, help="nodes for the signatures off/on comparison (0: skip)"
    )
    parser.add_argument(
        "--trust-rounds", type=int, default=2, help="rounds of the trust comparison, in alternating order"
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child_run(args)
        return 0
    sizes = [int(s) for s in args.sizes.split(",") if s] if args.sizes else ([200] if args.quick else [1000, 10000])
    sizes = [s for s in sizes if s > 0]
    helper_nodes = args.helper_nodes if args.helper_nodes is not None else (50 if args.quick else 300)
    per_host = args.per_host if args.per_host is not None else (10 if args.quick else 200)
    trust_nodes = args.trust_nodes if args.trust_nodes is not None else (200 if args.quick else 1000)
    print(
        f"bench_provision: machine {os.uname().machine}, {os.cpu_count() or 0} CPU cores, Python {sys.version.split()[0]}"
    )
    workdir = tempfile.mkdtemp(prefix="zeroinit-bench-prov-")
    try:
        with EmbeddedBroker() as broker:
            floor_rps = asyncio.run(_floor(broker.url, 5000 if args.quick else 40000, 1000))
        floor_nodes = floor_rps / 4
        print(
            f"floor: raw NATS request/reply {floor_rps:.0f} req/s (trivial responder, 1000 in flight) -> {floor_nodes:.0f} nodes/s "
            "at 4 round trips per node"
        )
        for count in sizes:
            row = bench_size(count, args.workers, args.connections, workdir)
            row["ratio_to_floor"] = round(row["nodes_per_s"] / floor_nodes, 3)
            print(json.dumps(row))
            print(
                f"signer path, {count} nodes: {row['seconds']:.1f} s total ({row['discovery_s']:.2f} s "
                f"discovery), {row['nodes_per_s']:.0f} nodes/s, per node p50 {row['p50_ms']:.0f} ms "
                f"p99 {row['p99_ms']:.0f} ms, provisioner {row['prov_cpu_s']:.2f} CPU s ({row['prov_cpu_ms_per_node']:.3f} "
                f"ms/node) peak RSS {row['prov_peak_rss_mb']:.0f} MB, fleet {row['fleet_cpu_s']:.1f} CPU "
                "s peak RSS "
                f"{row['fleet_peak_rss_mb']:.0f} MB, {row['ratio_to_floor']:.2f} of the floor, failed {row['failed']}"
            )
        if trust_nodes:
            bench_trust(trust_nodes, args.workers, args.connections, workdir, max(1, args.trust_rounds))
        if helper_nodes:
            ca_cert, ca_key = make_ca(workdir)
            row = bench_size(
                helper_nodes, args.workers, args.connections, workdir, helper=write_helper(workdir, ca_cert, ca_key)
            )
            print(json.dumps(row))
            print(
                f"helper path (one policy_helper.py subprocess per node: Python + cryptography, signs), {helper_nodes} nodes: "
                f"{row['seconds']:.1f} s, {row['nodes_per_s']:.0f} nodes/s (target >= 50), per node p50 "
                f"{row['p50_ms']:.0f} ms p99 {row['p99_ms']:.0f} ms, helper run p50 {row['steps']['decide']['p50_ms']:.0f} "
                "ms, "
                f"failed {row['failed']}"
            )
            # The contract's own cost: a shell helper that answers at once (defer), so nodes stay in provisioning.
            trivial = os.path.join(workdir, "defer_helper.sh")
            with open(trivial, "w") as handle:
                handle.write('#!/bin/sh\ncat >/dev/null\necho \'{"defer": true, "msg": "bench"}\'\n')
            os.chmod(trivial, 0o755)
            row = bench_size(helper_nodes, args.workers, args.connections, workdir, helper=[trivial])
            print(json.dumps(row))
            print(
                f"helper contract overhead (a /bin/sh helper answering defer at once), {helper_nodes} nodes: {row['seconds']:.1f} s, "
                f"{row['decided_per_s']:.0f} decisions/s, helper run p50 {row['steps']['decide']['p50_ms']:.0f} "
                f"ms p99 {row['steps']['decide']['p99_ms']:.0f} ms"
            )
        if per_host:
            row = bench_per_host(per_host, args.forks, workdir)
            print(json.dumps(row))
            print(
                f"per-host path (playbooks/provision.yaml, inventory plugin, {row['forks']} forks), {per_host} hosts: {row['seconds']:.1f} s "
                f"(target <= 120 s for 200), {row['hosts_ok']} ok, rc {row['rc']}"
            )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
