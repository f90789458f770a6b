"""How fast the policy signer issues certificates: signatures per second by CA key type, one thread and several.

    .venv/bin/python bench/bench_pki.py [--quick] [--count N] [--threads N]

Each signature is the full work of Signer.sign: parse the CSR PEM, verify its signature, run the policy, build and
sign the certificate, encode it as PEM. CSRs (node keys: EC P-256) are made before timing starts, as nodes make them.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import platform
import statistics
import sys
import time

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".venv", "collections"))
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.pki.ca import CertificateAuthority
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.pki.policy import CsrPolicy
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.pki.signer import Signer


def make_csrs(count: int, node_key: str) -> list[tuple[str, str]]:
    out = []
    for i in range(count):
        identity = f"node{i:05d}.bench.example.net"
        key = ec.generate_private_key(ec.SECP256R1()) if node_key == "ec" else rsa.generate_private_key(65537, 2048)
        csr = (
            x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, identity)]))
            .sign(key, hashes.SHA256())
        )
        out.append((identity, csr.public_bytes(serialization.Encoding.PEM).decode("ascii")))
    return out


def run(signer: Signer, csrs: list[tuple[str, str]], threads: int) -> tuple[float, list[float]]:
    latencies: list[float] = []

    def one(item):
        start = time.perf_counter()
        signer.sign(item[1], item[0], valid_days=365, profile="both")
        return time.perf_counter() - start

    start = time.perf_counter()
    if threads == 1:
        latencies = [one(item) for item in csrs]
    else:
        with concurrent.futures.ThreadPoolExecutor(threads) as pool:
            latencies = list(pool.map(one, csrs))
    return time.perf_counter() - start, latencies


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="500 CSRs instead of 5000")
    parser.add_argument("--count", type=int, default=None)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    count = args.count or (500 if args.quick else 5000)

    print(
        f"bench_pki: {count} CSRs per run; machine: {os.cpu_count() or 0} cores ({platform.machine()}), "
        f"Python {platform.python_version()}, load average {os.getloadavg()[0]:.1f} (others share the cores)"
    )
    csrs = make_csrs(count, "ec")
    rsa_csrs = make_csrs(max(count // 10, 50), "rsa")
    cas = [
        ("ec", CertificateAuthority.create("bench EC CA", "ec")),
        ("rsa", CertificateAuthority.create("bench RSA CA", "rsa")),
        ("ed25519", CertificateAuthority.create("bench Ed25519 CA", "ed25519")),
    ]
    print(f"{'CA key':<10} {'node key':<10} {'threads':<8} {'certs/s':>12} {'p50 ms':>10} {'p99 ms':>10}")
    for name, ca in cas:
        signer = Signer(ca, CsrPolicy())
        for node_key, batch in (("ec-p256", csrs), ("rsa-2048", rsa_csrs)):
            for threads in sorted({1, args.threads}):
                elapsed, lat = run(signer, batch, threads)
                lat.sort()
                print(
                    f"{name:<10} {node_key:<10} {threads:<8d} {len(batch) / elapsed:12.0f} {statistics.median(lat) * 1000:10.3f} "
                    f"{lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000:10.3f}"
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
