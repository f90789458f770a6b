"""A service key made on its host and a CSR for it: made once, kept, and a CSR that follows the names asked for."""

from __future__ import annotations

import ipaddress
import os
import stat

import pytest
from cryptography import x509

from ansible_collections.zeroinit.bootstrap.plugins.module_utils.pki.csr import KeyAndCsr, requested_names
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.pki.policy import CsrPolicy
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.pki.signer import Signer
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.pki.x509 import PkiError, certificate_matches_key


def params(tmp_path, **extra):
    return dict(
        {
            "path": str(tmp_path / "tls-key.pem"),
            "csr_path": str(tmp_path / "tls.csr"),
            "identity": "broker1.example.net",
            "subject_alt_names": ["IP:10.0.0.5", "broker1"],
        },
        **extra,
    )


def test_the_key_is_made_0600_once_and_the_csr_kept_while_it_asks_for_the_same(tmp_path, ca):
    first = KeyAndCsr(params(tmp_path)).run()
    assert first["changed"] and first["key_created"]
    assert stat.S_IMODE(os.stat(tmp_path / "tls-key.pem").st_mode) == 0o600
    assert first["subject_alt_names"] == ["DNS:broker1", "IP:10.0.0.5"]
    key_before = (tmp_path / "tls-key.pem").read_bytes()

    second = KeyAndCsr(params(tmp_path)).run()
    assert not second["changed"] and not second["key_created"] and second["csr"] == first["csr"]
    assert (tmp_path / "tls-key.pem").read_bytes() == key_before

    renamed = KeyAndCsr(params(tmp_path, subject_alt_names=["IP:10.0.0.6"])).run()
    assert renamed["changed"] and not renamed["key_created"]
    assert (tmp_path / "tls.csr").read_text() == renamed["csr"] != first["csr"]
    assert (tmp_path / "tls-key.pem").read_bytes() == key_before

    issued = Signer(ca, CsrPolicy(allowed_sans=["{identity}", r"10\.0\.0\.6"])).sign(
        renamed["csr"], "broker1.example.net"
    )
    assert certificate_matches_key(issued.certificate, key_before)


def test_check_mode_writes_nothing_and_returns_no_csr_for_a_key_it_did_not_make(tmp_path):
    result = KeyAndCsr(params(tmp_path)).run(check_mode=True)
    assert result["changed"] and result["key_created"] and result["csr"] is None
    assert list(tmp_path.iterdir()) == []


def test_a_key_of_another_type_is_never_replaced(tmp_path):
    KeyAndCsr(params(tmp_path, key_type="ed25519")).run()
    before = (tmp_path / "tls-key.pem").read_bytes()
    with pytest.raises(PkiError) as info:
        KeyAndCsr(params(tmp_path)).run()
    assert info.value.field == "key_type" and "never replaced" in str(info.value)
    assert (tmp_path / "tls-key.pem").read_bytes() == before


def test_a_loose_key_mode_is_tightened_and_a_link_is_refused(tmp_path):
    KeyAndCsr(params(tmp_path)).run()
    os.chmod(tmp_path / "tls-key.pem", 0o644)
    assert KeyAndCsr(params(tmp_path)).run()["changed"]
    assert stat.S_IMODE(os.stat(tmp_path / "tls-key.pem").st_mode) == 0o600
    link = tmp_path / "link.pem"
    link.symlink_to(tmp_path / "tls-key.pem")
    with pytest.raises(PkiError) as info:
        KeyAndCsr(params(tmp_path, path=str(link))).run()
    assert info.value.field == "path"


def test_names_are_dns_or_ip_and_a_bad_ip_is_named():
    names = requested_names(["DNS:10.0.0.1", "10.0.0.2", "IP:::1", "host.example"])
    assert names == [
        x509.DNSName("10.0.0.1"),
        x509.IPAddress(ipaddress.ip_address("10.0.0.2")),
        x509.IPAddress(ipaddress.ip_address("::1")),
        x509.DNSName("host.example"),
    ]
    with pytest.raises(PkiError) as info:
        requested_names(["IP:not-an-address"])
    assert "not-an-address" in str(info.value)
