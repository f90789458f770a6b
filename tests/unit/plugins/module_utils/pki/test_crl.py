"""Revocation records and the CRL with real X.509: what is recorded, what the CRL lists, when it is signed again."""

from __future__ import annotations

import datetime
import json
import os
import pathlib
import stat

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ansible_collections.zeroinit.bootstrap.plugins.module_utils.pki.ca import CertificateAuthority
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.pki.crl import (
    CertificateRevocation,
    RevocationError,
    RevocationRecord,
    RevocationRecords,
    crl_refresh_reason,
    load_crl,
    parse_serial,
    sign_crl,
)
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.pki.x509 import utc_now
from tests.support.x509 import make_csr

NOW = datetime.datetime(2030, 1, 2, 3, 4, 5, tzinfo=datetime.UTC)


@pytest.fixture
def site(tmp_path, ca):
    ca.write(str(tmp_path / "ca.pem"), str(tmp_path / "ca-key.pem"))
    return {
        "ca_cert": str(tmp_path / "ca.pem"),
        "ca_key": str(tmp_path / "ca-key.pem"),
        "records": str(tmp_path / "revocations.json"),
        "crl": str(tmp_path / "crl.pem"),
    }


def issue(signer, identity):
    return signer.sign(make_csr(identity), identity).certificate


def crl_at(path, ca):
    return load_crl(pathlib.Path(path).read_text(), ca.certificate)


def test_serials_are_read_as_hexadecimal_with_or_without_colons_and_bounded():
    assert parse_serial("0A:ff") == 0xAFF == parse_serial("0xaff") == parse_serial(0xAFF)
    for bad in ("", "xyz", "0", -1, "1" * 41):
        with pytest.raises(RevocationError):
            parse_serial(bad)


def test_records_keep_the_first_revocation_of_a_serial_and_round_trip_through_json():
    records = RevocationRecords()
    first = RevocationRecord(0xABC, "node1.example.net", "key_compromise", NOW)
    assert records.add(first)
    assert not records.add(RevocationRecord(0xABC, "other", "superseded", NOW))
    records.crl_number = 4
    again = RevocationRecords.load(records.dump())
    assert again.serials == [0xABC] and again.crl_number == 4
    assert again.records[0xABC] == first


@pytest.mark.parametrize(
    "text, needle",
    [
        ("not json", "not JSON"),
        (json.dumps({"version": 2}), "version 1"),
        (json.dumps({"version": 1, "revoked": {}}), "must be a list"),
        (json.dumps({"version": 1, "revoked": [{"serial": "zz", "revoked_at": "2030-01-01T00:00:00Z"}]}), "entry 1"),
        (json.dumps({"version": 1, "revoked": [{"serial": "a", "revoked_at": "yesterday"}]}), "revoked_at"),
        (
            json.dumps(
                {"version": 1, "revoked": [{"serial": "a", "revoked_at": "2030-01-01T00:00:00Z", "reason": "x"}]}
            ),
            "reason",
        ),
    ],
)
def test_unusable_records_are_refused_naming_the_entry(text, needle):
    with pytest.raises(RevocationError) as info:
        RevocationRecords.load(text, "site/revocations.json")
    assert needle in str(info.value) and info.value.field == "records"


def test_the_crl_lists_every_record_with_its_reason_and_number_and_verifies_with_the_ca(ca):
    records = RevocationRecords(
        [
            RevocationRecord(0x1234, "node1", "cessation_of_operation", NOW),
            RevocationRecord(0x99, "node2", "key_compromise", NOW),
        ]
    )
    crl = sign_crl(ca, records, 7, valid_days=3, now=NOW)
    assert crl.is_signature_valid(ca.certificate.public_key()) and crl.issuer == ca.subject
    assert crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == 7
    assert crl.next_update_utc - crl.last_update_utc == datetime.timedelta(days=3)
    entry = crl.get_revoked_certificate_by_serial_number(0x99)
    assert entry.extensions.get_extension_for_class(x509.CRLReason).value.reason == x509.ReasonFlags.key_compromise
    assert sorted(e.serial_number for e in crl) == [0x99, 0x1234]


def test_a_crl_from_another_ca_is_refused(ca):
    other = CertificateAuthority.create("other CA")
    pem = sign_crl(other, RevocationRecords(), 1).public_bytes(serialization.Encoding.PEM).decode()
    with pytest.raises(RevocationError) as info:
        load_crl(pem, ca.certificate)
    assert "not signed by the CA" in str(info.value)
    assert "not signed by the CA" in crl_refresh_reason(pem, ca, RevocationRecords())


def test_revoking_records_the_certificates_signs_a_crl_and_writes_records_0600(site, ca, signer):
    certificates = [issue(signer, f"node{i}.example.net") for i in (1, 2)]
    result = CertificateRevocation(dict(site, certificates=certificates)).run()
    assert result["changed"] and result["crl_number"] == 1
    assert {r["identity"] for r in result["revoked"]} == {"node1.example.net", "node2.example.net"}
    serials = sorted(x509.load_pem_x509_certificate(c.encode()).serial_number for c in certificates)
    assert sorted(e.serial_number for e in crl_at(site["crl"], ca)) == serials
    assert stat.S_IMODE(os.stat(site["records"]).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(site["crl"]).st_mode) == 0o644
    recorded = json.loads(pathlib.Path(site["records"]).read_text())
    assert recorded["crl_number"] == 1 and len(recorded["revoked"]) == 2
    assert all(r["reason"] == "cessation_of_operation" and r["not_after"] for r in recorded["revoked"])

    again = CertificateRevocation(dict(site, certificates=certificates)).run()
    assert (
        not again["changed"]
        and again["revoked"] == []
        and sorted(again["already_revoked"]) == [f"{s:x}" for s in serials]
    )
    assert again["msg"] == "the CRL is current"


def test_check_mode_writes_nothing_but_says_what_would_be_revoked(site, signer):
    result = CertificateRevocation(dict(site, certificates=[issue(signer, "node3.example.net")])).run(check_mode=True)
    assert result["changed"] and result["revoked"][0]["identity"] == "node3.example.net"
    assert not os.path.exists(site["records"]) and not os.path.exists(site["crl"])


def test_a_certificate_from_another_ca_is_left_out_with_a_warning(site, ca):
    from ansible_collections.zeroinit.bootstrap.plugins.module_utils.pki.signer import Signer

    foreign = Signer(CertificateAuthority.create("foreign CA")).sign(make_csr("node4.example.net"), "node4.example.net")
    result = CertificateRevocation(dict(site, certificates=[foreign.certificate])).run()
    assert result["revoked"] == [] and "not issued by" in result["warnings"][0]
    assert list(crl_at(site["crl"], ca)) == []  # the first run still publishes an (empty) CRL


def test_serials_without_certificates_are_revoked_too(site, ca):
    result = CertificateRevocation(dict(site, serials=[{"serial": "ab:cd", "identity": "lost.example.net"}])).run()
    assert result["serials"] == ["abcd"]
    assert crl_at(site["crl"], ca).get_revoked_certificate_by_serial_number(0xABCD) is not None


def test_a_crl_near_its_end_is_signed_again_with_the_next_number(site, ca):
    CertificateRevocation(dict(site, crl_valid_days=30)).run()
    records = RevocationRecords.load(pathlib.Path(site["records"]).read_text())
    assert crl_refresh_reason(pathlib.Path(site["crl"]).read_text(), ca, records, 10) is None
    assert "within renew_before_days" in crl_refresh_reason(
        pathlib.Path(site["crl"]).read_text(), ca, records, 10, now=utc_now() + datetime.timedelta(days=25)
    )
    with pytest.raises(RevocationError) as info:
        CertificateRevocation(dict(site, crl_valid_days=5, renew_before_days=5)).run()
    assert info.value.field == "renew_before_days"
    short = CertificateRevocation(dict(site, crl_valid_days=12, renew_before_days=1, serials=[{"serial": "5"}])).run()
    assert short["crl_number"] == 2
    second = CertificateRevocation(dict(site, crl_valid_days=30, renew_before_days=20)).run()
    assert second["changed"] and second["crl_number"] == 3


def test_a_symlink_as_records_is_refused(site, tmp_path):
    os.symlink(tmp_path / "elsewhere.json", site["records"])
    with pytest.raises(RevocationError) as info:
        CertificateRevocation(dict(site)).run()
    assert info.value.field == "records"


def test_a_node_may_have_only_its_own_certificates_revoked(site, ca, signer):
    own, other = issue(signer, "node5.example.net"), issue(signer, "node6.example.net")
    result = CertificateRevocation(
        dict(site, node_certificates=[{"identity": "node5.example.net", "certificates": [own, other]}])
    ).run()
    assert [r["identity"] for r in result["revoked"]] == ["node5.example.net"]
    assert "node5.example.net reported a certificate of node6.example.net" in result["warnings"][0]
    with pytest.raises(RevocationError):
        CertificateRevocation(dict(site, node_certificates=[{"certificates": [own]}])).run()
