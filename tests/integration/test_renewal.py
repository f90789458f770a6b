"""Configured nodes renew their own certificates before they expire (real nats-server with TLS client
certificates, a real agent fleet, real X.509, the built-in signer and a real ``cfssl serve``).

Short lifetimes make the schedule visible: 90-second certificates, renewed at a configured 0.2 +- 0.05 of their life
(every 18 s or so, so two renewals fit in well under a minute; the default 2/3 is the unit tests' and the benchmark's),
while a watcher pings every node twice a second and records the longest time any node went without answering.
"""

from __future__ import annotations

import collections
import re
import time

from ansible_collections.zeroinit.bootstrap.plugins.module_utils.provisioning.renewal import RenewalResponder
from tests.support.broker import EmbeddedBroker
from tests.support.members import (
    COLLECTIVE,
    EventWatch,
    MemberFleet,
    MemberSite,
    PingWatch,
    ResponderThread,
    certificate_of,
    fleet_identities,
    key_mode,
)
from tests.support.provisioner import ProvisionerProcess

FAST_RETRIES = {"plugin.zeroinit.renewal.retry_min": "1", "plugin.zeroinit.renewal.retry_max": "4"}


def wait_until(predicate, timeout: float, step: float = 0.25) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return predicate()


def test_short_lived_certificates_are_renewed_twice_with_no_gap_in_answering(tmp_path):
    site = MemberSite(tmp_path / "site", valid_seconds=90)
    identities = fleet_identities(20)
    config = {**FAST_RETRIES, "plugin.zeroinit.renewal.fraction": "0.2", "plugin.zeroinit.renewal.jitter": "0.05"}
    renewals = collections.Counter()
    responder = RenewalResponder(
        site.signer, site.trust_pem, on_answer=lambda a: renewals.update([a.identity] if a.renewed else [])
    )
    with site.broker() as broker:
        site.seed(tmp_path / "fleet", identities, broker.url, config)
        first = {i: certificate_of(tmp_path / "fleet", i) for i in identities}
        with (
            ResponderThread(responder, broker.url, site.client_tls("zeroinit-ca")),
            MemberFleet(broker.url, identities, tmp_path / "fleet", site) as fleet,
            EventWatch(broker.url, site.client_tls("events")) as events,
            PingWatch(broker.url, identities, site.client_tls("watch")) as watch,
        ):
            assert wait_until(lambda: min(renewals[i] for i in identities) >= 2, 75), dict(renewals)
            time.sleep(1.0)  # the last reconnections have settled: still answering afterwards
        log = fleet.log_tail(200_000)
    assert all(renewals[i] >= 2 for i in identities)
    identity, gap = watch.longest_gap()
    assert gap < 2.5, f"{identity} did not answer ping for {gap:.1f}s"
    assert watch.rounds > 40  # two renewals take at least 27 s: the watch pinged through both, not once
    for identity in identities:
        now = certificate_of(tmp_path / "fleet", identity)
        assert now.serial_number != first[identity].serial_number
        assert now.public_key() != first[identity].public_key()  # a new key each time, made on the node
        assert now.serial_number == int(responder.record.renewed[identity], 16)
        assert key_mode(tmp_path / "fleet", identity) == 0o600
        assert len(events.of("renewed", identity)) >= 2
    assert not events.of("renewal_failed")
    assert "Traceback" not in log


def test_stopped_signer_means_retries_with_backoff_and_events_before_expiry_and_the_old_certificate_stays(tmp_path):
    """The cfssl backend: cfssl serve stops, every node keeps its certificate, retries with growing delays and says
    so in renewal_failed events before its certificate ends; cfssl serve comes back and every node renews."""
    from ansible_collections.zeroinit.bootstrap.plugins.module_utils.pki.ca import CertificateAuthority
    from ansible_collections.zeroinit.bootstrap.plugins.module_utils.pki.cfssl import cfssl_signer_from_params
    from ansible_collections.zeroinit.bootstrap.plugins.module_utils.pki.policy import CsrPolicy
    from ansible_collections.zeroinit.bootstrap.plugins.module_utils.pki.signer import Signer
    from tests.support.cfssl import CfsslServer

    identities = fleet_identities(10)
    site = MemberSite(tmp_path / "site")
    config = {**FAST_RETRIES, "plugin.zeroinit.renewal.fraction": "0.3", "plugin.zeroinit.renewal.jitter": "0.05"}
    with CfsslServer(tmp_path / "cfssl") as server:
        cfssl = cfssl_signer_from_params(
            {"cfssl_url": server.url, "cfssl_auth_key": server.auth_key, "cfssl_profile": "node"},
            CsrPolicy(max_valid_days=30),
        )
        # The nodes start with 40-second certificates from the CFSSL CA (made here with its key, for exact lifetimes).
        site.use_signer(
            Signer(CertificateAuthority.load(str(server.ca_path), str(server.ca_key_path)), valid_seconds=40)
        )
        responder = RenewalResponder(cfssl, site.trust_pem, valid_days=30)
        with site.broker() as broker:
            site.seed(tmp_path / "fleet", identities, broker.url, config)
            seeded = {i: certificate_of(tmp_path / "fleet", i) for i in identities}
            with (
                ResponderThread(responder, broker.url, site.client_tls("zeroinit-ca")),
                MemberFleet(broker.url, identities, tmp_path / "fleet", site) as fleet,
                EventWatch(broker.url, site.client_tls("events")) as events,
                PingWatch(broker.url, identities, site.client_tls("watch")) as watch,
            ):
                server.stop()
                assert wait_until(lambda: all(len(events.of("renewal_failed", i)) >= 3 for i in identities), 30)
                unchanged = {i: certificate_of(tmp_path / "fleet", i).serial_number for i in identities}
                server.restart()
                assert wait_until(lambda: all(events.of("renewed", i) for i in identities), 20)
            log = fleet.log_tail(200_000)
        cfssl.close()
    for identity in identities:
        failures = events.of("renewal_failed", identity)
        first_cert = seeded[identity]
        assert unchanged[identity] == first_cert.serial_number  # kept while the signer was away
        assert all("the signer cannot sign now" in f["reason"] for f in failures[:3])
        assert [f["attempt"] for f in failures[:3]] == [1, 2, 3]
        delays = [f["retry_in"] for f in failures[:3]]
        assert delays[0] < delays[1] < delays[2], delays  # 1, 2, 4 seconds, +-10 %
        assert all(f["timestamp"] < first_cert.not_valid_after_utc.timestamp() for f in failures[:3])
        assert all(f["serial"] == f"{first_cert.serial_number:x}" for f in failures)
        renewed = certificate_of(tmp_path / "fleet", identity)
        assert renewed.serial_number != first_cert.serial_number
        assert renewed.issuer == first_cert.issuer  # the CFSSL CA, now through authsign
        assert renewed.not_valid_after_utc.timestamp() - time.time() > 29 * 86400  # the profile's 720h
    identity, gap = watch.longest_gap()
    assert gap < 2.5, f"{identity} did not answer ping for {gap:.1f}s"
    assert "Traceback" not in log and "certificate renewal failed (attempt 3)" in log


def test_the_provisioner_service_with_renewal_configured_renews_the_members_certificates(tmp_path):
    """The service (a real ``zeroinit-provisioner run`` process) with ``renewal:`` set answers the configured nodes'
    renewal requests on its own TLS connection to the members' broker; nothing else answers them here."""
    site = MemberSite(tmp_path / "site", valid_seconds=90)
    identities = fleet_identities(3)
    config = {**FAST_RETRIES, "plugin.zeroinit.renewal.fraction": "0.2", "plugin.zeroinit.renewal.jitter": "0.05"}
    client = site.issue("zeroinit-provisioner")
    signer = {"ca_cert": str(site.ca_cert_path), "ca_key": str(site.ca_key_path), "valid_seconds": 90}
    with EmbeddedBroker() as provisioning, site.broker() as broker:
        site.seed(tmp_path / "fleet", identities, broker.url, config)
        first = {i: certificate_of(tmp_path / "fleet", i) for i in identities}
        service = ProvisionerProcess(
            tmp_path / "service",
            "renewer",
            site="renewal",
            brokers=[provisioning.url],
            token="s3cret",
            signer=signer,
            renewal={
                "brokers": [broker.url],
                "collective": COLLECTIVE,
                "site_ca": str(site.trust_path),
                "tls_ca": client["ca"],
                "tls_cert": client["cert"],
                "tls_key": client["key"],
            },
        )
        with (
            service,
            MemberFleet(broker.url, identities, tmp_path / "fleet", site) as fleet,
            EventWatch(broker.url, site.client_tls("events")) as events,
        ):
            service.wait_for(lambda line: line.get("event") == "renewal_started", 10, "to serve renewals")
            assert wait_until(lambda: all(events.of("renewed", i) for i in identities), 60), service.log_tail()
            status, metrics = service.get("/metrics")
            assert status == 200
            counted = re.search(
                r'^zeroinit_provisioner_renewals\{outcome="renewed",site="renewal"\} (\S+)$', metrics, re.M
            )
            assert counted and float(counted.group(1)) >= len(identities), metrics
            log = fleet.log_tail(100_000)
        assert service.process.returncode == 0, service.log_tail()
    for identity in identities:
        now = certificate_of(tmp_path / "fleet", identity)
        assert now.serial_number != first[identity].serial_number
        assert now.public_key() != first[identity].public_key()
        assert now.issuer == first[identity].issuer
    assert not events.of("renewal_failed")
    assert "Traceback" not in log + service.log_tail(100_000)
