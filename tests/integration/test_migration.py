"""The CA migration (playbooks/migrate_ca.yaml) of a fleet from its temporary built-in CA to a permanent CFSSL CA,
through ansible-playbook, while every node is pinged twice a second.

50 configured nodes on a members' nats-server that requires client certificates: 49 in one agent process, one in
another that hangs (SIGSTOP) during the first run. That run migrates the 49 and reports the hung node; brokers and
nodes keep trusting both CAs, so the hung node answers again once it resumes, and is reprovisioned (it arrives on the
provisioning broker). A second run completes: the broker presents a certificate from the permanent CA, nodes and
broker trust the permanent CA only. The nodes are locked to their site: every trust is signed by a provisioner of the
temporary CA, and once the trust is narrowed only a provisioner of the permanent CA is of the site. No migrated node
goes without answering ping for more than a few rounds.
"""

from __future__ import annotations

import asyncio
import os
import pathlib
import signal
import ssl

import pytest
from cryptography import x509

from ansible_collections.zeroinit.bootstrap.plugins.module_utils.choria.transport import ConnectError, connect
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.pki.ca import CertificateAuthority
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.pki.policy import CsrPolicy
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.pki.signer import Signer
from tests.support.ansible_run import run_module, run_playbook
from tests.support.broker import EmbeddedBroker
from tests.support.certificates import Authority
from tests.support.cfssl import CfsslServer
from tests.support.fleet import discover
from tests.support.members import (
    COLLECTIVE,
    MemberFleet,
    MemberSite,
    PingWatch,
    answering,
    certificate_of,
    fleet_identities,
    migration_run,
    node_files,
)

ROOT = pathlib.Path(__file__).resolve().parents[2]
TOKEN = "s3cret"


def client_context(cafile: str, cert: str, key: str) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=cafile)
    context.load_cert_chain(cert, key)
    return context


@pytest.fixture
def permanent(tmp_path):
    with CfsslServer(tmp_path / "cfssl", ca_name="permanent CA") as server:
        yield server


def test_migration_moves_every_reachable_node_and_leaves_nobody_locked_out(tmp_path, permanent):
    site = MemberSite(tmp_path / "old", name="temporary CA")
    identities = fleet_identities(49)
    late = fleet_identities(1, prefix="late")
    with site.broker() as broker, EmbeddedBroker() as provisioning:
        site.seed(tmp_path / "fleet", identities, broker.url)
        site.seed(tmp_path / "late", late, broker.url)
        inventory, extra = migration_run(tmp_path, site, broker, permanent, TOKEN)
        controller = {"cert": extra["zeroinit_migrate_tls_cert"], "key": extra["zeroinit_migrate_tls_key"]}
        extra = {
            **extra,
            "zeroinit_migrate_timeout": 3,
            "zeroinit_migrate_retries": 0,
            "zeroinit_migrate_wait": 60,
        }
        with (
            MemberFleet(broker.url, identities, tmp_path / "fleet", site) as fleet,
            MemberFleet(
                broker.url, late, tmp_path / "late", site, prefix="late", provisioning_url=provisioning.url
            ) as hung,
            PingWatch(broker.url, identities + late, site.client_tls("watch")) as watch,
        ):
            os.kill(hung.process.pid, signal.SIGSTOP)
            try:
                first = run_playbook(
                    ROOT / "playbooks" / "migrate_ca.yaml",
                    inventory=str(inventory),
                    extra_vars=dict(extra, zeroinit_migrate_identities=identities + late),
                )
            finally:
                os.kill(hung.process.pid, signal.SIGCONT)
            assert first.rc == 0, first.stdout[-4000:]
            summary = first.result("Summarize")["msg"]
            assert summary["migrated"] == 49
            assert list(summary["missed"]) == late and "no reply from late1" in summary["missed"][late[0]]
            assert summary["complete"] is False
            both = site.trust_pem + permanent.ca_pem
            for identity in identities:
                assert certificate_of(tmp_path / "fleet", identity).issuer.rfc4514_string() == "CN=permanent CA"
                assert node_files(tmp_path / "fleet", identity)["ca"].read_text().count("BEGIN CERTIFICATE") == 2
            # Nobody is locked out: the broker still presents the old certificate and accepts both CAs.
            assert pathlib.Path(broker.tls["ca"]).read_text().count("BEGIN CERTIFICATE") == 2
            assert certificate_of(tmp_path / "late", late[0]).issuer.rfc4514_string() == "CN=temporary CA"
            assert asyncio.run(answering(broker.url, late, site.client_tls("after"), 10)) == late
            # ... and the node left behind can still be reprovisioned over the members' network.
            (tmp_path / "both.pem").write_text(both)
            sent = run_module(
                "zeroinit.bootstrap.choria_provision",
                dict(
                    action="reprovision",
                    identity=late[0],
                    brokers=[broker.url],
                    collective=COLLECTIVE,
                    token=TOKEN,
                    tls_ca=str(tmp_path / "both.pem"),
                    tls_cert=controller["cert"],
                    tls_key=controller["key"],
                    signing_cert=extra["zeroinit_provision_signing_cert"],
                    signing_key=extra["zeroinit_provision_signing_key"],
                ),
            )
            assert not sent.get("failed"), sent.get("msg")
            assert asyncio.run(discover(provisioning.url, late, 30)) == late

            second = run_playbook(
                ROOT / "playbooks" / "migrate_ca.yaml",
                inventory=str(inventory),
                extra_vars=dict(extra, zeroinit_migrate_identities=identities),
            )
            assert second.rc == 0, second.stdout[-4000:]
            summary = second.result("Summarize")["msg"]
            assert summary["complete"] is True and summary["missed"] == {}

            # The end state: the permanent CA only, everywhere, and every node reachable with it alone.
            new_ca = CertificateAuthority.load(str(permanent.ca_path), str(permanent.ca_key_path))
            files = _client_files(tmp_path / "new-client", new_ca)
            new_tls = client_context(str(permanent.ca_path), files["cert"], files["key"])
            assert asyncio.run(answering(broker.url, identities, new_tls, 30)) == identities
            # The nodes' site lock moved with the trust: a provisioner of the temporary CA is no longer of the site.
            permanent_provisioner = Authority.from_files(permanent.ca_path, permanent.ca_key_path).write_leaf(
                tmp_path / "new-client", "provisioner.permanent.example.net"
            )
            probe = dict(
                action="trust",
                identities=identities[:3],
                ca_bundle=permanent.ca_pem,
                brokers=[broker.url],
                collective=COLLECTIVE,
                token=TOKEN,
                tls_ca=str(permanent.ca_path),
                tls_cert=files["cert"],
                tls_key=files["key"],
                timeout=5,
            )
            temporary = dict(
                probe,
                signing_cert=extra["zeroinit_provision_signing_cert"],
                signing_key=extra["zeroinit_provision_signing_key"],
            )
            refused = run_module("zeroinit.bootstrap.node_certificates", temporary, check=True)["failed_nodes"]
            assert sorted(refused) == identities[:3]
            assert all("is not issued by the site CA" in reason for reason in refused.values()), refused
            ours = dict(probe, signing_cert=permanent_provisioner["cert"], signing_key=permanent_provisioner["key"])
            accepted = run_module("zeroinit.bootstrap.node_certificates", ours, check=True)
            assert accepted["failed_nodes"] == {} and accepted["nodes"] == [], accepted
            log = fleet.log_tail(400_000)
        identity, gap = watch.longest_gap(identities)
        assert gap < 2.5, f"{identity} did not answer ping for {gap:.1f}s"
        assert pathlib.Path(broker.tls["ca"]).read_text().count("BEGIN CERTIFICATE") == 1
        served = x509.load_pem_x509_certificate(pathlib.Path(broker.tls["cert"]).read_bytes())
        assert served.issuer.rfc4514_string() == "CN=permanent CA"
        assert os.stat(broker.tls["key"]).st_mode & 0o777 == 0o600
        for identity in identities:
            assert node_files(tmp_path / "fleet", identity)["ca"].read_text().count("BEGIN CERTIFICATE") == 1
            assert certificate_of(tmp_path / "fleet", identity).issuer.rfc4514_string() == "CN=permanent CA"
        with pytest.raises(ConnectError):  # a client of the temporary CA is no longer let in
            old_client = client_context(str(permanent.ca_path), controller["cert"], controller["key"])
            asyncio.run(connect([broker.url], "old", tls=old_client, connect_timeout=2))
    assert "Traceback" not in log


def _client_files(directory: pathlib.Path, ca) -> dict:
    """A client certificate from ``ca`` (the permanent CA's own key, loaded from the CFSSL fixture's files)."""
    from tests.support.members import _key_and_csr

    directory.mkdir(parents=True, exist_ok=True)
    key_pem, csr = _key_and_csr("operator")
    issued = Signer(ca, CsrPolicy(default_deny=False)).sign(csr, "operator", profile="client")
    (directory / "cert.pem").write_text(issued.certificate)
    (directory / "key.pem").write_text(key_pem)
    return {"cert": str(directory / "cert.pem"), "key": str(directory / "key.pem")}
