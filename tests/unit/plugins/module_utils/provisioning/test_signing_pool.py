"""The built-in signer in worker processes: a worker's error fails only its node, a dead worker fails only the
nodes it held and does not stop the run, and closing the decider stops the workers."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import pytest

from ansible_collections.zeroinit.bootstrap.plugins.module_utils.pki.x509 import load_certificates
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.provisioning.deciders import SignerDecider
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.provisioning.helper import NodeFailure
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.provisioning.signing_pool import (
    MAX_BATCH,
    SigningPool,
)
from tests.support.x509 import make_csr


class TroubledSigner:
    """The real signer, except for nodes named ``broken*`` (it raises), ``dies*`` (the worker process exits) and
    ``slow*`` (it takes 30 s)."""

    def __init__(self, signer):
        self.signer = signer

    def sign(self, csr, identity, **options):
        if identity.startswith("broken"):
            raise RuntimeError("the HSM is unplugged")
        if identity.startswith("dies"):
            os._exit(3)
        if identity.startswith("slow"):
            time.sleep(30)  # until the test kills this worker
        return self.signer.sign(csr, identity, **options)


def decide(decider, identity):
    return asyncio.run(decider.decide(identity, {}, {"csr": make_csr(identity), "ssldir": "/ssl"}))


@pytest.fixture
def decider(tmp_path):
    ca = {"ca_cert": str(tmp_path / "ca.pem"), "ca_key": str(tmp_path / "ca.key"), "create_ca": True}
    decider = SignerDecider(ca, {"collectives": "prod"}, processes=2)
    assert decider.pool is not None and len(decider.pool.worker_pids()) == 2
    decider.pool.close()  # the same signer, with trouble for some nodes
    decider.pool = SigningPool(TroubledSigner(decider.signer), 2)
    yield decider
    decider.close()


def test_a_worker_signs_and_its_errors_name_the_node_while_the_others_go_on(decider):
    decision = decide(decider, "node1.example.net")
    certificate = load_certificates(decision.certificate, "certificate")[0]
    assert certificate.subject.rfc4514_string() == "CN=node1.example.net" and decider.signer.verify_issued(certificate)
    assert decision.configuration["identity"] == "node1.example.net"
    with pytest.raises(
        NodeFailure, match=r"signer could not sign the CSR of broken1\.example\.net: .*HSM is unplugged"
    ):
        decide(decider, "broken1.example.net")
    with pytest.raises(NodeFailure, match=r"signer refused the CSR of node3\.example\.net"):
        asyncio.run(decider.decide("node3.example.net", {}, {"csr": make_csr("node1.example.net")}))
    assert decide(decider, "node4.example.net").msg.startswith("signed serial ")
    assert decider.warnings() == []


def decide_all(decider, identities):
    """Every node's decision (or its NodeFailure), asked at once as a bulk run asks."""

    async def all_at_once():
        asks = [decider.decide(name, {}, {"csr": make_csr(name), "ssldir": "/ssl"}) for name in identities]
        return await asyncio.gather(*asks, return_exceptions=True)

    return dict(zip(identities, asyncio.run(all_at_once())))


def test_a_dead_worker_fails_only_the_node_it_held_and_the_other_worker_signs_the_rest(decider):
    # The first node goes to the first idle worker, the second to the other; the rest wait for whichever is free.
    names = ["dies1.example.net", *(f"node{n}.example.net" for n in range(1, 12))]
    outcomes = decide_all(decider, names)
    died = outcomes.pop("dies1.example.net")
    assert isinstance(died, NodeFailure)
    assert "dies1.example.net: a signing worker process exited with status 3" in str(died)
    assert "later nodes are signed by the other workers" in str(died)
    assert all(decision.msg.startswith("signed serial ") for decision in outcomes.values()), outcomes
    assert len(decider.pool.worker_pids()) == 1 and not decider.pool.broken
    assert decider.warnings() == [
        "1 of 2 signing worker processes stopped (a signing worker process exited with status 3); only the nodes "
        "they held failed, the others signed the rest"
    ]


def test_when_every_worker_is_gone_the_nodes_are_signed_inline(decider):
    with pytest.raises(NodeFailure, match=r"dies1\.example\.net: .*status 3 \(later nodes are signed by the other"):
        decide(decider, "dies1.example.net")
    with pytest.raises(NodeFailure, match=r"dies2\.example\.net: .*status 3 \(later nodes are signed inline\)"):
        decide(decider, "dies2.example.net")
    assert decider.pool.worker_pids() == [] and decider.pool.broken
    assert decide(decider, "node2.example.net").msg.startswith("signed serial ")
    assert "the rest was signed inline" in decider.warnings()[0]


def test_a_worker_killed_from_outside_fails_only_the_node_it_was_signing(decider):
    victim = decider.pool.workers[0].process
    names = ["slow0.example.net", *(f"node{n}.example.net" for n in range(1, 40))]

    async def kill_while_busy():
        asks = [decider.decide(name, {}, {"csr": make_csr(name), "ssldir": "/ssl"}) for name in names]
        gathered = asyncio.gather(*asks, return_exceptions=True)
        await asyncio.sleep(0.5)  # the slow node is the first worker's whole batch; the other signs the rest
        os.kill(victim.pid, signal.SIGKILL)
        return await gathered

    outcomes = dict(zip(names, asyncio.run(kill_while_busy())))
    killed = outcomes.pop("slow0.example.net")
    assert isinstance(killed, NodeFailure) and "killed by signal 9" in str(killed)
    assert all(decision.msg.startswith("signed serial ") for decision in outcomes.values()), outcomes
    assert decider.pool.worker_pids() == [decider.pool.workers[1].process.pid]


def test_a_batch_holds_at_most_max_batch_nodes(decider):
    sent = []
    for worker in decider.pool.workers:
        real_send = worker.conn.send
        worker.conn.send = lambda batch, real_send=real_send: (sent.append(len(batch)), real_send(batch))[1]
    outcomes = decide_all(decider, [f"node{n}.example.net" for n in range(60)])
    assert all(decision.msg.startswith("signed serial ") for decision in outcomes.values())
    assert sum(sent) == 60 and 1 < max(sent) <= MAX_BATCH and sent[:2] == [1, 1], sent


def test_closing_the_decider_stops_its_workers(decider):
    pids = decider.pool.worker_pids()
    assert decide(decider, "node1.example.net").certificate
    decider.close()
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
