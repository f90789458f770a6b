"""How fast the cfssl backend signs: certificates per second through a real ``cfssl serve``, beside the built-in signer.

    .venv/bin/python bench/bench_cfssl.py [--quick] [--count N] [--threads 1,4,8] [--tls]

One client process, one CfsslSigner shared by K threads (each thread keeps its own connection), against a
``cfssl serve`` on loopback with an EC P-256 CA and its default profile (tests/support/cfssl.py). Each signature is the
full path: the policy on the CSR, the HMAC-authenticated ``authsign`` request, CFSSL's signing, and the checks on the
certificate that comes back. The built-in signer (EC P-256 CA, same policy, same CSRs, bench_pki's loop) runs in the
same process in the same run. CSRs (node keys: EC P-256) are made before timing starts. CPU milliseconds per
certificate are the client process's and the cfssl server's own.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import sys
import tempfile

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, ".venv", "collections"))
from bench_agent import cpu_seconds, machine
from bench_pki import make_csrs, run

from ansible_collections.zeroinit.bootstrap.plugins.module_utils.pki.ca import CertificateAuthority
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.pki.cfssl import cfssl_signer_from_params
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.pki.policy import CsrPolicy
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.pki.signer import Signer
from tests.support.cfssl import CfsslServer


def own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def measure(signer, csrs: list[tuple[str, str]], threads: int, server_pid: int | None) -> dict:
    """bench_pki's run (every CSR signed, by ``threads`` at once), with the client's and the server's CPU time."""
    server_cpu = cpu_seconds(server_pid) if server_pid else 0.0
    client_cpu = own_cpu_seconds()
    elapsed, latencies = run(signer, csrs, threads)
    latencies.sort()
    return {
        "rate": len(csrs) / elapsed,
        "p50": statistics.median(latencies) * 1000,
        "p99": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000,
        "client_ms": (own_cpu_seconds() - client_cpu) / len(csrs) * 1000,
        "server_ms": ((cpu_seconds(server_pid) - server_cpu) / len(csrs) * 1000) if server_pid else 0.0,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="300 CSRs per run instead of 2000")
    parser.add_argument("--count", type=int, default=None)
    parser.add_argument("--threads", default="1,4,8", help="comma-separated numbers of concurrent requests")
    parser.add_argument("--tls", action="store_true", help="https to the CFSSL server (TLS CA bundle)")
    args = parser.parse_args()
    count = args.count or (300 if args.quick else 2000)
    thread_counts = [int(t) for t in args.threads.split(",") if t.strip()]

    print(
        f"bench_cfssl: {count} CSRs per run; machine: {machine()}, {platform.machine()}, "
        f"load average {os.getloadavg()[0]:.1f} (others share the cores)"
    )
    csrs = make_csrs(count, "ec")
    builtin = Signer(CertificateAuthority.create("bench EC CA", "ec"), CsrPolicy())
    print(
        f"{'signer':<22} {'threads':<8} {'certs/s':>12} {'p50 ms':>10} {'p99 ms':>10} {'client CPU ms':>16}"
        f" {'server CPU ms':>16}"
    )

    def show(name: str, threads: int, figures: dict) -> None:
        server = f"{figures['server_ms']:16.2f}" if figures["server_ms"] else f"{'-':>16}"
        print(
            f"{name:<22} {threads:<8d} {figures['rate']:12.0f} {figures['p50']:10.2f} {figures['p99']:10.2f}"
            f" {figures['client_ms']:16.2f} {server}"
        )

    with tempfile.TemporaryDirectory(prefix="bench-cfssl-") as workdir, CfsslServer(workdir, tls=args.tls) as server:
        # The fixture's default profile: a year, server + client auth, as bench_pki's valid_days 365 and "both".
        params = dict(cfssl_url=server.url, cfssl_auth_key=server.auth_key)
        if args.tls:
            params["cfssl_ca_bundle"] = str(server.tls_ca_path)
        name = f"cfssl ({'https' if args.tls else 'http'})"
        for threads in thread_counts:
            signer = cfssl_signer_from_params(params, CsrPolicy())
            try:
                show(name, threads, measure(signer, csrs, threads, server.process.pid))
            finally:
                signer.close()
        for threads in thread_counts:
            show("built-in (EC CA)", threads, measure(builtin, csrs, threads, None))
    return 0


if __name__ == "__main__":
    sys.exit(main())
