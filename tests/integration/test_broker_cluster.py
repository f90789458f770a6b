"""The embedded broker's JetStream and cluster modes, on real nats-server processes on loopback.

A cluster is usable when ``start()`` returns: every server answers the JetStream API, data written through
one server is read through another, and losing a server (SIGKILL) leaves a replicated bucket readable.
"""

import asyncio
import os

import nats
import pytest
from nats.js.api import KeyValueConfig, StorageType

from tests.support.broker import (
    BrokerError,
    EmbeddedBroker,
    EmbeddedCluster,
)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def account_info(url: str):
    nc = await nats.connect(url, connect_timeout=2, max_reconnect_attempts=0)
    try:
        return await nc.jetstream().account_info()
    finally:
        await nc.close()


def test_cluster_serves_jetstream_from_every_server_and_survives_a_killed_server():
    with EmbeddedCluster(size=3) as cluster:
        pids = [server.process.pid for server in cluster.servers]
        assert len(set(cluster.urls)) == 3
        leader = cluster.meta_leader()
        assert leader in {server.server_name for server in cluster.servers}
        for url in cluster.urls:
            assert asyncio.run(account_info(url)).api.level >= 1

        async def write_then_read(write_url, read_url):
            writer = await nats.connect(write_url)
            reader = await nats.connect(read_url)
            try:
                config = KeyValueConfig(bucket="cluster_check", replicas=3, storage=StorageType.MEMORY)
                kv = await writer.jetstream().create_key_value(config)
                await kv.put("greeting", b"hello")
                entry = await (await reader.jetstream().key_value("cluster_check")).get("greeting")
                return entry.value
            finally:
                await writer.close()
                await reader.close()

        assert asyncio.run(write_then_read(cluster.urls[0], cluster.urls[2])) == b"hello"

        # Lose the meta leader: the others elect a new one and the R3 bucket stays readable.
        leader_index = next(i for i, s in enumerate(cluster.servers) if s.server_name == leader)
        cluster.kill(leader_index)
        assert not alive(pids[leader_index])
        cluster.wait_ready(30)
        assert cluster.meta_leader() not in ("", leader)
        survivor = cluster.urls[(leader_index + 1) % 3]

        async def read(url):
            """The value, read as a client would: again while the bucket's own replicas elect a new leader."""
            nc = await nats.connect(url)
            try:
                for _round in range(30):
                    try:
                        return (await (await nc.jetstream(timeout=1).key_value("cluster_check")).get("greeting")).value
                    except (nats.errors.TimeoutError, nats.js.errors.ServiceUnavailableError):
                        await asyncio.sleep(0.5)
                raise AssertionError("the R3 bucket stayed unreadable for 45s after one server died")
            finally:
                await nc.close()

        assert asyncio.run(read(survivor)) == b"hello"
        cluster.restart(leader_index)
        assert asyncio.run(account_info(cluster.urls[leader_index])).api.level >= 1
        workdir = cluster.workdir
    assert not any(alive(pid) for pid in pids), "every server process is stopped"
    assert not os.path.exists(workdir)


def test_single_broker_with_and_without_jetstream():
    with EmbeddedBroker(jetstream=True) as broker:
        assert broker.jetstream_health() == ""
        assert asyncio.run(account_info(broker.url)).api.level >= 1
    # nats-py turns the JetStream API's "no responders" into ServiceUnavailableError.
    with EmbeddedBroker() as broker, pytest.raises(nats.js.errors.ServiceUnavailableError):
        asyncio.run(account_info(broker.url))


def test_cluster_start_failure_names_the_server_and_stops_the_others(tmp_path):
    cluster = EmbeddedCluster(size=2)
    # A server that cannot start (its config names a store that is a file) fails the whole start.
    (tmp_path / "store").write_text("not a directory")
    cluster.servers[1].store_dir = str(tmp_path / "store")
    with pytest.raises(BrokerError) as failure:
        cluster.start(timeout=20)
    assert "nats-server zeroinit-1 exited at start" in str(failure.value)
    assert "storage directory is not a directory" in str(failure.value), "the server's log is in the error"
    assert all(server.process is None for server in cluster.servers)
    assert not os.path.exists(cluster.workdir)
