"""The built-in signer in worker processes: a worker's error fails only its node, a dead worker does not stop the
run, and closing the decider stops the workers."""

from __future__ import annotations

import asyncio
import os

import pytest

from ansible_collections.zeroinit.bootstrap.plugins.module_utils.pki.x509 import load_certificates
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.provisioning.deciders import SignerDecider
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.provisioning.helper import NodeFailure
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.provisioning.signing_pool import SigningPool
from tests.support.x509 import make_csr


class TroubledSigner:
    """The real signer, except for nodes named ``broken*`` (it raises) and ``dies*`` (the worker process exits)."""

    def __init__(self, signer):
        self.signer = signer

    def sign(self, csr, identity, **options):
        if identity.startswith("broken"):
            raise RuntimeError("the HSM is unplugged")
        if identity.startswith("dies"):
            os._exit(3)
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


def test_a_dead_worker_fails_its_node_and_later_nodes_are_signed_inline(decider):
    with pytest.raises(NodeFailure, match=r"signer could not sign the CSR of dies1\.example\.net: .*signed inline"):
        decide(decider, "dies1.example.net")
    assert decide(decider, "node2.example.net").msg.startswith("signed serial ")
    assert any("signing worker processes stopped" in warning for warning in decider.warnings())


def test_closing_the_decider_stops_its_workers(decider):
    pids = decider.pool.worker_pids()
    assert decide(decider, "node1.example.net").certificate
    decider.close()
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
