"""The node's renewal schedule, backoff, the request it signs and the checks of the certificate it gets back."""

import asyncio
import datetime
import os
import random

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from ansible_collections.zeroinit.bootstrap.plugins.module_utils.choria.protocol import decode_request
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.choria.renewal import RenewalSettings
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.choria.security import (
    RENEWAL_POLICY,
    RequestVerifier,
)
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.node.renewal import (
    CurrentCertificate,
    NoCertificate,
    RenewalFailure,
    check_renewed,
    draw_share,
    install_renewed,
    prepare_renewal,
    read_current,
    renewal_due,
    retry_delay,
)
from tests.support.certificates import Authority
from tests.support.fleet import TestCA
from tests.support.node_requests import provisioned_files

SETTINGS = RenewalSettings(retry_min=5, retry_max=300)


def current(not_before=0.0, not_after=900.0, arrived=0.0) -> CurrentCertificate:
    return CurrentCertificate(1, not_before, not_after, arrived, "c", "k", "ca", SETTINGS)


def test_the_lifetime_counts_from_arrival_so_backdating_does_not_eat_a_short_certificate():
    # A 90-second certificate backdated five minutes, arrived at 300: renewed at 2/3 of the 90 s, not at once.
    backdated = current(not_before=0.0, not_after=390.0, arrived=300.0)
    assert renewal_due(backdated, 2 / 3) == pytest.approx(360.0)
    # Arrived before not_before (a clock behind): counted from not_before.
    assert renewal_due(current(not_before=100.0, not_after=1000.0, arrived=0.0), 0.5) == pytest.approx(550.0)


def test_the_share_is_drawn_within_fraction_plus_minus_jitter():
    rng = random.Random(7)
    shares = [draw_share(RenewalSettings(), rng) for _draw in range(2000)]
    assert 2 / 3 - 0.1 <= min(shares) < 0.6 and 0.73 < max(shares) <= 2 / 3 + 0.1


def test_retry_delays_double_up_to_the_cap_and_stay_before_the_end():
    rng = random.Random(1)
    far = [retry_delay(n, SETTINGS, 10_000.0, rng) for n in range(1, 10)]
    for got, base in zip(far, [5, 10, 20, 40, 80, 160, 300, 300, 300]):
        assert base * 0.9 <= got <= base * 1.1
    assert retry_delay(8, SETTINGS, 100.0, rng) == pytest.approx(50.0)  # halfway to the end
    assert retry_delay(8, SETTINGS, 4.0, rng) == 5.0  # but never sooner than retry_min
    assert retry_delay(10_000, SETTINGS, 10_000.0, rng) <= 330.0


@pytest.fixture
def configured(node):
    ca = TestCA("site CA")
    provisioned_files(node, ca)
    node.load()
    return node, ca


def test_read_current_finds_the_files_and_a_node_without_them_is_not_renewed(configured):
    node, _ca = configured
    got = read_current(node)
    assert got.cert_path == node.ssl_path("certificate.pem") and got.key_path == node.ssl_path("private.pem")
    assert got.not_after - got.not_before == pytest.approx(8 * 86400)
    assert got.arrived == pytest.approx(os.stat(got.cert_path).st_mtime)
    node.config = {k: v for k, v in node.config.items() if k != "plugin.security.file.certificate"}
    with pytest.raises(NoCertificate):
        read_current(node)


def test_the_request_is_signed_with_the_current_certificate_for_a_new_key_of_the_same_type(configured):
    node, ca = configured
    prepared = prepare_renewal(node, read_current(node), "members")
    req = decode_request(prepared.payload)
    assert (req.agent, req.action, req.collective) == ("zeroinit_ca", "renew", "members")
    assert req.callerid == f"choria={node.identity}" and req.senderid == node.identity
    verified = RequestVerifier(ca.pem, RENEWAL_POLICY).verify(
        req.secure_message, req.signature, req.pubcert, required_name=node.identity
    )
    assert verified.names[0] == node.identity
    csr = x509.load_pem_x509_csr(req.data["csr"].encode("ascii"))
    with open(node.ssl_path("private.pem"), "rb") as handle:
        assert b"PRIVATE" in handle.read()
    assert isinstance(csr.public_key(), ec.EllipticCurvePublicKey)
    assert csr.public_key() == prepared.key.public_key()
    assert csr.public_key() != x509.load_pem_x509_certificate(req.pubcert.encode("ascii")).public_key()


def test_the_answer_is_installed_only_when_it_is_this_nodes_new_key_from_a_trusted_ca(configured):
    node, ca = configured
    now = datetime.datetime.now(datetime.UTC)
    prepared = prepare_renewal(node, read_current(node), "members")
    public = prepared.key.public_key()
    good = ca._issue(public, node.identity, dns=[node.identity], server=True)
    other_key = ca._issue(ec.generate_private_key(ec.SECP256R1()).public_key(), node.identity)
    other_name = ca._issue(public, "web2.example.net", dns=["web2.example.net"])
    stranger = TestCA("another CA")._issue(public, node.identity, dns=[node.identity])
    ca_cert = Authority("site CA", key=ca.key).issue(node.identity, key=prepared.key, ca=True).pem
    expired = (
        Authority("x", key=ca.key)
        .issue(node.identity, key=prepared.key, not_before=now - datetime.timedelta(days=2), not_after=now)
        .pem
    )
    for certificate, reason in (
        ("nothing", "no PEM certificate"),
        (other_key, "not for the key this node made"),
        (other_name, "names ['web2.example.net'"),
        (stranger, "is not a CA this node trusts"),
        (ca_cert, "is a CA certificate"),
        (expired, "not now"),
    ):
        with pytest.raises(RenewalFailure) as info:
            check_renewed(node, certificate, prepared, node.ssl_path("ca.pem"), now.timestamp())
        assert reason in str(info.value), certificate[:40]
    before = read_current(node)
    installed = install_renewed(node, before, prepared, good)
    assert installed.public_key() == public
    with open(node.ssl_path("certificate.pem")) as handle:
        assert handle.read() == good
    assert os.stat(node.ssl_path("private.pem")).st_mode & 0o777 == 0o600
    assert not os.path.exists(os.path.join(node.node_dir, ".configure.journal"))


class _ScriptedRenewer:
    """A CertificateRenewer whose exchange is scripted: it records how many run at once and fails on request."""

    def __init__(self, outcomes):
        from concurrent.futures import ThreadPoolExecutor

        from ansible_collections.zeroinit.bootstrap.plugins.module_utils.node.renewal import CertificateRenewer

        self.events, self.reconnects, self.running, self.most = [], [], 0, 0
        self.outcomes = list(outcomes)
        self.tasks = set()
        outer = self

        class Scripted(CertificateRenewer):
            async def renew(self, node, current):
                outer.running += 1
                outer.most = max(outer.most, outer.running)
                try:
                    await asyncio.sleep(0.05)
                    if outer.outcomes.pop(0) == "fail":
                        raise RenewalFailure("no renewal responder answered in collective ops within 0.1s")
                    with open(current.cert_path, "rb") as handle:
                        return x509.load_pem_x509_certificate(handle.read())
                finally:
                    outer.running -= 1

        async def announce(node, event_type, extra):
            self.events.append((event_type, extra))

        async def reconnect(node):
            self.reconnects.append(node.identity)

        def spawn(coro):
            task = asyncio.ensure_future(coro)
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

        self.renewer = Scripted(reconnect, announce, ThreadPoolExecutor(2), spawn, rng=random.Random(3))


def test_asking_again_while_a_renewal_runs_queues_one_more_never_two_at_once(configured):
    node, _ca = configured
    node.link = object()  # joined its collective (the scripted exchange does not use it)
    script = _ScriptedRenewer(["ok", "ok"])

    async def scenario():
        runner = asyncio.ensure_future(script.renewer.run())
        script.renewer.renew_now(node)
        await asyncio.sleep(0.02)
        script.renewer.renew_now(node)  # while the first exchange runs
        script.renewer.renew_now(node)
        await asyncio.sleep(0.5)
        runner.cancel()

    asyncio.run(scenario())
    assert script.most == 1
    assert [e[0] for e in script.events] == ["renewed", "renewed"] and script.outcomes == []
    assert script.reconnects == [node.identity, node.identity]


def test_a_failure_is_announced_with_the_reason_and_retried_with_backoff(configured):
    node, _ca = configured
    node.link = object()
    node.config["plugin.zeroinit.renewal.retry_min"] = "0.1"
    node.config["plugin.zeroinit.renewal.retry_max"] = "0.2"
    script = _ScriptedRenewer(["fail", "fail", "fail", "ok"])

    async def scenario():
        runner = asyncio.ensure_future(script.renewer.run())
        script.renewer.renew_now(node)
        await asyncio.sleep(1.5)
        runner.cancel()

    asyncio.run(scenario())
    kinds = [e[0] for e in script.events]
    assert kinds == ["renewal_failed", "renewal_failed", "renewal_failed", "renewed"]
    failures = [e[1] for e in script.events[:3]]
    assert [f["attempt"] for f in failures] == [1, 2, 3]
    assert failures[0]["retry_in"] < failures[1]["retry_in"] <= 0.22
    assert "no renewal responder answered" in failures[0]["reason"]
    assert failures[0]["serial"] == script.events[3][1]["previous_serial"]


@pytest.mark.parametrize("durable", [True, False])
def test_file_work_goes_to_a_thread_only_when_the_nodes_files_are_fsynced(configured, durable):
    """Fsync can block the event loop for as long as the disk takes; a simulated fleet's unsynced reads cannot."""
    import threading

    node, _ca = configured
    node.durable = durable
    script = _ScriptedRenewer([])
    ran_on = []

    def read(target):
        ran_on.append(threading.current_thread())
        return read_current(target)

    async def scenario():
        return await script.renewer._file_work(node, read, node), threading.current_thread()

    got, loop_thread = asyncio.run(scenario())
    assert got.cert_path == node.ssl_path("certificate.pem")
    assert (ran_on[0] is not loop_thread) is durable
