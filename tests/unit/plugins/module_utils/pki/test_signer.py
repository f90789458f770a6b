"""The signer with real X.509: issued certificates are built by policy, chain to the CA and pass path validation; renewal."""

from __future__ import annotations

import datetime
import threading

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from ansible_collections.zeroinit.bootstrap.plugins.module_utils.pki.ca import CertificateAuthority
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.pki.policy import CsrPolicy
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.pki.signer import (
    IssuedCertificate,
    Signer,
    certificate_needs_renewal,
)
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.pki.x509 import PkiError
from tests.support.x509 import EC_KEY, IDENTITY, load, make_csr


@pytest.mark.parametrize(
    "key", [ec.generate_private_key(ec.SECP256R1()), rsa.generate_private_key(65537, 2048)], ids=["ec", "rsa"]
)
def test_issued_certificate_passes_rfc5280_path_validation(ca, signer, key):
    cert = load(signer.sign(make_csr(key=key), IDENTITY).certificate)
    store = Store([ca.certificate])
    chain = PolicyBuilder().store(store).build_server_verifier(x509.DNSName(IDENTITY)).verify(cert, [])
    assert chain[-1] == ca.certificate
    client = PolicyBuilder().store(store).build_client_verifier().verify(cert, [])
    assert client.subjects == [x509.DNSName(IDENTITY)]


def test_server_profile_is_not_accepted_as_client_and_hostname_is_checked(ca, signer):
    cert = load(signer.sign(make_csr(), IDENTITY, profile="server").certificate)
    store = Store([ca.certificate])
    with pytest.raises(VerificationError):
        PolicyBuilder().store(store).build_client_verifier().verify(cert, [])
    with pytest.raises(VerificationError):
        PolicyBuilder().store(store).build_server_verifier(x509.DNSName("node2.example.net")).verify(cert, [])


@pytest.mark.parametrize(
    "profile,usages",
    [
        ("server", [ExtendedKeyUsageOID.SERVER_AUTH]),
        ("client", [ExtendedKeyUsageOID.CLIENT_AUTH]),
        ("both", [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
    ],
)
def test_profile_sets_extended_key_usage(signer, profile, usages):
    cert = load(signer.sign(make_csr(), IDENTITY, profile=profile).certificate)
    assert list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == usages


@pytest.mark.parametrize(
    "key,encipherment",
    [(EC_KEY, False), (rsa.generate_private_key(65537, 2048), True), (ed25519.Ed25519PrivateKey.generate(), False)],
    ids=["ec", "rsa", "ed25519"],
)
def test_key_usage_is_critical_with_key_encipherment_only_for_rsa(signer, key, encipherment):
    ku = load(signer.sign(make_csr(key=key), IDENTITY).certificate).extensions.get_extension_for_class(x509.KeyUsage)
    assert ku.critical and ku.value.digital_signature and not ku.value.key_cert_sign
    assert ku.value.key_encipherment is encipherment


def test_unknown_profile_is_an_error_naming_profile(signer):
    with pytest.raises(PkiError) as info:
        signer.sign(make_csr(), IDENTITY, profile="ca")
    assert info.value.field == "profile"


def test_allowed_ip_and_dns_sans_are_carried_after_the_identity(ca):
    signer = Signer(ca, CsrPolicy(allowed_sans=["{identity}", r"node1\.example\.org", r"10\.20\.\d+\.\d+"]))
    issued = signer.sign(make_csr(dns=["node1.example.org"], ips=["10.20.0.7"]), IDENTITY)
    assert issued.subject_alt_names == ("DNS:node1.example.net", "DNS:node1.example.org", "IP:10.20.0.7")


def test_serials_are_random_positive_and_at_most_128_bits(signer):
    serials = {signer.sign(make_csr(), IDENTITY).serial for _attempt in range(50)}
    assert len(serials) == 50
    assert all(0 < s < 2**128 for s in serials)


def test_certificate_never_outlives_its_ca_and_a_warning_says_so():
    short_ca = CertificateAuthority.create("short CA", valid_days=10)
    issued = Signer(short_ca, CsrPolicy()).sign(make_csr(), IDENTITY, valid_days=365)
    assert issued.not_after == short_ca.not_after
    assert issued.warnings and "ends on" in issued.warnings[0]


def test_signing_from_many_threads_gives_valid_distinct_certificates(ca, signer):
    csrs = [make_csr(f"node{i}.example.net", key=ec.generate_private_key(ec.SECP256R1())) for i in range(40)]
    issued: list[IssuedCertificate] = []
    errors = []
    lock = threading.Lock()

    def work(chunk):
        for i, csr in chunk:
            try:
                result = signer.sign(csr, f"node{i}.example.net")
            except Exception as exc:  # collected and asserted below
                errors.append(exc)
                continue
            with lock:
                issued.append(result)

    items = list(enumerate(csrs))
    threads = [threading.Thread(target=work, args=(items[n::4],)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors and len(issued) == 40
    assert len({i.serial for i in issued}) == 40
    for result in issued:
        load(result.certificate).verify_directly_issued_by(ca.certificate)
    assert sorted(i.subject for i in issued) == sorted(f"CN=node{i}.example.net" for i in range(40))


def test_fresh_certificate_for_the_same_key_needs_no_renewal(signer):
    csr = make_csr()
    issued = signer.sign(csr, IDENTITY, valid_days=365)
    need, reason = certificate_needs_renewal(signer, issued.certificate, csr, 30, identity=IDENTITY, profile="both")
    assert not need and "valid until" in reason
    public_pem = EC_KEY.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert certificate_needs_renewal(signer, issued.certificate, public_pem, 30) == (False, reason)


def test_renewal_is_needed_inside_the_window(signer):
    csr = make_csr()
    issued = signer.sign(csr, IDENTITY, valid_days=20)
    need, reason = certificate_needs_renewal(signer, issued.certificate, csr, 30)
    assert need and "renew_before_days 30" in reason


def test_renewal_is_needed_for_another_key_another_ca_identity_sans_or_profile(ca, signer):
    csr = make_csr()
    issued = signer.sign(csr, IDENTITY, profile="server")
    other_key_csr = make_csr(key=ec.generate_private_key(ec.SECP256R1()))
    assert certificate_needs_renewal(signer, issued.certificate, other_key_csr, 30)[0]
    other_ca = Signer(CertificateAuthority.create("other CA"), CsrPolicy())
    need, reason = certificate_needs_renewal(other_ca, issued.certificate, csr, 30)
    assert need and "not issued by this CA" in reason
    assert certificate_needs_renewal(signer, issued.certificate, csr, 30, identity=IDENTITY, profile="both")[0]
    assert not certificate_needs_renewal(signer, issued.certificate, csr, 30, identity=IDENTITY, profile="server")[0]
    wider = make_csr(dns=["api.node1.example.net"])
    assert certificate_needs_renewal(signer, issued.certificate, wider, 30, identity=IDENTITY)[0]


def test_expired_and_garbage_certificates_need_renewal(ca, signer):
    now = datetime.datetime.now(datetime.UTC)
    expired = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, IDENTITY)]))
        .issuer_name(ca.subject)
        .public_key(EC_KEY.public_key())
        .serial_number(7)
        .not_valid_before(now - datetime.timedelta(days=400))
        .not_valid_after(now - datetime.timedelta(days=1))
        .sign(ca.private_key, hashes.SHA256())
    ).public_bytes(serialization.Encoding.PEM)
    need, reason = certificate_needs_renewal(signer, expired, make_csr(), 30)
    assert need and "expired" in reason
    assert certificate_needs_renewal(signer, "not a certificate", make_csr(), 30)[0]


def test_issued_fields_agree_with_the_certificate_itself(ca):
    signer = Signer(ca, CsrPolicy(allowed_sans=["{identity}", r"10\.0\.0\.\d+"]))
    issued = signer.sign(make_csr(ips=["10.0.0.9"]), IDENTITY, valid_days=7)
    parsed = issued.properties()
    assert parsed["subject"] == issued.subject and parsed["issuer"] == issued.issuer == "CN=test CA"
    assert parsed["subject_alt_names"] == list(issued.subject_alt_names) == [f"DNS:{IDENTITY}", "IP:10.0.0.9"]
    assert parsed["serial"] == issued.serial_hex and parsed["not_after"] == issued.not_after_iso
    assert parsed["public_key_sha256"] == issued.public_key_sha256
    assert load(issued.certificate).not_valid_before_utc == issued.not_before


def test_valid_seconds_makes_a_short_lived_certificate(ca):
    short = Signer(ca, CsrPolicy(), valid_seconds=90)
    issued = short.sign(make_csr(), IDENTITY)
    cert = load(issued.certificate)
    now = datetime.datetime.now(datetime.UTC)
    assert 80 <= (cert.not_valid_after_utc - now).total_seconds() <= 91
    assert issued.not_after == cert.not_valid_after_utc


@pytest.mark.parametrize(
    "value,reason", [(10, "at least 30"), (True, "whole number"), (2 * 86400, "more than max_valid_days 1")]
)
def test_valid_seconds_out_of_range_is_refused_naming_the_option(ca, value, reason):
    with pytest.raises(PkiError) as info:
        Signer(ca, CsrPolicy(max_valid_days=1), valid_seconds=value)
    assert info.value.field == "valid_seconds" and reason in str(info.value)


OCSP_URL = "http://127.0.0.1:8889/"


def test_certificates_name_the_ocsp_responder_and_are_renewed_when_they_do_not(ca, signer):
    with_url = Signer(ca, CsrPolicy(), ocsp_url=OCSP_URL)
    cert = load(with_url.sign(make_csr(), IDENTITY).certificate)
    access = cert.extensions.get_extension_for_class(x509.AuthorityInformationAccess)
    assert not access.critical
    assert [(d.access_method, d.access_location.value) for d in access.value] == [
        (x509.oid.AuthorityInformationAccessOID.OCSP, OCSP_URL)
    ]
    without = signer.sign(make_csr(), IDENTITY).certificate
    with pytest.raises(x509.ExtensionNotFound):
        load(without).extensions.get_extension_for_class(x509.AuthorityInformationAccess)
    assert certificate_needs_renewal(with_url, without, make_csr(), 30, identity=IDENTITY, profile="both") == (
        True,
        f"the existing certificate does not name the OCSP responder {OCSP_URL}",
    )
    kept, _reason = certificate_needs_renewal(with_url, cert.public_bytes(serialization.Encoding.PEM), make_csr(), 30)
    assert not kept


def test_the_ocsp_profile_makes_a_delegated_responder_certificate(ca):
    issued = load(Signer(ca, CsrPolicy(), ocsp_url=OCSP_URL).sign(make_csr(), IDENTITY, profile="ocsp").certificate)
    assert list(issued.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [
        ExtendedKeyUsageOID.OCSP_SIGNING
    ]
    assert issued.extensions.get_extension_for_class(x509.OCSPNoCheck)
    with pytest.raises(x509.ExtensionNotFound):  # a responder is not checked over OCSP itself
        issued.extensions.get_extension_for_class(x509.AuthorityInformationAccess)


@pytest.mark.parametrize("url", ["ftp://x/", "http://a b/", "127.0.0.1:8889", "http://x/" + "a" * 2100, "http://é/"])
def test_an_ocsp_url_that_cannot_go_in_a_certificate_is_refused_naming_it(ca, url):
    with pytest.raises(PkiError) as info:
        Signer(ca, CsrPolicy(), ocsp_url=url)
    assert info.value.field == "ocsp_url"
