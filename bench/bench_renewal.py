"""Renewal load: renewals per second the signer sustains while a whole fleet of configured nodes renews at once.

    .venv/bin/python bench/bench_renewal.py [--quick] [--nodes 10000] [--signers builtin,cfssl] [--tls]

N configured nodes are seeded as provisioning leaves them (tests/support/members.py) with certificates already past
their renewal time, and served by one agent process (fleet mode) on a members' nats-server (plain by default: 10,000
TLS client connections in one process would measure the TLS stack; ``--tls`` for smaller fleets). At start every node
renews: a new key and CSR made on the node, the request signed with its current certificate, one RenewalResponder
(8 threads) that verifies the request, applies the policy and signs with the built-in signer or a ``cfssl serve`` on
loopback, the node's checks of the answer and its journalled install. Figures: renewals per second from the first to
the last answer and in the busiest 10 seconds, p50/p99 of the responder's answer time, CPU of the agent, the
responder process and cfssl, and, as the floor, the bare signer's rate in the same run (bench_pki's loop).
"""

from __future__ import annotations

import argparse
import os
import pathlib
import platform
import sys
import tempfile
import threading
import time

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, ".venv", "collections"))
from bench_agent import cpu_seconds, machine, rss_kib
from bench_cfssl import own_cpu_seconds
from bench_pki import make_csrs, run

from ansible_collections.zeroinit.bootstrap.plugins.module_utils.pki.ca import CertificateAuthority
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.pki.cfssl import cfssl_signer_from_params
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.pki.policy import CsrPolicy
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.pki.signer import Signer
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.provisioning.renewal import RenewalResponder
from tests.support.broker import EmbeddedBroker
from tests.support.cfssl import CfsslServer
from tests.support.members import MemberFleet, MemberSite, ResponderThread, certificate_of, fleet_identities


class Stopwatch:
    """When each renewal was answered (responder side), and how long the answer took."""

    def __init__(self):
        self.lock = threading.Lock()
        self.renewed: list[float] = []
        self.refused: dict[str, int] = {}

    def __call__(self, answer) -> None:
        with self.lock:
            if answer.renewed:
                self.renewed.append(time.monotonic())
            else:
                self.refused[answer.code] = self.refused.get(answer.code, 0) + 1


def busiest_window(stamps: list[float], seconds: float = 10.0) -> float:
    """The most renewals answered within any ``seconds`` window, per second."""
    best, start = 0, 0
    for end, stamp in enumerate(stamps):
        while stamp - stamps[start] > seconds:
            start += 1
        best = max(best, end - start + 1)
    return best / seconds


def due_now(state_dir: pathlib.Path, identities: list[str]) -> None:
    """Date every certificate file back ten minutes: its renewal time is past, so the node renews at start."""
    past = time.time() - 600
    for identity in identities:
        os.utime(state_dir / identity / "ssl" / "certificate.pem", (past, past))


def one_run(backend: str, count: int, workdir: pathlib.Path, tls: bool, server: CfsslServer | None) -> dict:
    site = MemberSite(workdir / "site")
    if backend == "cfssl":
        # The nodes hold 60-second certificates of the CFSSL CA (made here with its key); renewals go through authsign.
        site.use_signer(
            Signer(CertificateAuthority.load(str(server.ca_path), str(server.ca_key_path)), valid_seconds=60)
        )
        signer = cfssl_signer_from_params(
            {"cfssl_url": server.url, "cfssl_auth_key": server.auth_key, "cfssl_profile": "node"},
            CsrPolicy(max_valid_days=30),
        )
    else:
        site.use_signer(Signer(site.ca, CsrPolicy(), valid_seconds=60))
        signer = Signer(site.ca, CsrPolicy(max_valid_days=30))
    identities = fleet_identities(count)
    watch = Stopwatch()
    responder = RenewalResponder(signer, site.trust_pem, valid_days=30, on_answer=watch)
    broker = site.broker() if tls else EmbeddedBroker()
    with broker:
        started = time.monotonic()
        site.seed(workdir / "fleet", identities, broker.url)
        due_now(workdir / "fleet", identities)
        sample = identities[:: max(1, count // 100)]
        before = {i: certificate_of(workdir / "fleet", i).serial_number for i in sample}
        seeded = time.monotonic() - started
        tls_context = site.client_tls("zeroinit-ca") if tls else None
        own_cpu = own_cpu_seconds()
        server_cpu = cpu_seconds(server.process.pid) if server else 0.0
        with ResponderThread(responder, broker.url, tls_context):
            fleet = MemberFleet(broker.url, identities, workdir / "fleet", site, extra_args=["--workers", "4"])
            fleet.launch()
            try:
                deadline = time.monotonic() + max(120.0, count / 20.0)
                while len(watch.renewed) < count and time.monotonic() < deadline and fleet.running():
                    time.sleep(0.5)
                time.sleep(2.0)  # the last installs land
                agent_cpu = cpu_seconds(fleet.process.pid)
                agent_rss = rss_kib(fleet.process.pid)
            finally:
                fleet.stop()
        responder_cpu = own_cpu_seconds() - own_cpu
        cfssl_cpu = cpu_seconds(server.process.pid) - server_cpu if server else 0.0
    signer.close()
    stamps = sorted(watch.renewed)
    installed = sum(1 for i in sample if certificate_of(workdir / "fleet", i).serial_number != before[i])
    span = (stamps[-1] - stamps[0]) if len(stamps) > 1 else float("nan")
    return {
        "backend": backend,
        "nodes": count,
        "renewed": len(stamps),
        "refused": dict(watch.refused),
        "span_s": span,
        "rate": (len(stamps) - 1) / span if len(stamps) > 1 else 0.0,
        "busiest": busiest_window(stamps),
        "responder_ms": responder_cpu / max(1, len(stamps)) * 1000,
        "agent_ms": agent_cpu / max(1, len(stamps)) * 1000,
        "cfssl_ms": cfssl_cpu / max(1, len(stamps)) * 1000,
        "agent_rss_mib": agent_rss / 1024,
        "seeded_s": seeded,
        "sample_installed": f"{installed}/{len(sample)}",
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1,000 nodes instead of 10,000")
    parser.add_argument("--nodes", type=int, default=None)
    parser.add_argument("--signers", default="builtin,cfssl", help="builtin, cfssl or both (comma-separated)")
    parser.add_argument("--tls", action="store_true", help="a TLS members' broker (one connection per node)")
    args = parser.parse_args()
    count = args.nodes or (1000 if args.quick else 10000)
    print(
        f"bench_renewal: {count} nodes renewing at once; machine: {machine()}, {platform.machine()}, "
        f"load average {os.getloadavg()[0]:.1f} (others share the cores)"
    )
    csrs = make_csrs(2000, "ec")
    floor = Signer(CertificateAuthority.create("bench EC CA", "ec"), CsrPolicy())
    elapsed, _latencies = run(floor, csrs, 1)
    print(f"floor: the built-in signer alone signs {len(csrs) / elapsed:,.0f} certificates/s on one thread")
    print(
        f"{'signer':<9} {'renewed':>9} {'span s':>8} {'renewals/s':>11} {'busiest 10s':>12} {'responder ms':>13}"
        f" {'agent ms':>9} {'cfssl ms':>9} {'agent MiB':>10}  refused"
    )
    for backend in [s.strip() for s in args.signers.split(",") if s.strip()]:
        with tempfile.TemporaryDirectory(prefix=f"bench-renewal-{backend}-") as workdir:
            server = CfsslServer(pathlib.Path(workdir) / "cfssl").start() if backend == "cfssl" else None
            try:
                r = one_run(backend, count, pathlib.Path(workdir), args.tls, server)
            finally:
                if server is not None:
                    server.remove()
        print(
            f"{r['backend']:<9} {r['renewed']:>5}/{r['nodes']:<4} {r['span_s']:8.1f} {r['rate']:11.0f} "
            f"{r['busiest']:12.0f} {r['responder_ms']:13.2f} {r['agent_ms']:9.2f} {r['cfssl_ms']:9.2f}"
            f" {r['agent_rss_mib']:10.0f}  {r['refused'] or '-'} (seeded in {r['seeded_s']:.0f}s; "
            f"sample installed {r['sample_installed']})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
