"""provisioning_jwt's file: issued, kept while it does its job, issued anew when it does not; never half-written."""

import json
import os
import time

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from ansible_collections.zeroinit.bootstrap.plugins.module_utils.choria.jwt import (
    ProvisioningJwtError,
    verify_provisioning_jwt,
)
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.provisioning.jwt_file import (
    JwtFileError,
    ensure_jwt_file,
)

TOKEN = "site-token-0123"
DAY = 86400


def write_key(path, key) -> str:
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    path.chmod(0o600)
    return str(path)


@pytest.fixture
def site(tmp_path):
    issuer = ed25519.Ed25519PrivateKey.generate()
    params = {
        "dest": str(tmp_path / "jwt" / "rack1.jwt"),
        "signing_key": write_key(tmp_path / "issuer.pem", issuer),
        "signing_key_passphrase": None,
        "token": TOKEN,
        "brokers": ["tls://prov.example.net:4222"],
        "identities": ["*.rack1.example.net"],
        "valid_days": 90,
        "renew_before_days": 30,
        "secure": True,
        "organization": None,
        "issuer": "zeroinit.bootstrap",
    }
    return params, issuer


def jwt_text(params) -> str:
    with open(params["dest"]) as handle:
        return handle.read().strip()


def test_a_new_jwt_verifies_for_the_rack_and_is_kept_on_the_next_run(site):
    params, issuer = site
    first = ensure_jwt_file(params)
    assert first["changed"] and first["reason"] == "the file does not exist"
    assert os.stat(params["dest"]).st_mode & 0o777 == 0o600
    assert os.stat(os.path.dirname(params["dest"])).st_mode & 0o777 == 0o700
    verified = verify_provisioning_jwt(jwt_text(params), issuer.public_key(), "n1.rack1.example.net", TOKEN)
    assert verified.broker_urls == ("tls://prov.example.net:4222",) and verified.secure
    assert abs(verified.expires - (time.time() + 90 * DAY)) < 60 and verified.claims["jti"] == first["jti"]
    with pytest.raises(ProvisioningJwtError, match="does not match"):
        verify_provisioning_jwt(jwt_text(params), issuer.public_key(), "n1.rack2.example.net", TOKEN)
    assert TOKEN not in json.dumps(first) and jwt_text(params) not in json.dumps(first)

    text = jwt_text(params)
    again = ensure_jwt_file(params)
    assert not again["changed"] and again["reason"] == "" and again["jti"] == first["jti"]
    assert jwt_text(params) == text
    assert not ensure_jwt_file(dict(params, valid_days=365))["changed"]  # the next JWT gets the new validity


@pytest.mark.parametrize(
    "change, reason",
    [
        ({"identities": ["*.rack2.example.net"]}, "its claims differ: identities"),
        ({"brokers": ["tls://prov2.example.net:4222"]}, "its claims differ: brokers"),
        ({"token": "a-new-token"}, "its claims differ: token"),
        ({"secure": False, "organization": "ops"}, "its claims differ: secure, organization"),
        ({"valid_days": 120, "renew_before_days": 100}, "within renew_before_days"),
    ],
)
def test_a_jwt_that_no_longer_fits_is_issued_anew_with_the_reason(site, change, reason):
    params, issuer = site
    first = ensure_jwt_file(params)
    changed = dict(params, **change)
    before = jwt_text(params)

    would = ensure_jwt_file(changed, check_mode=True)
    assert would["changed"] and reason in would["reason"] and would["jti"] is None
    assert jwt_text(params) == before  # check mode wrote nothing
    assert TOKEN not in json.dumps(would) and "a-new-token" not in json.dumps(would)

    done = ensure_jwt_file(changed)
    assert done["changed"] and reason in done["reason"] and done["jti"] != first["jti"]
    assert done["diff"]["before"]["identities"] == ["*.rack1.example.net"]
    assert done["diff"]["after"]["identities"] == changed["identities"]
    claims = verify_provisioning_jwt(
        jwt_text(params), issuer.public_key(), "n1." + changed["identities"][0][2:], changed["token"]
    ).claims
    assert claims["chs"] is changed["secure"] and claims.get("ou") == changed["organization"]


def test_a_jwt_of_another_issuer_or_garbage_is_replaced(site, tmp_path):
    params, issuer = site
    other = dict(params, signing_key=write_key(tmp_path / "other.pem", ed25519.Ed25519PrivateKey.generate()))
    ensure_jwt_file(other)
    replaced = ensure_jwt_file(params)
    assert "not usable with this issuer key" in replaced["reason"] and "signature" in replaced["reason"]
    verify_provisioning_jwt(jwt_text(params), issuer.public_key(), "n1.rack1.example.net", TOKEN)

    with open(params["dest"], "w") as handle:
        handle.write("not.a.jwt\n")
    assert "not usable" in ensure_jwt_file(params)["reason"]


def test_a_kept_jwt_gets_its_mode_back(site):
    params, _issuer = site
    ensure_jwt_file(params)
    os.chmod(params["dest"], 0o644)
    assert ensure_jwt_file(params, check_mode=True)["changed"]
    assert os.stat(params["dest"]).st_mode & 0o777 == 0o644
    fixed = ensure_jwt_file(params)
    assert fixed["changed"] and fixed["reason"] == "mode set to 0600"
    assert os.stat(params["dest"]).st_mode & 0o777 == 0o600


@pytest.mark.parametrize(
    "change, field",
    [
        ({"identities": ["a.*b*.example.net"]}, "identities"),
        ({"identities": []}, "identities"),
        ({"brokers": ["nats://a:4222,nats://b:4222"]}, "brokers"),
        ({"token": ""}, "token"),
        ({"valid_days": 0}, "valid_days"),
        ({"renew_before_days": 90}, "renew_before_days"),
        ({"signing_key": "/nonexistent/issuer.pem"}, "signing_key"),
    ],
)
def test_bad_input_names_the_field_and_writes_nothing(site, change, field):
    params, _issuer = site
    with pytest.raises(JwtFileError) as info:
        ensure_jwt_file(dict(params, **change))
    assert info.value.field == field
    assert not os.path.exists(os.path.dirname(params["dest"]))


def test_an_rsa_issuer_key_is_refused_and_a_link_is_never_written_through(site, tmp_path):
    from tests.support.certificates import rsa_key

    params, _issuer = site
    with pytest.raises(JwtFileError, match="cannot sign provisioning JWTs") as info:
        ensure_jwt_file(dict(params, signing_key=write_key(tmp_path / "rsa.pem", rsa_key(2048))))
    assert info.value.field == "signing_key"
    target = tmp_path / "elsewhere"
    target.write_text("keep")
    link = tmp_path / "link.jwt"
    link.symlink_to(target)
    with pytest.raises(JwtFileError, match="symbolic link"):
        ensure_jwt_file(dict(params, dest=str(link)))
    assert target.read_text() == "keep"
