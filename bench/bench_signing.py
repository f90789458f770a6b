"""CPU cost of signed requests and provisioning JWTs: per sign, per verify (cached and uncached path), per JWT verify.

    .venv/bin/python bench/bench_signing.py [--quick] [--count N]

Figures are CPU time of this process (time.process_time) per operation, so other load on a shared machine
inflates them less than wall time would. The message is a typical choria_provision request (about 700 bytes).
"Cached" is the steady state of a node (or a fleet process) verifying the same provisioner certificate again and
again: the path search is cached, the signature is checked every time. "Uncached" alternates two certificates
through a one-entry cache, so every verify parses the pubcert and searches its path.

The last lines put the figures together per provisioned node, as the bulk path spends them: the provisioner signs
4 requests per node (rpcutil#inventory, gencsr, configure, restart; 5 with the JWT step, which also verifies the
node's JWT), a node verifies the 3 choria_provision requests (4 with jwt; rpcutil is open and not verified).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import pathlib
import platform
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding

from ansible_collections.zeroinit.bootstrap.plugins.module_utils.choria.jwt import (
    issue_provisioning_jwt,
    verify_provisioning_jwt,
)
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.choria.security import (
    RequestSigner,
    RequestVerifier,
)
from tests.support.certificates import Authority, rsa_key

MESSAGE = json.dumps(
    {
        "protocol": "choria:request:1",
        "message": json.dumps(
            {"agent": "choria_provision", "action": "configure", "data": {"token": "t" * 32, "config": "{}" * 100}}
        ),
        "envelope": {
            "requestid": "0" * 32,
            "senderid": "prov1.example.net",
            "callerid": "choria=prov1.example.net",
            "collective": "provisioning",
            "agent": "choria_provision",
            "ttl": 60,
            "time": 1_800_000_000,
            "filter": {"fact": [], "cf_class": [], "agent": [], "identity": ["node1.example.net"], "compound": []},
        },
    },
    separators=(",", ":"),
)


def cpu_per_call(function, count: int) -> float:
    """Microseconds of process CPU time per call."""
    function()  # warm-up: imports, first parse
    start = time.process_time()
    for _index in range(count):
        function()
    return (time.process_time() - start) / count * 1e6


def row(what: str, micros: float) -> None:
    print(f"  {what:<58} {micros:9.1f} us CPU  {1e6 / micros:10,.0f} /s per core")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="300 operations per figure instead of 3000")
    parser.add_argument("--count", type=int, default=None)
    args = parser.parse_args()
    count = args.count or (300 if args.quick else 3000)
    print(
        f"bench_signing: {count} operations per figure; {os.cpu_count()} cores ({platform.machine()}), "
        f"Python {platform.python_version()}, load average {os.getloadavg()[0]:.1f}; message {len(MESSAGE)} bytes"
    )

    ec_ca = Authority("bench EC P-256 CA")
    rsa_ca = Authority("bench RSA-3072 CA", key=rsa_key(3072))
    issuing = ec_ca.intermediate("bench issuing CA")
    leaves = {
        "rsa-2048": ec_ca.issue("prov-rsa.example.net", key=rsa_key(2048)),
        "ec-p256": ec_ca.issue("prov-ec.example.net"),
    }
    signers = {name: RequestSigner(leaf.pem, leaf.key_pem) for name, leaf in leaves.items()}

    print("signing (RequestSigner.sign)")
    sign_us = {}
    for name, signer in signers.items():
        sign_us[name] = cpu_per_call(lambda signer=signer: signer.sign(MESSAGE), count)
        row(f"{name} provisioner key", sign_us[name])

    print("floor: one bare signature verification with cryptography (what a cached verify cannot avoid)")
    for name, leaf in leaves.items():
        raw = base64.b64decode(signers[name].sign(MESSAGE).signature)
        scheme = (padding.PKCS1v15(), hashes.SHA256()) if name.startswith("rsa") else (ec.ECDSA(hashes.SHA256()),)
        public = leaf.cert.public_key()
        row(
            f"{name} signature",
            cpu_per_call(
                lambda public=public, raw=raw, scheme=scheme: public.verify(raw, MESSAGE.encode(), *scheme), count
            ),
        )

    print("verifying (RequestVerifier.verify), provisioner certificate issued by an EC P-256 CA")
    verifier = RequestVerifier(ec_ca.pem + rsa_ca.pem)
    verify_us = {}
    for name, signer in signers.items():
        fields = signer.sign(MESSAGE)
        verify_us[name] = cpu_per_call(lambda f=fields: verifier.verify(MESSAGE, *f), count)
        row(f"{name}, path cached", verify_us[name])

    def uncached(first_leaf, second_leaf, chain: str = "") -> float:
        one_entry = RequestVerifier(ec_ca.pem + rsa_ca.pem, cache_size=1)
        requests = [RequestSigner(leaf.pem + chain, leaf.key_pem).sign(MESSAGE) for leaf in (first_leaf, second_leaf)]
        turn = [0]

        def verify():
            turn[0] ^= 1
            one_entry.verify(MESSAGE, *requests[turn[0]])

        return cpu_per_call(verify, count)

    row("rsa-2048, uncached", uncached(leaves["rsa-2048"], ec_ca.issue("prov-rsa2.example.net", key=rsa_key(2048))))
    row("ec-p256, uncached", uncached(leaves["ec-p256"], ec_ca.issue("prov-ec2.example.net")))
    row("ec-p256, uncached, CA RSA-3072", uncached(rsa_ca.issue("a.example.net"), rsa_ca.issue("b.example.net")))
    row(
        "ec-p256, uncached, one intermediate in the pubcert",
        uncached(issuing.issue("c.example.net"), issuing.issue("d.example.net"), issuing.pem),
    )

    print("provisioning JWT (verify_provisioning_jwt: signature, claims, identity pattern, cht)")
    jwt_us = {}
    for name, key in (
        ("EdDSA", ed25519.Ed25519PrivateKey.generate()),
        ("ES256", ec.generate_private_key(ec.SECP256R1())),
    ):
        token = issue_provisioning_jwt(key, "t" * 32, ["nats://prov.example.net:4222"], ["*.fleet.example.net"])
        public = key.public_key()
        jwt_us[name] = cpu_per_call(
            lambda token=token, public=public: verify_provisioning_jwt(
                token, public, "node1.fleet.example.net", expected_token="t" * 32
            ),
            count,
        )
        row(f"{name} verify", jwt_us[name])
        row(
            f"{name} issue",
            cpu_per_call(lambda key=key: issue_provisioning_jwt(key, "t", ["nats://p:4222"], ["*.x"]), count // 3),
        )
    print("per provisioned node on the bulk path (CPU ms): provisioner signs, node verifies (path cached)")
    for name in signers:
        provisioner, node = 4 * sign_us[name] / 1000, 3 * verify_us[name] / 1000
        with_jwt = (5 * sign_us[name] + jwt_us["EdDSA"]) / 1000, 4 * verify_us[name] / 1000
        print(
            f"  {name:<9} signed requests: provisioner {provisioner:6.3f} ms, node {node:6.3f} ms; with the EdDSA JWT "
            f"step: provisioner {with_jwt[0]:6.3f} ms, node {with_jwt[1]:6.3f} ms"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
