"""Inventory plugin figures: how fast a provisioning fleet becomes an Ansible inventory.

    .venv/bin/python bench/bench_inventory.py [--quick] [--sizes 1000,10000]

For each fleet size: one ``zeroinit-agent --fleet N`` process on a real nats-server on loopback, then

* ``discover_fleet`` in-process with ``expect=N`` (discovery ends when all answered): what the plugin spends on
  discovery plus rpcutil#inventory; the floor of a live listing;
* ``ansible-inventory --list`` on a provisioning.yml with ``expect``, a keyed group and the jsonfile cache, in three
  variants: the plugin's defaults; the same with the README's Ansible settings for a large fleet
  (``inject_facts_as_vars = False``, ``run_vars_plugins = start``); and ``host_details: true``. Each is listed
  live (``--flush-cache``), then again from the cache once the fleet is stopped (its output must equal the live
  one, character for character): wall time, CPU time and peak RSS of the CLI, beside the target (6 s and 200 MiB
  at 10,000 nodes);
* the floor of the hand-over to Ansible, for each variant: ``ansible-inventory --list`` over a static source of the
  same hosts, variables and groups, read by a trivial inventory plugin that adds them straight to the hosts. What
  it costs is ansible-inventory's own (variables per host, JSON output); the cached listing is compared to it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench_agent import machine

from ansible_collections.zeroinit.bootstrap.plugins.module_utils.provisioning.discovery import FleetDiscovery
from tests.support.ansible_run import VENV_BIN, ansible_env, plain
from tests.support.broker import EmbeddedBroker
from tests.support.fleet import AgentFleet

TARGET_SIZE = 10_000
TARGET_SECONDS = 6.0
TARGET_MIB = 200.0
# The README's Ansible settings for a large fleet's inventory (ansible.cfg: inject_facts_as_vars = False,
# run_vars_plugins = start).
LARGE_FLEET = {"ANSIBLE_INJECT_FACT_VARS": "False", "ANSIBLE_RUN_VARS_PLUGINS": "start"}
# Runs one command with its stdout into a file and reports the child's peak RSS (KiB) and CPU seconds.
CHILD_USAGE = (
    "import resource, subprocess, sys\n"
    "with open(sys.argv[1], 'w') as out: rc = subprocess.run(sys.argv[2:], stdout=out).returncode\n"
    "usage = resource.getrusage(resource.RUSAGE_CHILDREN)\n"
    "print(usage.ru_maxrss, usage.ru_utime + usage.ru_stime, rc)"
)
# The floor's inventory plugin: hosts, groups and variables from a JSON file, each value set straight on its host.
STATIC_PLUGIN = """
import json
from ansible.plugins.inventory import BaseInventoryPlugin


class InventoryModule(BaseInventoryPlugin):
    NAME = "bench_static"

    def verify_file(self, path):
        return path.endswith("static.yml")

    def parse(self, inventory, loader, path, cache=True):
        super().parse(inventory, loader, path, cache=cache)
        with open(path) as config:
            data_path = json.load(config)["data"]
        with open(data_path) as source:
            data = json.load(source)
        for group, hosts in data["groups"].items():
            self.inventory.add_group(group)
            for name in hosts:
                self.inventory.add_host(name, group=group)
        for name, variables in data["hostvars"].items():
            host = self.inventory.get_host(name)
            for key, value in variables.items():
                host.set_variable(key, value)
"""


def load() -> str:
    return f"{os.getloadavg()[0]:.1f}"


def in_process(url: str, size: int) -> tuple[float, int]:
    run = FleetDiscovery([url], timeout=30.0, expect=size, inventory_timeout=30.0)
    started = time.monotonic()
    fleet = asyncio.run(run.run())
    elapsed = time.monotonic() - started
    failed = sum(1 for record in fleet.values() if "inventory_error" in record)
    if len(fleet) != size or failed:
        print(f"  WARNING: {len(fleet)} of {size} nodes found, {failed} without inventory")
    return elapsed, len(fleet)


class Listing:
    """One ``ansible-inventory --list`` run: wall and CPU seconds, peak RSS, its output."""

    def __init__(self, source: str, output: str, env: dict | None = None, args: tuple = ()):
        started = time.monotonic()
        command = [str(VENV_BIN / "ansible-inventory"), "-i", source, "--list", *args]
        proc = subprocess.run(
            [sys.executable, "-c", CHILD_USAGE, output, *command],
            env=ansible_env(env),
            stdout=subprocess.PIPE,
            text=True,
            check=True,
            cwd=str(ROOT),
        )
        self.wall = time.monotonic() - started
        peak_kib, cpu, rc = proc.stdout.split()
        self.peak_mib = int(peak_kib) / 1024.0
        self.cpu = float(cpu)
        self.rc = int(rc)
        with open(output) as handle:
            self.text = handle.read()

    def hosts(self) -> int:
        return len(json.loads(self.text).get("_meta", {}).get("hostvars", {})) if self.rc == 0 else 0

    def figures(self) -> str:
        return f"{self.wall:.2f} s wall, {self.cpu:.2f} s CPU, peak RSS {self.peak_mib:.0f} MiB, rc {self.rc}"


def static_source(listing_text: str, workdir: str) -> tuple[str, dict]:
    """A static inventory of the listing's hosts, variables and groups, and the environment that finds its plugin."""
    listing = json.loads(listing_text)
    groups = {name: entry["hosts"] for name, entry in listing.items() if name != "_meta" and "hosts" in entry}
    data_path = os.path.join(workdir, "static.json")
    with open(data_path, "w") as handle:
        json.dump({"groups": groups, "hostvars": plain(listing["_meta"]["hostvars"])}, handle)
    plugin_dir = os.path.join(workdir, "inventory_plugins")
    os.makedirs(plugin_dir, exist_ok=True)
    with open(os.path.join(plugin_dir, "bench_static.py"), "w") as handle:
        handle.write(STATIC_PLUGIN)
    config = os.path.join(workdir, "static.yml")
    with open(config, "w") as handle:
        json.dump({"plugin": "bench_static", "data": data_path}, handle)  # small: the auto plugin reads it as YAML
    return config, {"ANSIBLE_INVENTORY_PLUGINS": plugin_dir}


def plugin_config(url: str, size: int, workdir: str, **options) -> str:
    path = os.path.join(workdir, "bench.provisioning.yml")
    with open(path, "w") as handle:
        json.dump(
            {
                "plugin": "zeroinit.bootstrap.provisioning",
                "brokers": [url],
                "expect": size,
                "discovery_timeout": 30,
                "keyed_groups": [{"key": "zeroinit_facts.role", "prefix": "role"}],
                "cache": True,
                "cache_plugin": "ansible.builtin.jsonfile",
                "cache_connection": os.path.join(workdir, "cache"),
                "cache_timeout": 3600,
                **options,
            },
            handle,
        )
    return path


def target(size: int, listing: Listing) -> str:
    if size != TARGET_SIZE:
        return ""
    verdict = "met" if listing.wall <= TARGET_SECONDS and listing.peak_mib <= TARGET_MIB else "NOT met"
    return f" (target {TARGET_SECONDS:.0f} s, {TARGET_MIB:.0f} MiB: {verdict})"


class Variant:
    """One way to configure the listing: plugin options and Ansible settings, listed live, cached and as a floor."""

    def __init__(self, name: str, workdir: str, url: str, size: int, options: dict, env: dict):
        self.name, self.env, self.size = name, env, size
        self.dir = os.path.join(workdir, name.replace(" ", "-"))
        os.makedirs(self.dir)
        self.config = plugin_config(url, size, self.dir, **options)
        self.live = self.cached = None

    def list_live(self) -> None:
        self.live = Listing(self.config, os.path.join(self.dir, "live.json"), env=self.env, args=("--flush-cache",))
        print(
            f"  {self.name}, live: {self.live.hosts()} hosts, {self.live.figures()} (load {load()})"
            f"{target(self.size, self.live)}",
            flush=True,
        )

    def list_cached_and_floor(self) -> None:
        cached = Listing(self.config, os.path.join(self.dir, "cached.json"), env=self.env)
        same = "equal to the live output" if cached.text == self.live.text else "DIFFERENT from the live output"
        print(
            f"  {self.name}, from the cache (fleet stopped): {cached.figures()}, {same} (load {load()})"
            f"{target(self.size, cached)}"
        )
        static, static_env = static_source(self.live.text, self.dir)
        floor = Listing(static, os.path.join(self.dir, "static.json.out"), env={**self.env, **static_env})
        print(
            f"  {self.name}, floor: ansible-inventory --list over a static source of the same hosts and variables: "
            f"{floor.hosts()} hosts, {floor.figures()} (load {load()})"
        )
        print(
            f"  {self.name}: cached / floor {cached.wall / floor.wall:.2f}x wall, {cached.cpu / floor.cpu:.2f}x CPU, "
            f"{cached.peak_mib / floor.peak_mib:.2f}x RSS; live - cached CPU {self.live.cpu - cached.cpu:.2f} s",
            flush=True,
        )


def run_size(url: str, size: int, workdir: str) -> None:
    sizedir = os.path.join(workdir, str(size))
    os.makedirs(sizedir)
    variants = [
        Variant("defaults", sizedir, url, size, {}, {}),
        Variant("large-fleet settings", sizedir, url, size, {}, LARGE_FLEET),
        Variant("host_details", sizedir, url, size, {"host_details": True}, {}),
    ]
    print(f"{size} nodes (one keyed group), load average {load()}:", flush=True)
    with AgentFleet(url, size, os.path.join(sizedir, "fleet"), facts={"role": "bench", "os": {"family": "Debian"}}):
        discovery, found = in_process(url, size)
        print(f"  floor of a live listing, discover_fleet expect=N in-process: {found} nodes in {discovery:.2f} s")
        for variant in variants:
            variant.list_live()
    for variant in variants:
        variant.list_cached_and_floor()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="1,000 nodes only")
    parser.add_argument("--sizes", default="")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",") if s] or ([1000] if args.quick else [1000, TARGET_SIZE])
    print(f"machine: {machine()}")
    print("load average before: {:.1f} {:.1f} {:.1f}".format(*os.getloadavg()), flush=True)
    workdir = tempfile.mkdtemp(prefix="bench-inventory-")
    try:
        with EmbeddedBroker() as broker:
            for size in sizes:
                run_size(broker.url, size, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print("load average after: {:.1f} {:.1f} {:.1f}".format(*os.getloadavg()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
