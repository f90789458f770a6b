"""choria_provision action=pause|resume|status from a play, against instances answering the site's control
subject on a real nats-server (control.py's responder, as every service instance runs it): the per-instance
status list, changed only when an instance's paused state changes, check mode asks only, the wrong key reaches
nobody."""

import asyncio
import json
import threading
import time

import nats
import pytest

from ansible_collections.zeroinit.bootstrap.plugins.module_utils.provisioning.service import control as ct
from tests.support.ansible_run import run_module, run_playbook

TOKEN = "site-control-token"
SITE = "modsite"


class PausableInstance(ct.ControlHandlers):
    """An instance's control side: a paused flag and the counts status reports."""

    def __init__(self, name):
        self.name = name
        self.paused = False
        self.operations = []

    async def status(self):
        return {"paused": self.paused, "busy_workers": 0, "queue": 3, "provisioned": 7, "claims": 0}

    async def pause(self, sender):
        self.operations.append(("pause", sender))
        self.paused = True
        return {"paused": True}

    async def resume(self, sender):
        self.operations.append(("resume", sender))
        self.paused = False
        return {"paused": False}

    async def hello(self):
        return {"mode": "single", "started": time.time()}


class InstancesOnABroker:
    """Control servers of ``names`` on their own event loop in a thread, while a playbook runs."""

    def __init__(self, url, names):
        self.url = url
        self.instances = [PausableInstance(name) for name in names]
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.connections = []

    def __enter__(self):
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(30)
        return self

    async def _start(self):
        for instance in self.instances:
            nc = await nats.connect(self.url)
            codec = ct.ControlCodec(SITE, ct.derive_control_key(SITE, TOKEN))
            await ct.ControlServer(nc, codec, instance.name, instance).start()
            self.connections.append(nc)

    async def _stop(self):
        for nc in self.connections:
            await nc.close()

    def __exit__(self, *exc):
        try:
            asyncio.run_coroutine_threadsafe(self._stop(), self.loop).result(30)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.loop.close()


def site_control(broker, action, check=False, **extra):
    params = dict({"action": action, "site": SITE, "brokers": [broker.url], "token": TOKEN, "gather": 0.5}, **extra)
    return run_module("zeroinit.bootstrap.choria_provision", params, check=check)


@pytest.mark.slow
def test_pause_resume_status_drive_every_instance_and_report_change_only_when_state_changes(nats_broker):
    with InstancesOnABroker(nats_broker.url, ["prov-a", "prov-b"]) as running:
        status = site_control(nats_broker, "status")
        assert status.get("failed") is not True, status
        assert status["changed"] is False
        assert [doc["instance"] for doc in status["instances"]] == ["prov-a", "prov-b"]
        assert all(doc["paused"] is False and doc["provisioned"] == 7 for doc in status["instances"])

        would = site_control(nats_broker, "pause", check=True)
        assert would["changed"] is True and would["changed_instances"] == ["prov-a", "prov-b"]
        assert [i.operations for i in running.instances] == [[], []], "check mode only asks"

        running.instances[1].paused = True  # paused already (e.g. it started paused)
        paused = site_control(nats_broker, "pause")
        assert paused.get("failed") is not True, paused
        assert paused["changed"] is True and paused["changed_instances"] == ["prov-a"]
        assert [doc["paused"] for doc in paused["instances"]] == [True, True]
        assert [i.operations[0][0] for i in running.instances] == ["pause", "pause"]
        assert running.instances[0].operations[0][1].startswith("choria_provision@")

        again = site_control(nats_broker, "pause")
        assert again["changed"] is False and again["changed_instances"] == []

        resumed = site_control(nats_broker, "resume")
        assert resumed["changed"] is True and [doc["paused"] for doc in resumed["instances"]] == [False, False]

        stranger = site_control(nats_broker, "pause", token="not-the-token")
        assert stranger["failed"] is True
        assert f"no instance of site {SITE} answered pause" in stranger["msg"]
        assert not any(i.paused for i in running.instances), "the wrong key paused nobody"
        assert "not-the-token" not in str(stranger)


def test_status_of_a_site_nobody_runs_is_an_empty_list_and_bad_options_are_named(nats_broker):
    # One play, one task per case: one Ansible start instead of four.
    cases = {
        "nobody": {"action": "status", "site": "emptysite", "brokers": [nats_broker.url], "token": TOKEN},
        "no site": {"action": "pause", "brokers": [nats_broker.url], "token": TOKEN},
        "bad site": {"action": "status", "site": "two words", "brokers": [nats_broker.url], "token": TOKEN},
        "no key": {"action": "status", "site": SITE, "brokers": [nats_broker.url]},
    }
    tasks = "".join(
        f"    - name: {name}\n      zeroinit.bootstrap.choria_provision: {json.dumps(params)}\n      ignore_errors: true\n"
        for name, params in cases.items()
    )
    play = run_playbook(f"- hosts: localhost\n  gather_facts: false\n  connection: local\n  tasks:\n{tasks}")

    nobody = play.result("nobody")
    assert nobody["changed"] is False and nobody["instances"] == [], nobody
    no_site = play.result("no site")
    assert no_site["failed"] is True and "site" in no_site["msg"]
    bad_site = play.result("bad site")
    assert bad_site["failed"] is True and "site: 'two words' is not a site name" in bad_site["msg"]
    no_key = play.result("no key")
    assert no_key["failed"] is True and "token or control_key is required" in no_key["msg"]
