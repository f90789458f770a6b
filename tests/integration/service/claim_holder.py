"""Holds one node's claim and renews it until killed: the "instance" a test SIGKILLs.

Usage: python claim_holder.py URL SITE INSTANCE TTL IDENTITY; prints "held <revision>" once it holds the claim.
"""

import asyncio
import sys

import nats

from ansible_collections.zeroinit.bootstrap.plugins.module_utils.provisioning.service.claims import Claim, ClaimStore


async def main(url, site, instance, ttl, identity):
    nc = await nats.connect(url)
    store = await ClaimStore.open(nc, site, instance, float(ttl))
    claim = await store.acquire(identity)
    if not isinstance(claim, Claim):
        print(f"refused {claim}", flush=True)
        return 1
    print(f"held {claim.revision}", flush=True)
    await store.run()


if __name__ == "__main__":
    sys.exit(asyncio.run(main(*sys.argv[1:])))
