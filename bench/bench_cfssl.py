"""How fast the cfssl backend signs: certificates per second through a real ``cfssl serve``, beside the built-in signer.

    .venv/bin/python bench/bench_cfssl.py [--quick] [--count N] [--threads 1,4,8] [--tls]

One client process, one CfsslSigner shared by K threads (each thread keeps its own connection), against a
``cfssl serve`` on loopback with an EC P-256 CA (tests/support/cfssl.py). Each signature is the full path: the policy
on the CSR, the HMAC-authenticated ``authsign`` request, CFSSL's signing, and the checks on the certificate that
comes back. The built-in signer (EC P-256 CA, same policy, same CSRs) runs in the same process in the same run.
CSRs (node keys: EC P-256) are made before timing starts. CPU seconds are the client's and the server's own.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import platform
import resource
import statistics
import sys
import tempfile
import time

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, ".venv", "collections"))
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.pki import (  # noqa: E402
    CertificateAuthority,
    CsrPolicy,
    Signer,
)
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.pki_cfssl import cfssl_signer_from_params  # noqa: E402
from tests.support.cfssl import CfsslServer  # noqa: E402

VALID_DAYS = 30  # the fixture's node profile issues 720h


def machine() -> str:
    model = ""
    try:
        with open("/proc/cpuinfo") as handle:
            model = next((line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")), "")
    except OSError:
        pass
    return "%d cores (%s, %s), Python %s, load average %.1f (others share the cores)" % (
        os.cpu_count() or 0,
        model or "?",
        platform.machine(),
        platform.python_version(),
        os.getloadavg()[0],
    )


def make_csrs(count: int) -> list[tuple[str, str]]:
    out = []
    for index in range(count):
        identity = "node%05d.bench.example.net" % index
        key = ec.generate_private_key(ec.SECP256R1())
        csr = (
            x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, identity)]))
            .sign(key, hashes.SHA256())
        )
        out.append((identity, csr.public_bytes(serialization.Encoding.PEM).decode("ascii")))
    return out


def process_cpu_seconds(pid: int) -> float:
    """utime + stime of a process (not its children), from /proc."""
    with open(f"/proc/{pid}/stat") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run(signer, csrs: list[tuple[str, str]], threads: int, server_pid: int | None) -> dict:
    def one(item):
        start = time.perf_counter()
        signer.sign(item[1], item[0], valid_days=VALID_DAYS, profile="both")
        return time.perf_counter() - start

    server_cpu = process_cpu_seconds(server_pid) if server_pid else 0.0
    client_cpu = own_cpu_seconds()
    start = time.perf_counter()
    if threads == 1:
        latencies = [one(item) for item in csrs]
    else:
        with concurrent.futures.ThreadPoolExecutor(threads) as pool:
            latencies = list(pool.map(one, csrs))
    elapsed = time.perf_counter() - start
    latencies.sort()
    return {
        "rate": len(csrs) / elapsed,
        "p50": statistics.median(latencies) * 1000,
        "p99": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000,
        "client_ms": (own_cpu_seconds() - client_cpu) / len(csrs) * 1000,
        "server_ms": ((process_cpu_seconds(server_pid) - server_cpu) / len(csrs) * 1000) if server_pid else 0.0,
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

    print(f"bench_cfssl: {count} CSRs per run; machine: {machine()}")
    csrs = make_csrs(count)
    builtin = Signer(CertificateAuthority.create("bench EC CA", "ec"), CsrPolicy(max_valid_days=VALID_DAYS))
    print(
        "%-22s %-8s %12s %10s %10s %16s %16s"
        % ("signer", "threads", "certs/s", "p50 ms", "p99 ms", "client CPU ms", "server CPU ms")
    )

    def show(name: str, threads: int, figures: dict) -> None:
        server = "%16.2f" % figures["server_ms"] if figures["server_ms"] else "%16s" % "-"
        print(
            "%-22s %-8d %12.0f %10.2f %10.2f %16.2f %s"
            % (name, threads, figures["rate"], figures["p50"], figures["p99"], figures["client_ms"], server)
        )

    with tempfile.TemporaryDirectory(prefix="bench-cfssl-") as workdir, CfsslServer(workdir, tls=args.tls) as server:
        params = dict(cfssl_url=server.url, cfssl_auth_key=server.auth_key, cfssl_profile="node")
        if args.tls:
            params["cfssl_ca_bundle"] = str(server.tls_ca_path)
        name = f"cfssl ({'https' if args.tls else 'http'})"
        for threads in thread_counts:
            signer = cfssl_signer_from_params(params, CsrPolicy(max_valid_days=VALID_DAYS))
            try:
                show(name, threads, run(signer, csrs, threads, server.process.pid))
            finally:
                signer.close()
        for threads in thread_counts:
            show("built-in (EC CA)", threads, run(builtin, csrs, threads, None))
    return 0


if __name__ == "__main__":
    sys.exit(main())
