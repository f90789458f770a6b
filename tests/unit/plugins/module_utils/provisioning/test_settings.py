"""ProvisionSettings are checked when made: every bad option is named."""

import re

import pytest

from ansible_collections.zeroinit.bootstrap.plugins.module_utils.provisioning.settings import (
    ProvisionError,
)
from tests.support.rules import BROKER_URLS
from tests.support.scripted import scripted_settings


def test_helper_and_signer_are_exclusive_and_helper_must_exist(tmp_path):
    with pytest.raises(ProvisionError, match="mutually exclusive"):
        scripted_settings(helper="/bin/true", signer={"ca_cert": "x"})
    with pytest.raises(ProvisionError, match="helper"):
        scripted_settings(helper=str(tmp_path / "nope"))


@pytest.mark.parametrize("value,expected", BROKER_URLS)
def test_brokers_follow_the_one_rule(value, expected):
    if isinstance(expected, list):
        assert scripted_settings(brokers=value).brokers == expected
    else:
        with pytest.raises(ProvisionError, match=re.escape(expected)):
            scripted_settings(brokers=value)


def test_helper_mode_is_oneshot_unless_persistent_is_asked_for():
    assert scripted_settings(helper="/bin/true").helper_mode == "oneshot"
    assert scripted_settings(helper="/bin/true", helper_mode="persistent").helper_mode == "persistent"
    with pytest.raises(ProvisionError, match="helper_mode must be one of oneshot, persistent, not 'daemon'"):
        scripted_settings(helper="/bin/true", helper_mode="daemon")


def test_the_built_in_signer_needs_pki():
    with pytest.raises(ProvisionError, match="cannot be used with pki off"):
        scripted_settings(signer={"ca_cert": "x"}, pki=False)
    assert scripted_settings(helper="/bin/true", pki=False).flow_options().pki is False


@pytest.mark.parametrize(
    "options,phrase",
    [
        ({"signing_cert": "/x.pem"}, "signing_cert and signing_key come together"),
        ({"signing_key": "/x.key"}, "signing_cert and signing_key come together"),
        ({"signing_key_passphrase": "pw"}, "signing_key_passphrase is set but signing_cert and signing_key are not"),
        ({"signing_cert": "/nonexistent.pem", "signing_key": "/x.key"}, "signing_cert/signing_key: the signing"),
        ({"jwt_verify_key": "/nonexistent.pub"}, "jwt_verify_key '/nonexistent.pub' is neither a file nor a hex"),
    ],
)
def test_signing_and_jwt_options_are_checked_when_made(options, phrase):
    with pytest.raises(ProvisionError, match=re.escape(phrase)):
        scripted_settings(**options)


def test_the_signing_certificate_signs_every_request_of_the_client(tmp_path):
    from tests.support.certificates import Authority, key_pem

    leaf = Authority("provisioning CA").issue("prov.example.net")
    (tmp_path / "prov.pem").write_text(leaf.pem)
    (tmp_path / "prov.key").write_text(key_pem(leaf.key, b"hunter2"))
    settings = scripted_settings(
        signing_cert=str(tmp_path / "prov.pem"),
        signing_key=str(tmp_path / "prov.key"),
        signing_key_passphrase="hunter2",
    )
    assert settings.request_signer.subject == "CN=prov.example.net"
    assert settings.client().signer is settings.request_signer
    assert "hunter2" not in repr(settings)
