"""CertificateIssuance (the flow behind pki_sign) without Ansible: check mode, files, modes, ownership, chain."""

from __future__ import annotations

import datetime
import os
import stat

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ansible_collections.zeroinit.bootstrap.plugins.module_utils.pki.ca import CertificateAuthority
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.pki.issuance import (
    CertificateIssuance,
    signer_argument_spec,
)
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.pki.policy import PolicyError
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.pki.x509 import PkiError

IDENTITY = "node1.example.net"


def make_csr(identity: str = IDENTITY) -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, identity)])
    )
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM).decode("ascii")


def params(tmp_path, **overrides) -> dict:
    """Module parameters with the argument spec's defaults, as AnsibleModule would pass them."""
    out = {name: spec.get("default") for name, spec in signer_argument_spec().items()}
    out.update(
        csr=None,
        csr_path=None,
        identity=IDENTITY,
        dest=str(tmp_path / "node.crt"),
        chain_dest=None,
        renew_before_days=30,
        ca_cert=str(tmp_path / "ca.crt"),
        ca_key=str(tmp_path / "ca.key"),
        create_ca=True,
    )
    out.update(overrides)
    return out


def test_check_mode_then_real_then_unchanged(tmp_path):
    p = params(tmp_path, csr=make_csr(), chain_dest=str(tmp_path / "chain.pem"))
    planned = CertificateIssuance(p).run(check_mode=True)
    assert planned["changed"] and planned["ca_created"] and planned["certificate"] is None
    assert os.listdir(tmp_path) == []
    done = CertificateIssuance(p).run()
    assert done["changed"] and done["certificate"] == (tmp_path / "node.crt").read_text()
    assert (tmp_path / "chain.pem").read_text() == done["ca"]
    again = CertificateIssuance(p).run()
    assert not again["changed"] and again["serial"] == done["serial"]


def test_missing_dest_directory_fails_in_check_mode_too(tmp_path):
    p = params(tmp_path, csr=make_csr(), dest=str(tmp_path / "absent" / "node.crt"))
    for check in (True, False):
        with pytest.raises(PkiError) as info:
            CertificateIssuance(p).run(check_mode=check)
        assert info.value.field == "dest" and "does not exist" in str(info.value)
    assert os.listdir(tmp_path) == []


def test_wrong_mode_on_a_kept_certificate_is_fixed_and_reported(tmp_path):
    p = params(tmp_path, csr=make_csr())
    first = CertificateIssuance(p).run()
    os.chmod(p["dest"], 0o600)
    assert CertificateIssuance(p).run(check_mode=True)["changed"]
    assert stat.S_IMODE(os.stat(p["dest"]).st_mode) == 0o600
    fixed = CertificateIssuance(p).run()
    assert fixed["changed"] and fixed["serial"] == first["serial"]
    assert stat.S_IMODE(os.stat(p["dest"]).st_mode) == 0o644
    assert not CertificateIssuance(p).run()["changed"]


def test_reissue_keeps_the_owner_and_group_of_the_existing_file(tmp_path):
    """Runs as root, as the test command does (namespaces need it too)."""
    p = params(tmp_path, csr=make_csr())
    CertificateIssuance(p).run()
    os.chown(p["dest"], 4321, 4321)
    p["csr"] = make_csr()  # new key: the certificate is replaced
    assert CertificateIssuance(p).run()["changed"]
    info = os.stat(p["dest"])
    assert (info.st_uid, info.st_gid) == (4321, 4321)


def test_symlink_at_dest_is_refused(tmp_path):
    target = tmp_path / "elsewhere"
    target.write_text("keep me")
    os.symlink(target, tmp_path / "node.crt")
    with pytest.raises(PkiError) as info:
        CertificateIssuance(params(tmp_path, csr=make_csr())).run()
    assert info.value.field == "dest"
    assert target.read_text() == "keep me"


def test_garbage_at_dest_is_replaced_and_shown_in_the_diff(tmp_path):
    (tmp_path / "node.crt").write_text("not a certificate\n")
    result = CertificateIssuance(params(tmp_path, csr=make_csr())).run()
    assert result["changed"] and result["diff"]["before"]["state"] == "not a PEM certificate"
    x509.load_pem_x509_certificate((tmp_path / "node.crt").read_bytes())


def test_policy_refusal_comes_before_any_file_is_written(tmp_path):
    with pytest.raises(PolicyError) as info:
        CertificateIssuance(params(tmp_path, csr=make_csr("other.example.net"))).run()
    assert info.value.rule == "cn_matches_identity"
    assert os.listdir(tmp_path) == []


def test_csr_path_that_cannot_be_read_names_the_option(tmp_path):
    with pytest.raises(PkiError) as info:
        CertificateIssuance(params(tmp_path, csr_path=str(tmp_path / "missing.csr"))).run()
    assert info.value.field == "csr_path"


def test_without_dest_each_run_issues_a_new_certificate(tmp_path):
    CertificateAuthority.load_or_create(str(tmp_path / "ca.crt"), str(tmp_path / "ca.key"))
    p = params(tmp_path, csr=make_csr(), dest=None, create_ca=False)
    first, second = CertificateIssuance(p).run(), CertificateIssuance(p).run()
    assert first["changed"] and second["changed"] and first["serial"] != second["serial"]
    assert not first["ca_created"]


def test_valid_seconds_issues_a_short_certificate_and_bounds_renew_before_days(tmp_path):
    issued = CertificateIssuance(params(tmp_path, csr=make_csr(), dest=None, valid_seconds=120)).run()
    cert = x509.load_pem_x509_certificate(issued["certificate"].encode("ascii"))
    assert cert.not_valid_after_utc - cert.not_valid_before_utc < datetime.timedelta(minutes=8)
    with pytest.raises(PkiError) as info:
        CertificateIssuance(params(tmp_path, csr=make_csr(), valid_seconds=120, renew_before_days=1)).run()
    assert info.value.field == "renew_before_days" and "valid_seconds 120" in str(info.value)


@pytest.mark.parametrize(
    "option,value,field",
    [("create_ca", True, "create_ca"), ("valid_seconds", 60, "valid_seconds"), ("cfssl_url", None, "cfssl_url")],
)
def test_cfssl_backend_refuses_builtin_only_options_before_asking_any_server(tmp_path, option, value, field):
    p = params(
        tmp_path, csr=make_csr(), backend="cfssl", create_ca=False, cfssl_url="http://127.0.0.1:9", cfssl_auth_key="00"
    )
    p[option] = value
    with pytest.raises(PkiError) as info:
        CertificateIssuance(p).run()
    assert info.value.field == field
    assert sorted(os.listdir(tmp_path)) == []


def test_builtin_backend_without_ca_files_names_the_option(tmp_path):
    with pytest.raises(PkiError) as info:
        CertificateIssuance(params(tmp_path, csr=make_csr(), ca_key=None)).run()
    assert info.value.field == "ca_key" and "backend builtin" in str(info.value)


@pytest.mark.parametrize(
    ("params", "problem"),
    [
        ({"ca_cert": "/ca.pem"}, "backend is builtin but all of the following are missing: ca_key"),
        ({"backend": "cfssl", "cfssl_url": "https://ca:8888"}, "backend is cfssl but all of the following are missing"),
    ],
)
def test_options_given_outside_a_module_need_what_their_backend_needs(params, problem):
    from ansible_collections.zeroinit.bootstrap.plugins.module_utils.pki.issuance import check_signer_params

    with pytest.raises(ValueError, match=problem):
        check_signer_params(params)
    assert check_signer_params({"ca_cert": "/ca.pem", "ca_key": "/ca-key.pem"})["backend"] == "builtin"
