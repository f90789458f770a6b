"""The node agent against a real nats-server: discovery, the whole provisioning cycle, refusals and robustness."""

import asyncio
import json
import os
import random
import stat
import time

import pytest

from ansible_collections.zeroinit.bootstrap.plugins.module_utils.choria import events as ev
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.choria import filters
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.choria import protocol as p
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.choria import subjects as sj
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.choria.config import parse_config
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.choria.transport import connect, tls_context
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.node.journal import JOURNAL
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.pki.x509 import certificate_matches_key
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.provisioning.rpc import RpcClient
from tests.support.broker import EmbeddedBroker
from tests.support.fleet import AgentFleet, AgentProcess, TestCA, discover, provision_node

TOKEN = "s3cret"
FLEET = 50


@pytest.fixture(scope="module")
def fleet(module_broker, tmp_path_factory):
    with AgentFleet(
        module_broker.url,
        FLEET,
        tmp_path_factory.mktemp("fleet") / "state",
        facts={"role": "worker", "rack": {"row": 4}},
        connections=2,
    ) as fleet:
        yield fleet


@pytest.fixture(scope="module")
def ca():
    return TestCA()


async def raw_request(url, req, subject):
    """Publish a hand-made request and wait for its one reply."""
    nc = await connect([url], name="test-raw")
    try:
        sub = await nc.subscribe(req.reply_to)
        await nc.publish(subject, p.encode_request(req))
        msg = await sub.next_msg(timeout=10)
        return p.decode_reply(msg.data)
    finally:
        await nc.close()


# -------------------------------------------------------------------------------------------- fleet


def test_fleet_answers_discovery_and_inventory(fleet, module_broker):
    async def run():
        async with RpcClient([module_broker.url]) as client:
            found = await client.discover(timeout=10, expect=FLEET)
            replies = await client.request(
                "rpcutil", p.rpc_request_body("rpcutil", "inventory"), timeout=10, expect=FLEET
            )
            matching = await client.discover(timeout=3, expect=1, flt=filters.identity_filter([fleet.identities[7]]))
            fact_flt = filters.empty_filter()
            fact_flt["fact"] = [{"fact": "rack.row", "operator": "==", "value": "4"}]
            by_fact = await client.discover(timeout=5, expect=FLEET, flt=fact_flt)
            return found, replies, matching, by_fact

    found, replies, matching, by_fact = asyncio.run(run())
    assert found == fleet.identities and len(found) == FLEET
    assert sorted(r.senderid for r in replies) == fleet.identities
    one = next(r for r in replies if r.senderid == fleet.identities[0])
    assert one.ok and one.data["facts"] == {"role": "worker", "rack": {"row": 4}, "identity": fleet.identities[0]}
    assert one.data["collectives"] == ["provisioning"]
    assert matching == [fleet.identities[7]]
    assert by_fact == fleet.identities
    assert all((fleet.node_dir(i) / "ssl").is_dir() for i in fleet.identities)


def test_wrong_token_is_refused_and_no_key_is_made(fleet, module_broker):
    identity = fleet.identities[3]

    async def run():
        async with RpcClient([module_broker.url], callerid="intruder") as client:
            return await client.call(identity, "choria_provision", "gencsr", {"token": "guess"}, timeout=10)

    reply = asyncio.run(run())
    assert (reply.statuscode, reply.statusmsg) == (p.StatusCode.ABORTED, "incorrect provisioning token")
    assert not (fleet.node_dir(identity) / "ssl" / "private.pem").exists()


def test_stale_request_is_refused_with_its_skew(fleet, module_broker):
    identity = fleet.identities[4]
    req = p.Request(
        agent="choria_provision",
        body=p.rpc_request_body("choria_provision", "gencsr", {"token": TOKEN}),
        callerid="choria=replayer",
        senderid="replayer",
        ttl=60,
        time=int(time.time()) - 3600,
    )
    req.reply_to = sj.reply_subject(req.callerid, req.requestid)
    reply = asyncio.run(raw_request(module_broker.url, req, sj.node_subject(identity)))
    assert reply.statuscode == p.StatusCode.ABORTED
    assert "request expired" in reply.statusmsg and "3600s" in reply.statusmsg
    assert not (fleet.node_dir(identity) / "ssl" / "private.pem").exists()


def test_garbage_is_ignored_and_the_agent_keeps_serving(fleet, module_broker):
    identity = fleet.identities[5]
    good = p.Request(agent="rpcutil", body=p.rpc_request_body("rpcutil", "ping"), callerid="choria=x", senderid="x")
    transport = json.loads(p.encode_request(good))
    wrong_protocol = dict(transport, protocol="choria:transport:9")
    secure_bad = dict(transport, data="bm90IGpzb24=")  # base64 of "not json"
    payloads = [
        os.urandom(64),
        b"",
        b"{not json",
        b"[]",
        json.dumps(wrong_protocol).encode(),
        json.dumps(secure_bad).encode(),
        b"\xff\xfe" * 100,
        b"ping",
    ]
    subjects = [sj.node_subject(identity)] + [
        sj.broadcast_subject(a) for a in ("discovery", "rpcutil", "choria_provision")
    ]

    async def run():
        nc = await connect([module_broker.url], name="garbage")
        try:
            for subject in subjects:
                for payload in payloads:
                    await nc.publish(subject, payload)
            # a valid request on the wrong agent's broadcast subject is ignored too
            await nc.publish(sj.broadcast_subject("choria_provision"), p.encode_request(good))
            await nc.flush()
        finally:
            await nc.close()
        async with RpcClient([module_broker.url]) as client:
            ping = await client.call(identity, "rpcutil", "ping", timeout=10)
            found = await client.discover(timeout=10, expect=FLEET)
        return ping, found

    ping, found = asyncio.run(run())
    assert ping.ok and abs(ping.data["pong"] - time.time()) < 60
    assert found == fleet.identities
    assert fleet.running()


def test_unknown_action_and_unsupported_action_get_statuscode_2(fleet, module_broker):
    identity = fleet.identities[6]

    async def run():
        async with RpcClient([module_broker.url]) as client:
            return (
                await client.call(identity, "choria_provision", "gen25519", {"token": TOKEN}, timeout=10),
                await client.call(identity, "rpcutil", "nonesuch", timeout=10),
            )

    unsupported, unknown = asyncio.run(run())
    assert unsupported.statuscode == unknown.statuscode == p.StatusCode.UNKNOWN_ACTION
    assert "not supported" in unsupported.statusmsg and "nonesuch" in unknown.statusmsg


# -------------------------------------------------------------------------------------------- one node, full cycle


@pytest.fixture
def tls_broker(tmp_path, ca):
    """A second nats-server that requires client certificates from the test CA."""
    files = ca.write_key_pair(tmp_path / "broker-tls", "127.0.0.1", ips=["127.0.0.1"], server=True, client=False)
    with EmbeddedBroker(tls={"cert": files["cert"], "key": files["key"], "ca": files["ca"], "verify": True}) as broker:
        yield broker


def test_full_cycle_gencsr_configure_restart_reprovision(nats_broker, tls_broker, ca, tmp_path):
    identity = "web1.example.net"
    client_files = ca.write_key_pair(tmp_path / "client", "operator", client=True)
    client_tls = tls_context(ca=client_files["ca"], cert=client_files["cert"], key=client_files["key"])
    site_provisioner = ca.provisioner_signer("operator.example.net")
    configuration = {
        "plugin.choria.server.provision": "false",
        "plugin.choria.middleware_hosts": tls_broker.url,
        "collectives": "ops",
        "main_collective": "ops",
    }
    events: list[dict] = []
    registrations: list[dict] = []

    async def run(agent):
        nc = await connect([nats_broker.url], name="listener")

        async def on_event(msg):
            events.append(ev.parse_lifecycle_event(msg.data))

        async def on_registration(msg):
            registrations.append(json.loads(msg.data))

        await nc.subscribe(sj.LIFECYCLE_SUBJECT_WILDCARD, cb=on_event)
        await nc.subscribe(sj.REGISTRATION_SUBJECT, cb=on_registration)
        await nc.flush()
        agent.launch()  # after subscribing, so the startup event is seen
        assert await discover(nats_broker.url, [identity], 30) == [identity]
        async with RpcClient([nats_broker.url], callerid="provisioner") as client:
            replies = await provision_node(client, identity, ca, configuration, token=TOKEN, splay=1)
            assert replies["inventory"].data["facts"]["identity"] == identity
            # the node arrives in its collective on the TLS broker, with its own certificate
            arrived = await discover(tls_broker.url, [identity], 30, collective="ops", tls=client_tls)
            # The operator signs with a provisioner certificate of the site CA: the configured node is locked to it.
            async with RpcClient(
                [tls_broker.url], callerid="operator", collective="ops", tls=client_tls, signer=site_provisioner
            ) as ops:
                ping = await ops.call(identity, "rpcutil", "ping", timeout=10)
                inventory = await ops.call(identity, "rpcutil", "inventory", timeout=10)
                refused = await ops.call(identity, "choria_provision", "gencsr", {"token": TOKEN}, timeout=10)
                gone = await client.discover(timeout=2, expect=1, flt=filters.identity_filter([identity]))
                files_configured = snapshot(agent.node_dir())
                # the one-way lock survives a process restart: the node comes back configured
                assert agent.stop() == 0
                agent.launch()
                again = await discover(tls_broker.url, [identity], 30, collective="ops", tls=client_tls)
                gone += await client.discover(timeout=2, expect=1, flt=filters.identity_filter([identity]))
                assert again == [identity]
                ops.signer = None
                unsigned = await ops.call(identity, "choria_provision", "reprovision", {"token": TOKEN}, timeout=10)
                ops.signer = site_provisioner
                reprovision = await ops.call(identity, "choria_provision", "reprovision", {"token": TOKEN}, timeout=10)
            back = await discover(nats_broker.url, [identity], 30)
        rc = agent.stop()  # blocks the loop; the listener's socket buffers the shutdown event meanwhile
        await nc.flush()
        await asyncio.sleep(0.3)
        await nc.close()
        return replies, arrived, ping, inventory, refused, gone, files_configured, unsigned, reprovision, back, rc

    agent = AgentProcess(
        nats_broker.url,
        identity,
        tmp_path / "node",
        token=TOKEN,
        facts={"site": "lab"},
        extra_args=["--registration-interval", "1"],
    )
    try:
        (replies, arrived, ping, inventory, refused, gone, files, unsigned, reprovision, back, rc) = asyncio.run(
            run(agent)
        )
    finally:
        agent.stop()
    assert rc == 0  # SIGTERM: shutdown events, drain, exit 0
    ssldir = agent.node_dir() / "ssl"
    assert replies["gencsr"].data["ssldir"] == str(ssldir)
    # files after configure: key 0600 and matching the certificate, the CA, the configuration
    assert files["modes"]["private.pem"] == 0o600
    assert certificate_matches_key(files["certificate.pem"], files["private.pem"])
    assert files["ca.pem"].decode() == ca.pem
    conf = parse_config(files["server.conf"].decode())
    assert conf["plugin.choria.server.provision"] == "false"
    assert conf["plugin.security.file.certificate"] == str(ssldir / "certificate.pem")
    assert conf["identity"] == identity
    # configured mode: answers on the TLS broker, refuses provisioning actions, gone from provisioning
    assert arrived == [identity]
    assert ping.ok and inventory.data["collectives"] == ["ops"] and inventory.data["main_collective"] == "ops"
    assert refused.statuscode == p.StatusCode.ABORTED and "reprovision" in refused.statusmsg
    assert gone == []
    # locked to its site: the token alone cannot send it back; the site's provisioner can
    assert unsigned.statuscode == p.StatusCode.ABORTED and "the token alone is refused" in unsigned.statusmsg
    # reprovision: back in provisioning mode, old certificate kept aside, still locked to its site
    assert reprovision.ok
    assert back == [identity]
    assert (ssldir / "previous" / "certificate.pem").read_bytes() == files["certificate.pem"]
    assert parse_config((agent.node_dir() / "server.conf").read_text())["plugin.choria.server.provision"] == "true"
    assert (agent.node_dir() / "site-lock-ca.pem").read_text() == ca.pem
    types = [(e["identity"], e["type"]) for e in events]
    assert (identity, "startup") in types and (identity, "provisioned") in types and (identity, "shutdown") in types
    assert types.index((identity, "startup")) < types.index((identity, "provisioned"))
    assert any(r["identity"] == identity and r["facts"]["site"] == "lab" for r in registrations)


def snapshot(node_dir):
    files = {name: (node_dir / "ssl" / name).read_bytes() for name in ("private.pem", "certificate.pem", "ca.pem")}
    files["server.conf"] = (node_dir / "server.conf").read_bytes()
    files["modes"] = {"private.pem": stat.S_IMODE(os.stat(node_dir / "ssl" / "private.pem").st_mode)}
    return files


def test_restart_is_refused_when_provisioning_stays_on(nats_broker, ca, tmp_path):
    identity = "loop.example.net"
    with AgentProcess(nats_broker.url, identity, tmp_path / "node", token=TOKEN) as agent:

        async def run():
            async with RpcClient([nats_broker.url]) as client:
                with pytest.raises(
                    RuntimeError, match=r"refusing to restart .* plugin\.choria\.server\.provision enabled"
                ):
                    await provision_node(
                        client,
                        identity,
                        ca,
                        {"plugin.choria.server.provision": "true", "plugin.choria.middleware_hosts": nats_broker.url},
                        token=TOKEN,
                    )
                await asyncio.sleep(0.5)
                return await client.call(identity, "rpcutil", "ping", timeout=10)

        ping = asyncio.run(run())
        assert ping.ok  # still in provisioning mode, still answering
        assert agent.running()


def test_node_killed_during_configure_keeps_a_consistent_set(nats_broker, tmp_path):
    """SIGKILL at random moments while configure renames its files (slowed down): old set or new set, never a mix."""
    identity = "crash.example.net"
    state = tmp_path / "node"
    cas = [TestCA("set A"), TestCA("set B")]
    env = {"ZEROINIT_AGENT_TEST_SLOW_WRITES": "0.2"}
    rng = random.Random(7)
    sets = {}
    # provisioning stays on so that the restarted process comes back in provisioning mode for the next trial
    configuration = {"plugin.choria.server.provision": "true", "plugin.choria.middleware_hosts": nats_broker.url}

    # Signed under a provisioning CA the agent pins: the lock each configure commits (set A's CA or set B's) keeps
    # it, so the next trial may configure the other set.
    provisioning = TestCA("provisioning CA")
    (tmp_path / "provisioning-ca.pem").write_text(provisioning.pem)
    provisioner = provisioning.provisioner_signer()

    async def configure(agent_index, which, wait):
        async with RpcClient([nats_broker.url], callerid="crash-test", signer=provisioner) as client:
            if not sets:
                gencsr = await client.call(identity, "choria_provision", "gencsr", {"token": TOKEN}, timeout=10)
                for name, authority in zip("AB", cas):
                    cert = authority.sign_csr(gencsr.data["csr"])
                    conf = dict(configuration, collectives=name.lower())
                    sets[name] = {"certificate": cert, "ca": authority.pem, "config": json.dumps(conf)}
            request = dict(sets[which], token=TOKEN)
            if wait:
                return await client.call(identity, "choria_provision", "configure", request, timeout=10)
            req = client.new_request(
                "choria_provision", p.rpc_request_body("choria_provision", "configure", request), [identity]
            )
            await client.publish_request(req, [identity])
            await client.nc.flush()
            return None

    def on_disk():
        ssl = state / "ssl"
        cert, ca_pem = (ssl / "certificate.pem").read_text(), (ssl / "ca.pem").read_text()
        conf = parse_config((state / "server.conf").read_text())
        return cert, ca_pem, conf["collectives"]

    agent = AgentProcess(
        nats_broker.url,
        identity,
        state,
        token=TOKEN,
        env=env,
        extra_args=["--provisioning-ca", str(tmp_path / "provisioning-ca.pem")],
    )
    try:
        agent.start(30)
        assert asyncio.run(configure(0, "A", wait=True)).ok  # the old set: A
        agent.stop()
        seen = set()
        # None: kill while staging (no journal yet); a number: that long after the journal appeared, i.e.
        # somewhere among the renames (one every 0.2 s) or just after them.
        for trial, after_journal in enumerate([None, 0.05, 0.25, 0.45, rng.uniform(0, 0.7)]):
            which = "B" if trial % 2 == 0 else "A"
            agent.start(30)
            asyncio.run(configure(trial, which, wait=False))
            if after_journal is None:
                time.sleep(0.01)
            else:
                deadline = time.monotonic() + 10
                while not (state / JOURNAL).exists() and time.monotonic() < deadline:
                    time.sleep(0.005)
                time.sleep(after_journal)
            agent.kill()
            interrupted = (state / JOURNAL).exists()
            agent.start(30)  # the agent finishes or discards the interrupted configure at start
            agent.stop()
            assert not (state / JOURNAL).exists()
            cert, ca_pem, collective = on_disk()
            name = collective.upper()
            assert (cert, ca_pem) == (sets[name]["certificate"], sets[name]["ca"]), f"mixed set in trial {trial}"
            assert (state / "site-lock-ca.pem").read_text() == ca_pem, f"lock of another set in trial {trial}"
            assert certificate_matches_key(cert.encode(), (state / "ssl" / "private.pem").read_bytes())
            seen.add((interrupted, name))
        assert not [n for n in os.listdir(state / "ssl") if n.endswith(".staged")]
    finally:
        agent.stop()
    assert any(interrupted for interrupted, _name in seen), "no trial was killed in the middle of the renames"


def test_fleet_nodes_find_out_a_plain_host_port_broker_wants_tls(nats_broker, tls_broker, ca, tmp_path):
    """middleware_hosts as host:port (no scheme) on a broker that requires TLS: the nodes learn it from the
    broker's INFO and connect with their own client certificates."""
    client_files = ca.write_key_pair(tmp_path / "client", "operator", client=True)
    client_tls = tls_context(ca=client_files["ca"], cert=client_files["cert"], key=client_files["key"])
    configuration = {
        "plugin.choria.server.provision": "false",
        "plugin.choria.middleware_hosts": f"127.0.0.1:{tls_broker.port}",
        "collectives": "lab",
    }
    with AgentFleet(nats_broker.url, 3, tmp_path / "state", prefix="tls") as fleet:

        async def run():
            async with RpcClient([nats_broker.url], callerid="provisioner") as client:
                await asyncio.gather(
                    *(provision_node(client, identity, ca, configuration, token=TOKEN) for identity in fleet.identities)
                )
            arrived = await discover(tls_broker.url, fleet.identities, 30, collective="lab", tls=client_tls)
            async with RpcClient([tls_broker.url], callerid="operator", collective="lab", tls=client_tls) as ops:
                pings = await ops.request("rpcutil", p.rpc_request_body("rpcutil", "ping"), timeout=10, expect=3)
            return arrived, pings

        arrived, pings = asyncio.run(run())
    assert arrived == fleet.identities
    assert sorted(r.senderid for r in pings if r.ok) == fleet.identities
