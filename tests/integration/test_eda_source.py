"""The Event-Driven Ansible source under the real ansible-rulebook (Java 17, drools): a node that boots while
the rulebook runs makes one event with its identity and its inventory facts; a node that was already waiting
makes one from its registration data; their later announcements make none (a test rule's run_playbook writes
each event to a file). The collection's example rulebook provisions a node that boots while it runs.

Bounded without sleeps: every wait is a condition with a deadline. "No second event" is checked by a sentinel:
the rule set runs its actions in order (``execution_strategy: sequential``), so once a node that boots after the
repeated announcements were seen on the bus is recorded, an event made from any of them would be recorded too."""

from __future__ import annotations

import asyncio
import json
import os
import pathlib
import signal
import subprocess
import time

import pytest

from ansible_collections.zeroinit.bootstrap.plugins.module_utils.choria.subjects import registration_subject
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.choria.transport import connect
from tests.support.ansible_run import VENV_BIN, ansible_env
from tests.support.broker import EmbeddedBroker
from tests.support.fleet import AgentProcess, discover

pytestmark = pytest.mark.slow

RECORD_PLAYBOOK = """
- name: Record the event
  hosts: localhost
  connection: local
  gather_facts: false
  tasks:
    - name: Write the event to a file
      ansible.builtin.copy:
        content: "{{ ansible_eda.event.zeroinit | to_json }}"
        dest: "{{ events_dir }}/{{ ansible_eda.event.meta.uuid }}.json"
        mode: "0600"
"""


def rulebook(broker_url: str, playbook: pathlib.Path, events: pathlib.Path) -> str:
    return f"""
- name: Record nodes entering provisioning mode
  hosts: all
  execution_strategy: sequential
  sources:
    - zeroinit.bootstrap.provisioning:
        brokers: ["{broker_url}"]
        inventory_timeout: 5
  rules:
    - name: Record the new node
      condition: event.zeroinit.identity is defined
      action:
        run_playbook:
          name: {playbook}
          extra_vars:
            events_dir: {events}
"""


def recorded(events: pathlib.Path) -> dict[str, list[dict]]:
    """The events the rule's playbook wrote, by node."""
    found: dict[str, list[dict]] = {}
    for path in sorted(events.glob("*.json")):
        try:
            event = json.loads(path.read_text())
        except ValueError:
            continue  # being written
        found.setdefault(event["identity"], []).append(event)
    return found


def recorded_once(events: pathlib.Path, *identities: str) -> bool:
    """Whether every one of ``identities`` has its event; fails at once when any node has two."""
    found = recorded(events)
    assert all(len(node_events) == 1 for node_events in found.values()), found
    return found.keys() >= set(identities)


async def registrations(broker_url: str, identity: str, count: int, timeout: float) -> int:
    """Waits (at most ``timeout`` seconds) for ``count`` registration publications of ``identity``; how many came."""
    seen = 0
    enough = asyncio.Event()

    async def on_registration(_msg) -> None:
        nonlocal seen
        seen += 1
        if seen >= count:
            enough.set()

    nc = await connect([broker_url], name="eda-test-observer", reconnect=False)
    try:
        await nc.subscribe(registration_subject(identity), cb=on_registration)
        try:
            await asyncio.wait_for(enough.wait(), timeout)
        except TimeoutError:
            pass
    finally:
        await nc.close()
    return seen


def wait_for(predicate, timeout: float, what: str, log) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"{what} within {timeout:.0f}s\n{log()}")


class RulebookProcess:
    """ansible-rulebook as a subprocess with its output in a file; stopped (the whole process group) on exit."""

    def __init__(self, argv: list[str], cwd: pathlib.Path, log_path: pathlib.Path):
        self.argv = [str(VENV_BIN / "ansible-rulebook"), *argv, "-v"]
        self.cwd = cwd
        self.log_path = log_path
        self.process = None

    def __enter__(self):
        with open(self.log_path, "wb") as log_file:
            self.process = subprocess.Popen(
                self.argv,
                cwd=self.cwd,
                env=ansible_env({"ANSIBLE_STDOUT_CALLBACK": "default"}),
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-5000:]

    def wait_listening(self) -> None:
        """Until the event source is connected (the JVM and the rule engine start first: slow under load)."""

        def listening() -> bool:
            if self.process.poll() is not None:
                raise AssertionError(f"ansible-rulebook exited {self.process.returncode}\n{self.log()}")
            return "listening for nodes entering provisioning mode" in self.log_path.read_text(errors="replace")

        wait_for(listening, 90, "the source listened", self.log)

    def __exit__(self, *exc):
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)


def test_one_event_per_booting_node_reaches_a_real_ansible_rulebook(tmp_path):
    events = tmp_path / "events"
    events.mkdir()
    playbook = tmp_path / "record.yml"
    playbook.write_text(RECORD_PLAYBOOK)
    inventory = tmp_path / "inventory.yml"
    inventory.write_text("all:\n  hosts:\n    localhost:\n      ansible_connection: local\n")
    rulebook_path = tmp_path / "rulebook.yml"
    waiting_facts = {"role": "db", "rack": "r2"}
    booting_facts = {"role": "web", "rack": "r7"}
    with EmbeddedBroker() as broker:
        rulebook_path.write_text(rulebook(broker.url, playbook, events))
        waiting = AgentProcess(
            broker.url,
            "waiting.eda.test",
            tmp_path / "waiting",
            facts=waiting_facts,
            extra_args=["--registration-interval", "2"],
        )
        booting = AgentProcess(broker.url, "booting.eda.test", tmp_path / "booting", facts=booting_facts)
        sentinel = AgentProcess(broker.url, "sentinel.eda.test", tmp_path / "sentinel", facts={"role": "sentinel"})
        argv = ["-r", str(rulebook_path), "-i", str(inventory)]
        try:
            waiting.start()
            with RulebookProcess(argv, tmp_path, tmp_path / "ansible-rulebook.log") as rulebook_run:
                rulebook_run.wait_listening()
                started = time.monotonic()
                booting.start()
                wait_for(
                    lambda: recorded_once(events, "waiting.eda.test", "booting.eda.test"),
                    60,
                    "both nodes recorded",
                    rulebook_run.log,
                )
                print(f"\nbooting node recorded {time.monotonic() - started:.1f}s after its agent started")
                # The waiting node announces itself again (every 2 s); the booting node did with its startup event.
                assert asyncio.run(registrations(broker.url, "waiting.eda.test", 2, 30)) >= 2, waiting.log_tail()
                sentinel.start()
                wait_for(
                    lambda: recorded_once(events, "sentinel.eda.test"),
                    60,
                    "the sentinel recorded",
                    rulebook_run.log,
                )
                by_identity = recorded(events)
                log = rulebook_run.log()
        finally:
            sentinel.stop()
            booting.stop()
            waiting.stop()

    assert by_identity == {
        "sentinel.eda.test": [
            {
                "identity": "sentinel.eda.test",
                "source": "startup",
                "facts": {"role": "sentinel", "identity": "sentinel.eda.test"},
            }
        ],
        "booting.eda.test": [
            {
                "identity": "booting.eda.test",
                "source": "startup",
                "facts": dict(booting_facts, identity="booting.eda.test"),
            }
        ],
        "waiting.eda.test": [
            {
                "identity": "waiting.eda.test",
                "source": "registration",
                "facts": dict(waiting_facts, identity="waiting.eda.test"),
            }
        ],
    }, log


def test_the_example_rulebook_provisions_a_node_that_boots_while_it_runs(tmp_path):
    (tmp_path / "ca").mkdir()
    with EmbeddedBroker() as broker:
        inventory = {
            "all": {
                "hosts": {"localhost": {"ansible_connection": "local"}},
                "vars": {
                    "zeroinit_provision_brokers": [broker.url],
                    "zeroinit_provision_token": "eda-token",
                    "zeroinit_provision_signer": {
                        "ca_cert": str(tmp_path / "ca" / "ca.pem"),
                        "ca_key": str(tmp_path / "ca" / "ca-key.pem"),
                        "create_ca": True,
                    },
                    "zeroinit_provision_configuration": {
                        "plugin.choria.middleware_hosts": broker.url,
                        "collectives": "edaprod",
                        "main_collective": "edaprod",
                    },
                },
            }
        }
        (tmp_path / "inventory.yml").write_text(json.dumps(inventory))
        (tmp_path / "source.yml").write_text(json.dumps({"zeroinit_provision_brokers": [broker.url]}))
        argv = ["-r", "zeroinit.bootstrap.provision_new_nodes", "-i", "inventory.yml", "--vars", "source.yml"]
        node = AgentProcess(broker.url, "new.eda.test", tmp_path / "node", token="eda-token")
        try:
            with RulebookProcess(argv, tmp_path, tmp_path / "ansible-rulebook.log") as rulebook_run:
                rulebook_run.wait_listening()
                started = time.monotonic()
                node.launch()  # no discovery wait: the rulebook may provision the node before one would answer
                member = asyncio.run(discover(broker.url, ["new.eda.test"], 90, collective="edaprod"))
                assert member == ["new.eda.test"], f"{rulebook_run.log()}\n{node.log_tail()}"
                print(f"\nnode provisioned {time.monotonic() - started:.1f}s after its agent started")
        finally:
            node.stop()
    assert "plugin.choria.server.provision = false" in (tmp_path / "node" / "server.conf").read_text()
