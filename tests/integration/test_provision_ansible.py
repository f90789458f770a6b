"""choria_provision, the roles and the provisioning playbooks through ansible-playbook, against a real fleet.

Each case runs check, real, check, real (community.crypto style): check mode changes nothing on any node,
the real run provisions, and once provisioned nothing is left to change.
"""

import asyncio
import hashlib
import json
import pathlib
import sys

import pytest
from cryptography import x509

from ansible_collections.zeroinit.bootstrap.plugins.module_utils.choria.config import parse_config
from tests.support.ansible_run import ROOT, run_module, run_playbook
from tests.support.broker import EmbeddedBroker
from tests.support.bus import BusCapture
from tests.support.certificates import Authority
from tests.support.fleet import AgentFleet, discover

TOKEN = "play-token"
HELPERS = pathlib.Path(__file__).parent / "helpers"


@pytest.fixture
def members():
    with EmbeddedBroker() as broker:
        yield broker


def snapshot(fleet) -> dict:
    return {
        str(p): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(pathlib.Path(fleet.state_dir).rglob("*"))
        if p.is_file()
    }


def member_config(members):
    return {"plugin.choria.middleware_hosts": members.url, "collectives": "members", "main_collective": "members"}


def configured(fleet, identity) -> dict:
    return parse_config((pathlib.Path(fleet.node_dir(identity)) / "server.conf").read_text())


def chains_to(fleet, identity, ca_path) -> bool:
    cert = x509.load_pem_x509_certificate(
        (pathlib.Path(fleet.node_dir(identity)) / "ssl" / "certificate.pem").read_bytes()
    )
    cert.verify_directly_issued_by(x509.load_pem_x509_certificate(pathlib.Path(ca_path).read_bytes()))
    return True


def role_task(result, suffix, host):
    """The result of a role's task (names are prefixed with the role) on ``host``."""
    for task in reversed(result.tasks()):
        if task["task"]["name"].endswith(suffix) and host in task["hosts"]:
            return task["hosts"][host]
    raise AssertionError(f"no task ending {suffix!r} for {host}; rc={result.rc}\n{result.stderr[-2000:]}")


def test_module_check_real_check_real(nats_broker, members, tmp_path):
    params = {
        "action": "provision",
        "brokers": [nats_broker.url],
        "token": TOKEN,
        "discovery_timeout": 1.5,
        "signer": {"ca_cert": str(tmp_path / "ca.pem"), "ca_key": str(tmp_path / "ca.key"), "create_ca": True},
        "configuration": member_config(members),
    }
    with AgentFleet(nats_broker.url, 3, tmp_path / "fleet", token=TOKEN) as fleet:
        before = snapshot(fleet)
        check = run_module("zeroinit.bootstrap.choria_provision", params, check=True)
        assert check["changed"] is True and check["would_provision"] == fleet.identities
        assert check["provisioned"] == [] and snapshot(fleet) == before
        assert not (tmp_path / "ca.pem").exists()  # check mode does not even create the CA

        real = run_module("zeroinit.bootstrap.choria_provision", params)
        assert real["changed"] is True and real["provisioned"] == fleet.identities and real["failed_nodes"] == {}
        assert real["counts"]["provisioned"] == 3 and "p99_ms" in real["timings"]["gencsr"]
        for identity in fleet.identities:
            assert chains_to(fleet, identity, tmp_path / "ca.pem")
            assert configured(fleet, identity)["collectives"] == "members"
        assert asyncio.run(discover(members.url, fleet.identities, 20, collective="members")) == fleet.identities
        assert TOKEN not in json.dumps(real)

        after = snapshot(fleet)
        check2 = run_module("zeroinit.bootstrap.choria_provision", params, check=True)
        assert check2["changed"] is False and check2["would_provision"] == []
        real2 = run_module("zeroinit.bootstrap.choria_provision", params)
        assert real2["changed"] is False and real2["counts"]["discovered"] == 0
        assert snapshot(fleet) == after


def test_single_node_actions_and_bad_input(nats_broker, tmp_path):
    with AgentFleet(nats_broker.url, 1, tmp_path / "fleet", token=TOKEN, facts={"rack": "r7"}) as fleet:
        node = fleet.identities[0]
        base = {"brokers": [nats_broker.url], "token": TOKEN, "identity": node}
        inv = run_module("zeroinit.bootstrap.choria_provision", dict(base, action="inventory"))
        assert inv["changed"] is False and inv["data"]["facts"]["rack"] == "r7"

        before = snapshot(fleet)
        check = run_module("zeroinit.bootstrap.choria_provision", dict(base, action="gencsr"), check=True)
        assert check["changed"] is True and snapshot(fleet) == before

        csr = run_module("zeroinit.bootstrap.choria_provision", dict(base, action="gencsr"))
        assert csr["changed"] is True and "CERTIFICATE REQUEST" in csr["data"]["csr"]
        assert (pathlib.Path(fleet.node_dir(node)) / "ssl" / "private.pem").exists()
        assert "PRIVATE KEY" not in json.dumps(csr)

        loop = run_module(
            "zeroinit.bootstrap.choria_provision",
            dict(
                base,
                action="configure",
                certificate="-----BEGIN CERTIFICATE-----",
                ca="-----BEGIN CERTIFICATE-----",
                configuration={"plugin.choria.server.provision": True},
            ),
        )
        assert loop.get("failed") and "leaves provisioning on" in loop["msg"] and node in loop["msg"]

        refused = run_module("zeroinit.bootstrap.choria_provision", dict(base, action="restart"))
        assert refused.get("failed") and f"restart refused by {node}" in refused["msg"]

        bad = run_module(
            "zeroinit.bootstrap.choria_provision", dict(base, action="provision", timeout=0, helper="/bin/true")
        )
        assert bad.get("failed") and "timeout" in bad["msg"]
        silent = run_module(
            "zeroinit.bootstrap.choria_provision",
            dict(base, action="inventory", identity="nobody.example.net", timeout=0.5, retries=1),
        )
        assert silent.get("failed") and "no reply from nobody.example.net" in silent["msg"]


def test_provision_fleet_playbook_with_a_helper_and_reprovision(nats_broker, members, tmp_path):
    from ansible_collections.zeroinit.bootstrap.plugins.module_utils.pki.ca import CertificateAuthority

    ca_cert, ca_key = str(tmp_path / "ca.pem"), str(tmp_path / "ca.key")
    CertificateAuthority.load_or_create(ca_cert, ca_key)
    base = tmp_path / "base.json"
    base.write_text(json.dumps(member_config(members)))
    extra = {
        "zeroinit_provision_brokers": [nats_broker.url],
        "zeroinit_provision_token": TOKEN,
        "zeroinit_provision_helper": [
            sys.executable,
            str(HELPERS / "policy_helper.py"),
            "--ca-cert",
            ca_cert,
            "--ca-key",
            ca_key,
            "--config",
            str(base),
        ],
        "zeroinit_provision_configuration": {"loglevel": "warn"},
    }
    playbook = ROOT / "playbooks" / "provision_fleet.yaml"
    task = "Discover and provision the nodes"
    with AgentFleet(nats_broker.url, 3, tmp_path / "fleet", token=TOKEN) as fleet:
        before = snapshot(fleet)
        check = run_playbook(playbook, extra_vars=extra, check=True)
        assert check.rc == 0 and check.result(task)["would_provision"] == fleet.identities
        assert snapshot(fleet) == before

        real = run_playbook(playbook, extra_vars=extra)
        assert real.rc == 0 and real.result(task)["provisioned"] == fleet.identities
        for identity in fleet.identities:
            assert chains_to(fleet, identity, ca_cert)
            conf = configured(fleet, identity)
            assert conf["loglevel"] == "warn" and conf["plugin.choria.server.provision"] == "false"
        assert asyncio.run(discover(members.url, fleet.identities, 20, collective="members")) == fleet.identities

        again = run_playbook(playbook, extra_vars=extra)
        assert again.rc == 0 and again.changed() == 0 and again.result(task)["counts"]["discovered"] == 0

        # Reprovision one node where it lives now; it comes back to the provisioning network and is provisioned
        # again by the next run (with a new key made on the node).
        # The node is locked to the site whose CA configured it: the token alone cannot send it back, a provisioner
        # certificate of that CA can, and the node (still locked) is provisioned again only under that signature.
        node = fleet.identities[1]
        old_key = (pathlib.Path(fleet.node_dir(node)) / "ssl" / "private.pem").read_bytes()
        reprovision = {
            "zeroinit_reprovision_identities": [node],
            "zeroinit_reprovision_brokers": [members.url],
            "zeroinit_reprovision_collective": "members",
            "zeroinit_provision_token": TOKEN,
        }
        refused = run_playbook(ROOT / "playbooks" / "reprovision.yaml", extra_vars=reprovision)
        assert refused.rc != 0 and "the token alone is refused" in refused.stdout
        provisioner = Authority.from_files(ca_cert, ca_key).write_leaf(tmp_path / "provisioner", "prov.example.net")
        signing = {
            "zeroinit_provision_signing_cert": provisioner["cert"],
            "zeroinit_provision_signing_key": provisioner["key"],
        }
        back = run_playbook(ROOT / "playbooks" / "reprovision.yaml", extra_vars=dict(reprovision, **signing))
        assert back.rc == 0 and back.changed() == 1, back.stderr[-2000:]
        assert asyncio.run(discover(nats_broker.url, [node], 20)) == [node]
        unsigned = run_playbook(playbook, extra_vars=extra)
        assert "the token alone is refused" in unsigned.result(task)["failed_nodes"][node]
        third = run_playbook(playbook, extra_vars=dict(extra, **signing))
        assert third.rc == 0 and third.result(task)["provisioned"] == [node]
        assert (pathlib.Path(fleet.node_dir(node)) / "ssl" / "private.pem").read_bytes() != old_key
        assert chains_to(fleet, node, ca_cert)


def test_provision_fleet_playbook_without_pki_and_with_a_persistent_helper(nats_broker, members, tmp_path):
    from ansible_collections.zeroinit.bootstrap.plugins.module_utils.pki.ca import CertificateAuthority

    base = tmp_path / "base.json"
    base.write_text(json.dumps(member_config(members)))
    playbook = ROOT / "playbooks" / "provision_fleet.yaml"
    task = "Discover and provision the nodes"
    # zeroinit_provision_pki: false with a helper written for Choria's features.pki false: no node is asked for a
    # CSR, each is configured from the helper's configuration alone and holds no key or certificate.
    no_pki = {
        "zeroinit_provision_brokers": [nats_broker.url],
        "zeroinit_provision_token": TOKEN,
        "zeroinit_provision_helper": [sys.executable, str(HELPERS / "choria_config_helper.py"), str(base)],
        "zeroinit_provision_pki": False,
    }
    with (
        AgentFleet(nats_broker.url, 2, tmp_path / "nopki", token=TOKEN, prefix="nopki") as fleet,
        BusCapture(nats_broker.url, "provisioning.node.>") as bus,
    ):
        real = run_playbook(playbook, extra_vars=no_pki)
        assert real.rc == 0 and real.result(task)["provisioned"] == fleet.identities, real.stdout[-2000:]
        assert asyncio.run(discover(members.url, fleet.identities, 20, collective="members")) == fleet.identities
        for identity in fleet.identities:
            assert configured(fleet, identity)["plugin.choria.server.provision"] == "false"
            assert not list((pathlib.Path(fleet.node_dir(identity)) / "ssl").glob("*.pem"))
    actions = {request.action for request in bus.requests()}
    assert "gencsr" not in actions and {"inventory", "configure", "restart"} <= actions

    # zeroinit_provision_helper_mode: persistent: the helper answers one JSON line per node with the request's id
    # (run once per node, as in oneshot mode, it finds no id and fails every node).
    ca_cert, ca_key = str(tmp_path / "ca.pem"), str(tmp_path / "ca.key")
    CertificateAuthority.load_or_create(ca_cert, ca_key)
    helper = [sys.executable, str(HELPERS / "policy_helper.py"), "--ca-cert", ca_cert, "--ca-key", ca_key]
    persistent = {
        "zeroinit_provision_brokers": [nats_broker.url],
        "zeroinit_provision_token": TOKEN,
        "zeroinit_provision_helper": [*helper, "--config", str(base), "--persistent"],
        "zeroinit_provision_helper_mode": "persistent",
        "zeroinit_provision_helper_concurrency": 1,
        "zeroinit_provision_helper_timeout": 20,
    }
    with AgentFleet(nats_broker.url, 3, tmp_path / "persistent", token=TOKEN, prefix="persistent") as fleet:
        oneshot = run_playbook(playbook, extra_vars=dict(persistent, zeroinit_provision_helper_mode="oneshot"))
        assert sorted(oneshot.result(task)["failed_nodes"]) == fleet.identities
        real = run_playbook(playbook, extra_vars=persistent)
        assert real.rc == 0 and real.result(task)["provisioned"] == fleet.identities, real.stdout[-2000:]
        for identity in fleet.identities:
            assert chains_to(fleet, identity, ca_cert)


def per_host_vars(nats_broker, members, tmp_path) -> dict:
    """provision.yaml's variables (also the roles' here): the brokers, the token, a new CA, the members' settings."""
    from ansible_collections.zeroinit.bootstrap.plugins.module_utils.pki.ca import CertificateAuthority

    ca_cert, ca_key = str(tmp_path / "pki" / "ca.pem"), str(tmp_path / "pki" / "ca.key")
    (tmp_path / "pki").mkdir()
    CertificateAuthority.load_or_create(ca_cert, ca_key)
    return {
        "zeroinit_provision_brokers": [nats_broker.url],
        "zeroinit_provision_token": TOKEN,
        "zeroinit_provision_ca_cert": ca_cert,
        "zeroinit_provision_ca_key": ca_key,
        "zeroinit_provision_configuration": member_config(members),
    }


def test_per_host_provision_playbook(nats_broker, members, tmp_path):
    """Hosts come from the provisioning inventory plugin; once provisioned, they are no longer found."""
    extra = per_host_vars(nats_broker, members, tmp_path)
    ca_cert = extra["zeroinit_provision_ca_cert"]
    with AgentFleet(nats_broker.url, 4, tmp_path / "fleet", token=TOKEN) as fleet:
        inventory = tmp_path / "fleet.provisioning.yml"
        inventory.write_text(
            json.dumps(
                {
                    "plugin": "zeroinit.bootstrap.provisioning",
                    "brokers": [nats_broker.url],
                    "discovery_timeout": 2,
                    "expect": 4,
                }
            )
        )
        playbook = ROOT / "playbooks" / "provision.yaml"

        before = snapshot(fleet)
        check = run_playbook(playbook, inventory=inventory, extra_vars=extra, check=True, diff=True)
        assert check.rc == 0, check.stdout[-3000:] + check.stderr[-3000:]
        assert sorted(check.stats) == fleet.identities
        for identity in fleet.identities:
            would = check.result("Provision the node", identity)
            assert would["changed"] is True and would["would_provision"] == [identity]
            assert would["diff"]["after"]["state"] == "would_provision"
        assert snapshot(fleet) == before

        real = run_playbook(playbook, inventory=inventory, extra_vars=extra)
        assert real.rc == 0, real.stdout[-3000:] + real.stderr[-3000:]
        for identity in fleet.identities:
            node = real.result("Provision the node", identity)
            assert node["changed"] is True and node["status"] == "provisioned" and node["provisioned"] == [identity]
            assert TOKEN not in json.dumps(node)
            assert chains_to(fleet, identity, ca_cert)
            conf = configured(fleet, identity)
            assert conf["identity"] == identity and conf["main_collective"] == "members"
        assert asyncio.run(discover(members.url, fleet.identities, 20, collective="members")) == fleet.identities

        after = snapshot(fleet)
        for check_mode in (True, False):
            again = run_playbook(playbook, inventory=inventory, extra_vars=extra, check=check_mode)
            assert again.rc == 0 and not any(again.changed(h) for h in again.stats)
            assert not set(again.stats) & set(fleet.identities)
        assert snapshot(fleet) == after


def test_per_host_provision_playbook_without_pki(nats_broker, members, tmp_path):
    """provision.yaml passes zeroinit_provision_pki: no node is asked for a CSR, each holds no key or certificate."""
    base = tmp_path / "base.json"
    base.write_text(json.dumps(member_config(members)))
    extra = {
        "zeroinit_provision_brokers": [nats_broker.url],
        "zeroinit_provision_token": TOKEN,
        "zeroinit_provision_helper": [sys.executable, str(HELPERS / "choria_config_helper.py"), str(base)],
        "zeroinit_provision_helper_timeout": 20,
        "zeroinit_provision_pki": False,
    }
    inventory = tmp_path / "fleet.provisioning.yml"
    inventory.write_text(
        json.dumps({"plugin": "zeroinit.bootstrap.provisioning", "brokers": [nats_broker.url], "expect": 2})
    )
    with (
        AgentFleet(nats_broker.url, 2, tmp_path / "fleet", token=TOKEN) as fleet,
        BusCapture(nats_broker.url, "provisioning.node.>") as bus,
    ):
        real = run_playbook(ROOT / "playbooks" / "provision.yaml", inventory=inventory, extra_vars=extra)
        assert real.rc == 0, real.stdout[-3000:] + real.stderr[-3000:]
        for identity in fleet.identities:
            assert real.result("Provision the node", identity)["status"] == "provisioned"
            assert configured(fleet, identity)["main_collective"] == "members"
            assert not list((pathlib.Path(fleet.node_dir(identity)) / "ssl").glob("*.pem"))
        assert asyncio.run(discover(members.url, fleet.identities, 20, collective="members")) == fleet.identities
    actions = {request.action for request in bus.requests()}
    assert "gencsr" not in actions and {"inventory", "configure", "restart"} <= actions


ROLES_PLAY = """
- hosts: provisioning
  connection: local
  gather_facts: false
  vars:
    ansible_python_interpreter: "{{ ansible_playbook_python }}"
    csr_signing_brokers: "{{ zeroinit_provision_brokers }}"
    csr_signing_token: "{{ zeroinit_provision_token }}"
    csr_signing_ca_cert: "{{ zeroinit_provision_ca_cert }}"
    csr_signing_ca_key: "{{ zeroinit_provision_ca_key }}"
    csr_signing_configuration: "{{ zeroinit_provision_configuration }}"
    config_push_brokers: "{{ zeroinit_provision_brokers }}"
    config_push_token: "{{ zeroinit_provision_token }}"
  roles:
    - zeroinit.bootstrap.csr_signing
    - zeroinit.bootstrap.config_push
"""


def test_roles_over_the_inventory_plugin(nats_broker, members, tmp_path):
    """The roles' separate steps (gencsr, sign, configure, restart) for users who customise them; pki_sign's diff."""
    extra = per_host_vars(nats_broker, members, tmp_path)
    ca_cert = extra["zeroinit_provision_ca_cert"]
    with AgentFleet(nats_broker.url, 2, tmp_path / "fleet", token=TOKEN) as fleet:
        inventory = tmp_path / "fleet.provisioning.yml"
        inventory.write_text(
            json.dumps({"plugin": "zeroinit.bootstrap.provisioning", "brokers": [nats_broker.url], "expect": 2})
        )
        before = snapshot(fleet)
        check = run_playbook(ROLES_PLAY, inventory=inventory, extra_vars=extra, check=True)
        assert check.rc == 0 and sorted(check.stats) == fleet.identities and snapshot(fleet) == before

        real = run_playbook(ROLES_PLAY, inventory=inventory, extra_vars=extra, diff=True)
        assert real.rc == 0, real.stdout[-3000:] + real.stderr[-3000:]
        for identity in fleet.identities:
            signed = role_task(real, "Sign the CSR with the built-in policy signer", identity)
            assert signed["diff"]["after"]["subject"] == f"CN={identity}" and signed["diff"]["before"] == {}
            assert role_task(real, "Restart the node into its configured collective", identity)["changed"] is True
            assert chains_to(fleet, identity, ca_cert)
            assert configured(fleet, identity)["main_collective"] == "members"


IN_PROCESS_PLAY = """
- hosts: localhost
  connection: local
  gather_facts: false
  vars:
    cases:
      missing: {action: gencsr, brokers: ["nats://127.0.0.1:1"]}
      unknown: {action: inventory, identity: n1.example.net, brokers: ["nats://127.0.0.1:1"], colective: x}
      wrong_type: {action: inventory, identity: n1.example.net, brokers: ["nats://127.0.0.1:1"], timeout: soon}
      exclusive: {brokers: ["nats://127.0.0.1:1"], helper: /bin/true, signer: {ca_cert: /a, ca_key: /b}}
      secret: {action: restart, identity: n1.example.net, brokers: ["nats://127.0.0.1:1"], token: s3cr3t-t0ken,
               timeout: 0.2, retries: 0}
  tasks:
    - name: In the worker
      zeroinit.bootstrap.choria_provision: "{{ cases[item] }}"
      loop: "{{ cases | list }}"
      register: in_worker
      ignore_errors: true
    - name: As a module
      zeroinit.bootstrap.choria_provision: "{{ cases[item] }}"
      vars:
        ansible_python_interpreter: "WRAPPER"
      loop: "{{ cases | list }}"
      register: as_module
      ignore_errors: true
"""


def test_in_worker_and_module_fail_alike(tmp_path):
    """The action plugin validates as AnsibleModule does (same messages, no_log values removed), and runs the module
    when the task's Python is not the controller's: a wrapper interpreter logs each module run."""
    runs = tmp_path / "module-runs.log"
    wrapper = tmp_path / "python-wrapper"
    wrapper.write_text(f'#!/bin/sh\necho run >> {runs}\nexec {sys.executable} "$@"\n')
    wrapper.chmod(0o755)
    result = run_playbook(IN_PROCESS_PLAY.replace("WRAPPER", str(wrapper)))
    in_worker = result.result("In the worker")["results"]
    as_module = result.result("As a module")["results"]
    assert len(runs.read_text().splitlines()) == len(as_module) == 5  # only the second task started the module
    for worker, module in zip(in_worker, as_module):
        assert worker["failed"] is True and module["failed"] is True
        assert worker["msg"] == module["msg"], (worker["item"], worker["msg"], module["msg"])
    messages = {item["item"]: item["msg"] for item in in_worker}
    assert messages["missing"] == "action is gencsr but all of the following are missing: identity"
    assert messages["unknown"].startswith("Unsupported parameters for (zeroinit.bootstrap.choria_provision) module")
    assert "s3cr3t-t0ken" not in json.dumps(in_worker) and "s3cr3t-t0ken" not in json.dumps(as_module)
