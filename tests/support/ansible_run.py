"""Run ansible-playbook / ansible from tests against this checkout, with structured results.

The collection resolves through ``.venv/collections`` (made by ``make venv``); results come from a test-only
stdout callback (tests/support/callback) so tests assert on ``changed``, ``failed`` and return values rather than on text.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field

ROOT = pathlib.Path(__file__).resolve().parents[2]
VENV_BIN = pathlib.Path(sys.executable).parent


def plain(value):
    """ansible-inventory marks untrusted strings as {"__ansible_unsafe": text}; the text is what a user reads."""
    if isinstance(value, dict):
        if set(value) == {"__ansible_unsafe"}:
            return value["__ansible_unsafe"]
        return {key: plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [plain(item) for item in value]
    return value


def ansible_env(extra: dict | None = None) -> dict:
    env = dict(os.environ)
    env.update(
        {
            "ANSIBLE_COLLECTIONS_PATH": str(ROOT / ".venv" / "collections"),
            "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"),
            "ANSIBLE_CALLBACK_PLUGINS": str(ROOT / "tests" / "support" / "callback"),
            "ANSIBLE_STDOUT_CALLBACK": "zeroinit_results",
            "ANSIBLE_NOCOLOR": "1",
            # Namespace hosts share this machine's filesystem, so the venv's Python (with nats-py, zeroconf,
            # cryptography) is the right interpreter for localhost and for them.
            "ANSIBLE_PYTHON_INTERPRETER": sys.executable,
            "ANSIBLE_RETRY_FILES_ENABLED": "0",
            "ANSIBLE_HOST_PATTERN_MISMATCH": "ignore",
            "ANSIBLE_LOCALHOST_WARNING": "0",
            "ANSIBLE_INVENTORY_UNPARSED_WARNING": "0",
            "PATH": f"{VENV_BIN}:{os.environ.get('PATH', '')}",
        }
    )
    if extra:
        env.update(extra)
    return env


@dataclass
class PlayResult:
    rc: int
    stdout: str
    stderr: str
    doc: dict = field(default_factory=dict)

    def tasks(self, name: str | None = None) -> list[dict]:
        """Every task entry (``{"task": {...}, "hosts": {host: result}}``), optionally only those named ``name``."""
        found = []
        for play in self.doc.get("plays", []):
            for task in play.get("tasks", []):
                task_name = task.get("task", {}).get("name", "")
                # tasks of a role are named "role : task"
                if name is None or task_name == name or task_name.endswith(" : " + name):
                    found.append(task)
        return found

    def result(self, task_name: str, host: str = "localhost") -> dict:
        """The result of the last task called ``task_name`` on ``host``."""
        matches = [t["hosts"][host] for t in self.tasks(task_name) if host in t.get("hosts", {})]
        assert matches, (
            f"no task {task_name!r} ran on {host}; rc={self.rc}\n{self.stdout[-3000:]}\n{self.stderr[-3000:]}"
        )
        return matches[-1]

    @property
    def stats(self) -> dict:
        return self.doc.get("stats", {})

    def changed(self, host: str = "localhost") -> int:
        return self.stats.get(host, {}).get("changed", 0)

    def failed(self, host: str = "localhost") -> int:
        stats = self.stats.get(host, {})
        return stats.get("failures", 0) + stats.get("unreachable", 0)


def _parse(stdout: str) -> dict:
    start = stdout.find("{")
    if start < 0:
        return {}
    try:
        return json.loads(stdout[start:])
    except ValueError:
        return {}


def run_playbook(
    playbook: str | os.PathLike,
    inventory: str | os.PathLike | None = None,
    extra_vars: dict | None = None,
    check: bool = False,
    diff: bool = False,
    limit: str | None = None,
    env: dict | None = None,
    timeout: float = 900,
    args: list[str] | None = None,
    wrap: list[str] | None = None,
) -> PlayResult:
    """Run a playbook file (path), playbook name (FQCN) or playbook text (a string containing a newline).

    ``wrap`` prefixes the command, e.g. ``Host.nsenter([])`` to run it inside a namespace host.
    """
    with tempfile.TemporaryDirectory(prefix="zeroinit-play-") as tmpdir:
        path = str(playbook)
        if "\n" in path:
            path = os.path.join(tmpdir, "play.yml")
            with open(path, "w") as handle:
                handle.write(str(playbook))
        argv = [str(VENV_BIN / "ansible-playbook"), path]
        if inventory is not None:
            argv += ["-i", str(inventory)]
        else:
            argv += ["-i", "localhost,", "-c", "local"]
        if extra_vars:
            vars_file = os.path.join(tmpdir, "extra_vars.json")
            with open(vars_file, "w") as handle:
                json.dump(extra_vars, handle)
            argv += ["-e", "@" + vars_file]
        if check:
            argv.append("--check")
        if diff:
            argv.append("--diff")
        if limit:
            argv += ["--limit", limit]
        argv += args or []
        proc = subprocess.run(
            (wrap or []) + argv,
            cwd=str(ROOT),
            env=ansible_env(env),
            capture_output=True,
            check=False,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )
    return PlayResult(proc.returncode, proc.stdout, proc.stderr, _parse(proc.stdout))


def run_module(
    module: str, params: dict, check: bool = False, diff: bool = False, env: dict | None = None, timeout: float = 600
) -> dict:
    """Run one module on localhost through a one-task playbook; returns its result dict (with ``rc``)."""
    play = (
        "- hosts: localhost\n  gather_facts: false\n  connection: local\n  tasks:\n"
        f"    - name: under test\n      {module}: {json.dumps(params)}\n      register: out\n      ignore_errors: true\n"
    )
    res = run_playbook(play, check=check, diff=diff, env=env, timeout=timeout)
    out = dict(res.result("under test"))
    out["_play_rc"] = res.rc
    return out
