"""The site's secrets with a real ansible-vault and real X.509: made once, kept, rotated by name, nothing half made."""

from __future__ import annotations

import os
import stat

import pytest
from ansible.parsing.vault import VaultLib, VaultSecret
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ansible_collections.zeroinit.bootstrap.plugins.module_utils.choria.jwt import (
    issue_provisioning_jwt,
    load_jwt_verify_key,
    verify_provisioning_jwt,
)
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.choria.security import RequestSigner, RequestVerifier
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.pki.x509 import certificate_matches_key
from ansible_collections.zeroinit.bootstrap.plugins.plugin_utils.site_secrets import (
    SECRET_FILES,
    SITE_SECRETS,
    SiteOptions,
    SiteSecrets,
    SiteSecretsError,
)

VAULT = VaultLib([("default", VaultSecret(b"site vault password"))])


def secrets_at(site_dir, **options):
    return SiteSecrets(SiteOptions(str(site_dir), site_name="lab", **options), VAULT.encrypt, VAULT.decrypt)


def contents(site_dir) -> dict:
    return {p.name: p.read_bytes() for p in sorted(site_dir.iterdir()) if p.is_file()}


def plain(site_dir, name) -> bytes:
    return VAULT.decrypt((site_dir / name).read_bytes())


def test_the_first_run_makes_every_secret_0600_with_private_material_vaulted(tmp_path):
    site = tmp_path / "site"
    result = secrets_at(site).apply()
    assert result["changed"] and result["created"] == list(SITE_SECRETS) and result["kept"] == []
    assert stat.S_IMODE(os.stat(site).st_mode) == 0o700
    for name in SITE_SECRETS:
        for file_name, private in SECRET_FILES[name]:
            path = site / file_name
            assert stat.S_IMODE(os.stat(path).st_mode) == 0o600, file_name
            assert path.read_bytes().startswith(b"$ANSIBLE_VAULT;") == private, file_name
    ca = x509.load_pem_x509_certificate((site / "ca.pem").read_bytes())
    assert ca.subject.rfc4514_string() == "CN=lab bootstrap CA"
    assert certificate_matches_key(ca, plain(site, "ca-key.pem"))
    assert len(plain(site, "token").decode()) >= 43
    assert result["facts"]["ca"]["subject"] == "CN=lab bootstrap CA"


def test_the_provisioner_certificate_signs_requests_a_node_pinning_the_provisioning_ca_accepts(tmp_path):
    site = tmp_path / "site"
    secrets_at(site).apply()
    signer = RequestSigner((site / "provisioner.pem").read_bytes(), plain(site, "provisioner-key.pem"))
    fields = signer.sign('{"requestid": "x"}')
    verified = RequestVerifier((site / "provisioning-ca.pem").read_bytes()).verify(
        '{"requestid": "x"}', fields.signature, fields.pubcert
    )
    assert verified.subject.endswith("lab provisioner")
    with pytest.raises(Exception, match="not issued by the provisioning CA"):  # the site CA is not the provisioning CA
        RequestVerifier((site / "ca.pem").read_bytes()).verify('{"requestid": "x"}', fields.signature, fields.pubcert)


def test_the_jwt_issuer_key_issues_jwts_its_public_key_verifies(tmp_path):
    site = tmp_path / "site"
    result = secrets_at(site).apply()
    key = serialization.load_pem_private_key(plain(site, "jwt-issuer-key.pem"), password=None)
    token = issue_provisioning_jwt(key, "tok", ["nats://p:4222"], ["*.example.net"])
    verified = verify_provisioning_jwt(
        token, load_jwt_verify_key(str(site / "jwt-issuer.pub")), "node1.example.net", expected_token="tok"
    )
    assert verified.identity_patterns == ("*.example.net",)
    assert load_jwt_verify_key(result["facts"]["jwt_issuer"]["public_key_hex"])


def test_a_second_run_overwrites_nothing_and_says_what_exists(tmp_path):
    site = tmp_path / "site"
    secrets_at(site).apply()
    before = contents(site)
    again = secrets_at(site).apply()
    assert not again["changed"] and again["created"] == again["rotated"] == [] and again["kept"] == list(SITE_SECRETS)
    assert "nothing was overwritten" in again["msg"] and "rotate" in again["msg"]
    assert contents(site) == before


def test_rotating_the_token_changes_it_alone_and_keeps_the_old_one_aside(tmp_path):
    site = tmp_path / "site"
    secrets_at(site).apply()
    before = contents(site)
    result = secrets_at(site).apply(rotate=["token"])
    assert result["changed"] and result["rotated"] == ["token"]
    after = contents(site)
    assert {name for name in after if after[name] != before[name]} == {"token"}
    assert plain(site, "token") != VAULT.decrypt(before["token"])
    assert (site / "previous" / "token").read_bytes() == before["token"]


def test_rotating_the_provisioning_ca_reissues_the_provisioner_under_it(tmp_path):
    site = tmp_path / "site"
    secrets_at(site).apply()
    result = secrets_at(site).apply(rotate=["provisioning_ca"])
    assert result["rotated"] == ["provisioning_ca", "provisioner"]
    provisioner = x509.load_pem_x509_certificate((site / "provisioner.pem").read_bytes())
    provisioner.verify_directly_issued_by(x509.load_pem_x509_certificate((site / "provisioning-ca.pem").read_bytes()))


def test_rotating_the_site_ca_reissues_the_operator_certificate_under_it_and_warns(tmp_path):
    site = tmp_path / "site"
    secrets_at(site).apply()
    result = secrets_at(site).apply(rotate=["ca"])
    assert result["rotated"] == ["ca", "operator"] and "migrate_ca" in result["warnings"][0]
    operator = x509.load_pem_x509_certificate((site / "operator.pem").read_bytes())
    operator.verify_directly_issued_by(x509.load_pem_x509_certificate((site / "ca.pem").read_bytes()))
    assert list(operator.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [
        x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH
    ]
    assert (site / "previous" / "ca-key.pem").is_file()


def test_check_mode_writes_nothing_at_all(tmp_path):
    site = tmp_path / "site"
    result = secrets_at(site).apply(check_mode=True)
    assert result["changed"] and result["created"] == list(SITE_SECRETS) and "would make" in result["msg"]
    assert not site.exists()
    secrets_at(site).apply()
    before = contents(site)
    assert secrets_at(site).apply(rotate=["all"], check_mode=True)["rotated"] == list(SITE_SECRETS)
    assert contents(site) == before


def test_a_secret_with_a_file_missing_is_an_error_naming_it_and_nothing_is_written(tmp_path):
    site = tmp_path / "site"
    secrets_at(site).apply()
    (site / "ca-key.pem").unlink()
    before = contents(site)
    with pytest.raises(SiteSecretsError) as info:
        secrets_at(site).apply()
    assert "ca.pem exists but ca-key.pem does not" in str(info.value) and "rotate=ca" in str(info.value)
    assert contents(site) == before


def test_switched_off_features_make_only_the_ca_and_the_token(tmp_path):
    site = tmp_path / "site"
    result = secrets_at(site, signed_requests=False, provisioning_jwt=False).apply()
    assert result["created"] == ["ca", "operator", "token"]
    assert sorted(contents(site)) == ["ca-key.pem", "ca.pem", "operator-key.pem", "operator.pem", "token"]
    with pytest.raises(SiteSecretsError, match="does not use"):
        secrets_at(site, signed_requests=False, provisioning_jwt=False).apply(rotate=["provisioner"])
    with pytest.raises(SiteSecretsError, match="the secrets are"):
        secrets_at(site).apply(rotate=["everything"])


def test_a_private_file_that_is_not_vaulted_is_named_in_a_warning_and_loose_modes_are_fixed(tmp_path):
    site = tmp_path / "site"
    secrets_at(site).apply()
    (site / "token").write_bytes(b"plain text token")
    os.chmod(site / "ca.pem", 0o644)
    result = secrets_at(site).apply()
    assert result["changed"] and any("token is not vault-encrypted" in w for w in result["warnings"])
    assert stat.S_IMODE(os.stat(site / "ca.pem").st_mode) == 0o600
