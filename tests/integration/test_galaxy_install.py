"""The Galaxy user's path: the tarball ``ansible-galaxy collection build`` makes, installed into an empty collections
path, run from a virtualenv made from the runtime requirements (requirements.txt) only.

From there, with the README's commands: ``ansible-doc`` lists every plugin and role, ``ansible-builder introspect``
reads the Python and system dependencies, and a local fleet (the node agent started from the installed collection
with the documented ``python3 -m`` command) is provisioned by ``ansible-playbook zeroinit.bootstrap.provision_fleet``.
The runtime side sees nothing of the checkout: its own HOME, an empty ansible.cfg, no PYTHONPATH but the
installed collections for the agent.
"""

from __future__ import annotations

import asyncio
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tarfile
from dataclasses import dataclass

import pytest
from bindep.depends import Depends
from cryptography import x509
from cryptography.x509.oid import NameOID

from tests.support.fleet import AgentFleet, discover

ROOT = pathlib.Path(__file__).resolve().parents[2]
TEST_BIN = pathlib.Path(sys.executable).parent
# The node agent's module inside the installed collection, as the README's `python3 -m` command names it.
AGENT_MODULE = "ansible_collections.zeroinit.bootstrap.plugins.module_utils.node"
# plugins/<directory> -> the ansible-doc type that lists its plugins by file name.
DOC_TYPES = {
    "modules": "module",
    "inventory": "inventory",
    "lookup": "lookup",
    "callback": "callback",
    "connection": "connection",
    "become": "become",
    "cache": "cache",
    "vars": "vars",
}
# plugins/<directory> with no documentation of their own (action plugins share their module's).
UNDOCUMENTED = {"action", "module_utils", "doc_fragments", "plugin_utils"}
# Files of the development checkout that mean nothing in an installed collection.
CHECKOUT_ONLY = {".ci", ".gitignore", "Makefile", "ansible.cfg", "pyproject.toml", "pytest.ini", "molecule", "bench"}
PRIVATE_KEY = re.compile(rb"-----BEGIN [A-Z ]*PRIVATE KEY-----\s+[A-Za-z0-9+/=]{16}")
TOKEN = "galaxy-token"
NODES = 4


@dataclass
class InstalledCollection:
    """The built tarball, the collections path it was installed into and the runtime virtualenv."""

    tarball: pathlib.Path
    collections: pathlib.Path
    venv_bin: pathlib.Path
    home: pathlib.Path

    @property
    def path(self) -> pathlib.Path:
        return self.collections / "ansible_collections" / "zeroinit" / "bootstrap"

    def env(self, extra: dict | None = None) -> dict:
        env = {
            "PATH": f"{self.venv_bin}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "HOME": str(self.home),
            "LANG": "C.UTF-8",
            "ANSIBLE_CONFIG": str(self.home / "ansible.cfg"),
            "ANSIBLE_COLLECTIONS_PATH": str(self.collections),
            "ANSIBLE_NOCOLOR": "1",
        }
        env.update({key: value for key, value in os.environ.items() if key.startswith("PIP_") or key == "TMPDIR"})
        env.update(extra or {})
        return env

    def run(self, *argv, extra_env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
        """A command of the runtime virtualenv (``ansible-doc``, ``ansible-playbook``, ...), run from HOME."""
        proc = subprocess.run(
            [str(self.venv_bin / argv[0]), *map(str, argv[1:])],
            cwd=str(self.home),
            env=self.env(extra_env),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        assert proc.returncode == 0, (
            f"{' '.join(map(str, argv))}: exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        )
        return proc

    def doc_list(self, doc_type: str) -> set[str]:
        return set(json.loads(self.run("ansible-doc", "-t", doc_type, "-l", "zeroinit.bootstrap", "--json").stdout))


def build_tarball(dest: pathlib.Path) -> pathlib.Path:
    subprocess.run(
        [str(TEST_BIN / "ansible-galaxy"), "collection", "build", "--output-path", str(dest), str(ROOT)],
        cwd=str(ROOT),
        check=True,
        capture_output=True,
        timeout=120,
    )
    (tarball,) = dest.glob("zeroinit-bootstrap-*.tar.gz")
    return tarball


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    work = tmp_path_factory.mktemp("galaxy")
    tarball = build_tarball(work / "dist")
    home = work / "home"
    home.mkdir()
    (home / "ansible.cfg").write_text("[defaults]\n")
    collection = InstalledCollection(tarball, work / "collections", work / "venv" / "bin", home)
    # The runtime requirements as the tarball ships them, and nothing else, into a fresh virtualenv.
    with tarfile.open(tarball) as tar:
        (work / "requirements.txt").write_bytes(tar.extractfile("requirements.txt").read())
    # pip alone keeps the user's HOME: their pip configuration and wheel cache.
    pip_home = {key: value for key, value in os.environ.items() if key == "HOME" or key.startswith("XDG_")}
    subprocess.run([sys.executable, "-m", "venv", str(work / "venv")], check=True, timeout=120)
    collection.run(
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
        "-r",
        work / "requirements.txt",
        extra_env=pip_home,
        timeout=600,
    )
    collection.run("ansible-galaxy", "collection", "install", "-p", collection.collections, tarball)
    yield collection
    shutil.rmtree(work, ignore_errors=True)


def git_files(*paths: str) -> set[str]:
    out = subprocess.run(["git", "ls-files", "-z", *paths], cwd=str(ROOT), check=True, capture_output=True).stdout
    return {name for name in out.decode().split("\0") if name}


def test_tarball_ships_the_collection_without_checkout_tooling_caches_or_keys(installed):
    with tarfile.open(installed.tarball) as tar:
        contents = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}
    needed = git_files("plugins", "roles", "playbooks", "meta", "changelogs", "LICENSE", "README.md")
    needed |= {"requirements.txt", "bindep.txt", "meta/execution-environment.yml", "meta/runtime.yml"}
    assert sorted(needed - set(contents)) == []
    assert sorted(name for name in contents if name.split("/")[0] in CHECKOUT_ONLY) == []
    leftovers = [
        name for name in contents if "__pycache__" in name or name.endswith((".pyc", ".tar.gz", ".pem", ".key"))
    ]
    assert leftovers == []
    assert sorted(name for name, data in contents.items() if PRIVATE_KEY.search(data)) == []
    assert (installed.path / "requirements.txt").read_bytes() == contents["requirements.txt"]


def test_ansible_doc_lists_every_plugin_and_role_from_the_installed_collection(installed):
    plugin_dirs = sorted(p.name for p in (ROOT / "plugins").iterdir() if p.is_dir() and p.name not in UNDOCUMENTED)
    assert [d for d in plugin_dirs if d not in DOC_TYPES] == [], "plugins/ has a directory this test cannot list"
    for directory in plugin_dirs:
        expected = {f"zeroinit.bootstrap.{p.stem}" for p in (ROOT / "plugins" / directory).glob("[!_]*.py")}
        assert installed.doc_list(DOC_TYPES[directory]) == expected, directory
    modules = installed.run("ansible-doc", "-l", "zeroinit.bootstrap").stdout
    assert "zeroinit.bootstrap.choria_provision" in modules
    roles = {f"zeroinit.bootstrap.{p.name}" for p in (ROOT / "roles").iterdir() if p.is_dir()}
    assert installed.doc_list("role") == roles
    doc = json.loads(installed.run("ansible-doc", "--json", "zeroinit.bootstrap.choria_provision").stdout)
    assert doc["zeroinit.bootstrap.choria_provision"]["doc"]["filename"].startswith(f"{installed.path}/")


def test_ansible_builder_reads_the_runtime_requirements_and_system_packages(installed, tmp_path):
    subprocess.run(
        [
            str(TEST_BIN / "ansible-builder"),
            "introspect",
            "--sanitize",
            str(installed.collections),
            "--write-pip",
            str(tmp_path / "pip.txt"),
            "--write-bindep",
            str(tmp_path / "bindep.txt"),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    requirements = [
        line
        for line in (installed.path / "requirements.txt").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    # ansible-builder leaves ansible-core to the image; every other runtime requirement goes in, nothing more.
    pip_lines = [line.split("#")[0].strip() for line in (tmp_path / "pip.txt").read_text().splitlines()]
    assert pip_lines == [line for line in requirements if not line.startswith("ansible-core")]
    system = Depends((tmp_path / "bindep.txt").read_text())
    # An image's build installs bindep's default profile: the ssh client, not what nodes or the tests need.
    for platform, client in (("rpm", "openssh-clients"), ("dpkg", "openssh-client")):
        default = [rule[0] for rule in system.active_rules([f"platform:{platform}", "default"])]
        assert default == [client], platform
        assert "openssh-server" in [rule[0] for rule in system.active_rules([f"platform:{platform}", "node"])]


def recap(stdout: str) -> dict:
    match = re.search(r"^localhost\s*:\s*ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", stdout, re.M)
    assert match, stdout[-3000:]
    return dict(zip(("ok", "changed", "unreachable", "failed"), map(int, match.groups())))


def test_readme_commands_provision_a_local_fleet(installed, nats_broker, module_broker, tmp_path):
    members = module_broker
    agent_env = {"PYTHONPATH": str(installed.collections)}
    python = installed.venv_bin / "python"
    where = installed.run("python", "-c", f"import {AGENT_MODULE} as agent; print(agent.__file__)", extra_env=agent_env)
    assert where.stdout.startswith(f"{installed.path}/")

    provision_vars = tmp_path / "provision-vars.json"
    provision_vars.write_text(
        json.dumps(
            {
                "zeroinit_provision_brokers": [nats_broker.url],
                "zeroinit_provision_token": TOKEN,
                "zeroinit_provision_signer": {
                    "ca_cert": str(tmp_path / "ca" / "ca.pem"),
                    "ca_key": str(tmp_path / "ca" / "ca-key.pem"),
                    "create_ca": True,
                },
                "zeroinit_provision_configuration": {
                    "plugin.choria.middleware_hosts": members.url,
                    "collectives": "members",
                    "main_collective": "members",
                },
                "zeroinit_provision_expect": NODES,
            }
        )
    )
    (tmp_path / "ca").mkdir()
    command = [str(python), "-m", AGENT_MODULE]
    with AgentFleet(nats_broker.url, NODES, tmp_path / "fleet", token=TOKEN, command=command, env=agent_env) as fleet:
        first = installed.run("ansible-playbook", "zeroinit.bootstrap.provision_fleet", "-e", f"@{provision_vars}")
        assert recap(first.stdout) == {"ok": 2, "changed": 1, "unreachable": 0, "failed": 0}
        ca = x509.load_pem_x509_certificate((tmp_path / "ca" / "ca.pem").read_bytes())
        for identity in fleet.identities:
            ssl = fleet.node_dir(identity) / "ssl"
            cert = x509.load_pem_x509_certificate((ssl / "certificate.pem").read_bytes())
            cert.verify_directly_issued_by(ca)
            assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == identity
            assert (ssl / "private.pem").stat().st_mode & 0o777 == 0o600
        # Provisioned nodes left provisioning mode and answer in their real collective on the members' broker.
        assert asyncio.run(discover(members.url, fleet.identities, 20, collective="members")) == fleet.identities

        again = installed.run("ansible-playbook", "zeroinit.bootstrap.provision_fleet", "-e", f"@{provision_vars}")
        assert recap(again.stdout) == {"ok": 2, "changed": 0, "unreachable": 0, "failed": 0}
