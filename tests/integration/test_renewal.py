"""Configured nodes renew their own certificates before they expire (real nats-server with TLS client
certificates, a real agent fleet, real X.509, the built-in signer and a real ``cfssl serve``).

Short lifetimes make the schedule visible: 30-second certificates renewed at 2/3 of their life, while a watcher
pings every node twice a second and records the longest time any node went without answering.
"""

from __future__ import annotations

import collections
import time

import pytest

from ansible_collections.zeroinit.bootstrap.plugins.module_utils.provisioning.renewal import RenewalResponder
from tests.support.members import (
    EventWatch,
    MemberFleet,
    MemberSite,
    PingWatch,
    ResponderThread,
    certificate_of,
    fleet_identities,
    key_mode,
)

FAST_RETRIES = {"plugin.zeroinit.renewal.retry_min": "1", "plugin.zeroinit.renewal.retry_max": "4"}


def wait_until(predicate, timeout: float, step: float = 0.25) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return predicate()


def test_short_lived_certificates_are_renewed_twice_with_no_gap_in_answering(tmp_path):
    site = MemberSite(tmp_path / "site", valid_seconds=30)
    identities = fleet_identities(20)
    renewals = collections.Counter()
    responder = RenewalResponder(
        site.signer, site.trust_pem, on_answer=lambda a: renewals.update([a.identity] if a.renewed else [])
    )
    with site.broker() as broker:
        site.seed(tmp_path / "fleet", identities, broker.url, FAST_RETRIES)
        first = {i: certificate_of(tmp_path / "fleet", i) for i in identities}
        with (
            ResponderThread(responder, broker.url, site.client_tls("zeroinit-ca")),
            MemberFleet(broker.url, identities, tmp_path / "fleet", site) as fleet,
            EventWatch(broker.url, site.client_tls("events")) as events,
            PingWatch(broker.url, identities, site.client_tls("watch")) as watch,
        ):
            assert wait_until(lambda: min(renewals[i] for i in identities) >= 2, 60), dict(renewals)
            time.sleep(1.0)  # the last reconnections have settled: still answering afterwards
        log = fleet.log_tail(200_000)
    assert all(renewals[i] >= 2 for i in identities)
    identity, gap = watch.longest_gap()
    assert gap < 2.5, f"{identity} did not answer ping for {gap:.1f}s"
    assert watch.rounds > 80
    for identity in identities:
        now = certificate_of(tmp_path / "fleet", identity)
        assert now.serial_number != first[identity].serial_number
        assert now.public_key() != first[identity].public_key()  # a new key each time, made on the node
        assert now.serial_number == int(responder.record.renewed[identity], 16)
        assert key_mode(tmp_path / "fleet", identity) == 0o600
        assert len(events.of("renewed", identity)) >= 2
    assert not events.of("renewal_failed")
    assert "Traceback" not in log
