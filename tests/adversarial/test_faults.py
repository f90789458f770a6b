"""Faults in the middle of a run, with real processes: the provisioning broker restarted while 300 nodes are being
provisioned, and the fleet process SIGKILLed while 200 nodes write their configuration. Afterwards every node holds
either its old state (still waiting in provisioning mode) or a whole new one (certificate, key, CA and configuration
that belong together), never a mix, and a second run completes. A capture of the bus shows no private key."""

from __future__ import annotations

import asyncio
import collections
import pathlib
import threading
import time

import pytest

from ansible_collections.zeroinit.bootstrap.plugins.module_utils.choria.config import parse_config, provisioning_enabled
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.common.files import read_text
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.node.journal import (
    JOURNAL,
    SLOW_WRITES_ENV,
    STAGED_SUFFIX,
)
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.pki.ca import CertificateAuthority
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.pki.x509 import certificate_matches_key
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.provisioning.bulk import provision
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.provisioning.settings import ProvisionSettings
from tests.support.broker import EmbeddedBroker
from tests.support.bus import BusCapture
from tests.support.fleet import AgentFleet, discover

TOKEN = "fault-token"
# Nodes that must be between the first and the last rename of their configuration when the fleet is killed.
MID_WRITE = 8
# Each node fsyncs and writes in the action threads, as one node per machine does (a simulated fleet otherwise
# writes inline on its event loop); more threads than the default 8, so many nodes are mid-write at once.
WRITE_ARGS = ["--workers", "32", "--fsync", "on"]


@pytest.fixture
def ca(tmp_path):
    cert, key = str(tmp_path / "ca.pem"), str(tmp_path / "ca.key")
    CertificateAuthority.load_or_create(cert, key, common_name="fault CA")
    return {"ca_cert": cert, "ca_key": key}


def settings(broker, ca, members, **extra) -> ProvisionSettings:
    configuration = {"plugin.choria.middleware_hosts": members.url, "collectives": "members"}
    options = dict(brokers=[broker.url], token=TOKEN, signer=ca, configuration=configuration)
    options.update(timeout=3.0, retries=1, discovery_timeout=2.0)
    options.update(extra)
    return ProvisionSettings(**options)


def node_state(node_dir: pathlib.Path, ca_pem: bytes) -> str:
    """ "waiting" (no new state), "member" (a whole new set); AssertionError naming the node for anything else."""
    ssl = node_dir / "ssl"
    leftovers = [p.name for p in (node_dir, ssl) if p.is_dir() for p in p.iterdir() if p.name.endswith(STAGED_SUFFIX)]
    assert not (node_dir / JOURNAL).exists() and not leftovers, f"{node_dir.name}: unfinished write {leftovers}"
    conf_path = node_dir / "server.conf"
    conf = parse_config(conf_path.read_text()) if conf_path.exists() else {}
    if not (ssl / "certificate.pem").exists():
        assert provisioning_enabled(conf), f"{node_dir.name}: configured without a certificate"
        return "waiting"
    assert not provisioning_enabled(conf), f"{node_dir.name}: a certificate but still provisioning"
    assert certificate_matches_key((ssl / "certificate.pem").read_bytes(), (ssl / "private.pem").read_bytes()), (
        f"{node_dir.name}: certificate and key do not belong together"
    )
    assert (ssl / "ca.pem").read_bytes() == ca_pem, f"{node_dir.name}: another CA"
    assert conf.get("collectives") == "members", f"{node_dir.name}: configuration {conf}"
    return "member"


def node_states(fleet, ca) -> dict:
    """Each node's state by identity (see node_state)."""
    ca_pem = pathlib.Path(ca["ca_cert"]).read_bytes()
    return {identity: node_state(pathlib.Path(fleet.node_dir(identity)), ca_pem) for identity in fleet.identities}


def tally(states: dict) -> dict:
    return dict(collections.Counter(states.values()))


def mid_write(fleet, least: int) -> list:
    """The nodes seen between the first and the last rename of configure: a new certificate beside a configuration
    that still says provisioning (seen from outside, whatever the agent does to make the set whole); [] when fewer
    than ``least``."""
    found = []
    for identity in fleet.identities:
        node_dir = pathlib.Path(fleet.node_dir(identity))
        certified = (node_dir / "ssl" / "certificate.pem").exists()
        if certified and provisioning_enabled(parse_config(read_text(str(node_dir / "server.conf"), default=""))):
            found.append(identity)
    return found if len(found) >= least else []


def private_keys(fleet) -> list:
    paths = (pathlib.Path(fleet.node_dir(i)) / "ssl" / "private.pem" for i in fleet.identities)
    return [p.read_bytes() for p in paths if p.exists()]


def wait_for(condition, timeout: float, what: str):
    """The condition's first true value, checked every 10 ms until ``timeout``."""
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)
    return value


class Background:
    """A provisioning run in a thread; ``result()`` waits for its output."""

    def __init__(self, run_settings: ProvisionSettings):
        self.output: dict = {}
        self.thread = threading.Thread(target=lambda: self.output.update(provision(run_settings)), daemon=True)
        self.thread.start()

    def result(self, timeout: float = 120.0) -> dict:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the provisioning run did not end"
        return self.output


def certificates(fleet) -> int:
    return sum((pathlib.Path(fleet.node_dir(i)) / "ssl" / "certificate.pem").exists() for i in fleet.identities)


@pytest.mark.timeout(300)
def test_a_broker_restart_mid_run_leaves_no_half_state_and_a_second_run_completes(nats_broker, ca, tmp_path, figures):
    count = 300
    env = {SLOW_WRITES_ENV: "0.02"}  # configure takes a little while, so the restart lands among the runs
    with (
        EmbeddedBroker() as members,
        AgentFleet(
            nats_broker.url, count, tmp_path / "fleet", token=TOKEN, prefix="restart", env=env, extra_args=WRITE_ARGS
        ) as fleet,
    ):
        with BusCapture(nats_broker.url) as bus:
            run = Background(settings(nats_broker, ca, members, expect=count, workers=20))
            wait_for(lambda: certificates(fleet) >= count // 5, 60, "the first fifth of the fleet to be configured")
            configured_at_restart = certificates(fleet)
            assert run.thread.is_alive() and configured_at_restart < count, "the run ended before the restart"
            nats_broker.restart(down=1.0)
            first = run.result()
            interrupted = node_states(fleet, ca)
            second = provision(settings(nats_broker, ca, members, timeout=10.0, retries=2))
        after = tally(node_states(fleet, ca))
        found = asyncio.run(discover(members.url, fleet.identities, 60, collective="members"))
        tracebacks = fleet.log_tail(1_000_000).count("Traceback")
    figures.crash("broker restarted mid-run", tracebacks)
    assert tracebacks == 0, fleet.log_tail()
    assert after == {"member": count} and found == fleet.identities
    # A node whose configure reply the restart swallowed is a member the first run counts as failed; the second
    # run provisions exactly the nodes still waiting.
    waiting = sorted(i for i, state in interrupted.items() if state == "waiting")
    assert set(first["provisioned"]) <= {i for i, state in interrupted.items() if state == "member"}
    assert sorted(second["provisioned"]) == waiting
    assert bus.key_material(private_keys(fleet)) == []
    figures.send("nodes provisioned through a broker restart", count)
    figures.line(
        f"broker restarted during a run of {count} ({configured_at_restart} configured by then): first run "
        f"{len(first['provisioned'])} provisioned, {len(first['failed'])} failed "
        f"{sorted(set(first['failed'].values()))[:2]}; on disk then {tally(interrupted)}; "
        f"second run {len(second['provisioned'])} provisioned; all {count} members, whole sets; "
        f"{len(bus.messages)} messages captured, no private key among them"
    )


@pytest.mark.timeout(300)
def test_a_fleet_killed_during_configure_comes_back_with_whole_sets(nats_broker, ca, tmp_path, figures):
    count = 200
    with EmbeddedBroker() as members:
        fleet = AgentFleet(
            nats_broker.url,
            count,
            tmp_path / "fleet",
            token=TOKEN,
            prefix="killed",
            env={SLOW_WRITES_ENV: "0.05"},
            extra_args=WRITE_ARGS,
        )
        with fleet:
            run = Background(settings(nats_broker, ca, members, expect=count, workers=count))
            renaming = wait_for(lambda: mid_write(fleet, MID_WRITE), 60, "configure to be renaming on several nodes")
            fleet.kill()
            first = run.result()
        # The same state directories, a new process: it finishes or discards what was interrupted, then serves.
        again = AgentFleet(nats_broker.url, count, tmp_path / "fleet", token=TOKEN, prefix="killed")
        again.launch()
        try:
            serving = f"serving {count} node(s)"
            wait_for(lambda: again.log_tail(1_000_000).count(serving) == 2, 60, "the restarted fleet to serve")
            recovered = node_states(again, ca)
            waiting = sorted(i for i, state in recovered.items() if state == "waiting")
            members_then = sorted(i for i, state in recovered.items() if state == "member")
            # Each node serves what its files say: the waiting ones provisioning, the others as members.
            assert asyncio.run(discover(nats_broker.url, waiting, 30)) == waiting
            assert asyncio.run(discover(members.url, members_then, 30, collective="members")) == members_then
            second = provision(settings(nats_broker, ca, members, timeout=10.0, retries=2))
            after = tally(node_states(again, ca))
            found = asyncio.run(discover(members.url, again.identities, 60, collective="members"))
        finally:
            again.stop()
    assert after == {"member": count} and found == again.identities
    figures.send("nodes provisioned through a SIGKILL of their fleet", count)
    figures.crash("fleet killed mid-configure, restarted", again.log_tail(1_000_000).count("Traceback"))
    assert "Traceback" not in again.log_tail(1_000_000)
    figures.line(
        f"fleet of {count} SIGKILLed with {len(renaming)} nodes renaming their files: first run "
        f"{len(first['provisioned'])} provisioned; after the restart {tally(recovered)} (no mixed set); second run "
        f"{len(second['provisioned'])} provisioned; all {count} members"
    )
