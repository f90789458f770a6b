"""The provisioning inventory plugin against a real nats-server and real node agents, through the real CLIs
(ansible-inventory, ansible-playbook): hosts, facts, groups, composed variables, the cache, the listen window,
TLS to the broker and an unreachable broker."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import subprocess

import pytest
import yaml

from ansible_collections.zeroinit.bootstrap.plugins.module_utils.choria import protocol, subjects
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.choria.transport import connect
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.provisioning.discovery import (
    DiscoveryError,
    FleetDiscovery,
    discover_fleet,
)
from tests.support.ansible_run import ROOT, VENV_BIN, ansible_env, plain, run_playbook
from tests.support.broker import EmbeddedBroker, free_port
from tests.support.fleet import AgentFleet, AgentProcess, TestCA

WEB = 30
DB = 5
WEB_FACTS = {"role": "web", "os": {"family": "Debian"}}
DB_FACTS = {"role": "db", "os": {"family": "RedHat"}}


@pytest.fixture(scope="module")
def fleets(module_broker, tmp_path_factory):
    """Two agent processes on one broker: 30 web nodes and 5 db nodes, each node with its own identity fact."""
    state = tmp_path_factory.mktemp("inventory-fleet")
    web_fleet = AgentFleet(module_broker.url, WEB, state / "web", facts=WEB_FACTS, prefix="web")
    db_fleet = AgentFleet(module_broker.url, DB, state / "db", facts=DB_FACTS, prefix="db")
    with web_fleet as web, db_fleet as db:
        yield web, db


def write_config(directory, brokers, name="provisioning.yml", **options) -> str:
    config = {"plugin": "zeroinit.bootstrap.provisioning", "brokers": list(brokers)}
    config.update(options)
    path = directory / name
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return str(path)


def ansible_inventory(path, *args, env=None, timeout=120) -> subprocess.CompletedProcess:
    # check=False: callers assert on the return code and on stderr (some expect a failure).
    return subprocess.run(
        [str(VENV_BIN / "ansible-inventory"), "-i", path, *args],
        cwd=str(ROOT),
        env=ansible_env(env),
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        check=False,
    )


def inventory_list_text(path, *args, env=None) -> str:
    """``ansible-inventory --list`` as printed, untrusted-string markers included."""
    proc = ansible_inventory(path, "--list", *args, env=env)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def inventory_list(path, *args, env=None) -> dict:
    return plain(json.loads(inventory_list_text(path, *args, env=env)))


def group_hosts(listing: dict, group: str) -> list[str]:
    return sorted(listing.get(group, {}).get("hosts", []))


def all_hosts(listing: dict) -> list[str]:
    return sorted(listing["_meta"]["hostvars"])


# ------------------------------------------------------------------------------------------ the fleet


def test_list_shows_every_node_with_facts_groups_and_composed_variables(fleets, module_broker, tmp_path):
    web, db = fleets
    path = write_config(
        tmp_path,
        [module_broker.url],
        expect=WEB + DB,
        discovery_timeout=10,
        keyed_groups=[
            {"key": "zeroinit_facts.role", "prefix": "role"},
            {"key": "zeroinit_facts.os.family", "prefix": "os"},
        ],
        groups={"inventory_failed": "zeroinit_inventory_error is defined"},
        compose={"node_name": "zeroinit_facts.identity", "agent_version": "zeroinit_inventory.version"},
        host_details=True,
    )
    listing = inventory_list(path)
    identities = sorted(web.identities + db.identities)
    assert all_hosts(listing) == identities
    assert group_hosts(listing, "provisioning") == identities
    assert group_hosts(listing, "role_web") == web.identities and group_hosts(listing, "os_Debian") == web.identities
    assert group_hosts(listing, "role_db") == db.identities and group_hosts(listing, "os_RedHat") == db.identities
    assert group_hosts(listing, "inventory_failed") == []
    for identity in identities:
        hostvars = listing["_meta"]["hostvars"][identity]
        assert hostvars["zeroinit_facts"]["identity"] == identity
        assert hostvars["node_name"] == identity
        assert hostvars["zeroinit_identity"] == identity
        assert hostvars["zeroinit_collective"] == "provisioning"
        assert "discovery" in hostvars["zeroinit_discovered_by"]
        assert {"choria_provision", "rpcutil"} <= set(hostvars["zeroinit_inventory"]["agents"])
        assert hostvars["zeroinit_inventory"]["main_collective"] == "provisioning"
        assert hostvars["agent_version"] == hostvars["zeroinit_inventory"]["version"] != ""
        assert "zeroinit_inventory_error" not in hostvars
        assert "ansible_connection" not in hostvars  # the plugin leaves the connection to the user
    sample = listing["_meta"]["hostvars"][db.identities[0]]
    assert sample["zeroinit_facts"]["os"] == {"family": "RedHat"} and sample["zeroinit_facts"]["role"] == "db"


def test_graph_shows_the_fleet(fleets, module_broker, tmp_path):
    web, db = fleets
    path = write_config(
        tmp_path,
        [module_broker.url],
        expect=WEB + DB,
        discovery_timeout=10,
        keyed_groups=[{"key": "zeroinit_facts.role", "prefix": "role"}],
    )
    proc = ansible_inventory(path, "--graph")
    assert proc.returncode == 0, proc.stderr
    lines = [line.strip() for line in proc.stdout.splitlines()]
    assert "|--@provisioning:" in lines and "|--@role_db:" in lines and "|--@role_web:" in lines
    for identity in web.identities + db.identities:
        assert f"|  |--{identity}" in lines
    role_db = ansible_inventory(path, "--graph", "role_db")
    assert sorted(line.strip()[3:] for line in role_db.stdout.splitlines()[1:]) == db.identities


def test_a_playbook_runs_on_a_keyed_group_with_the_facts(fleets, module_broker, tmp_path):
    _web, db = fleets
    path = write_config(
        tmp_path,
        [module_broker.url],
        expect=WEB + DB,
        discovery_timeout=10,
        keyed_groups=[{"key": "zeroinit_facts.role", "prefix": "role"}],
        compose={"ansible_connection": "'local'"},
    )
    play = """
- name: Nodes in provisioning mode, from the provisioning network
  hosts: role_db
  gather_facts: false
  tasks:
    - name: Report what the node told us
      ansible.builtin.set_fact:
        seen: "{{ inventory_hostname }} {{ zeroinit_facts.identity }} {{ zeroinit_facts.os.family }}"
"""
    result = run_playbook(play, inventory=path)
    assert result.rc == 0, result.stderr
    assert sorted(result.stats) == db.identities
    for identity in db.identities:
        assert (
            result.result("Report what the node told us", identity)["ansible_facts"]["seen"]
            == f"{identity} {identity} RedHat"
        )


def test_cache_serves_a_stopped_fleet_until_refreshed(nats_broker, tmp_path):
    fleet = AgentFleet(nats_broker.url, 5, tmp_path / "state", facts=WEB_FACTS, prefix="cached")
    cache = {
        "cache": True,
        "cache_plugin": "ansible.builtin.jsonfile",
        "cache_connection": str(tmp_path / "cache"),
        "cache_timeout": 600,
    }
    path = write_config(
        tmp_path,
        [nats_broker.url],
        expect=5,
        discovery_timeout=3,
        keyed_groups=[{"key": "zeroinit_facts.role", "prefix": "role"}],
        **cache,
    )
    uncached = write_config(tmp_path, [nats_broker.url], name="live.provisioning.yml", discovery_timeout=1)
    with fleet:
        first_text = inventory_list_text(path)
        first = plain(json.loads(first_text))
        assert all_hosts(first) == fleet.identities
        assert list((tmp_path / "cache").iterdir()), "nothing was written to the jsonfile cache"
    # The fleet is gone: the cache still answers, with the same hosts, variables and groups, and the node data
    # still marked untrusted: the output is the live run's, character for character.
    second_text = inventory_list_text(path)
    assert second_text == first_text
    assert '"__ansible_unsafe": "web"' in second_text
    second = plain(json.loads(second_text))
    assert group_hosts(second, "role_web") == fleet.identities
    # Without the cache, and with a refresh of the cached source, nobody is there any more.
    assert all_hosts(inventory_list(uncached)) == []
    refreshed = inventory_list(path, "--flush-cache")
    assert all_hosts(refreshed) == [] and group_hosts(refreshed, "provisioning") == []
    # The refresh replaced the cached entry.
    assert all_hosts(inventory_list(path)) == []


class ListingInBackground:
    """``ansible-inventory --list`` started in the background once a watcher listens on the broker; ``started()``
    returns when the plugin's discovery ping is on the bus (so its event subscriptions are in place)."""

    def __init__(self, broker_url: str, path: str):
        self.broker_url = broker_url
        self.path = path
        self.proc: subprocess.Popen | None = None

    async def _start(self, pong_from: str | None) -> None:
        nc = await connect([self.broker_url], name="test-watch")
        try:
            pings = await nc.subscribe(subjects.broadcast_subject("discovery"))
            replies = await nc.subscribe(subjects.reply_inbox_prefix("choria=zeroinit-inventory") + ".>")
            await nc.flush()
            self.proc = subprocess.Popen(
                [str(VENV_BIN / "ansible-inventory"), "-i", self.path, "--list"],
                cwd=str(ROOT),
                env=ansible_env(),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                stdin=subprocess.DEVNULL,
            )
            while True:  # bounded by next_msg's timeout: the plugin pings within seconds of starting
                msg = await pings.next_msg(timeout=60)
                if protocol.decode_request(msg.data).callerid == "choria=zeroinit-inventory":
                    break
            while pong_from:  # bounded the same way: the node answers the ping it was sent
                msg = await replies.next_msg(timeout=60)
                if protocol.decode_reply(msg.data).senderid == pong_from:
                    break
        finally:
            await nc.close()

    def started(self, pong_from: str | None = None) -> None:
        """Returns once the plugin pinged (and, with ``pong_from``, once that node's pong reached it)."""
        asyncio.run(self._start(pong_from))

    def listing(self) -> dict:
        stdout, stderr = self.proc.communicate(timeout=120)
        assert self.proc.returncode == 0, stderr
        return plain(json.loads(stdout))

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate()


def test_listen_catches_a_node_that_starts_during_the_window(nats_broker, tmp_path):
    early = AgentFleet(nats_broker.url, 3, tmp_path / "early", facts=WEB_FACTS, prefix="early")
    late = AgentProcess(nats_broker.url, "late1.fleet.example.net", tmp_path / "late", facts=DB_FACTS)
    # expect=4 ends the listen window as soon as the late node is known, so the test waits no longer than that.
    background = ListingInBackground(
        nats_broker.url,
        write_config(tmp_path, [nats_broker.url], discovery_timeout=1, listen=60, expect=4, host_details=True),
    )
    with early:
        try:
            background.started()
            late.start(timeout=60)
            listing = background.listing()
        finally:
            late.stop()
            background.stop()
    assert all_hosts(listing) == sorted([*early.identities, "late1.fleet.example.net"])
    late_vars = listing["_meta"]["hostvars"]["late1.fleet.example.net"]
    # It was not there for the ping: it was found by its startup event / registration data, then inventoried.
    assert set(late_vars["zeroinit_discovered_by"]) & {"lifecycle", "registration"}
    assert (
        late_vars["zeroinit_facts"]["role"] == "db"
        and late_vars["zeroinit_facts"]["identity"] == "late1.fleet.example.net"
    )
    if "lifecycle" in late_vars["zeroinit_discovered_by"]:
        assert "startup" in [event["type"] for event in late_vars["zeroinit_lifecycle_events"]]


def test_a_node_that_shuts_down_while_listening_is_not_listed(nats_broker, tmp_path):
    stays = AgentFleet(nats_broker.url, 1, tmp_path / "stays", facts=WEB_FACTS, prefix="stays")
    leaves = AgentProcess(nats_broker.url, "leaves1.fleet.example.net", tmp_path / "leaves", facts=WEB_FACTS)
    late = AgentFleet(nats_broker.url, 2, tmp_path / "late", facts=DB_FACTS, prefix="late")
    # The ping finds 2 nodes; one leaves (shutdown event), then 2 arrive: the window ends at 3 nodes still there.
    background = ListingInBackground(
        nats_broker.url, write_config(tmp_path, [nats_broker.url], discovery_timeout=1, listen=60, expect=3)
    )
    with stays:
        try:
            leaves.start(timeout=60)
            background.started(pong_from=leaves.identity)  # the plugin knows it; then it leaves
            leaves.stop()
            late.start()
            listing = background.listing()
        finally:
            late.stop()
            leaves.stop()
            background.stop()

    assert all_hosts(listing) == sorted(stays.identities + late.identities)
    assert "leaves1.fleet.example.net" not in listing["_meta"]["hostvars"]


def test_a_node_that_hangs_after_discovery_is_listed_with_its_inventory_error(nats_broker, tmp_path):
    healthy = AgentFleet(nats_broker.url, 2, tmp_path / "healthy", facts=WEB_FACTS, prefix="healthy")
    hung = AgentProcess(nats_broker.url, "hung1.fleet.example.net", tmp_path / "hung", facts=DB_FACTS)

    class FreezeAfterPong(FleetDiscovery):
        """Freezes the hung node's process (SIGSTOP) the moment its pong arrives, before any inventory request."""

        async def _on_pong(self, reply) -> None:
            await super()._on_pong(reply)
            if reply.senderid == hung.identity:
                os.kill(hung.process.pid, signal.SIGSTOP)

    with healthy:
        hung.start(timeout=60)
        try:
            run = FreezeAfterPong([nats_broker.url], timeout=10, expect=3, inventory_timeout=1)
            found = asyncio.run(run.run())
        finally:
            if hung.process is not None:
                os.kill(hung.process.pid, signal.SIGCONT)
            hung.stop()
    assert sorted(found) == sorted([*healthy.identities, hung.identity])
    assert found[hung.identity]["inventory_error"] == "rpcutil#inventory: no reply within 1.0s"
    assert found[hung.identity]["sources"] == ["discovery"]
    for identity in healthy.identities:
        assert "inventory_error" not in found[identity] and found[identity]["facts"]["identity"] == identity


def test_unreachable_broker_is_a_clear_error_naming_it(tmp_path):
    url = f"nats://127.0.0.1:{free_port()}"
    path = write_config(tmp_path, [url])
    proc = ansible_inventory(path, "--list", env={"ANSIBLE_INVENTORY_UNPARSED_FAILED": "true"})
    assert proc.returncode != 0
    assert f"cannot reach the provisioning broker(s) {url}" in proc.stderr


def test_brokers_from_the_environment(fleets, module_broker, tmp_path):
    web, db = fleets
    path = tmp_path / "provisioning.yml"
    path.write_text(f"plugin: zeroinit.bootstrap.provisioning\nexpect: {WEB + DB}\ndiscovery_timeout: 10\n")
    listing = inventory_list(str(path), env={"ZEROINIT_BROKERS": module_broker.url})
    assert all_hosts(listing) == sorted(web.identities + db.identities)


# ------------------------------------------------------------------------------------------ TLS to the broker


def test_tls_broker_needs_the_ca_and_accepts_a_client_certificate(tmp_path):
    ca = TestCA()
    server = ca.write_key_pair(tmp_path / "broker", "broker", ips=["127.0.0.1"], server=True, client=False)
    client = ca.write_key_pair(tmp_path / "client", "controller", client=True)
    with EmbeddedBroker(
        tls={"cert": server["cert"], "key": server["key"], "ca": server["ca"], "verify": True}
    ) as broker:
        found = discover_fleet(
            [broker.url], timeout=0.5, tls={"ca": client["ca"], "cert": client["cert"], "key": client["key"]}
        )
        assert found == {}  # connected and asked: nobody waits on this broker
        with pytest.raises(DiscoveryError, match=broker.url):
            discover_fleet([broker.url], timeout=0.5)  # no CA: the broker's certificate is not trusted
        with pytest.raises(DiscoveryError, match=broker.url):
            discover_fleet([broker.url], timeout=0.5, tls={"ca": client["ca"]})  # no client certificate


# ------------------------------------------------------------------------------------------ signed requests


def test_with_signing_options_the_plugin_signs_its_requests_and_a_bad_key_is_named(fleets, module_broker, tmp_path):
    web, db = fleets
    provisioner = TestCA("site provisioning CA").write_key_pair(tmp_path / "prov", "prov.example.net", provisioner=True)
    path = write_config(
        tmp_path,
        [module_broker.url],
        expect=WEB + DB,
        discovery_timeout=10,
        signing_cert=provisioner["cert"],
        signing_key=provisioner["key"],
    )
    with open(provisioner["cert"]) as handle:
        pubcert = handle.read()

    async def watch_and_list():
        nc = await connect([module_broker.url], name="watcher")
        seen = []

        async def on_request(msg):
            secure = json.loads(base64.b64decode(json.loads(msg.data)["data"]))
            seen.append((msg.subject, secure["pubcert"], secure["signature"]))

        await nc.subscribe("provisioning.broadcast.agent.*", cb=on_request)
        await nc.subscribe("provisioning.node.>", cb=on_request)
        await nc.flush()
        proc = await asyncio.create_subprocess_exec(
            str(VENV_BIN / "ansible-inventory"),
            "-i",
            path,
            "--list",
            cwd=str(ROOT),
            env=ansible_env(None),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            stdin=asyncio.subprocess.DEVNULL,
        )
        out, err = await proc.communicate()
        await nc.flush()
        await nc.close()
        return proc.returncode, out, err, seen

    code, out, err, seen = asyncio.run(watch_and_list())
    assert code == 0, err.decode()
    assert all_hosts(plain(json.loads(out))) == sorted(web.identities + db.identities)
    assert any(subject.endswith(".discovery") for subject, _cert, _sig in seen)
    assert any(subject.endswith(".rpcutil") or subject.startswith("provisioning.node.") for subject, *_rest in seen)
    assert {cert for _subject, cert, _sig in seen} == {pubcert}
    assert all(sig != "insecure" for _subject, _cert, sig in seen)

    os.unlink(provisioner["key"])
    proc = ansible_inventory(path, "--list", env={"ANSIBLE_INVENTORY_UNPARSED_FAILED": "true"})
    assert proc.returncode != 0 and "the signing key" in proc.stderr and "cannot be read" in proc.stderr
