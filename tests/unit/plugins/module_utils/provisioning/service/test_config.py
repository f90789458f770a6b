"""The service's configuration file: Choria's key names and durations, every problem named by its key path."""

import os
import pathlib
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
        ("features: {jwt: true}", "features.jwt: Choria's provisioner key is not supported here (set jwt_verify_key"),
        (
            "jwt_verify_cert: /etc/jwt.pub",
            "jwt_verify_cert: Choria's provisioner key is not supported here (named jwt_",
        ),
        ("signing_cert: /nonexistent/prov.pem", "signing_cert: /nonexistent/prov.pem: no such file"),
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
        ("helper_mode: daemon", "helper_mode: expected one of oneshot, persistent, got 'daemon'"),
        ("helper_mode: persistent", None),
        ("helper_concurrency: -1", "helper_concurrency: must be at least 0, got -1"),
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
    text += "signer: {ca_cert: /c, ca_key: /k, ca_passphrase: pass-SECRET, cfssl_auth_key: hmac-SECRET}\n"
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


@pytest.fixture
def provisioner_files(tmp_path):
    """A real provisioner certificate with its key under a passphrase, and an Ed25519 JWT issuer public key."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    from tests.support.certificates import Authority, key_pem

    leaf = Authority("provisioning CA").issue("prov.example.net")
    files = {name: tmp_path / name for name in ("prov.pem", "prov.key", "issuer.pub")}
    files["prov.pem"].write_text(leaf.pem)
    files["prov.key"].write_text(key_pem(leaf.key, b"pass-SECRET"))
    public = ed25519.Ed25519PrivateKey.generate().public_key()
    files["issuer.pub"].write_bytes(
        public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return {name: str(path) for name, path in files.items()}


def test_signing_and_jwt_keys_reach_the_provision_settings(tmp_path, provisioner_files):
    """The daemon hands these keys to ProvisionSettings under the same names: the client signs, the flow verifies."""
    from ansible_collections.zeroinit.bootstrap.plugins.module_utils.provisioning.service.daemon import (
        provision_settings,
    )

    files = provisioner_files
    signed = (
        f"signing_cert: {files['prov.pem']}\nsigning_key: {files['prov.key']}\nsigning_key_passphrase: pass-SECRET\n"
        f"jwt_verify_key: {files['issuer.pub']}\n"
    )
    config = load(tmp_path, MINIMAL + signed)
    trust = ("signing_cert", "signing_key", "signing_key_passphrase", "jwt_verify_key")
    assert (config.signing_cert, config.signing_key, config.jwt_verify_key) == (
        files["prov.pem"],
        files["prov.key"],
        files["issuer.pub"],
    )
    assert config.signing_key_passphrase == "pass-SECRET"
    assert "SECRET" not in repr(config) and config.redacted()["signing_key_passphrase"] == "<redacted>"
    settings = provision_settings(config)
    assert settings.request_signer.subject == "CN=prov.example.net"
    assert settings.client().signer is settings.request_signer
    assert settings.flow_options().jwt_verify_key is settings.jwt_key is not None
    unset = load(tmp_path, MINIMAL)
    assert [getattr(unset, k) for k in trust] == [None, None, "", None]


@pytest.mark.parametrize(
    ("keys", "expected"),
    [
        (("prov.pem",), "signing_cert: given without signing_key (a signing certificate needs its key)"),
        (("prov.key",), "signing_key: given without signing_cert"),
        ((), "signing_key_passphrase: given without signing_key"),
    ],
)
def test_a_signing_key_alone_is_refused_by_name(tmp_path, provisioner_files, keys, expected):
    names = {"prov.pem": "signing_cert", "prov.key": "signing_key"}
    text = MINIMAL + "".join(f"{names[k]}: {provisioner_files[k]}\n" for k in keys)
    if not keys:
        text += "signing_key_passphrase: pass-SECRET\n"
    assert problems(tmp_path, text) == [expected]


def test_the_renewal_section_configures_the_responder_on_the_members_network(tmp_path, ca_files):
    text = f"""{MINIMAL}
renewal:
  brokers: [tls://members:4222]
  collective: prod
  site_ca: {ca_files}/ca.pem
  signer: {{ca_cert: {ca_files}/ca.pem, ca_key: {ca_files}/ca.key, ca_passphrase: hunter2}}
  tls_ca: {ca_files}/ca.pem
  tls_cert: {ca_files}/client.pem
  tls_key: {ca_files}/client.key
"""
    config = load(tmp_path, text)
    assert config.renewal_brokers == ["tls://members:4222"] and config.renewal_collective == "prod"
    assert config.renewal_signer_params["ca_key"] == f"{ca_files}/ca.key"
    assert config.renewal_tls_cert == f"{ca_files}/client.pem"
    assert config.redacted()["renewal_signer"]["ca_passphrase"] == "<redacted>" and "hunter2" not in repr(config)
    assert load(tmp_path, MINIMAL).renewal_signer_params is None, "no renewal.brokers: no responder"


@pytest.mark.parametrize(
    ("section", "problem"),
    [
        ("renewal:\n  brokers: [nats://m:4222]\n", "renewal.brokers: the renewal responder needs a signer"),
        ("renewal:\n  collective: prod\n  tls_ca: /etc/hosts\n", "renewal.tls_ca: given without renewal.brokers"),
        ("renewal:\n  brokers: nats://m:4222\n", "renewal.brokers: expected a non-empty list of broker URLs"),
        ("renewal:\n  brokerz: []\n", "renewal.brokerz: unknown key; did you mean renewal.brokers?"),
        ("renewal: [nats://m:4222]\n", "renewal: expected a mapping, got a list"),
    ],
)
def test_renewal_problems_are_named_by_their_key(tmp_path, section, problem):
    found = problems(tmp_path, MINIMAL + section)
    assert any(p.startswith(problem) for p in found), found


def test_readme_carries_the_reference_table_as_generated():
    readme = (pathlib.Path(__file__).resolve().parents[6] / "README.md").read_text()
    begin = "<!-- provisioner-config-keys: generated by reference_markdown(), do not edit by hand -->\n"
    end = "<!-- end of provisioner-config-keys -->"
    assert readme.count(begin) == 1, "README.md has the provisioner's key table"
    assert readme.split(begin, 1)[1].split(end, 1)[0] == cf.reference_markdown()
