"""The provisioner service for tests and benchmarks: ``.venv/bin/zeroinit-provisioner`` as a subprocess.

::

    with ProvisionerProcess(tmp_path, "prov-a", site="dc1", brokers=[url], token="t", signer={...}) as prov:
        prov.wait_for(lambda line: line.get("outcome") == "provisioned")
        prov.metrics()["choria_provisioner_provisioned"]         # scraped and parsed by prometheus_client
    provisioner_command(config_path, "status")                   # the CLI: (exit status, JSON answer, stderr)

``start()`` returns once the instance logged that it started (its JSON log is read from ``log_path``); ``stop()``
sends SIGTERM and returns the exit status; ``kill()`` is SIGKILL. A process is never left behind.
"""

from __future__ import annotations

import datetime
import http.client
import json
import os
import pathlib
import subprocess
import sys
import time

import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.support.broker import free_port
from tests.support.fleet import terminate

ROOT = pathlib.Path(__file__).resolve().parents[2]
PROVISIONER = ROOT / ".venv" / "bin" / "zeroinit-provisioner"
MODULE = "ansible_collections.zeroinit.bootstrap.plugins.module_utils.provisioning.service"


def provisioner_argv() -> list:
    """The service's command: the venv's wrapper, or this Python running the module."""
    return [str(PROVISIONER)] if PROVISIONER.exists() else [sys.executable, "-m", MODULE]


def logged_at(line: dict) -> float:
    """When the service logged ``line`` (its ``time``, UTC with milliseconds), as time.time() counts."""
    stamp = datetime.datetime.strptime(line["time"], "%Y-%m-%dT%H:%M:%S.%fZ")
    return stamp.replace(tzinfo=datetime.UTC).timestamp()


def write_config(path, config: dict) -> pathlib.Path:
    path = pathlib.Path(path)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    os.chmod(path, 0o600)
    return path


def provisioner_command(config_path, command: str, gather: float = 1.0, timeout: float = 60.0) -> tuple:
    """``zeroinit-provisioner <command> --config FILE``: (exit status, the JSON it printed or None, stderr)."""
    proc = subprocess.run(
        [*provisioner_argv(), command, "--config", str(config_path), "--gather", str(gather)],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,  # the exit status is part of the answer
    )
    try:
        printed = json.loads(proc.stdout) if proc.stdout.strip() else None
    except ValueError:
        printed = None
    return proc.returncode, printed, proc.stderr


class ProvisionerProcess:
    """One instance of the service. ``config`` keys are the service's; ``instance`` is set to ``name`` and a
    ``monitor_port`` is picked unless given."""

    def __init__(self, workdir, name: str, **config):
        self.workdir = pathlib.Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.config = {"instance": name, "monitor_port": free_port(), **config}
        self.config_path = write_config(self.workdir / f"{name}.yaml", self.config)
        self.log_path = self.workdir / f"{name}.log"
        self.process: subprocess.Popen | None = None
        self.killed_at: float | None = None
        self._log = None

    def get(self, path: str) -> tuple:
        """GET ``path`` of the monitor listener: (HTTP status, body text)."""
        connection = http.client.HTTPConnection("127.0.0.1", self.config["monitor_port"], timeout=10)
        try:
            connection.request("GET", path)
            response = connection.getresponse()
            return response.status, response.read().decode("utf-8")
        finally:
            connection.close()

    def launch(self) -> ProvisionerProcess:
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - the service writes to it until stop() closes it
        self.process = subprocess.Popen(
            [*provisioner_argv(), "run", "--config", str(self.config_path)],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        return self

    def start(self, timeout: float = 60.0) -> ProvisionerProcess:
        self.launch()
        try:
            self.wait_for(lambda line: line.get("event") == "started", timeout, "to start")
        except BaseException:
            self.stop()
            raise
        return self

    def lines(self) -> list:
        """The JSON lines logged so far (anything else, e.g. a traceback, as {"text": ...})."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return []
        lines = []
        for raw in text.splitlines():
            try:
                lines.append(json.loads(raw))
            except ValueError:
                lines.append({"text": raw})
        return lines

    def outcomes(self, outcome: str | None = None) -> list:
        """The node outcome lines, optionally only those with ``outcome``."""
        return [
            line
            for line in self.lines()
            if line.get("event") == "node" and (outcome is None or line.get("outcome") == outcome)
        ]

    def wait_for(self, predicate, timeout: float = 60.0, what: str = "") -> dict:
        """The first log line matching ``predicate``; AssertionError with the log's tail after ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            for line in self.lines():
                if predicate(line):
                    return line
            exited = self.process is not None and self.process.poll() is not None
            if exited or time.monotonic() > deadline:
                status = f"exited {self.process.returncode}" if exited else f"not within {timeout:g}s"
                raise AssertionError(f"{self.name} {what or 'log line'}: {status}\n{self.log_tail()}")
            time.sleep(0.1)

    def log_tail(self, size: int = 4000) -> str:
        try:
            return self.log_path.read_bytes()[-size:].decode("utf-8", "replace")
        except OSError:
            return ""

    def metrics(self) -> dict:
        """``/metrics`` parsed by prometheus_client's parser: {sample name: {labels as sorted tuple: value}}; a
        counter's sample under the counter's name, as exported."""
        status, text = self.get("/metrics")
        assert status == 200, f"{self.name} /metrics answered {status}"
        samples: dict = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                # The parser names a counter's sample <name>_total; Choria's (and ours) is <name>.
                name = (
                    family.name if family.type == "counter" and sample.name == f"{family.name}_total" else sample.name
                )
                samples.setdefault(name, {})[tuple(sorted(sample.labels.items()))] = sample.value
        return samples

    def command(self, command: str, gather: float = 1.0) -> tuple:
        return provisioner_command(self.config_path, command, gather)

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL: the instance dies without a word, holding whatever claims it held."""
        if self.running():
            self.process.kill()
            self.killed_at = time.time()
            self.process.wait(timeout=10)
        self._close_log()

    def stop(self, timeout: float = 60.0) -> int | None:
        """SIGTERM (drain), wait, then SIGKILL; the exit status."""
        status = None if self.process is None else terminate(self.process, timeout)
        self._close_log()
        return status

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> ProvisionerProcess:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
