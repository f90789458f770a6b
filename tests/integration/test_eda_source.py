"""The Event-Driven Ansible source under the real ansible-rulebook (Java 17, drools): a node that boots while
the rulebook runs makes one event with its identity and its inventory facts; a node that was already waiting
makes one from its registration data. The rule's run_playbook writes each event to a file."""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import time

import pytest

from tests.support.ansible_run import VENV_BIN, ansible_env
from tests.support.broker import EmbeddedBroker
from tests.support.fleet import AgentProcess

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


def recorded(events: pathlib.Path) -> list[dict]:
    found = []
    for path in sorted(events.glob("*.json")):
        try:
            found.append(json.loads(path.read_text()))
        except ValueError:
            pass  # being written
    return found


def wait_for(predicate, timeout: float, what: str, log) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"{what} within {timeout:.0f}s\n{log()}")


def test_one_event_per_booting_node_reaches_a_real_ansible_rulebook(tmp_path):
    events = tmp_path / "events"
    events.mkdir()
    playbook = tmp_path / "record.yml"
    playbook.write_text(RECORD_PLAYBOOK)
    inventory = tmp_path / "inventory.yml"
    inventory.write_text("all:\n  hosts:\n    localhost:\n      ansible_connection: local\n")
    rulebook_path = tmp_path / "rulebook.yml"
    log_path = tmp_path / "ansible-rulebook.log"
    waiting_facts = {"role": "db", "rack": "r2"}
    booting_facts = {"role": "web", "rack": "r7"}
    rulebook_process = None
    with EmbeddedBroker() as broker, open(log_path, "wb") as log_file:
        rulebook_path.write_text(rulebook(broker.url, playbook, events))
        waiting = AgentProcess(
            broker.url,
            "waiting.eda.test",
            tmp_path / "waiting",
            facts=waiting_facts,
            extra_args=["--registration-interval", "2"],
        )
        booting = AgentProcess(broker.url, "booting.eda.test", tmp_path / "booting", facts=booting_facts)
        try:
            waiting.start()
            env = ansible_env({"ANSIBLE_STDOUT_CALLBACK": "default"})
            rulebook_process = subprocess.Popen(
                [str(VENV_BIN / "ansible-rulebook"), "-r", str(rulebook_path), "-i", str(inventory), "-v"],
                cwd=tmp_path,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

            def rulebook_log() -> str:
                return log_path.read_text(errors="replace")[-5000:]

            wait_for(
                lambda: "listening for nodes entering provisioning mode" in rulebook_log(),
                60,
                "the source listened",
                rulebook_log,
            )
            started = time.monotonic()
            booting.start()
            wait_for(
                lambda: {e["identity"] for e in recorded(events)} >= {"waiting.eda.test", "booting.eda.test"},
                45,
                "both nodes recorded",
                rulebook_log,
            )
            print(f"\nbooting node recorded {time.monotonic() - started:.1f}s after its agent started")
            time.sleep(5)  # more registrations (every 2 s for one node), and the startup node's registration
            by_identity = {}
            for event in recorded(events):
                by_identity.setdefault(event["identity"], []).append(event)
        finally:
            if rulebook_process is not None and rulebook_process.poll() is None:
                os.killpg(rulebook_process.pid, signal.SIGTERM)
                try:
                    rulebook_process.wait(20)
                except subprocess.TimeoutExpired:
                    os.killpg(rulebook_process.pid, signal.SIGKILL)
                    rulebook_process.wait(10)
            booting.stop()
            waiting.stop()

    assert by_identity == {
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
    }, log_path.read_text(errors="replace")[-5000:]
