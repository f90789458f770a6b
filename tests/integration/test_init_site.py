"""init-site.yaml as an operator runs it: ansible-playbook with a vault password file, on the controller."""

from __future__ import annotations

import os
import pathlib
import stat

import pytest
from ansible.parsing.vault import VaultLib, VaultSecret

from tests.support.ansible_run import run_playbook

PASSWORD = "init-site test vault password"
SECRETS = ["ca", "operator", "provisioning_ca", "provisioner", "jwt_issuer", "token"]
PRIVATE = {
    "ca-key.pem",
    "operator-key.pem",
    "provisioning-ca-key.pem",
    "provisioner-key.pem",
    "jwt-issuer-key.pem",
    "token",
}


@pytest.fixture
def site(tmp_path):
    password = tmp_path / "vault-password"
    password.write_text(PASSWORD + "\n")
    os.chmod(password, 0o600)
    return {"dir": tmp_path / "site", "password": str(password)}


def init_site(site, *args, check=False, password=True, **extra):
    options = ["--vault-password-file", site["password"]] if password else []
    return run_playbook(
        "playbooks/init-site.yaml",
        extra_vars=dict({"zeroinit_site_dir": str(site["dir"]), "zeroinit_site_name": "lab"}, **extra),
        check=check,
        args=[*options, *args],
    )


def made(result) -> dict:
    return result.result("Make the site's secrets that do not exist yet (and the ones named in rotate)")


def files(site) -> dict:
    return {p.name: p.read_bytes() for p in sorted(site["dir"].iterdir()) if p.is_file()}


def test_init_site_makes_vaulted_0600_secrets_once_refuses_to_overwrite_and_rotates_by_name(site):
    preview = init_site(site, check=True)
    assert preview.rc == 0, preview.stdout[-3000:]
    assert made(preview)["created"] == SECRETS and "would make" in made(preview)["msg"]
    assert not site["dir"].exists()

    first = init_site(site)
    assert first.rc == 0, first.stdout[-3000:]
    assert made(first)["changed"] and made(first)["created"] == SECRETS
    assert stat.S_IMODE(os.stat(site["dir"]).st_mode) == 0o700
    written = files(site)
    vault = VaultLib([("default", VaultSecret(PASSWORD.encode()))])
    for name, data in written.items():
        assert stat.S_IMODE(os.stat(site["dir"] / name).st_mode) == 0o600, name
        assert data.startswith(b"$ANSIBLE_VAULT;") == (name in PRIVATE), name
        if name in PRIVATE:
            assert vault.decrypt(data)  # the play's own vault password opens it
    assert b"PRIVATE KEY" not in b"".join(written.values())

    second = init_site(site)
    assert second.rc == 0 and second.changed() == 0, second.stdout[-3000:]
    assert made(second)["kept"] == SECRETS and "nothing was overwritten" in made(second)["msg"]
    assert files(site) == written

    nothing = init_site(site, check=True, rotate="all")
    assert made(nothing)["rotated"] == SECRETS and files(site) == written

    rotated = init_site(site, rotate="token")
    assert made(rotated)["rotated"] == ["token"], rotated.stdout[-3000:]
    after = files(site)
    assert {name for name in after if after[name] != written[name]} == {"token"}
    assert vault.decrypt(after["token"]) != vault.decrypt(written["token"])


def test_init_site_without_a_vault_password_fails_saying_how_to_give_one_and_writes_nothing(site):
    result = init_site(site, password=False)
    assert result.rc != 0
    assert "--vault-password-file" in made(result)["msg"]
    assert not site["dir"].exists()


def test_init_site_refuses_a_secret_with_a_missing_file_naming_it(site):
    assert init_site(site).rc == 0
    (site["dir"] / "provisioner-key.pem").unlink()
    result = init_site(site)
    assert result.rc != 0
    assert "provisioner.pem exists but provisioner-key.pem does not" in made(result)["msg"]


def test_the_sites_issuer_key_issues_a_node_jwt_that_verifies_with_jwt_issuer_pub(site):
    """provisioning_jwt's example: the vaulted issuer key decrypted for one run, the JWT kept on the next run."""
    from ansible_collections.zeroinit.bootstrap.plugins.module_utils.choria.jwt import (
        load_jwt_verify_key,
        verify_provisioning_jwt,
    )
    from ansible_collections.zeroinit.bootstrap.plugins.modules.provisioning_jwt import EXAMPLES

    assert init_site(site).rc == 0
    vault = VaultLib([("default", VaultSecret(PASSWORD.encode()))])
    token = vault.decrypt((site["dir"] / "token").read_bytes()).decode().strip()
    jwt_file = site["dir"] / "jwt" / "rack1.jwt"

    def issue(check=False):
        result = run_playbook(
            EXAMPLES,  # the module's documented example, as an operator copies it
            extra_vars={"site_secrets_dir": str(site["dir"])},
            check=check,
            diff=True,
            args=["--vault-password-file", site["password"]],
        )
        assert result.rc == 0, result.stdout[-3000:]
        assert token not in result.stdout and "PRIVATE KEY" not in result.stdout
        return result, result.result("Issue or keep rack1's JWT")

    _preview, would = issue(check=True)
    assert would["changed"] and would["reason"] == "the file does not exist" and not jwt_file.exists()

    first, issued = issue()
    assert issued["changed"] and stat.S_IMODE(os.stat(jwt_file).st_mode) == 0o600
    assert first.result("Remove the decrypted key")  # the always: section ran
    assert not list(pathlib.Path("/dev/shm").glob("zeroinit-site-*/jwt-issuer-key.pem"))
    verify_key = load_jwt_verify_key(str(site["dir"] / "jwt-issuer.pub"))
    jwt = jwt_file.read_text().strip()
    verified = verify_provisioning_jwt(jwt, verify_key, "n7.rack1.example.net", expected_token=token)
    assert verified.broker_urls == ("tls://prov.example.net:4222",) and verified.claims["jti"] == issued["jti"]

    _again, kept = issue()
    assert not kept["changed"] and jwt_file.read_text().strip() == jwt


def test_init_site_issues_the_images_jwts_when_asked_and_keeps_them_on_the_next_run(site):
    from ansible_collections.zeroinit.bootstrap.plugins.module_utils.choria.jwt import (
        load_jwt_verify_key,
        verify_provisioning_jwt,
    )

    jwts = {"rack1": ["*.rack1.example.net"], "edge": ["edge-*.example.net", "*.edge.example.net"]}
    extra = {"zeroinit_site_node_jwts": jwts, "zeroinit_site_node_jwt_brokers": ["nats://10.0.0.2:4222"]}
    preview = init_site(site, check=True, **extra)
    assert preview.rc == 0 and "would be issued after the JWT issuer key is made" in preview.stdout
    assert not site["dir"].exists()

    first = init_site(site, **extra)
    assert first.rc == 0, first.stdout[-3000:]
    vault = VaultLib([("default", VaultSecret(PASSWORD.encode()))])
    token = vault.decrypt((site["dir"] / "token").read_bytes()).decode().strip()
    assert token not in first.stdout
    verify_key = load_jwt_verify_key(str(site["dir"] / "jwt-issuer.pub"))
    texts = {}
    for name, identity in (("rack1", "n1.rack1.example.net"), ("edge", "edge-7.example.net")):
        jwt_file = site["dir"] / "jwt" / f"{name}.jwt"
        assert stat.S_IMODE(os.stat(jwt_file).st_mode) == 0o600
        texts[name] = jwt_file.read_text()
        verified = verify_provisioning_jwt(texts[name].strip(), verify_key, identity, expected_token=token)
        assert verified.broker_urls == ("nats://10.0.0.2:4222",) and verified.secure is False
        assert verified.claims["ou"] == "lab"
    with pytest.raises(Exception, match="does not match"):
        verify_provisioning_jwt(texts["rack1"].strip(), verify_key, "edge-7.example.net", expected_token=token)
    assert not list(pathlib.Path("/dev/shm").glob("zeroinit-site-*/jwt-issuer-key.pem"))

    second = init_site(site, **extra)
    assert second.rc == 0 and second.changed() == 0, second.stdout[-3000:]
    assert {name: (site["dir"] / "jwt" / f"{name}.jwt").read_text() for name in jwts} == texts

    missing = init_site(site, zeroinit_site_node_jwts=jwts)
    assert missing.rc != 0
    assert "set zeroinit_site_node_jwt_brokers" in missing.result("Say which brokers the JWTs name")["msg"]
