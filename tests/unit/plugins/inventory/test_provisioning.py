"""The provisioning inventory plugin without a network: file selection, host variables, constructed groups and
variables on a real in-memory InventoryData, untrusted facts, and the cache (jsonfile) keyed by file and query."""

from __future__ import annotations

import pathlib
import re
import subprocess
import sys

import pytest
import yaml
from ansible.errors import AnsibleError, AnsibleParserError
from ansible.inventory.data import InventoryData
from ansible.parsing.dataloader import DataLoader
from ansible.plugins.inventory import BaseInventoryPlugin, Constructable
from ansible.plugins.loader import init_plugin_loader, inventory_loader

ROOT = pathlib.Path(__file__).resolve().parents[2]
NAME = "zeroinit.bootstrap.provisioning"
UNREACHABLE = "nats://127.0.0.1:1"  # nothing listens on port 1: a query would fail fast, naming this broker

# Plain imports (conftest, the .pth) made ``ansible_collections`` an ordinary namespace package, without the
# collection metadata Ansible's loader needs. Drop the three package entries (the modules under them stay, so
# there is still one DiscoveryError class) and let Ansible's collection finder import them again.
if not hasattr(sys.modules.get("ansible_collections.zeroinit.bootstrap"), "_collection_meta"):
    for _package in ("ansible_collections", "ansible_collections.zeroinit", "ansible_collections.zeroinit.bootstrap"):
        sys.modules.pop(_package, None)
init_plugin_loader([str(ROOT / ".venv" / "collections")])
# The plugin's own module, as the plugin loader imported it (its pure helpers are tested directly).
plugin_module = sys.modules[type(inventory_loader.get(NAME)).__module__]


def record(facts=None, inventory=None, error=None, sources=("discovery",), events=()):
    rec = {"facts": facts or {}, "inventory": inventory, "events": list(events), "sources": list(sources)}
    if error:
        rec["inventory_error"] = error
    return rec


FLEET = {
    "web1.example.net": record(
        {"role": "web", "os": {"family": "Debian"}, "identity": "web1.example.net"},
        {"agents": ["rpcutil"], "version": "0.1.0", "collectives": ["provisioning"]},
    ),
    "web2.example.net": record(
        {"role": "web", "os": {"family": "RedHat"}, "identity": "web2.example.net"},
        {"agents": ["rpcutil"], "version": "0.1.0", "collectives": ["provisioning"]},
    ),
    "db1.example.net": record(
        {"role": "db"},
        None,
        error="rpcutil#inventory: no reply within 10.0s",
        sources=("lifecycle", "registration"),
        events=[{"type": "startup"}],
    ),
}


def load_plugin(tmp_path, config, filename="provisioning.yml"):
    """The plugin as ansible-inventory loads it: options read from a real file (templates in it are trusted)."""
    config = dict({"plugin": NAME, "brokers": [UNREACHABLE]}, **config)
    path = tmp_path / filename
    path.write_text(yaml.safe_dump(config))
    plugin = inventory_loader.get(NAME)
    inventory = InventoryData()
    BaseInventoryPlugin.parse(plugin, inventory, DataLoader(), str(path))
    plugin._read_config_data(str(path))
    return plugin, inventory, str(path)


def hostvars(inventory, host):
    return inventory.get_host(host).get_vars()


def members(inventory, group):
    return sorted(h.name for h in inventory.groups[group].get_hosts()) if group in inventory.groups else []


# ------------------------------------------------------------------------------------------ file selection


@pytest.mark.parametrize(
    "name,accepted",
    [
        ("provisioning.yml", True),
        ("provisioning.yaml", True),
        ("lab.provisioning.yml", True),
        ("hosts.yml", False),
        ("provisioning.yml.bak", False),
        ("provisioning.json", False),
    ],
)
def test_verify_file_accepts_only_provisioning_yaml_files(tmp_path, name, accepted):
    path = tmp_path / name
    path.write_text(f"plugin: {NAME}\n")
    assert inventory_loader.get(NAME).verify_file(str(path)) is accepted


def test_verify_file_refuses_a_missing_file(tmp_path):
    assert inventory_loader.get(NAME).verify_file(str(tmp_path / "provisioning.yml")) is False


# ------------------------------------------------------------------------------------------ pure helpers


def test_host_variables_carry_facts_inventory_and_the_error():
    node_hostvars = plugin_module.node_hostvars
    ok, skipped = node_hostvars("web1.example.net", FLEET["web1.example.net"], "provisioning", details=True)
    assert ok["zeroinit_facts"]["os"]["family"] == "Debian"
    assert ok["zeroinit_inventory"]["version"] == "0.1.0"
    assert ok["zeroinit_identity"] == "web1.example.net" and ok["zeroinit_collective"] == "provisioning"
    assert "zeroinit_inventory_error" not in ok and skipped == []
    failed, _skipped = node_hostvars("db1.example.net", FLEET["db1.example.net"], "provisioning", details=True)
    assert failed["zeroinit_inventory_error"].startswith("rpcutil#inventory")
    assert failed["zeroinit_inventory"] == {} and failed["zeroinit_discovered_by"] == ["lifecycle", "registration"]


def test_without_details_a_host_carries_its_identity_collective_facts_and_error_only():
    node_hostvars = plugin_module.node_hostvars
    ok, _skipped = node_hostvars("web1.example.net", FLEET["web1.example.net"], "provisioning")
    assert sorted(ok) == ["zeroinit_collective", "zeroinit_facts", "zeroinit_identity"]
    assert ok["zeroinit_facts"] == FLEET["web1.example.net"]["facts"]
    failed, _skipped = node_hostvars("db1.example.net", FLEET["db1.example.net"], "provisioning")
    assert sorted(failed) == ["zeroinit_collective", "zeroinit_facts", "zeroinit_identity", "zeroinit_inventory_error"]


def test_the_plugin_sets_the_details_only_when_asked(tmp_path):
    (tmp_path / "lean").mkdir()
    (tmp_path / "full").mkdir()
    lean_plugin, lean, _path = load_plugin(tmp_path / "lean", {})
    lean_plugin._populate(FLEET)
    full_plugin, full, _path = load_plugin(tmp_path / "full", {"host_details": True})
    full_plugin._populate(FLEET)
    details = {"zeroinit_inventory", "zeroinit_discovered_by", "zeroinit_lifecycle_events"}
    for name in FLEET:
        assert not details & set(hostvars(lean, name)) and details <= set(hostvars(full, name))
        assert hostvars(lean, name)["zeroinit_facts"] == hostvars(full, name)["zeroinit_facts"]


def test_flattened_facts_never_set_connection_or_magic_variables():
    module = plugin_module
    rec = record(
        {
            "role": "web",
            "ansible_host": "10.9.9.9",
            "ansible_connection": "ssh",
            "hostvars": 1,
            "inventory_hostname": "evil",
            "zeroinit_facts": {},
            "bad-name": 1,
            "when": 1,
            "os": {"f": 1},
        }
    )
    flat, skipped = module.node_hostvars("n1.example.net", rec, "provisioning", flatten_facts=True)
    assert flat["role"] == "web" and flat["os"] == {"f": 1}
    for name in ("ansible_host", "ansible_connection", "hostvars", "inventory_hostname", "bad-name", "when"):
        assert name not in flat
    assert flat["zeroinit_facts"]["ansible_host"] == "10.9.9.9"  # still visible, just not as a variable
    assert sorted(skipped) == sorted(
        ["ansible_host", "ansible_connection", "hostvars", "inventory_hostname", "zeroinit_facts", "bad-name", "when"]
    )
    prefixed, _skipped = module.node_hostvars(
        "n1.example.net", rec, "provisioning", flatten_facts=True, fact_prefix="node_"
    )
    assert prefixed["node_role"] == "web" and prefixed["node_ansible_host"] == "10.9.9.9"
    assert "ansible_host" not in prefixed


def test_cache_key_depends_on_brokers_and_collective_not_their_order():
    module = plugin_module
    fp = module.query_fingerprint
    assert fp(["nats://a:1", "nats://b:2"], "provisioning") == fp(["nats://b:2", "nats://a:1"], "provisioning")
    assert fp(["nats://a:1"], "provisioning") != fp(["nats://a:1"], "other")
    assert fp(["nats://a:1"], "provisioning") != fp(["nats://c:1"], "provisioning")
    assert module.cached_fleet({"format": 1, "nodes": {}}) == {}
    assert module.cached_fleet({"nodes": {}}) is None and module.cached_fleet(["x"]) is None


# ------------------------------------------------------------------------------------------ constructed


def test_hosts_groups_and_composed_variables(tmp_path):
    plugin, inventory, _path = load_plugin(
        tmp_path,
        {
            "keyed_groups": [
                {"key": "zeroinit_facts.role", "prefix": "role"},
                {"key": "zeroinit_facts.os.family | default('unknown')", "prefix": "os"},
            ],
            "groups": {
                "inventory_failed": "zeroinit_inventory_error is defined",
                "debian": "zeroinit_facts.os.family | default('') == 'Debian'",
            },
            "compose": {"node_role": "zeroinit_facts.role", "agent_version": "zeroinit_inventory.version"},
            "host_details": True,
        },
    )
    plugin._populate(FLEET)
    assert members(inventory, "provisioning") == sorted(FLEET)
    assert members(inventory, "role_web") == ["web1.example.net", "web2.example.net"]
    assert members(inventory, "role_db") == ["db1.example.net"]
    assert members(inventory, "os_Debian") == ["web1.example.net"]
    assert members(inventory, "os_unknown") == ["db1.example.net"]
    assert members(inventory, "inventory_failed") == ["db1.example.net"]
    assert members(inventory, "debian") == ["web1.example.net"]
    assert hostvars(inventory, "web2.example.net")["node_role"] == "web"
    assert hostvars(inventory, "web2.example.net")["agent_version"] == "0.1.0"
    # The failed node has no version: without strict the composed variable is simply absent.
    assert "agent_version" not in hostvars(inventory, "db1.example.net")
    assert "ansible_connection" not in hostvars(inventory, "web1.example.net")


def test_strict_turns_a_broken_expression_into_an_error_naming_the_host(tmp_path):
    plugin, _inventory, _path = load_plugin(
        tmp_path, {"strict": True, "host_details": True, "compose": {"agent_version": "zeroinit_inventory.version"}}
    )
    with pytest.raises(AnsibleError, match=re.escape("db1.example.net")):
        plugin._populate(FLEET)


def test_facts_carrying_templates_are_never_rendered(tmp_path):
    marker = tmp_path / "pwned"
    # A rendered product whose digits cannot come from the temporary path the marker names (as "42" could).
    rendered = str(7919 * 7907)
    evil = f"{{{{ lookup('pipe', 'touch {marker}') }}}}{{{{ 7919 * 7907 }}}}"
    assert rendered not in evil
    plugin, inventory, _path = load_plugin(
        tmp_path,
        {
            "compose": {"node_role": "zeroinit_facts.role"},
            "keyed_groups": [{"key": "zeroinit_facts.role", "prefix": "role"}],
            "flatten_facts": True,
        },
    )
    plugin._populate({"n1.example.net": record({"role": evil})})
    variables = hostvars(inventory, "n1.example.net")
    assert variables["node_role"] == evil and variables["role"] == evil
    assert not marker.exists()
    assert not any(rendered in group for group in inventory.groups)


def test_each_constructed_expression_is_compiled_once_for_the_whole_fleet(tmp_path, monkeypatch):
    engine_class = type(inventory_loader.get(NAME).templar._engine)
    compiled = []
    real_compile = engine_class._compile_expression

    def counting_compile(self, expression, options):
        compiled.append(str(expression))
        return real_compile(self, expression, options)

    monkeypatch.setattr(engine_class, "_compile_expression", counting_compile)
    text = "zeroinit_facts.role | lower"  # a filter: Jinja evaluates it (a bare variable path is looked up directly)
    keyed = [{"key": text, "prefix": "role"}]
    plugin, inventory, _path = load_plugin(tmp_path, {"keyed_groups": keyed, "compose": {"r": text}})
    fleet = {f"n{number}.example.net": record({"role": f"r{number % 3}"}) for number in range(30)}
    plugin._populate(fleet)
    assert compiled == [text]  # one text, compose and key alike, 30 hosts: one compilation
    assert members(inventory, "role_r1") == sorted(name for name in fleet if int(name[1:].split(".")[0]) % 3 == 1)
    assert hostvars(inventory, "n4.example.net")["r"] == "r1"
    # The memo lives only while the plugin populates: the next run compiles (and checks) afresh.
    assert "_compile_expression" not in vars(plugin.templar._engine)
    plugin._populate({"n99.example.net": record({"role": "late"})})
    assert compiled == [text] * 2 and members(inventory, "role_late") == ["n99.example.net"]


PATH_VARIABLES = {
    "role": "web",
    "port": 4222,
    "ratio": 0.5,
    "enabled": False,
    "nothing": None,
    "facts": {"os": {"family": "Debian", "items": "shadowed"}, "tags": ["a", "b"], "role": "db", "keys": "k"},
    "true": "a variable named like a literal",
}


@pytest.mark.parametrize(
    "expression,direct",
    [
        ("role", True),
        ("  facts.os.family ", True),
        ("port", True),
        ("ratio", True),
        ("enabled", True),
        ("nothing", True),
        ("facts.role", True),
        ("facts.os.items", False),  # a dict method in Jinja, not the key
        ("facts.keys", False),
        ("facts.tags", False),  # a container: Jinja's copy
        ("facts", False),
        ("facts.missing", False),  # undefined: Jinja decides
        ("missing", False),
        ("true", False),  # a Jinja literal
        ("facts.role | upper", False),
        ("facts['role']", False),
        ("facts.tags.0", False),
        ("role ~ '-x'", False),
    ],
)
def test_a_variable_path_is_looked_up_as_jinja_would_evaluate_it(tmp_path, expression, direct):
    plugin, _inventory, _path = load_plugin(tmp_path, {"compose": {"x": expression}})
    expression = plugin.get_option("compose")["x"]  # as the plugin reads it from its file: trusted as a template
    value = plugin_module.variable_path_value(expression, PATH_VARIABLES)
    assert (value is not plugin_module.NOT_A_PATH) is direct
    if direct:
        by_jinja = Constructable._compose(plugin, expression, PATH_VARIABLES)
        assert value == by_jinja and isinstance(by_jinja, type(value))  # Jinja's carries the expression's origin


KEYED_FLEET = {
    f"n{number}.example.net": record(
        {"role": ["web", "db", "", None, "web", "cache"][number % 6], "os": {"family": "Debian"}, "items": "x"}
    )
    for number in range(12)
}
KEYS = [
    {"key": "zeroinit_facts.role", "prefix": "role"},
    {"key": "zeroinit_facts.role", "prefix": "r", "default_value": "none"},
    {"key": " zeroinit_facts.os.family ", "prefix": "os", "separator": "-"},
    {"key": "zeroinit_facts.items", "prefix": "m"},  # the dict method in Jinja: no usable group name
    {"key": "zeroinit_facts.missing", "prefix": "gone", "default_value": "x"},
    {"key": "zeroinit_facts", "prefix": "facts"},
]


def test_keyed_groups_from_variable_paths_are_the_groups_jinja_makes(tmp_path, monkeypatch):
    def groups_of(path_value):
        monkeypatch.setattr(plugin_module, "variable_path_value", path_value)
        plugin, inventory, _path = load_plugin(tmp_path, {"keyed_groups": KEYS})
        plugin._populate(KEYED_FLEET)
        return {name: members(inventory, name) for name in inventory.groups}

    original, looked_up = plugin_module.variable_path_value, []

    def spying(expression, variables):
        value = original(expression, variables)
        looked_up.append(value is not plugin_module.NOT_A_PATH)
        return value

    direct = groups_of(spying)
    by_jinja = groups_of(lambda _expression, _variables: plugin_module.NOT_A_PATH)
    assert direct == by_jinja
    assert direct["role_web"] == ["n0.example.net", "n10.example.net", "n4.example.net", "n6.example.net"]
    assert direct["r_none"] == ["n2.example.net", "n3.example.net", "n8.example.net", "n9.example.net"]
    # The first three keys were looked up for every host; the method, the missing key and the dict went to Jinja.
    assert len(looked_up) == len(KEYS) * len(KEYED_FLEET) and sum(looked_up) == 3 * len(KEYED_FLEET)


def test_with_extra_variables_every_key_goes_to_jinja(tmp_path):
    plugin, inventory, _path = load_plugin(
        tmp_path, {"use_extra_vars": True, "keyed_groups": [{"key": "zeroinit_facts.role", "prefix": "role"}]}
    )
    plugin._vars = {"zeroinit_facts": {"role": "from-extra-vars"}}
    plugin._populate({"n1.example.net": record({"role": "web"})})
    assert members(inventory, "role_from_extra_vars") == ["n1.example.net"] and "role_web" not in inventory.groups


def test_an_untrusted_expression_is_refused_even_when_it_is_a_plain_path(tmp_path):
    plugin, _inventory, _path = load_plugin(tmp_path, {"compose": {"x": "role"}})
    assert plugin_module.variable_path_value("role", PATH_VARIABLES) is plugin_module.NOT_A_PATH
    with pytest.raises(AnsibleError, match="untrusted"):
        plugin._compose("role", PATH_VARIABLES)


class EngineWithOtherArguments:
    def __init__(self):
        self.calls = []

    def _compile_expression(self, expression, options, *, origin=None):
        self.calls.append(expression)
        return f"compiled {expression}"


@pytest.mark.parametrize("engine", [None, object(), type("SlottedEngine", (), {"__slots__": ()})()])
def test_the_compile_memo_leaves_an_engine_without_its_internals_alone(engine):
    templar = type("BareTemplar", (), {"_engine": engine})()
    with plugin_module.compiled_once(templar):
        assert templar._engine is engine
    assert engine is None or not getattr(engine, "__dict__", {})


def test_the_compile_memo_passes_other_arguments_through_and_removes_itself():
    engine = EngineWithOtherArguments()
    templar = type("BareTemplar", (), {"_engine": engine})()
    with plugin_module.compiled_once(templar):
        results = [engine._compile_expression("a.b", "options") for attempt in ("first", "second", "third")]
        results.append(engine._compile_expression("a.b", {"unhashable": "options"}))
        results.append(engine._compile_expression("c", "options", origin="x"))
    assert results == ["compiled a.b"] * 4 + ["compiled c"]
    assert engine.calls == ["a.b", "a.b", "c"]  # once for the key, once for options that cannot be a key, keywords
    assert "_compile_expression" not in vars(engine)


def test_node_data_on_the_hosts_is_never_trusted_as_a_template(tmp_path):
    plugin, inventory, _path = load_plugin(tmp_path, {"flatten_facts": True, "host_details": True})
    plugin._populate(FLEET)
    variables = hostvars(inventory, "web1.example.net")
    strings = [
        variables["zeroinit_identity"],
        variables["zeroinit_facts"]["role"],
        variables["zeroinit_facts"]["os"]["family"],
        variables["zeroinit_inventory"]["agents"][0],
        variables["role"],
    ]
    assert strings == ["web1.example.net", "web", "Debian", "rpcutil", "web"]
    if plugin_module.UNTRUSTED_BY_DEFAULT:
        from ansible._internal._datatag._tags import TrustedAsTemplate

        assert not any(TrustedAsTemplate.is_tagged_on(text) for text in strings)
    else:
        from ansible.utils.unsafe_proxy import AnsibleUnsafe

        assert all(isinstance(text, AnsibleUnsafe) for text in strings)


def test_the_plugin_leaves_the_messaging_libraries_unloaded_until_it_queries_the_fleet():
    # A listing served from the cache needs no NATS client: its imports are a tenth of a 10,000-host listing's memory.
    code = (
        "import sys, ansible_collections.zeroinit.bootstrap.plugins.inventory.provisioning\n"
        "print(sorted(name for name in ('nats', 'aiohttp', 'zeroconf') if name in sys.modules))"
    )
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]"


def test_invalid_identities_are_skipped(tmp_path):
    plugin, inventory, _path = load_plugin(tmp_path, {})
    plugin._populate({"ok.example.net": record(), "bad..name": record(), "x:1": record()})
    assert members(inventory, "provisioning") == ["ok.example.net"]


# ------------------------------------------------------------------------------------------ cache


def _cache_config(tmp_path, **extra):
    config = {
        "cache": True,
        "cache_plugin": "ansible.builtin.jsonfile",
        "cache_connection": str(tmp_path / "cache"),
        "keyed_groups": [{"key": "zeroinit_facts.role", "prefix": "role"}],
    }
    config.update(extra)
    return config


def test_cache_hit_needs_no_broker_and_refresh_or_other_query_asks_again(tmp_path):
    plugin, _inv, path = load_plugin(tmp_path, _cache_config(tmp_path))
    module = plugin_module
    key = "{}_{}".format(plugin.get_cache_key(path), module.query_fingerprint([UNREACHABLE], "provisioning"))
    plugin._cache[key] = {"format": module.CACHE_FORMAT, "nodes": FLEET}
    plugin.update_cache_if_changed()
    assert list((tmp_path / "cache").iterdir()), "jsonfile cache wrote nothing"

    # A fresh plugin (a new ansible-inventory run) with the same file: served from the cache, no broker needed.
    fresh = inventory_loader.get(NAME)
    inventory = InventoryData()
    fresh.parse(inventory, DataLoader(), path, cache=True)
    assert members(inventory, "provisioning") == sorted(FLEET)
    assert members(inventory, "role_web") == ["web1.example.net", "web2.example.net"]

    # --flush-cache / refresh_inventory (cache=False): it asks the broker, which is unreachable.
    with pytest.raises(AnsibleParserError, match=re.escape("127.0.0.1:1")):
        inventory_loader.get(NAME).parse(InventoryData(), DataLoader(), path, cache=False)

    # Another collective in the same file is another query: not served from this entry.
    _plugin, _inv, other = load_plugin(
        tmp_path, _cache_config(tmp_path, collective="staging"), filename="provisioning.yml"
    )
    with pytest.raises(AnsibleParserError, match=re.escape("127.0.0.1:1")):
        inventory_loader.get(NAME).parse(InventoryData(), DataLoader(), other, cache=True)


def test_bad_options_are_named(tmp_path):
    _plugin, _inv, path = load_plugin(tmp_path, {"brokers": ["ftp://x:1"]})
    with pytest.raises(AnsibleParserError, match="ftp://x:1"):
        inventory_loader.get(NAME).parse(InventoryData(), DataLoader(), path)
    _plugin, _inv, path = load_plugin(tmp_path, {"discovery_timeout": 0})
    with pytest.raises(AnsibleParserError, match="discovery_timeout"):
        inventory_loader.get(NAME).parse(InventoryData(), DataLoader(), path)
    _plugin, _inv, path = load_plugin(tmp_path, {"tls_key": str(tmp_path / "k.pem")})
    with pytest.raises(AnsibleParserError, match="tls_cert"):
        inventory_loader.get(NAME).parse(InventoryData(), DataLoader(), path)
