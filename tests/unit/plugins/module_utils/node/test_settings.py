"""The agent's settings: config file first, flags override, the token never shows, brokers by the one rule."""

import re
import ssl

import pytest

from ansible_collections.zeroinit.bootstrap.plugins.module_utils.choria.config import ConfigError
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.node.settings import (
    parse_args,
    provisioning_jwt_path,
    settings_from,
)
from tests.support.rules import BROKER_URLS


def settings(tmp_path, text, *flags):
    conf = tmp_path / "agent.conf"
    conf.write_text(text)
    return settings_from(parse_args(["--config", str(conf), *list(flags)]))


def test_config_file_then_flags(tmp_path):
    s = settings(
        tmp_path,
        """
# node agent
identity = web1.example.net
plugin.zeroinit.agent.brokers = nats://10.0.0.1:4222, nats://10.0.0.2:4222
plugin.zeroinit.agent.token = from-file
plugin.zeroinit.agent.state_dir = /srv/agent
plugin.zeroinit.agent.registration_interval = 30
plugin.zeroinit.agent.fsync = false
loglevel = debug
""",
        "--token",
        "from-flag",
        "--registration-interval",
        "5",
    )
    assert s.brokers == ["nats://10.0.0.1:4222", "nats://10.0.0.2:4222"]
    assert (s.identity, s.state_dir, s.log_level, s.fsync) == ("web1.example.net", "/srv/agent", "debug", False)
    assert (s.token, s.registration_interval) == ("from-flag", 5.0)
    assert "from-flag" not in repr(s)


@pytest.mark.parametrize(
    "text,flags,phrase",
    [
        ("plugin.zeroinit.agent.splay_max = soon\n", [], "splay_max must be a number"),
        ("loglevel = loud\n", [], "log level"),
        ("", ["--connections", "0"], "--connections"),
        ("not a setting\n", [], "line 1"),
        ("plugin.zeroinit.agent.max_ttl = 5m\n", [], "max_ttl must be a whole number of seconds"),
        ("", ["--max-ttl", "0"], "--max-ttl / plugin.zeroinit.agent.max_ttl must be at least 1 second"),
    ],
)
def test_bad_settings_name_the_problem(tmp_path, text, flags, phrase):
    with pytest.raises(ConfigError, match=phrase):
        settings(tmp_path, text, *flags)


@pytest.mark.parametrize("value,expected", BROKER_URLS)
def test_brokers_from_flags_and_file_follow_the_one_rule(tmp_path, value, expected):
    items = value if isinstance(value, list) else [value]
    flags = [arg for item in items for arg in ("--broker", item)]
    joined = ",".join(items)
    if isinstance(expected, list):
        assert settings_from(parse_args(flags)).brokers == expected
        assert settings(tmp_path, f"plugin.zeroinit.agent.brokers = {joined}\n").brokers == expected
    elif expected == "brokers is empty":
        assert settings_from(parse_args(flags)).brokers == []  # the daemon says so at start
    else:
        with pytest.raises(ConfigError, match=re.escape(expected)):
            settings_from(parse_args(flags))


def test_the_provisioning_connection_takes_tls_and_a_user_from_file_and_flags(tmp_path):
    from tests.support.fleet import TestCA

    files = TestCA().write_key_pair(tmp_path / "tls", "node1", client=True)
    s = settings(
        tmp_path,
        f"""
plugin.zeroinit.agent.tls_ca = {files["ca"]}
plugin.zeroinit.agent.tls_cert = /nonexistent.pem
plugin.zeroinit.agent.broker_user = from-file
plugin.zeroinit.agent.broker_password = pr0v-secret
""",
        "--tls-cert",
        files["cert"],
        "--tls-key",
        files["key"],
        "--broker-user",
        "node",
    )
    assert (s.tls_ca, s.tls_cert, s.tls_key) == (files["ca"], files["cert"], files["key"])
    assert s.provisioning_auth() == {"user": "node", "password": "pr0v-secret"}
    assert "pr0v-secret" not in repr(s)
    context = s.provisioning_tls()
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert settings(tmp_path, "").provisioning_tls() is None
    assert settings(tmp_path, "").provisioning_auth() == {}


@pytest.mark.parametrize(
    "text, phrase",
    [
        ("plugin.zeroinit.agent.tls_ca = /nonexistent/ca.pem\n", "provisioning TLS (--tls-ca, --tls-cert, --tls-key)"),
        (
            "plugin.zeroinit.agent.tls_cert = /nonexistent/cert.pem\n",
            "--tls-cert / plugin.zeroinit.agent.tls_cert needs",
        ),
    ],
)
def test_unusable_tls_files_name_the_options(tmp_path, text, phrase):
    with pytest.raises(ConfigError, match=re.escape(phrase)):
        settings(tmp_path, text).provisioning_tls()


def test_the_broker_password_has_no_flag():
    with pytest.raises(SystemExit):
        parse_args(["--broker-password", "visible-to-every-process"])


def test_trust_settings_from_file_and_flags(tmp_path):
    s = settings(
        tmp_path,
        """
plugin.zeroinit.agent.provisioning_ca = /etc/zeroinit/provisioning-ca.pem
plugin.zeroinit.agent.provisioning_jwt = /etc/zeroinit/provisioning.jwt
plugin.zeroinit.agent.max_ttl = 120
""",
    )
    assert (s.provisioning_ca, s.provisioning_jwt, s.max_ttl) == (
        "/etc/zeroinit/provisioning-ca.pem",
        "/etc/zeroinit/provisioning.jwt",
        120,
    )
    s = settings(tmp_path, "plugin.zeroinit.agent.max_ttl = 120\n", "--max-ttl", "60", "--provisioning-ca", "/ca.pem")
    assert (s.max_ttl, s.provisioning_ca) == (60, "/ca.pem")
    assert settings_from(parse_args([])).max_ttl == 300


def test_each_node_of_a_fleet_finds_its_own_jwt(tmp_path):
    (tmp_path / "jwts").mkdir()
    assert provisioning_jwt_path(str(tmp_path / "jwts"), "n1.lab") == str(tmp_path / "jwts" / "n1.lab.jwt")
    assert provisioning_jwt_path("/srv/{identity}/provisioning.jwt", "n2.lab") == "/srv/n2.lab/provisioning.jwt"
    assert provisioning_jwt_path("/etc/zeroinit/provisioning.jwt", "n3.lab") == "/etc/zeroinit/provisioning.jwt"
    assert provisioning_jwt_path("", "n4.lab") == ""
