"""Per-node claims on a real three-server JetStream cluster: one winner per node whichever server each instance
uses, renewal keeps a claim, and a dead holder's node is taken over within claim_ttl + 1 s."""

import asyncio
import logging
import pathlib
import signal
import subprocess
import sys
import time

import nats
import pytest

from ansible_collections.zeroinit.bootstrap.plugins.module_utils.provisioning.service import claims as cl

HOLDER = pathlib.Path(__file__).with_name("claim_holder.py")


def run(coro, timeout=60):
    return asyncio.run(asyncio.wait_for(coro, timeout))


async def stores(urls, site, ttl, names=("prov-a", "prov-b")):
    """One connection and ClaimStore per instance name, each on its own server of the cluster."""
    connections, opened = [], []
    for index, name in enumerate(names):
        nc = await nats.connect(urls[index % len(urls)])
        connections.append(nc)
        opened.append(await cl.ClaimStore.open(nc, site, name, ttl))
    return connections, opened


async def close(connections):
    for nc in connections:
        await nc.close()


async def take_over(store, identity, started, limit):
    """Ask for ``identity`` as a daemon would (again after each ``retry_after``); seconds from ``started``."""
    while time.monotonic() - started < limit:
        answer = await store.acquire(identity)
        if isinstance(answer, cl.Claim):
            return time.monotonic() - started, answer
        assert not answer.done
        await asyncio.sleep(answer.retry_after)
    raise AssertionError(f"{identity} not taken over within {limit}s")


def test_racing_instances_on_different_servers_one_winner_per_node(cluster):
    async def main():
        connections, instances = await stores(cluster.urls, "race", 30, ("prov-a", "prov-b", "prov-c"))
        try:
            identities = [f"node{i}.example.net" for i in range(40)]
            answers = await asyncio.gather(*(s.acquire(i) for i in identities for s in instances))
            return identities, answers, instances
        finally:
            await close(connections)

    identities, answers, instances = run(main())
    for index, identity in enumerate(identities):
        trio = answers[index * 3 : index * 3 + 3]
        winners = [instances[k].instance for k, answer in enumerate(trio) if isinstance(answer, cl.Claim)]
        assert len(winners) == 1, (identity, trio)
        for answer in trio:
            if isinstance(answer, cl.ClaimHeld):
                assert answer.holder == winners[0]
                assert not answer.done
                assert 0 < answer.retry_after <= 20 + cl.MIN_RECHECK, "first look again when a renewal is due"
    assert sum(s.held for s in instances) == 40


def test_renewal_keeps_the_claim_past_its_ttl_and_done_is_seen_by_the_others(cluster):
    ttl = 3.0

    async def main():
        connections, (a, b) = await stores(cluster.urls, "renew", ttl)
        renewer = asyncio.ensure_future(a.run())
        try:
            claim = await a.acquire("n1")
            assert isinstance(claim, cl.Claim)
            deadline = time.monotonic() + 2.5 * ttl
            while time.monotonic() < deadline:
                answer = await b.acquire("n1")
                assert isinstance(answer, cl.ClaimHeld) and answer.holder == "prov-a", answer
                await asyncio.sleep(0.5)
            assert not claim.lost.is_set()
            assert await a.finish(claim)
            assert a.held == 0
            done = await b.acquire("n1")
            await asyncio.sleep(ttl + cl.EXPIRY_MARGIN)
            after_expiry = await b.acquire("n1")
            return done, after_expiry, b
        finally:
            renewer.cancel()
            await close(connections)

    done, after_expiry, b = run(main())
    assert done == cl.ClaimHeld("n1", "prov-a", True, 0.0), "a provisioned node is dropped, not provisioned again"
    assert isinstance(after_expiry, cl.Claim), "the done mark expires after the ttl"
    assert b.takeovers_total == 0


def test_holder_that_stops_renewing_is_taken_over_within_ttl_plus_one_second(cluster, caplog):
    ttl = 3.0

    async def main():
        connections, (a, b) = await stores(cluster.urls, "stall", ttl)
        renewer = asyncio.ensure_future(a.run())
        try:
            claim = await a.acquire("n1")
            first = await b.acquire("n1")
            assert isinstance(first, cl.ClaimHeld)
            await asyncio.sleep(ttl)  # held and renewed for a while
            renewer.cancel()
            took, taken = await take_over(b, "n1", claim.renewed, ttl + 5)
            await a.renew_all()  # the old holder wakes up: its renewal must fail and say so
            return took, taken, claim, a, b
        finally:
            renewer.cancel()
            await close(connections)

    with caplog.at_level(logging.WARNING, logger="zeroinit.provisioner.claims"):
        took, taken, old_claim, a, b = run(main())
    print(f"\ntakeover after the holder's last renewal: {took:.2f}s (claim_ttl {ttl:g}s)")
    assert ttl <= took <= ttl + 1.0
    assert taken.took_over_from == "prov-a"
    assert b.takeovers_total == 1
    assert old_claim.lost.is_set() and a.lost_total == 1 and a.held == 0
    messages = [r.getMessage() for r in caplog.records]
    assert "took over n1 from prov-a, whose claim expired unrenewed" in messages
    assert "lost the claim on n1: the claim expired or was taken before it was renewed" in messages


@pytest.mark.parametrize("ttl", [3.0, 5.0])
def test_sigkilled_holder_process_is_taken_over_within_ttl_plus_one_second(cluster, ttl):
    site = f"kill{int(ttl)}"
    holder = subprocess.Popen(
        [sys.executable, str(HOLDER), cluster.urls[0], site, "prov-dead", str(ttl), "n1.example.net"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = holder.stdout.readline()
        assert line.startswith("held "), line + holder.stderr.read()

        async def main():
            connections, (b,) = await stores(cluster.urls[2:], site, ttl, ("prov-b",))
            try:
                answer = await b.acquire("n1.example.net")
                assert isinstance(answer, cl.ClaimHeld) and answer.holder == "prov-dead"
                await asyncio.sleep(ttl)  # the holder renews meanwhile
                again = await b.acquire("n1.example.net")
                assert isinstance(again, cl.ClaimHeld) and again.holder == "prov-dead"
                holder.send_signal(signal.SIGKILL)
                killed = time.monotonic()
                holder.wait(5)
                return await take_over(b, "n1.example.net", killed, ttl + 5)
            finally:
                await close(connections)

        took, taken = run(main())
    finally:
        holder.kill()
        holder.wait(5)
        holder.stdout.close()
        holder.stderr.close()
    print(f"\ntakeover after SIGKILL of the holder: {took:.2f}s (claim_ttl {ttl:g}s)")
    assert took <= ttl + 1.0
    assert taken.took_over_from == "prov-dead"


def test_release_lets_another_instance_in_at_once_and_is_no_takeover(cluster):
    async def main():
        connections, (a, b) = await stores(cluster.urls, "release", 30)
        try:
            claim = await a.acquire("n1")
            held = await b.acquire("n1")
            assert await a.release(claim)
            started = time.monotonic()
            taken = await b.acquire("n1")
            return held, taken, time.monotonic() - started, b
        finally:
            await close(connections)

    held, taken, took, b = run(main())
    assert isinstance(held, cl.ClaimHeld) and held.holder == "prov-a"
    assert isinstance(taken, cl.Claim) and taken.took_over_from == ""
    assert took < 1.0
    assert b.takeovers_total == 0


def test_sites_never_share_claims(cluster):
    async def main():
        first = await nats.connect(cluster.urls[0])
        second = await nats.connect(cluster.urls[1])
        try:
            dc1 = await cl.ClaimStore.open(first, "dc1", "prov-a", 30)
            dc2 = await cl.ClaimStore.open(second, "dc2", "prov-a", 30)
            return await dc1.acquire("n1"), await dc2.acquire("n1"), dc1.bucket, dc2.bucket
        finally:
            await first.close()
            await second.close()

    one, two, bucket1, bucket2 = run(main())
    assert isinstance(one, cl.Claim) and isinstance(two, cl.Claim)
    assert (bucket1, bucket2) == ("zeroinit_claims_dc1", "zeroinit_claims_dc2")


def test_existing_bucket_ttl_wins_with_a_warning(cluster, caplog):
    async def main():
        connections, (first,) = await stores(cluster.urls, "ttlsite", 10, ("prov-a",))
        try:
            with caplog.at_level(logging.WARNING, logger="zeroinit.provisioner.claims"):
                second = await cl.ClaimStore.open(connections[0], "ttlsite", "prov-b", 20)
            return first.ttl, second.ttl
        finally:
            await close(connections)

    assert run(main()) == (10, 10)
    assert "keeps values 10s (claim_ttl of the instance that created it), not 20s; using 10s" in caplog.text


def test_holder_whose_server_dies_reconnects_and_keeps_its_claim(cluster):
    """SIGKILL the server the holder is connected to (not the bucket's leader: a raft election's length
    depends on the machine's load, not on this code): it reconnects to another and its renewals go on."""
    ttl = 4.0

    async def main():
        b_nc = await nats.connect(servers=cluster.urls, reconnect_time_wait=0.2)
        b = await cl.ClaimStore.open(b_nc, "failover", "prov-b", ttl)
        leader = (await b.js.stream_info(b.stream)).cluster.leader
        victim = next(i for i, server in enumerate(cluster.servers) if server.server_name != leader)
        servers = [cluster.urls[victim]] + [url for i, url in enumerate(cluster.urls) if i != victim]
        a_nc = await nats.connect(servers=servers, dont_randomize=True, reconnect_time_wait=0.2)
        try:
            a = await cl.ClaimStore.open(a_nc, "failover", "prov-a", ttl)
            assert a_nc.connected_url.port == cluster.servers[victim].port
            renewer = asyncio.ensure_future(a.run())
            claim = await a.acquire("n1")
            await asyncio.get_running_loop().run_in_executor(None, cluster.kill, victim)
            await asyncio.sleep(1.5 * ttl)  # past the ttl: the claim lives only if renewals went on
            answer = await b.acquire("n1")
            renewer.cancel()
            return claim, answer, a_nc.connected_url.port, victim
        finally:
            await a_nc.close()
            await b_nc.close()

    victim = None
    try:
        claim, answer, port, victim = run(main())
    finally:
        for index, server in enumerate(cluster.servers):
            if server.process is None:
                cluster.restart(index)
    assert port != cluster.servers[victim].port, "the holder moved to another server"
    assert not claim.lost.is_set(), "renewal went on through another server"
    assert isinstance(answer, cl.ClaimHeld) and answer.holder == "prov-a"


def test_without_jetstream_open_says_why(plain_broker):
    async def main():
        nc = await nats.connect(plain_broker.url)
        try:
            reason = await cl.probe_jetstream(nc)
            with pytest.raises(cl.JetStreamUnavailable) as failure:
                await cl.ClaimStore.open(nc, "dc1", "prov-a", 30)
            return reason, str(failure.value)
        finally:
            await nc.close()

    reason, error = run(main())
    assert reason == error == "the broker has no JetStream (nothing answers $JS.API.INFO)"


def test_bucket_lost_with_its_server_is_made_again_and_unreachable_is_a_claim_error(jetstream_broker):
    """Memory storage does not outlive a server restart: the next acquire makes the bucket again."""
    broker = jetstream_broker

    async def main():
        nc = await nats.connect(broker.url, reconnect_time_wait=0.2, max_reconnect_attempts=-1)
        try:
            store = await cl.ClaimStore.open(nc, "restart", "prov-a", 30, replicas=1)
            before = await store.acquire("n1")
            await asyncio.get_running_loop().run_in_executor(None, broker.kill)
            with pytest.raises(cl.BucketError, match="claims bucket zeroinit_claims_restart unreachable"):
                await store.acquire("n2")
            await asyncio.get_running_loop().run_in_executor(None, broker.start)
            for _round in range(100):
                if nc.is_connected:
                    break
                await asyncio.sleep(0.1)
            after = await store.acquire("n2")
            return before, after, store
        finally:
            await nc.close()

    before, after, store = run(main())
    assert isinstance(before, cl.Claim) and isinstance(after, cl.Claim)
    assert before.lost.is_set(), "claims held in the lost bucket are reported lost"
    assert store.held == 1


def test_finishing_or_releasing_a_claim_taken_over_meanwhile_reports_it_lost(cluster):
    ttl = 3.0

    async def main():
        connections, (a, b) = await stores(cluster.urls, "late", ttl)
        try:
            first = await a.acquire("n1")
            second = await a.acquire("n2")
            await b.acquire("n1")
            await b.acquire("n2")
            await asyncio.sleep(ttl + cl.EXPIRY_MARGIN)  # a never renewed: both expire, b takes them
            assert isinstance(await b.acquire("n1"), cl.Claim)
            assert isinstance(await b.acquire("n2"), cl.Claim)
            return await a.release(first), await a.finish(second), first, second, a
        finally:
            await close(connections)

    released, finished, first, second, a = run(main())
    assert (released, finished) == (False, False)
    assert first.lost.is_set() and second.lost.is_set()
    assert a.lost_total == 2 and a.held == 0
