"""Benchmark: the bulk provisioner (choria_provision action=provision) against a simulated fleet, and its cost as
the fleet grows.

    .venv/bin/python bench/bench_provision.py            # 1,000, 10,000 and 50,000 nodes, then the trust comparison
    .venv/bin/python bench/bench_provision.py --quick    # 200, 500 and 1,000 nodes, no trust comparison (<= 60 s)
    .venv/bin/python bench/bench_provision.py --sizes 0 --trust-nodes 1000   # the trust comparison only

For each fleet size: nodes/s and its ratio to the floor measured just before it in the same run (the raw NATS
request/reply rate on this machine with a trivial responder, divided by the 4 round trips per node; target >= 0.25
at 10,000 nodes), p50/p99 per node, the provisioner's CPU per node (its own process plus its signing workers) and
peak RSS, RSS per node and the RSS it grew by per node, the fleet's CPU and RSS, nats-server's CPU, and the load
average before and after; then the CPU per node of all of them together beside what the target allows on this
machine's cores (0.25 of the floor leaves cores / (0.25 x floor) CPU seconds per node, with every core busy) and
the CPU the floor itself took per node (its three processes); then the work alone: the same node actions, protocol
and signer decision for ``--work-nodes`` (2,000) nodes in one process without NATS, and it plus the floor's own CPU
beside that allowance, a lower bound of the bulk path's CPU per node on one machine. Then the two growth checks
against their targets: memory grown per node at the largest size no more than at 10,000 (10 % noise allowed: linear
or better), and nodes/s at the largest size at least 0.8 of 10,000's.

A real nats-server on loopback; the fleet is zeroinit-agent processes of at most ``--fleet-nodes`` (12,500) simulated
nodes each, so 50,000 nodes are 4 processes (4 NATS connections each). Their node directories go to ``--state-dir``
(default /dev/shm when there is one): ten thousand simulated nodes sharing one disk spend most of the fleet's CPU
creating files in the kernel (about 0.4 ms each on ext4 under load, 8 files per node), which real nodes each do on
their own disk.

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

from ansible_collections.zeroinit.bootstrap.plugins.module_utils.choria.protocol import (
    Reply,
    Request,
    decode_reply,
    decode_request,
    encode_reply,
    encode_request,
    rpc_request_body,
)
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.choria.transport import connect
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.node.dispatch import handle
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.node.state import NodeState
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.node.trust import AgentTrust
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.provisioning import bulk
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.provisioning.bulk import provision
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.provisioning.deciders import SignerDecider
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.provisioning.flow import FlowOptions
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.provisioning.helper import check_configuration
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


async def _floor(url: str, count: int, in_flight: int, server_pids: tuple = ()) -> tuple[float, float]:
    """(requests per second, CPU seconds) through nats-server with a trivial responder in another process.

    The CPU seconds are those of the timed requests (not the warm-up): this process's, the responder's and those of
    the nats-server processes ``server_pids``.
    """
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

        def cpu() -> float:
            return time.process_time() + sum(proc_stats(pid)[0] for pid in (responder.pid, *server_pids))

        await asyncio.gather(*(one() for _warm in range(min(1000, count))))  # warm up
        cpu_before, started = cpu(), time.monotonic()
        await asyncio.gather(*(one() for _req in range(count)))
        rate, spent = count / (time.monotonic() - started), cpu() - cpu_before
        await nc.drain()
        return rate, spent
    finally:
        responder.stdin.close()
        try:
            responder.wait(timeout=10)
        except subprocess.TimeoutExpired:
            responder.kill()
            responder.wait()


def current_rss() -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def child_run(args) -> None:
    """Runs in its own process so its CPU and peak RSS are the provisioner's alone (with its signing workers)."""
    settings = ProvisionSettings(**json.loads(args.child))
    if args.signing_processes is not None:  # what the bulk run would choose, overridden for a comparison
        bulk.default_signing_processes = lambda: args.signing_processes
    start_rss = current_rss()
    before = resource.getrusage(resource.RUSAGE_SELF)
    out = provision(settings)
    after = resource.getrusage(resource.RUSAGE_SELF)
    workers = resource.getrusage(resource.RUSAGE_CHILDREN)  # the signing workers, reaped when the run closed them
    out["cpu_seconds"] = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    out["worker_cpu_seconds"] = workers.ru_utime + workers.ru_stime
    out["peak_rss"] = after.ru_maxrss * 1024
    out["start_rss"] = start_rss
    out["worker_peak_rss"] = workers.ru_maxrss * 1024
    for name in ("provisioned", "deferred", "failed", "shutdown"):
        out[name] = len(out[name])  # the counts are what the benchmark reads; 50,000 names are not worth a pipe
    print(json.dumps(out))


def run_provisioner(settings: dict, signing_processes: int | None = None) -> dict:
    extra = [] if signing_processes is None else ["--signing-processes", str(signing_processes)]
    proc = subprocess.run(
        [sys.executable, __file__, "--child", json.dumps(settings), *extra],
        stdout=subprocess.PIPE,
        text=True,
        check=True,
    )
    return json.loads(proc.stdout)


def make_ca(workdir: str) -> tuple[str, str]:
    from ansible_collections.zeroinit.bootstrap.plugins.module_utils.pki.ca import CertificateAuthority

    cert, key = os.path.join(workdir, "ca.pem"), os.path.join(workdir, "ca.key")
    CertificateAuthority.load_or_create(cert, key)
    return cert, key


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


def add_state_dir_option(parser: argparse.ArgumentParser) -> None:
    """``--state-dir``: where a simulated fleet's node directories go; tmpfs by default, see the module docstring."""
    parser.add_argument(
        "--state-dir",
        default="/dev/shm" if os.path.isdir("/dev/shm") else None,
        help="where the simulated nodes' directories go (default /dev/shm when there is one)",
    )


def fleet_parts(count: int, per_process: int) -> list[tuple[str, int]]:
    """(identity prefix, nodes) of each fleet process: ``count`` nodes split evenly, at most ``per_process`` each."""
    processes = max(1, -(-count // max(1, per_process)))
    sizes = [count // processes + (1 if index < count % processes else 0) for index in range(processes)]
    if processes == 1:
        return [("node", count)]
    return [(f"p{index}node", size) for index, size in enumerate(sizes)]


def bench_size(
    count: int,
    workers: int,
    connections: int,
    workdir: str,
    state_root: str,
    per_process: int,
    trust: str = "off",
    signing_processes: int | None = None,
) -> dict:
    ca_cert, ca_key = make_ca(workdir)
    state = tempfile.mkdtemp(prefix=f"fleet-{count}-{trust}-", dir=state_root)
    load_before = os.getloadavg()[0]
    fleets: list[AgentFleet] = []
    with EmbeddedBroker() as broker, EmbeddedBroker() as members:
        try:
            parts = fleet_parts(count, per_process)
            identities = [
                i for prefix, size in parts for i in AgentFleet(broker.url, size, state, prefix=prefix).identities
            ]
            trust_settings, fleet_args = trust_material(workdir, trust, broker.url, identities)
            # Nodes are pointed at a second broker: a restart really moves them off the provisioning network.
            configuration = {
                "plugin.choria.middleware_hosts": members.url,
                "collectives": "bench",
                "main_collective": "bench",
            }
            for prefix, size in parts:
                fleets.append(
                    AgentFleet(
                        broker.url,
                        size,
                        os.path.join(state, prefix),
                        token=TOKEN,
                        connections=connections,
                        extra_args=fleet_args,
                        prefix=prefix,
                    ).launch()
                )
            for fleet in fleets:  # started together, waited for one after the other
                fleet.wait_ready(max(60.0, fleet.count / 100.0))
            fleet_cpu0 = sum(proc_stats(fleet.process.pid)[0] for fleet in fleets)
            nats_cpu0 = sum(proc_stats(server.process.pid)[0] for server in (broker, members))
            settings = dict(
                brokers=[broker.url],
                token=TOKEN,
                workers=workers,
                expect=count,
                discovery_timeout=60.0,
                timeout=30.0,
                configuration=configuration,
                signer={"ca_cert": ca_cert, "ca_key": ca_key},
                **trust_settings,
            )
            out = run_provisioner(settings, signing_processes)
            fleet_stats = [proc_stats(fleet.process.pid) for fleet in fleets]
            nats_cpu = sum(proc_stats(server.process.pid)[0] for server in (broker, members)) - nats_cpu0
        finally:
            for fleet in fleets:
                fleet.stop()
    shutil.rmtree(state, ignore_errors=True)
    fleet_cpu = sum(cpu for cpu, _rss in fleet_stats) - fleet_cpu0
    t = out["timings"]
    prov_cpu = out["cpu_seconds"] + out["worker_cpu_seconds"]
    return {
        "nodes": count,
        "provisioned": out["counts"]["provisioned"],
        "deferred": out["counts"]["deferred"],
        "failed": out["counts"]["failed"],
        "seconds": t["total_seconds"],
        "discovery_s": t["discovery_seconds"],
        "nodes_per_s": t["nodes_per_second"],
        "p50_ms": t["node"]["p50_ms"],
        "p99_ms": t["node"]["p99_ms"],
        "prov_cpu_s": round(prov_cpu, 2),
        "prov_cpu_ms_per_node": round(1000 * prov_cpu / max(1, count), 3),
        "prov_signing_workers_cpu_s": round(out["worker_cpu_seconds"], 2),
        "prov_peak_rss_mb": round(out["peak_rss"] / 2**20, 1),
        "prov_start_rss_mb": round(out["start_rss"] / 2**20, 1),
        "prov_rss_kb_per_node": round(out["peak_rss"] / 1024 / max(1, count), 2),
        "prov_grown_kb_per_node": round((out["peak_rss"] - out["start_rss"]) / 1024 / max(1, count), 2),
        "prov_signing_worker_peak_rss_mb": round(out["worker_peak_rss"] / 2**20, 1),
        "fleet_processes": len(fleet_stats),
        "fleet_cpu_s": round(fleet_cpu, 2),
        "fleet_cpu_ms_per_node": round(1000 * fleet_cpu / max(1, count), 3),
        "fleet_peak_rss_mb": round(sum(rss for _cpu, rss in fleet_stats) / 2**20, 1),
        "nats_cpu_ms_per_node": round(1000 * nats_cpu / max(1, count), 3),
        "total_cpu_ms_per_node": round(1000 * (prov_cpu + fleet_cpu + nats_cpu) / max(1, count), 3),
        "trust": trust,
        "load_average": [round(load_before, 1), round(os.getloadavg()[0], 1)],
        "steps": {k: v for k, v in t.items() if isinstance(v, dict) and k != "node"},
    }


def bench_trust(
    count: int, workers: int, connections: int, workdir: str, state_root: str, per_process: int, rounds: int = 2
) -> None:
    """The signer path with each trust mode, same fleet size, same run; differences against signatures off.

    Rounds alternate the order of the modes (off first, then off last...), so load that rises or falls during
    the run weighs on every mode alike; each figure is the median over the rounds.
    """
    runs: dict = {mode: [] for mode in TRUST_MODES}
    for round_index in range(rounds):
        order = TRUST_MODES if round_index % 2 == 0 else tuple(reversed(TRUST_MODES))
        for mode in order:
            row = bench_size(count, workers, connections, workdir, state_root, per_process, trust=mode)
            row["round"] = round_index + 1
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


def measure_floor(quick: bool) -> tuple[float, float]:
    """The floor: raw request/reply through a fresh nats-server, as (nodes/s, CPU ms per node) at 4 round trips per
    node; the CPU is that of all three processes (requester, trivial responder, nats-server)."""
    count = 2000 if quick else 20000
    with EmbeddedBroker() as broker:
        rate, cpu = asyncio.run(_floor(broker.url, count, 1000, (broker.process.pid,)))
    return rate / 4, 1000 * cpu / (count / 4)


def node_work(count: int, workdir: str, state_root: str) -> dict:
    """The work of provisioning a node with no NATS: CPU ms per node, in parts.

    One process takes ``count`` simulated nodes (as the fleet keeps them: a shared trust, no fsync) one after the
    other through inventory, gencsr, the built-in signer's decision, configure and restart: the real protocol both
    ways (encode and decode of each request and reply), the real node actions, the real ``SignerDecider`` signing
    inline and the flow's loop guard. It is a lower bound of what the bulk path spends per node on all its processes
    together: no transport, no concurrency, and not the node's move to its new broker or its events after restart.
    The parts: the node's actions (``dispatch.handle``), the decision, and the protocol (the rest: building,
    encoding and decoding each request and reply).
    """
    ca_cert, ca_key = make_ca(workdir)
    configuration = {"plugin.choria.middleware_hosts": "nats://127.0.0.1:4222", "collectives": "bench"}
    decider = SignerDecider({"ca_cert": ca_cert, "ca_key": ca_key}, configuration)
    options = FlowOptions(token=TOKEN)
    state = tempfile.mkdtemp(prefix="node-work-", dir=state_root)
    trust = AgentTrust()
    spent = {"node": 0.0, "decide": 0.0}
    clock = time.process_time

    def round_trip(node: NodeState, agent: str, action: str, data: dict) -> dict:
        body = rpc_request_body(agent, action, data)
        req = decode_request(encode_request(Request(agent=agent, body=body, callerid="choria=bench", senderid="bench")))
        asked = clock()
        result = handle(node, req)
        spent["node"] += clock() - asked
        reply = decode_reply(
            encode_reply(Reply(requestid=req.requestid, senderid=node.identity, agent=agent, body=result.body))
        )
        if reply.statuscode != 0:
            raise RuntimeError(f"{node.identity}: {agent}#{action} refused: {reply.statusmsg}")
        return reply.data

    async def provision_all(nodes: list) -> None:
        for node in nodes:
            inventory = round_trip(node, "rpcutil", "inventory", {})
            csr = round_trip(node, "choria_provision", "gencsr", options.gencsr_data(node.identity))
            deciding = clock()
            decision = await decider.decide(node.identity, inventory, csr)
            check_configuration(node.identity, decision.configuration)
            spent["decide"] += clock() - deciding
            data = options.configure_data(decision.configuration, decision.certificate, decision.ca, decision.ssldir)
            round_trip(node, "choria_provision", "configure", data)
            round_trip(node, "choria_provision", "restart", options.token_data(splay=0))

    try:
        nodes = []
        for index in range(count):
            node = NodeState(
                f"w{index}.bench.example.net", os.path.join(state, str(index)), TOKEN, durable=False, trust=trust
            )
            node.load()
            nodes.append(node)
        started = clock()
        asyncio.run(provision_all(nodes))
        total = clock() - started
    finally:
        shutil.rmtree(state, ignore_errors=True)
    return {
        "nodes": count,
        "cpu_ms_per_node": round(1000 * total / count, 3),
        "protocol_ms_per_node": round(1000 * (total - spent["node"] - spent["decide"]) / count, 3),
        **{f"{part}_ms_per_node": round(1000 * value / count, 3) for part, value in spent.items()},
    }


def size_line(row: dict) -> str:
    return (
        f"{row['nodes']:>6} nodes: {row['nodes_per_s']:6.0f} nodes/s = {row['ratio_to_floor']:.2f} of the floor "
        f"({row['floor_nodes_per_s']:.0f} nodes/s just before){' (target >= 0.25)' if row['nodes'] == 10000 else ''}; "
        f"{row['seconds']:.1f} s ({row['discovery_s']:.1f} s discovery), per node p50 {row['p50_ms']:.0f} ms p99 "
        f"{row['p99_ms']:.0f} ms; provisioner {row['prov_cpu_ms_per_node']:.2f} CPU ms/node "
        f"({row['prov_signing_workers_cpu_s']:.1f} of its {row['prov_cpu_s']:.1f} CPU s in the signing workers), "
        f"peak RSS {row['prov_peak_rss_mb']:.0f} MiB = {row['prov_rss_kb_per_node']:.1f} KiB/node, grown "
        f"{row['prov_grown_kb_per_node']:.2f} KiB/node over {row['prov_start_rss_mb']:.0f} MiB at start; fleet "
        f"({row['fleet_processes']} process(es)) {row['fleet_cpu_ms_per_node']:.2f} CPU ms/node, "
        f"{row['fleet_peak_rss_mb']:.0f} MiB; nats-server {row['nats_cpu_ms_per_node']:.2f} CPU ms/node; "
        f"failed {row['failed']}; load average {row['load_average'][0]} -> {row['load_average'][1]}"
        + (f"\n{'':>14}{cpu_budget_line(row)}" if "floor_nodes_per_s" in row else "")
        + (f"\n{'':>14}{work_line(row)}" if "node_work" in row else "")
    )


def cpu_allowance(row: dict) -> float:
    """CPU ms per node that 0.25 of the row's floor leaves on this machine's cores, with every core busy."""
    return 1000 * (os.cpu_count() or 1) / (0.25 * row["floor_nodes_per_s"])


def cpu_budget_line(row: dict) -> str:
    """What the target asks of the CPU: on this machine's cores, 0.25 of the floor leaves this much CPU per node."""
    return (
        f"all processes {row['total_cpu_ms_per_node']:.2f} CPU ms/node (provisioner, fleet, nats-server); "
        f"0.25 of this floor on {os.cpu_count() or 1} cores allows at most {cpu_allowance(row):.2f} with every core "
        f"busy; the floor's own 4 round trips took {row['floor_cpu_ms_per_node']:.2f} (requester, trivial responder, "
        "nats-server)"
    )


def work_line(row: dict) -> str:
    """The work alone (:func:`node_work`), and it with the floor's own NATS cost, beside that allowance."""
    work = row["node_work"]
    least = work["cpu_ms_per_node"] + row["floor_cpu_ms_per_node"]
    return (
        f"the work alone, in one process without NATS ({work['nodes']} nodes): {work['cpu_ms_per_node']:.2f} CPU "
        f"ms/node (the protocol both ways {work['protocol_ms_per_node']:.2f}, node actions "
        f"{work['node_ms_per_node']:.2f}, decision (the built-in signer, inline) {work['decide_ms_per_node']:.2f}); "
        f"with the floor's NATS cost {least:.2f} = {least / cpu_allowance(row):.2f}x that allowance"
    )


def growth_checks(rows: dict) -> list[str]:
    """The issue's two growth targets, from 10,000 nodes (or the middle size) to the largest size."""
    sizes = sorted(rows)
    if len(sizes) < 2:
        return []
    base = 10000 if 10000 in rows and sizes[-1] > 10000 else sizes[-2]
    top = sizes[-1]
    b, t = rows[base], rows[top]
    memory_ok = t["prov_grown_kb_per_node"] <= 1.1 * b["prov_grown_kb_per_node"]
    speed = t["nodes_per_s"] / b["nodes_per_s"] if b["nodes_per_s"] else 0.0
    return [
        f"memory growth: provisioner grew {t['prov_grown_kb_per_node']:.2f} KiB/node at {top} nodes, "
        f"{b['prov_grown_kb_per_node']:.2f} at {base} (peak {t['prov_peak_rss_mb']:.0f} / {b['prov_peak_rss_mb']:.0f} "
        f"MiB); target: no more per node at {top} (10 % noise): {'met' if memory_ok else 'NOT met'}",
        f"speed growth: {t['nodes_per_s']:.0f} nodes/s at {top}, {b['nodes_per_s']:.0f} at {base} = {speed:.2f}x; "
        f"target >= 0.80x: {'met' if speed >= 0.8 else 'NOT met'} (CPU per node {t['prov_cpu_ms_per_node']:.2f} / "
        f"{b['prov_cpu_ms_per_node']:.2f} ms provisioner, {t['fleet_cpu_ms_per_node']:.2f} / "
        f"{b['fleet_cpu_ms_per_node']:.2f} ms fleet)",
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="200, 500 and 1,000 nodes, no trust comparison")
    parser.add_argument("--sizes", default="", help="comma-separated fleet sizes (default 1000,10000,50000)")
    parser.add_argument("--workers", type=int, default=1000, help="nodes in flight")
    parser.add_argument("--connections", type=int, default=4, help="NATS connections of each fleet process")
    parser.add_argument("--fleet-nodes", type=int, default=12500, help="simulated nodes per fleet process at most")
    add_state_dir_option(parser)
    parser.add_argument(
        "--trust-nodes", type=int, default=None, help="nodes for the signatures off/on comparison (0: skip)"
    )
    parser.add_argument(
        "--trust-rounds", type=int, default=2, help="rounds of the trust comparison, in alternating order"
    )
    parser.add_argument(
        "--signing-processes", type=int, help="signing worker processes of the provisioner (default: its own choice)"
    )
    parser.add_argument(
        "--work-nodes",
        type=int,
        default=None,
        help="nodes for the work alone, without NATS (default 2,000; 300 with --quick; 0: skip)",
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child_run(args)
        return 0
    if args.sizes:
        sizes = [int(s) for s in args.sizes.split(",") if s]
    else:
        sizes = [200, 500, 1000] if args.quick else [1000, 10000, 50000]
    sizes = [s for s in sizes if s > 0]
    trust_nodes = args.trust_nodes if args.trust_nodes is not None else (0 if args.quick else 1000)
    print(
        f"bench_provision: machine {os.uname().machine}, {os.cpu_count() or 0} CPU cores, Python {sys.version.split()[0]}, "
        f"load average {os.getloadavg()[0]:.1f}, fleet state in {args.state_dir or tempfile.gettempdir()}"
    )
    workdir = tempfile.mkdtemp(prefix="zeroinit-bench-prov-")
    state_root = args.state_dir or workdir
    rows: dict = {}
    work_nodes = args.work_nodes if args.work_nodes is not None else (300 if args.quick else 2000)
    try:
        work = node_work(work_nodes, workdir, state_root) if work_nodes > 0 and sizes else None
        for count in sizes:
            floor_nodes, floor_cpu = measure_floor(args.quick)
            row = bench_size(
                count,
                args.workers,
                args.connections,
                workdir,
                state_root,
                args.fleet_nodes,
                signing_processes=args.signing_processes,
            )
            row["floor_nodes_per_s"] = round(floor_nodes, 1)
            row["floor_cpu_ms_per_node"] = round(floor_cpu, 3)
            row["ratio_to_floor"] = round(row["nodes_per_s"] / floor_nodes, 3)
            if work:
                row["node_work"] = work
            rows[count] = row
            print(json.dumps(row))
            print(size_line(row), flush=True)
        for line in growth_checks(rows):
            print(line)
        if trust_nodes:
            bench_trust(
                trust_nodes, args.workers, args.connections, workdir, state_root, args.fleet_nodes, args.trust_rounds
            )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
