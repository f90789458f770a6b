"""Helpers that fail in every way Choria's contract allows, through the real provision path (a real fleet, a real
nats-server, the bulk provisioner): each node stays in provisioning mode with the reason reported, and a good helper
provisions all of them later. And a helper's output is capped: ten helpers printing 8 MB each cost the provisioner
little memory."""

from __future__ import annotations

import asyncio
import collections
import json
import pathlib
import subprocess
import sys

import pytest

from ansible_collections.zeroinit.bootstrap.plugins.module_utils.pki.ca import CertificateAuthority
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.pki.x509 import certificate_matches_key
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.provisioning.bulk import provision
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.provisioning.helper import MAX_HELPER_OUTPUT
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.provisioning.settings import ProvisionSettings
from tests.support.broker import EmbeddedBroker
from tests.support.fleet import AgentFleet, discover

HELPERS = pathlib.Path(__file__).parents[1] / "integration" / "helpers"
TOKEN = "helper-fault-token"
# Long enough for a Python helper that imports cryptography to start on a loaded machine; the slow one never answers.
HELPER_TIMEOUT = 3
FAULTS = {
    "garbage": "not JSON",
    "silent": "printed nothing",
    "exit": "exited with status 3",
    "slow": f"ran longer than {HELPER_TIMEOUT}s",
    "other-key": "does not carry the public key of the node's CSR",
    "loop": "leaves provisioning on",
    "huge": f"printed more than {MAX_HELPER_OUTPUT} bytes",
}


def settings(broker, helper, **extra) -> ProvisionSettings:
    return ProvisionSettings(
        brokers=[broker.url], token=TOKEN, helper=helper, timeout=5.0, retries=1, discovery_timeout=2.0, **extra
    )


@pytest.mark.timeout(180)
def test_every_helper_fault_leaves_its_node_waiting_with_the_reason_and_a_good_helper_provisions_it(
    nats_broker, tmp_path, figures
):
    with (
        EmbeddedBroker() as members,
        AgentFleet(nats_broker.url, len(FAULTS), tmp_path / "fleet", token=TOKEN, prefix="fault") as fleet,
    ):
        modes = dict(zip(fleet.identities, FAULTS))
        (tmp_path / "modes.json").write_text(json.dumps(modes))
        broken = [sys.executable, str(HELPERS / "broken_helper.py"), "by-identity", str(tmp_path / "modes.json")]
        out = provision(settings(nats_broker, broken, helper_timeout=HELPER_TIMEOUT, expect=len(FAULTS)))
        figures.send("broken helper runs", len(FAULTS))
        figures.refuse("provisioner, helper", collections.Counter(FAULTS[modes[i]] for i in out["failed"]))
        assert out["provisioned"] == [] and sorted(out["failed"]) == fleet.identities
        for identity, mode in modes.items():
            assert FAULTS[mode] in out["failed"][identity] and identity in out["failed"][identity], out["failed"]
            assert not (pathlib.Path(fleet.node_dir(identity)) / "ssl" / "certificate.pem").exists()
        assert _asyncio_discover(nats_broker, fleet.identities) == fleet.identities  # all still waiting

        ca_cert, ca_key = str(tmp_path / "ca.pem"), str(tmp_path / "ca.key")
        CertificateAuthority.load_or_create(ca_cert, ca_key, common_name="helper CA")
        base = tmp_path / "base.json"
        base.write_text(json.dumps({"plugin.choria.middleware_hosts": members.url, "collectives": "members"}))
        good = [
            sys.executable,
            str(HELPERS / "policy_helper.py"),
            "--ca-cert",
            ca_cert,
            "--ca-key",
            ca_key,
            "--config",
            str(base),
        ]
        again = provision(settings(nats_broker, good, expect=len(FAULTS)))
        assert again["failed"] == {} and again["provisioned"] == fleet.identities
        for identity in fleet.identities:
            ssl = pathlib.Path(fleet.node_dir(identity)) / "ssl"
            assert certificate_matches_key((ssl / "certificate.pem").read_bytes(), (ssl / "private.pem").read_bytes())
        assert _asyncio_discover(members, fleet.identities, collective="members") == fleet.identities
        figures.crash("helper faults", fleet.log_tail(200_000).count("Traceback"))
    figures.line("helper faults, one node each: " + "; ".join(f"{mode}: {FAULTS[mode]!r}" for mode in FAULTS))


def _asyncio_discover(broker, identities, collective="provisioning"):
    return asyncio.run(discover(broker.url, identities, 20, collective=collective))


MEMORY_PROBE = """
import asyncio, json, resource, sys
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.provisioning.helper import (
    NodeFailure, helper_request, run_helper)

async def main(argv):
    async def one(index):
        try:
            await run_helper(argv, helper_request(f"n{index}", None, {}), timeout=30)
        except NodeFailure as failure:
            return str(failure)
    return await asyncio.gather(*(one(index) for index in range(10)))

before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
failures = asyncio.run(main(sys.argv[1:]))
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"before_kib": before, "after_kib": after, "failures": failures}))
"""


@pytest.mark.timeout(120)
def test_ten_helpers_printing_8_mb_each_cost_the_provisioner_little_memory(figures):
    argv = [sys.executable, str(HELPERS / "broken_helper.py"), "huge"]
    result = subprocess.run(
        [sys.executable, "-c", MEMORY_PROBE, *argv], input=b"", capture_output=True, check=True, timeout=100
    )
    figures_out = json.loads(result.stdout)
    assert all(f"printed more than {MAX_HELPER_OUTPUT} bytes" in f for f in figures_out["failures"]), figures_out[
        "failures"
    ]
    grown_mib = (figures_out["after_kib"] - figures_out["before_kib"]) / 1024
    assert grown_mib < 30, f"the provisioner grew by {grown_mib:.0f} MiB for ten 8 MB helper outputs"
    figures.send("helpers printing 8 MB", len(figures_out["failures"]))
    figures.line(
        f"ten helpers printing 8 MB each: the provisioner's peak RSS {figures_out['before_kib'] / 1024:.1f} MiB before, "
        f"{figures_out['after_kib'] / 1024:.1f} after"
    )
