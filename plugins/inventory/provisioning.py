# Copyright: zeroinit.bootstrap contributors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)

from __future__ import annotations

DOCUMENTATION = r"""
name: provisioning
short_description: Nodes waiting on a Choria provisioning network, as inventory hosts
description:
  - Finds the nodes in provisioning mode on a NATS provisioning network (Choria protocol v1, insecure
    provisioning mode) and makes each one an inventory host named by its identity.
  - A node is found when it answers the broadcast C(discovery) ping, and, during the O(listen) window, when it
    publishes a startup (or alive) lifecycle event or registration data. Every node found is then asked for
    C(rpcutil#inventory); requests go out in concurrent batches, so a thousand nodes take a few seconds.
  - "Host variables: C(zeroinit_identity), C(zeroinit_collective) and C(zeroinit_facts) (the node's facts); with
    O(host_details) also C(zeroinit_inventory) (the rest of the inventory reply: C(agents), C(collectives),
    C(main_collective), C(version), C(classes), C(data_plugins)), C(zeroinit_discovered_by) (how it was found:
    C(discovery), C(lifecycle), C(registration)) and C(zeroinit_lifecycle_events) (the newest lifecycle events
    seen, without payloads)."
  - A node that answers discovery but not the inventory request is still added, with C(zeroinit_facts) from its
    registration data when it sent any (else empty), C(zeroinit_inventory_error) saying what failed and, with
    O(host_details), an empty C(zeroinit_inventory).
  - Every host is in the group C(provisioning). O(compose), O(groups) and O(keyed_groups) then apply, with the
    host variables above available (for example O(keyed_groups[].key=zeroinit_facts.role)).
  - Nodes in provisioning mode are not authenticated yet, so everything they report is untrusted data. It is never
    templated, and facts are only copied to top-level host variables when O(flatten_facts) asks for it; even then
    a fact can never set an C(ansible_*) connection variable or a magic variable.
  - With O(signing_cert) the discovery ping and the inventory requests are signed, as every request of
    M(zeroinit.bootstrap.choria_provision) is. Nodes answer C(discovery) and C(rpcutil) without a signature
    (they reveal only the facts a node publishes), so signing changes no answer today; it lets one vars file serve
    the plugin and the module, and keeps the plugin working where a broker or a node policy requires signed
    requests. A missing or unusable certificate or key fails the inventory source with its reason.
  - The plugin sets no connection variables. The provisioning playbook talks to nodes over the provisioning
    network from the controller (C(connection=local)); set C(ansible_connection) with O(compose) if you need it.
  - A broker that cannot be reached fails the inventory source with an error naming the brokers. No nodes found is
    not an error (everything may be provisioned already); it yields an empty C(provisioning) group.
  - A node that publishes a shutdown or provisioned lifecycle event while the plugin runs is left out, as it is no
    longer waiting in provisioning mode.
  - Identities that cannot serve as a NATS subject token and an Ansible host name are skipped with a warning.
  - With O(cache) enabled the discovery results are kept by the cache plugin, keyed by the inventory file, the
    brokers and the collective; C(ansible-inventory --flush-cache) or C(meta refresh_inventory) queries again.
author:
  - zeroinit.bootstrap contributors (!UNKNOWN)
requirements:
  - nats-py (Python library) on the controller
extends_documentation_fragment:
  - constructed
  - inventory_cache
  - zeroinit.bootstrap.brokers
  - zeroinit.bootstrap.request_signing
options:
  plugin:
    description: Marks this file as a source for this plugin.
    required: true
    type: str
    choices: [zeroinit.bootstrap.provisioning]
  brokers:
    env:
      - name: ZEROINIT_BROKERS
  callerid:
    description: The caller id the requests carry (C(choria=) is prepended when missing); replies come back on a
      subject derived from it.
    type: str
    default: zeroinit-inventory
  discovery_timeout:
    description: Seconds to wait for answers to the discovery ping (less when O(expect) nodes answered sooner).
    type: float
    default: 2
  listen:
    description:
      - Seconds to keep listening after discovery for nodes that announce themselves (startup lifecycle events,
        registration data). Use it while a fleet is still booting.
      - Ends early once O(expect) nodes are known.
    type: float
    default: 0
  expect:
    description:
      - The number of nodes expected. Discovery and the O(listen) window end as soon as this many are known, so a
        complete fleet is listed without waiting for the timeouts.
      - Fewer nodes is not an error; the inventory holds those that were found.
    type: int
  inventory_timeout:
    description: Seconds to wait for the C(rpcutil#inventory) replies of a batch of nodes.
    type: float
    default: 10
  flatten_facts:
    description:
      - Also set every top-level fact as a host variable of its own, named O(fact_prefix) plus the fact name.
      - Facts whose resulting name is not a valid variable name, starts with C(ansible_) or C(zeroinit_), or is a
        reserved or magic variable name are not copied (they stay in C(zeroinit_facts)).
    type: bool
    default: false
  fact_prefix:
    description: Prefix for the host variables made by O(flatten_facts).
    type: str
    default: ''
  host_details:
    description:
      - Also set C(zeroinit_inventory), C(zeroinit_discovered_by) and C(zeroinit_lifecycle_events) on every host.
      - Off, each host carries only its identity, collective and facts (and C(zeroinit_inventory_error) when its
        inventory request failed). Ansible copies, combines and writes out every variable of every host; without
        the details, C(ansible-inventory --list) of 10,000 nodes takes less time and 40% less memory (see
        the collection's README, Benchmarks).
      - The cache keeps the whole inventory reply either way; changing this option needs no refresh.
    type: bool
    default: false
"""

EXAMPLES = r"""
# inventory/provisioning.yml: every node waiting on the provisioning broker
plugin: zeroinit.bootstrap.provisioning
brokers:
  - nats://provisioner.example.net:4222

---
# A booting fleet of 200 workers: wait up to 5 minutes for all of them, group them by role and OS family.
plugin: zeroinit.bootstrap.provisioning
brokers: [tls://provisioner.example.net:4222]
tls_ca: /etc/zeroinit/ca.pem
listen: 300
expect: 200
keyed_groups:
  - key: zeroinit_facts.role
    prefix: role
  - key: zeroinit_facts.os.family | default('unknown')
    prefix: os
groups:
  inventory_failed: zeroinit_inventory_error is defined
host_details: true
compose:
  ansible_connection: "'local'"
  agent_version: zeroinit_inventory.version | default('')

---
# Signed requests, with the provisioner certificate choria_provision signs with (an encrypted key's
# signing_key_passphrase belongs in a vault).
plugin: zeroinit.bootstrap.provisioning
brokers: [tls://provisioner.example.net:4222]
tls_ca: /etc/zeroinit/ca.pem
signing_cert: /etc/zeroinit/provisioner/provisioner.pem
signing_key: /etc/zeroinit/provisioner/provisioner.key

---
# Keep the results for ten minutes in JSON files (`ansible-inventory --flush-cache` queries again).
plugin: zeroinit.bootstrap.provisioning
brokers: [nats://127.0.0.1:4222]
cache: true
cache_plugin: ansible.builtin.jsonfile
cache_connection: /var/tmp/zeroinit-inventory-cache
cache_timeout: 600
"""

import contextlib
import hashlib
import json
import re
import time

import ansible.template
from ansible.errors import AnsibleParserError
from ansible.module_utils.common.text.converters import to_native
from ansible.plugins.inventory import BaseInventoryPlugin, Cacheable, Constructable
from ansible.utils.unsafe_proxy import wrap_var
from ansible.utils.vars import isidentifier
from ansible.vars.reserved import is_reserved_name

from ansible_collections.zeroinit.bootstrap.plugins.module_utils.choria.brokers import BrokerUrlError, normalize_brokers
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.choria.subjects import valid_identity

PROVISIONING_GROUP = "provisioning"
CACHE_FORMAT = 1
OWN_HOSTVARS = frozenset(
    (
        "zeroinit_identity",
        "zeroinit_collective",
        "zeroinit_facts",
        "zeroinit_inventory",
        "zeroinit_inventory_error",
        "zeroinit_discovered_by",
        "zeroinit_lifecycle_events",
    )
)
# Variables Ansible itself defines; a node must not be able to shadow them through a fact.
MAGIC_VARIABLES = frozenset(
    (
        "inventory_hostname",
        "inventory_hostname_short",
        "inventory_dir",
        "inventory_file",
        "group_names",
        "groups",
        "hostvars",
        "playbook_dir",
        "play_hosts",
        "role_name",
        "role_path",
        "omit",
        "environment",
    )
)
VALID_FILE_SUFFIXES = ("provisioning.yml", "provisioning.yaml")
# ansible-core 2.19+ never templates data that was not explicitly trusted; older versions need it marked unsafe.
UNTRUSTED_BY_DEFAULT = hasattr(ansible.template, "trust_as_template")


def verify_path(path):
    """Whether ``path`` names a configuration file of this plugin (by its suffix)."""
    return isinstance(path, str) and path.endswith(VALID_FILE_SUFFIXES)


def flattenable_fact_name(name, prefix=""):
    """The host variable name for top-level fact ``name``, or None when it must not become one."""
    if not isinstance(name, str):
        return None
    varname = f"{prefix or ''}{name}"
    if not isidentifier(varname) or varname.startswith(("ansible_", "zeroinit_")):
        return None
    if varname in MAGIC_VARIABLES or is_reserved_name(varname):
        return None
    return varname


def node_hostvars(identity, record, collective, flatten_facts=False, fact_prefix="", details=False):
    """The host variables of one discovered node, and the names of facts that could not be flattened.

    ``details`` adds the rest of the inventory reply and how the node was found. Values come from unauthenticated
    nodes, so they are marked unsafe: Ansible never templates them.
    """
    facts = record.get("facts") if isinstance(record.get("facts"), dict) else {}
    hostvars = {"zeroinit_identity": identity, "zeroinit_collective": collective, "zeroinit_facts": facts}
    if details:
        inventory = record.get("inventory")
        hostvars["zeroinit_inventory"] = inventory if isinstance(inventory, dict) else {}
        hostvars["zeroinit_discovered_by"] = list(record.get("sources") or [])
        hostvars["zeroinit_lifecycle_events"] = list(record.get("events") or [])
    if record.get("inventory_error"):
        hostvars["zeroinit_inventory_error"] = str(record["inventory_error"])
    skipped = []
    if flatten_facts:
        for name in sorted(facts, key=str):
            varname = flattenable_fact_name(name, fact_prefix)
            if varname is None:
                skipped.append(name)
            else:
                hostvars[varname] = facts[name]
    return (hostvars if UNTRUSTED_BY_DEFAULT else wrap_var(hostvars)), skipped


@contextlib.contextmanager
def compiled_once(templar):
    """Within the block, each constructed expression (compose, groups, keyed_groups) is compiled once, not per host.

    ansible-core 2.19's template engine compiles an expression again every time it evaluates it: with a keyed group
    over 10,000 hosts, 10,000 Jinja compilations of one text were 60 % of ``ansible-inventory --list``'s time in the
    plugin. What a compilation yields depends only on the text and the template options (trust is checked before
    compiling, the variables are passed at each call), so it is kept per (text, options) on this plugin's own
    templar for the block. An engine without these methods (ansible-core 2.18) is left as it is; one whose methods
    take other arguments still works, uncached when they cannot be a key.
    """
    engine = getattr(templar, "_engine", None)
    own_attributes = getattr(engine, "__dict__", None)  # None: nothing can be set on this engine, so leave it be
    names = [
        name
        for name in ("_compile_expression", "_compile_template")
        if own_attributes is not None
        and callable(getattr(engine, name, None))
        and name not in own_attributes  # never shadow what someone else installed
    ]
    for name in names:
        setattr(engine, name, _memoized_compiler(getattr(engine, name)))
    try:
        yield
    finally:
        for name in names:
            delattr(engine, name)  # the class's own method shows through again


def _memoized_compiler(compile_source):
    compiled = {}

    def compile_once(*args, **kwargs):
        if kwargs:  # not how ansible-core 2.19 calls it: compiled each time, as before
            return compile_source(*args, **kwargs)
        try:
            return compiled[args]
        except KeyError:
            compiled[args] = result = compile_source(*args)
            return result
        except TypeError:  # arguments that cannot be a key are compiled each time, as before
            return compile_source(*args)

    return compile_once


# A constructed expression that only names a variable, or dict keys below one: ``zeroinit_facts.role``.
VARIABLE_PATH = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)\s*\Z")
# Names Jinja reads as literals or operators, never as variables.
JINJA_WORDS = frozenset(
    ("true", "false", "none", "True", "False", "None", "and", "or", "not", "in", "is", "if", "else", "recursive")
)
NOT_A_PATH = object()


def variable_path_value(expression, variables):
    """The value of ``expression`` when it is a variable path over plain dicts ending in a string, number, boolean or
    None, looked up without Jinja (equal to what Jinja gives, without its tags); NOT_A_PATH when Jinja must
    evaluate it.

    Jinja is left everything else: an expression not trusted as a template, other syntax, a missing name (what
    undefined means is its call), a key that is also a dict attribute (``facts.items`` is the method there), a
    container (its copy is Jinja's), a Jinja word. Evaluating ``zeroinit_facts.role`` through the template engine
    for each of 10,000 hosts was about a tenth of ``ansible-inventory --list`` (1.5 s on 2 cores).
    """
    match = VARIABLE_PATH.match(expression) if isinstance(expression, str) else None
    if match is None or (UNTRUSTED_BY_DEFAULT and not ansible.template.is_trusted_as_template(expression)):
        return NOT_A_PATH  # an untrusted expression is refused by Jinja, and stays refused
    value = variables
    for depth, name in enumerate(match.group(1).split(".")):
        if name in JINJA_WORDS or not isinstance(value, dict) or name not in value:
            return NOT_A_PATH
        if depth and hasattr(value, name):
            return NOT_A_PATH
        value = value[name]
    if value is None or type(value) in (str, int, float, bool):
        return value
    return NOT_A_PATH


def query_fingerprint(brokers, collective):
    """A short digest of what the cached data depends on beyond the file: where and in which collective we asked."""
    text = json.dumps({"brokers": sorted(brokers), "collective": collective}, sort_keys=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]


def cached_fleet(value):
    """The fleet from a cache entry written by this plugin, or None when the entry has another shape."""
    if isinstance(value, dict) and value.get("format") == CACHE_FORMAT and isinstance(value.get("nodes"), dict):
        return value["nodes"]
    return None


class InventoryModule(BaseInventoryPlugin, Constructable, Cacheable):
    """Hosts from the nodes waiting on a Choria provisioning network."""

    NAME = "zeroinit.bootstrap.provisioning"
    _keying = False  # within _add_host_to_keyed_groups: _compose may look a variable path up directly

    def verify_file(self, path):
        if super().verify_file(path) and verify_path(path):
            return True
        self.display.debug(
            f"zeroinit.bootstrap.provisioning: skipping {path}, the file name must end with "
            f"{' or '.join(VALID_FILE_SUFFIXES)}"
        )
        return False

    def _brokers(self):
        try:
            return normalize_brokers(self.get_option("brokers") or [])
        except BrokerUrlError as exc:
            raise AnsibleParserError(f"zeroinit.bootstrap.provisioning: {to_native(exc)}") from None

    def _request_signer(self):
        from ansible_collections.zeroinit.bootstrap.plugins.module_utils.provisioning.settings import (
            ProvisionError,
            load_request_signer,
        )

        try:
            return load_request_signer(
                self.get_option("signing_cert"),
                self.get_option("signing_key"),
                self.get_option("signing_key_passphrase"),
            )
        except ProvisionError as exc:
            raise AnsibleParserError(f"zeroinit.bootstrap.provisioning: {to_native(exc)}") from None

    def _query(self, brokers):
        # Imported here: nats-py (with aiohttp) and cryptography are a tenth of a 10,000-host listing's memory, and a
        # listing served from the cache needs neither.
        from ansible_collections.zeroinit.bootstrap.plugins.module_utils.provisioning.discovery import (
            DEFAULT_CALLERID,
            DiscoveryError,
            discover_fleet,
        )

        tls = {"ca": self.get_option("tls_ca"), "cert": self.get_option("tls_cert"), "key": self.get_option("tls_key")}
        signer = self._request_signer()
        started = time.monotonic()
        try:
            fleet = discover_fleet(
                brokers,
                collective=self.get_option("collective"),
                timeout=self.get_option("discovery_timeout"),
                listen=self.get_option("listen"),
                expect=self.get_option("expect"),
                tls=tls,
                callerid=self.get_option("callerid") or DEFAULT_CALLERID,
                inventory_timeout=self.get_option("inventory_timeout"),
                warn=self.display.warning,
                signer=signer,
            )
        except DiscoveryError as exc:
            raise AnsibleParserError(f"zeroinit.bootstrap.provisioning: {to_native(exc)}") from None
        self.display.v(
            f"zeroinit.bootstrap.provisioning: {len(fleet)} node(s) in collective {self.get_option('collective')} "
            f"via {', '.join(brokers)} in {time.monotonic() - started:.1f}s"
        )
        return fleet

    def _add_host_to_keyed_groups(self, keys, variables, host, strict=False, fetch_hostvars=True):
        """Constructed's own, with each key that is a variable path looked up directly (``variable_path_value``).

        Only here: a key's value only becomes group names, so the tags Jinja would give it (the expression's
        origin) are never seen. ``compose`` keeps Jinja, whose value (tags and all) becomes a host variable; and
        with ``use_extra_vars`` the extra variables take part, so every key goes to Jinja as before.
        """
        self._keying = UNTRUSTED_BY_DEFAULT and not self.get_option("use_extra_vars")
        try:
            super()._add_host_to_keyed_groups(keys, variables, host, strict=strict, fetch_hostvars=fetch_hostvars)
        finally:
            self._keying = False

    def _compose(self, template, variables, disable_lookups=...):
        if self._keying and disable_lookups is ...:
            value = variable_path_value(template, variables)
            if value is not NOT_A_PATH:
                return value
        return super()._compose(template, variables, disable_lookups=disable_lookups)

    def _populate(self, fleet):
        collective = self.get_option("collective")
        strict = self.get_option("strict")
        flatten = self.get_option("flatten_facts")
        prefix = self.get_option("fact_prefix") or ""
        details = self.get_option("host_details")
        compose, groups, keyed_groups = (self.get_option(name) for name in ("compose", "groups", "keyed_groups"))
        constructed = bool(compose or groups or keyed_groups)
        group = self.inventory.add_group(PROVISIONING_GROUP)
        failed = []
        with compiled_once(self.templar) if constructed else contextlib.nullcontext():
            for identity in sorted(fleet):
                record = fleet[identity]
                if not valid_identity(identity) or not isinstance(record, dict):
                    self.display.warning(
                        f"zeroinit.bootstrap.provisioning: skipping node {identity!r}: not usable as a host name"
                    )
                    continue
                hostvars, skipped = node_hostvars(identity, record, collective, flatten, prefix, details)
                if skipped:
                    self.display.vvv(
                        f"zeroinit.bootstrap.provisioning: {identity}: facts not flattened: "
                        f"{', '.join(map(str, skipped))}"
                    )
                if "zeroinit_inventory_error" in hostvars:
                    failed.append(identity)
                host = self.inventory.add_host(identity, group=group)
                # Straight onto the host: the inventory's set_variable would copy every value again and tag each
                # with the inventory file as its origin (a third of the run at 10,000 hosts). These values are
                # fresh JSON data of this node alone, and untrusted either way (never TrustedAsTemplate).
                host_object = self.inventory.get_host(host)
                for name, value in hostvars.items():
                    host_object.set_variable(name, value)
                if constructed:
                    self._set_composite_vars(compose, hostvars, host, strict=strict)
                    # The host's variables (its own, the composed ones, its magic ones) once for both kinds of group:
                    # what constructed would combine again for each keyed group.
                    if groups or keyed_groups:
                        variables = host_object.get_vars()
                        self._add_host_to_composed_groups(groups, variables, host, strict=strict, fetch_hostvars=False)
                        self._add_host_to_keyed_groups(
                            keyed_groups, variables, host, strict=strict, fetch_hostvars=False
                        )
        if failed:
            shown = ", ".join(failed[:10]) + (f" and {len(failed) - 10} more" if len(failed) > 10 else "")
            self.display.warning(
                f"zeroinit.bootstrap.provisioning: {len(failed)} node(s) answered discovery but not "
                f"rpcutil#inventory: {shown} (see their zeroinit_inventory_error)"
            )

    def parse(self, inventory, loader, path, cache=True):
        super().parse(inventory, loader, path, cache=cache)
        self._read_config_data(path)
        brokers = self._brokers()
        cache_key = f"{self.get_cache_key(path)}_{query_fingerprint(brokers, self.get_option('collective'))}"

        # The aws_ec2 pattern: read the cache only when the user enabled it and Ansible did not ask for a refresh.
        use_cache = self.get_option("cache")
        fleet = None
        update_cache = False
        if use_cache and cache:
            try:
                fleet = cached_fleet(self._cache[cache_key])
            except KeyError:
                pass
        if fleet is None:
            fleet = self._query(brokers)
            update_cache = bool(use_cache)

        self._populate(fleet)

        if update_cache:
            self._cache[cache_key] = {"format": CACHE_FORMAT, "nodes": fleet}
