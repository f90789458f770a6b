"""The service's configuration file: Choria's key names and durations, every problem named by its key path."""

import os
import re
import socket

import pytest

from ansible_collections.zeroinit.bootstrap.plugins.module_utils.provisioning.service import config as cf

MINIMAL = "site: dc1\nbrokers: [nats://127.0.0.1:4222]\ntoken: s3cret\nhelper: /bin/true\n"


def load(tmp_path, text, hooks=None):
    path = tmp_path / "provisioner.yaml"
    path.write_text(text)
    return cf.load_service_config(str(path), hooks=hooks)


def problems(tmp_path, text, hooks=None):
    with pytest.raises(cf.ServiceConfigError) as failure:
        load(tmp_path, text, hooks)
    return failure.value.problems


def test_minimal_file_gets_the_documented_defaults(tmp_path):
    config = load(tmp_path, MINIMAL)
    assert config.site == "dc1"
    assert config.brokers == ["nats://127.0.0.1:4222"]
    assert config.collective == "provisioning"
    assert config.workers == 50
    assert config.interval == 60.0
    assert config.claim_ttl == 30.0
    assert config.features_pki is True
    assert config.monitor_port == 0
    assert config.monitor_address == "127.0.0.1"
    assert config.configuration == {}
    assert config.instance == f"{socket.gethostname().split('.')[0]}-{os.getpid()}"
    assert cf.INSTANCE_PATTERN.match(config.instance)


def test_full_choria_style_file(tmp_path, ca_files):
    text = f"""
site: dc1
brokers: [nats://a:4222, tls://b:4222]
collective: provisioning
workers: 4
interval: 30s
token: s3cret
features:
  pki: yes
signer: {{ca_cert: {ca_files}/ca.pem, ca_key: {ca_files}/ca.key, ca_passphrase: hunter2, valid_days: 30}}
configuration:
  plugin.choria.middleware_hosts: tls://members:4222
  plugin.choria.server.provision: false
  registerinterval: 300
tls_ca: {ca_files}/ca.pem
tls_cert: {ca_files}/client.pem
tls_key: {ca_files}/client.key
monitor_port: 8080
monitor_address: 0.0.0.0
loglevel: DEBUG
logfile: /var/log/zeroinit-provisioner.log
claim_ttl: 1m
instance: prov-a
"""
    config = load(tmp_path, text)
    assert config.interval == 30.0
    assert config.stale_after == 90.0
    assert config.claim_ttl == 60.0
    assert config.features_pki is True
    assert config.signer["valid_days"] == 30
    # Node configuration values become the strings Choria's key = value file holds.
    assert config.configuration == {
        "plugin.choria.middleware_hosts": "tls://members:4222",
        "plugin.choria.server.provision": "false",
        "registerinterval": "300",
    }
    assert config.loglevel == "debug"
    assert config.instance == "prov-a"
    assert config.tls_key.endswith("client.key")


@pytest.fixture
def ca_files(tmp_path):
    directory = tmp_path / "pki"
    directory.mkdir()
    for name in ("ca.pem", "ca.key", "client.pem", "client.key"):
        (directory / name).write_text("placeholder\n")
    return directory


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("30s", 30),
        ("1m", 60),
        ("1h", 3600),
        ("1h30m", 5400),
        ("1.5h", 5400),
        ("500ms", 0.5),
        ("2d", 172800),
        ("1w", 604800),
        ("1M", 2592000),
        ("1y", 31536000),
        ("0.5D", 43200),
        (45, 45),
        (2.5, 2.5),
        ("", 0),
    ],
)
def test_durations_as_choria_parses_them(text, seconds):
    assert cf.parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["30", "10S", "1H", "1x", "m", "1.2.3s", "abc", "s", True, None, [1]])
def test_durations_choria_refuses(text):
    with pytest.raises(ValueError):
        cf.parse_duration(text)


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("features: {pki: 'yes'}", "features.pki: expected a boolean, got 'yes'"),
        ("features: {jwt: true}", "features.jwt: Choria's provisioner key is not supported here"),
        ("workers: many", "workers: expected an integer, got 'many'"),
        ("workers: true", "workers: expected an integer, got a boolean (true)"),
        ("workers: 0", "workers: must be at least 1, got 0"),
        ("interval: 2s", "interval: must be at least 5, got 2"),
        ("interval: 30", None),
        ("interval: '30'", "interval: invalid time unit in '30'"),
        ("claim_ttl: 2h", "claim_ttl: must be at most 3600, got 7200"),
        ("monitor_port: 70000", "monitor_port: must be at most 65535, got 70000"),
        ("monitor_address: 'not an address!'", "monitor_address: 'not an address!' is not an IP address or host name"),
        ("loglevel: loud", "loglevel: expected one of trace, debug, info, warn, warning, error, fatal, got 'loud'"),
        ("instance: 'a b'", "instance: 'a b' is not an instance name"),
        ("colective: provisioning", "colective: unknown key; did you mean collective?"),
        ("leader_election: true", "leader_election: Choria's provisioner key is not supported here (every instance"),
        ("configuration: {identity: [a]}", "configuration: identity: expected a string, number or boolean, got a list"),
        ("configuration: [a]", "configuration: expected a mapping, got a list"),
        ("features: [pki]", "features: expected a mapping, got a list"),
        ("tls_ca: /nonexistent/ca.pem", "tls_ca: /nonexistent/ca.pem: no such file"),
        ("helper_timeout: 0s", "helper_timeout: must be at least 1, got 0"),
    ],
)
def test_one_wrong_key_is_named_by_its_path(tmp_path, line, expected):
    text = MINIMAL + line + "\n"
    if expected is None:
        load(tmp_path, text)
        return
    found = problems(tmp_path, text)
    assert len(found) == 1, found
    assert found[0].startswith(expected), found


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("brokers: [nats://a]\ntoken: t\nhelper: /bin/true\n", "site: required"),
        ("site: dc.1\nbrokers: [nats://a]\ntoken: t\nhelper: /bin/true\n", "site: 'dc.1' is not a site name"),
        ("site: no\nbrokers: [nats://a]\ntoken: t\nhelper: /bin/true\n", "site: expected a string, got a boolean"),
        ("site: dc1\nbrokers: nats://a\ntoken: t\nhelper: /bin/true\n", "brokers: expected a non-empty list"),
        ("site: dc1\nbrokers: [nats://a, 4222]\ntoken: t\nhelper: /bin/true\n", "brokers: item 1: expected a broker"),
        ("site: dc1\nbrokers: []\ntoken: t\nhelper: /bin/true\n", "brokers: expected a non-empty list"),
        ("site: dc1\nbrokers: [nats://a]\ntoken: 0123\nhelper: /bin/true\n", "token: expected a string, got a number"),
        ("site: dc1\nbrokers: [nats://a]\nhelper: /bin/true\n", "token: required unless control_key is set"),
        ("site: dc1\nbrokers: [nats://a]\ntoken: t\n", "helper, signer: one is required"),
        ("site: dc1\nbrokers: [nats://a]\ntoken: t\nhelper: /bin/true\nsigner: {}\n", "helper, signer: exclusive"),
        ("site: dc1\nbrokers: [nats://a]\ntoken: t\nhelper: [/bin/true, 3]\n", "helper: expected a program path"),
        ("site: dc1\nsite: dc2\n", "not valid YAML"),
        ("- a\n- b\n", "expected a mapping of keys at the top, got a list"),
        ("site: [\n", "not valid YAML"),
    ],
)
def test_file_level_problems(tmp_path, text, expected):
    found = problems(tmp_path, text)
    assert any(problem.startswith(expected) for problem in found), found


def test_duplicate_key_error_says_which_key_and_line(tmp_path):
    (problem,) = problems(tmp_path, MINIMAL + "workers: 3\nworkers: 4\n")
    assert "key 'workers' is written twice" in problem
    assert "line 6" in problem


def test_every_problem_is_reported_at_once(tmp_path):
    found = problems(tmp_path, "site: dc1\nbrokers: [nats://a]\ntoken: t\nhelper: /bin/true\nworkers: x\nbogus: 1\n")
    assert [p.split(":")[0] for p in found] == ["workers", "bogus"]


def test_signer_needs_pki(tmp_path):
    text = "site: dc1\nbrokers: [nats://a]\ntoken: t\nsigner: {ca_cert: /x}\nfeatures: {pki: false}\n"
    assert problems(tmp_path, text) == [
        "features.pki: the built-in signer needs the node's CSR; set it true or use a helper"
    ]


def test_tls_key_needs_a_certificate(tmp_path, ca_files):
    assert problems(tmp_path, MINIMAL + f"tls_key: {ca_files}/client.key\n") == ["tls_key: given without tls_cert"]


def test_unreadable_file_and_missing_file(tmp_path):
    with pytest.raises(cf.ServiceConfigError, match="cannot read the file"):
        cf.load_service_config(str(tmp_path / "absent.yaml"))
    path = tmp_path / "bin.yaml"
    path.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(cf.ServiceConfigError, match="cannot read the file"):
        cf.load_service_config(str(path))


def test_hooks_run_on_checked_values_and_their_errors_name_the_key(tmp_path):
    seen = {}

    def brokers(urls):
        seen["brokers"] = urls
        return [url + ":4222" for url in urls]

    def signer(options):
        raise ValueError("ca_cert: file not found")

    hooks = cf.ConfigHooks(brokers=brokers, helper=lambda h: ["/usr/bin/true"], signer=signer)
    config = load(tmp_path, MINIMAL, hooks)
    assert config.brokers == ["nats://127.0.0.1:4222:4222"]
    assert config.helper == ["/usr/bin/true"]
    text = "site: dc1\nbrokers: [nats://a]\ntoken: t\nsigner: {ca_cert: /x}\n"
    assert problems(tmp_path, text, hooks) == ["signer: ca_cert: file not found"]


def test_secrets_never_in_repr_or_redacted(tmp_path):
    text = "site: dc1\nbrokers: [nats://a]\ntoken: tok-SECRET\ncontrol_key: ck-SECRET\n"
    text += "signer: {ca_cert: /c, ca_key: /k, ca_passphrase: pass-SECRET}\n"
    config = load(tmp_path, text)
    for shown in (repr(config), str(config), str(config.redacted()), f"{config}"):
        assert "SECRET" not in shown
    assert config.redacted()["signer"]["ca_key"] == "/k", "paths are not secrets"
    assert config.token == "tok-SECRET"


def test_empty_file_lists_what_is_required(tmp_path):
    assert problems(tmp_path, "") == ["site: required", "brokers: required"]


def test_reference_table_documents_every_key_once():
    table = cf.reference_markdown()
    documented = re.findall(r"^\| `([a-z_.]+)` \|", table, flags=re.M)
    assert documented == [key.name for key in cf.CONFIG_KEYS]
    assert "| `interval` | duration | `60s` | yes |" in table
    assert "| `site` | site | required | yes |" in table


def test_default_instance_is_a_valid_name(monkeypatch):
    monkeypatch.setattr(socket, "gethostname", lambda: "weird host_name!.example.net")
    name = cf.default_instance()
    assert cf.INSTANCE_PATTERN.match(name), name
    assert name.endswith(f"-{os.getpid()}")
