"""The OCSP responder's answers with real X.509 and real CRLs: good, revoked, refused, and hostile bytes."""

from __future__ import annotations

import datetime
import os
import random

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import ocsp
from cryptography.x509.oid import ExtendedKeyUsageOID

from ansible_collections.zeroinit.bootstrap.plugins.module_utils.pki import ocsp as responder_module
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.pki.ca import CertificateAuthority
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.pki.crl import (
    RevocationRecord,
    RevocationRecords,
    sign_crl,
)
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.pki.ocsp import OcspResponder
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.pki.x509 import PkiError
from tests.support.certificates import Authority

RESPONDER_USAGE = (ExtendedKeyUsageOID.OCSP_SIGNING,)


@pytest.fixture(scope="module")
def authority():
    return Authority("site CA")


@pytest.fixture(scope="module")
def site_ca(authority):
    return CertificateAuthority(authority.cert, authority.key)


@pytest.fixture(scope="module")
def members(authority):
    return [authority.issue(f"node{i}.example.net", usages=(ExtendedKeyUsageOID.CLIENT_AUTH,)) for i in range(3)]


@pytest.fixture
def crl_path(tmp_path):
    return str(tmp_path / "crl.pem")


@pytest.fixture
def responder(authority, crl_path, monkeypatch):
    monkeypatch.setattr(responder_module, "CRL_CHECK_INTERVAL", 0.0)
    signing = authority.issue("ocsp.broker1", usages=RESPONDER_USAGE)
    return OcspResponder(authority.cert, signing.cert, signing.key, crl_path, response_validity=90)


def publish(site_ca, crl_path, serials, number=1):
    when = datetime.datetime(2030, 5, 6, 7, 8, 9, tzinfo=datetime.UTC)
    records = RevocationRecords([RevocationRecord(s, "n", "key_compromise", when) for s in serials])
    pem = sign_crl(site_ca, records, number).public_bytes(serialization.Encoding.PEM)
    with open(crl_path + ".tmp", "wb") as handle:
        handle.write(pem)
    os.replace(crl_path + ".tmp", crl_path)


def ask(responder, cert, issuer, nonce=None, algorithm=None):
    builder = ocsp.OCSPRequestBuilder().add_certificate(cert, issuer, algorithm or hashes.SHA1())
    if nonce is not None:
        builder = builder.add_extension(x509.OCSPNonce(nonce), critical=False)
    der, _what = responder.answer(builder.build().public_bytes(serialization.Encoding.DER))
    return ocsp.load_der_ocsp_response(der)


def test_a_serial_the_crl_does_not_list_is_good_and_the_response_is_signed_by_the_responder(
    responder, authority, site_ca, crl_path, members
):
    publish(site_ca, crl_path, [])
    response = ask(responder, members[0].cert, authority.cert)
    assert response.response_status == ocsp.OCSPResponseStatus.SUCCESSFUL
    assert response.certificate_status == ocsp.OCSPCertStatus.GOOD
    assert response.serial_number == members[0].cert.serial_number
    assert response.next_update_utc - response.this_update_utc == datetime.timedelta(seconds=90)
    (signer,) = response.certificates
    assert signer == responder.responder
    signer.public_key().verify(
        response.signature,
        response.tbs_response_bytes,
        ec.ECDSA(hashes.SHA256()),
    )


def test_a_serial_the_crl_lists_is_revoked_with_its_time_and_reason_once_the_file_changes(
    responder, authority, site_ca, crl_path, members
):
    publish(site_ca, crl_path, [])
    assert ask(responder, members[1].cert, authority.cert).certificate_status == ocsp.OCSPCertStatus.GOOD
    publish(site_ca, crl_path, [members[1].cert.serial_number], number=2)
    response = ask(responder, members[1].cert, authority.cert)
    assert response.certificate_status == ocsp.OCSPCertStatus.REVOKED
    assert response.revocation_reason == x509.ReasonFlags.key_compromise
    assert response.revocation_time_utc.year == 2030
    assert ask(responder, members[2].cert, authority.cert).certificate_status == ocsp.OCSPCertStatus.GOOD


def test_without_a_crl_every_answer_is_try_later(responder, authority, members):
    assert ask(responder, members[0].cert, authority.cert).response_status == ocsp.OCSPResponseStatus.TRY_LATER


def test_a_crl_of_another_ca_is_refused_and_the_last_good_one_stays(responder, authority, site_ca, crl_path, members):
    other = CertificateAuthority.create("other CA")
    publish(other, crl_path, [])
    assert ask(responder, members[0].cert, authority.cert).response_status == ocsp.OCSPResponseStatus.TRY_LATER
    publish(site_ca, crl_path, [members[0].cert.serial_number])
    assert ask(responder, members[0].cert, authority.cert).certificate_status == ocsp.OCSPCertStatus.REVOKED
    publish(other, crl_path, [])  # a forged CRL that would un-revoke it
    assert ask(responder, members[0].cert, authority.cert).certificate_status == ocsp.OCSPCertStatus.REVOKED


def test_a_certificate_of_another_issuer_is_unauthorized(responder, site_ca, crl_path):
    publish(site_ca, crl_path, [])
    stranger = Authority("stranger CA")
    leaf = stranger.issue("node9.example.net", usages=(ExtendedKeyUsageOID.CLIENT_AUTH,))
    assert ask(responder, leaf.cert, stranger.cert).response_status == ocsp.OCSPResponseStatus.UNAUTHORIZED


def test_sha256_requests_and_nonces_are_answered_and_a_long_nonce_is_malformed(
    responder, authority, site_ca, crl_path, members
):
    publish(site_ca, crl_path, [])
    response = ask(responder, members[0].cert, authority.cert, nonce=b"n" * 16, algorithm=hashes.SHA256())
    assert response.certificate_status == ocsp.OCSPCertStatus.GOOD
    assert response.extensions.get_extension_for_class(x509.OCSPNonce).value.nonce == b"n" * 16
    long_nonce = ask(responder, members[0].cert, authority.cert, nonce=b"n" * 33)
    assert long_nonce.response_status == ocsp.OCSPResponseStatus.MALFORMED_REQUEST


def test_hostile_bytes_get_malformed_request_and_never_an_exception(responder, authority, site_ca, crl_path, members):
    publish(site_ca, crl_path, [])
    good = (
        ocsp.OCSPRequestBuilder()
        .add_certificate(members[0].cert, authority.cert, hashes.SHA1())
        .build()
        .public_bytes(serialization.Encoding.DER)
    )
    generator = random.Random(929)
    samples = [
        b"",
        b"\x00",
        b"x" * 5000,
        *(bytes(generator.getrandbits(8) for _byte in range(64)) for _sample in range(100)),
    ]
    for _mutation in range(300):
        mutated = bytearray(good)
        for _flip in range(generator.randint(1, 4)):
            mutated[generator.randrange(len(mutated))] = generator.getrandbits(8)
        samples.append(bytes(mutated))
    for sample in samples:
        der, what = responder.answer(sample)
        status = ocsp.load_der_ocsp_response(der).response_status
        assert status in (
            ocsp.OCSPResponseStatus.SUCCESSFUL,
            ocsp.OCSPResponseStatus.MALFORMED_REQUEST,
            ocsp.OCSPResponseStatus.UNAUTHORIZED,
        ), what


@pytest.mark.parametrize(
    "usages, key_of_other, needle",
    [((ExtendedKeyUsageOID.CLIENT_AUTH,), False, "OCSPSigning"), (RESPONDER_USAGE, True, "does not match")],
)
def test_a_responder_certificate_that_cannot_sign_answers_is_refused_at_start(
    authority, crl_path, usages, key_of_other, needle
):
    signing = authority.issue("ocsp.broker1", usages=usages)
    key = authority.issue("x", usages=usages).key if key_of_other else signing.key
    with pytest.raises(PkiError) as info:
        OcspResponder(authority.cert, signing.cert, key, crl_path)
    assert needle in str(info.value)
    with pytest.raises(PkiError):
        OcspResponder(authority.cert, Authority("stranger").issue("o", usages=RESPONDER_USAGE).cert, key, crl_path)
