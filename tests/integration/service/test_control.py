"""Pause, resume and status over a real three-server cluster: every instance of the site answers, a pause
stops every instance's queue within a second, strangers and replays get nothing, the paused flag persists."""

import asyncio
import os
import time

import nats

from ansible_collections.zeroinit.bootstrap.plugins.module_utils.provisioning.service import control as ct
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.provisioning.service.metrics import ServiceMetrics
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.provisioning.service.queue import WorkQueue

TOKEN = "site-token"


def run(coro, timeout=60):
    return asyncio.run(asyncio.wait_for(coro, timeout))


class Instance(ct.ControlHandlers):
    """What a daemon wires: a queue, metrics, and optionally the persisted pause flag."""

    def __init__(self, name, site, record=None):
        self.name = name
        self.metrics = ServiceMetrics(site)
        self.queue = WorkQueue(observer=self.metrics.queue_observer())
        self.metrics.track(queue=self.queue)
        self.record = record
        self.started = time.time()
        self.paused_at = None

    async def status(self):
        snapshot = self.queue.snapshot()
        return {
            "paused": self.queue.paused,
            "busy_workers": snapshot["busy"],
            "queue": snapshot["queue"],
            "deferred": snapshot["deferred_nodes"],
            "provisioned": 0,
            "claims": 0,
        }

    async def pause(self, sender):
        self.queue.pause()
        self.paused_at = time.monotonic()
        self.metrics.set_paused(True)
        if self.record:
            await self.record.save(True, sender)
        return {"paused": True}

    async def resume(self, sender):
        self.queue.resume()
        self.metrics.set_paused(False)
        if self.record:
            await self.record.save(False, sender)
        return {"paused": False}

    async def hello(self):
        return {"mode": "cluster", "started": self.started}


async def start_instances(urls, site, names):
    connections, instances, servers = [], [], []
    for index, name in enumerate(names):
        nc = await nats.connect(urls[index % len(urls)])
        instance = Instance(name, site)
        server = ct.ControlServer(nc, ct.ControlCodec(site, ct.derive_control_key(site, TOKEN)), name, instance)
        await server.start()
        connections.append(nc)
        instances.append(instance)
        servers.append(server)
    return connections, instances, servers


def client(nc, site, token=TOKEN, sender="ops"):
    return ct.ControlClient(nc, ct.ControlCodec(site, ct.derive_control_key(site, token)), sender=sender)


def paused_gauge(instance):
    return f'choria_provisioner_paused{{site="{instance.metrics.site}"}} 1.0' in instance.metrics.render().decode()


def test_status_pause_resume_reach_every_instance_on_every_server(cluster):
    site = "ctl"

    async def main():
        connections, instances, _servers = await start_instances(cluster.urls, site, ["prov-a", "prov-b", "prov-c"])
        cli = await nats.connect(cluster.urls[1])
        try:
            instances[0].queue.add("n1", "startup")
            instances[0].queue.add("n2", "startup")
            await instances[0].queue.take()
            status = await client(cli, site).status(gather=0.5)
            await instances[0].queue.take()  # n2: the queue is empty, the workers below wait

            waiting = [asyncio.ensure_future(i.queue.take()) for i in instances]
            await asyncio.sleep(0.05)
            sent = time.monotonic()
            paused = await client(cli, site).broadcast("pause", gather=0.5)
            delays = [i.paused_at - sent for i in instances]
            for i in instances:
                i.queue.add("n3", "startup")
            await asyncio.sleep(0.3)
            taken_while_paused = [t.done() for t in waiting]
            gauges = [paused_gauge(i) for i in instances]
            resumed = await client(cli, site).broadcast("resume", gather=0.5)
            await asyncio.sleep(0.1)
            after_resume = [t.result().identity if t.done() else None for t in waiting]
            return status, paused, delays, taken_while_paused, gauges, resumed, after_resume, instances
        finally:
            for nc in [*connections, cli]:
                await nc.close()

    status, paused, delays, taken_while_paused, gauges, resumed, after_resume, instances = run(main())
    assert [doc["instance"] for doc in status] == ["prov-a", "prov-b", "prov-c"]
    for doc in status:
        assert set(ct.STATUS_KEYS) <= set(doc)
    assert (status[0]["busy_workers"], status[0]["queue"]) == (1, 1)
    assert [a["instance"] for a in paused] == ["prov-a", "prov-b", "prov-c"]
    assert all(a["ok"] and a["result"] == {"paused": True} for a in paused)
    print(f"\npause reached the instances after {', '.join(f'{d * 1000:.0f} ms' for d in delays)}")
    assert max(delays) < 1.0, f"every instance paused within a second: {delays}"
    assert taken_while_paused == [False, False, False]
    assert gauges == [True, True, True], "choria_provisioner_paused is 1 on every instance"
    assert all(a["ok"] and a["result"] == {"paused": False} for a in resumed)
    assert after_resume == ["n3", "n3", "n3"], "resume continues from the queue"
    assert not any(paused_gauge(i) for i in instances)


def test_strangers_replays_and_garbage_get_nothing_and_the_servers_keep_answering(cluster):
    site = "ctlsec"

    async def main():
        connections, instances, servers = await start_instances(cluster.urls, site, ["prov-a", "prov-b"])
        sniffer = await nats.connect(cluster.urls[2])
        stranger = await nats.connect(cluster.urls[0])
        captured = []

        async def capture(msg):
            captured.append(msg.data)

        await sniffer.subscribe(ct.control_subject(site), cb=capture)
        await sniffer.flush()
        try:
            wrong_key = await client(stranger, site, token="guess").broadcast("pause", gather=0.5)
            other_site = await client(stranger, "ctlsec2").broadcast("pause", gather=0.3)
            legit = await client(stranger, site).broadcast("status", gather=0.5)
            # Replay the captured legitimate request (same nonce, inside the time window).
            inbox = stranger.new_inbox()
            replies = []

            async def answer(msg):
                replies.append(msg)

            await stranger.subscribe(inbox, cb=answer)
            await stranger.publish(ct.control_subject(site), captured[-1], reply=inbox)
            for _round in range(200):
                await stranger.publish(ct.control_subject(site), os.urandom(64), reply=inbox)
            await stranger.publish(ct.control_subject(site), b"{" * 5000, reply=inbox)
            await stranger.flush()
            await asyncio.sleep(0.5)
            after = await client(stranger, site).status(gather=0.5)
            return wrong_key, other_site, legit, replies, after, servers, instances
        finally:
            for nc in [*connections, sniffer, stranger]:
                await nc.close()

    wrong_key, other_site, legit, replies, after, servers, instances = run(main())
    assert wrong_key == [] and other_site == []
    assert not any(i.queue.paused for i in instances), "nobody paused"
    assert [a["instance"] for a in legit] == ["prov-a", "prov-b"]
    assert replies == [], "a replayed request and garbage get no answer"
    assert [doc["instance"] for doc in after] == ["prov-a", "prov-b"], "the servers still answer"
    # wrong key, replay, 200 random messages, one oversized; the other site's request went to its own subject
    assert [server.rejected for server in servers] == [1 + 1 + 200 + 1] * 2


def test_a_starting_instance_finds_the_running_one(cluster):
    site = "ctlsingle"

    async def main():
        connections, instances, _servers = await start_instances(cluster.urls, site, ["prov-a"])
        nc = await nats.connect(cluster.urls[2])
        try:
            others = await client(nc, site).other_instances("prov-b", gather=0.5)
            alone = await client(nc, "ctlempty").other_instances("prov-b", gather=0.3)
            return others, alone, instances[0].started
        finally:
            for conn in [*connections, nc]:
                await conn.close()

    others, alone, started = run(main())
    assert others == [{"instance": "prov-a", "mode": "cluster", "started": started}]
    assert ct.first_started("prov-b", time.time(), others)["instance"] == "prov-a"
    assert alone == []


def test_paused_flag_persists_for_an_instance_started_later(cluster):
    site = "ctlpersist"

    async def main():
        nc = await nats.connect(cluster.urls[0])
        late = await nats.connect(cluster.urls[2])
        try:
            record = await ct.PauseRecord.open(nc.jetstream(), site)
            assert await record.load() is False
            instance = Instance("prov-a", site, record)
            server = ct.ControlServer(nc, ct.ControlCodec(site, ct.derive_control_key(site, TOKEN)), "prov-a", instance)
            await server.start()
            await client(nc, site).broadcast("pause", gather=0.3)
            later = await (await ct.PauseRecord.open(late.jetstream(), site)).load()
            await client(nc, site).broadcast("resume", gather=0.3)
            after_resume = await (await ct.PauseRecord.open(late.jetstream(), site)).load()
            return later, after_resume
        finally:
            await nc.close()
            await late.close()

    assert run(main()) == (True, False)
