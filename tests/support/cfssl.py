"""A real CFSSL CA server for tests and benchmarks: ``cfssl serve`` (Debian golang-cfssl) with its own CA.

::

    with CfsslServer(tmp_path / "cfssl") as server:     # makes the CA, starts, waits until info answers
        server.url, server.auth_key, server.ca_path, server.authsign_count()
    with CfsslServer(tmp_path / "cfssl", tls=True) as server:   # https, server certificate from a separate TLS CA
        server.url, server.tls_ca_path

The CA is made with ``cfssl gencert -initca`` (``ca_expiry``, ten years unless told); the signing config has profiles that need the ``primary`` auth key
(a ``standard`` HMAC key, hex): the default (a year, server + client auth), ``node`` (30 days, server + client),
``server``, ``client``, and two a node must never get, for tests of a server that misbehaves: ``intermediate``
(CA:TRUE) and ``long`` (ten years). ``stop()`` (also on exit) terminates the server and waits for it; the log
stays in the work directory for error messages and for counting the requests that reached the server.
"""

from __future__ import annotations

import json
import os
import pathlib
import secrets
import shutil
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request

from tests.support.broker import free_port

AUTH_KEY_NAME = "primary"
NODE_USAGES = ["digital signature", "key encipherment", "server auth", "client auth"]


class CfsslServerError(RuntimeError):
    pass


def find_cfssl() -> str:
    """The cfssl binary: $CFSSL_BIN, then $PATH (Debian's golang-cfssl installs /usr/bin/cfssl)."""
    for path in (os.environ.get("CFSSL_BIN", ""), shutil.which("cfssl") or ""):
        if path and os.access(path, os.X_OK):
            return path
    raise CfsslServerError("cfssl not found: install the Debian package golang-cfssl (bindep.txt) or set CFSSL_BIN")


def signing_config(auth_key: str) -> dict:
    """The ``-config`` of the server: every profile needs the auth key, so only ``authsign`` can sign."""

    def profile(expiry: str, usages: list[str], **extra) -> dict:
        return dict(expiry=expiry, usages=usages, auth_key=AUTH_KEY_NAME, **extra)

    return {
        "signing": {
            "default": profile("8760h", ["digital signature", "server auth", "client auth"]),
            "profiles": {
                "node": profile("720h", NODE_USAGES),
                "server": profile("720h", ["digital signature", "key encipherment", "server auth"]),
                "client": profile("720h", ["digital signature", "client auth"]),
                "intermediate": profile(
                    "720h", ["digital signature", "cert sign", "crl sign"], ca_constraint={"is_ca": True}
                ),
                "long": profile("87600h", NODE_USAGES),
            },
        },
        "auth_keys": {AUTH_KEY_NAME: {"type": "standard", "key": auth_key}},
    }


class CfsslServer:
    """``cfssl serve`` on 127.0.0.1 and a free port, with a CA made for it; ``tls`` serves https."""

    def __init__(
        self,
        workdir: str | os.PathLike | None = None,
        tls: bool = False,
        ca_name: str = "zeroinit test CFSSL CA",
        ca_expiry: str = "87600h",
    ):
        self._own_workdir = workdir is None
        self.workdir = pathlib.Path(workdir or tempfile.mkdtemp(prefix="zeroinit-cfssl-"))
        self.tls = tls
        self.ca_name = ca_name
        self.ca_expiry = ca_expiry
        self.auth_key = secrets.token_hex(16)
        self.port = 0
        self.process: subprocess.Popen | None = None
        self.log_path = self.workdir / "cfssl-serve.log"
        self.ca_path = self.workdir / "ca.pem"
        self.ca_key_path = self.workdir / "ca-key.pem"
        self.config_path = self.workdir / "config.json"
        self.tls_ca_path = self.workdir / "tls-ca.pem"

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    @property
    def ca_pem(self) -> str:
        return self.ca_path.read_text()

    # -- making the CA and the config ---------------------------------------------------------------------------------
    def _gencert(self, argv: list[str], request: dict, prefix: str) -> None:
        """``cfssl gencert ...`` for ``request``; its JSON answer written as <prefix>.pem and <prefix>-key.pem (0600)."""
        request_path = self.workdir / f"{prefix}-csr.json"
        request_path.write_text(json.dumps(request))
        done = subprocess.run(
            [find_cfssl(), "gencert", *argv, str(request_path)], capture_output=True, text=True, check=False, timeout=60
        )
        if done.returncode != 0:
            raise CfsslServerError(f"cfssl gencert {' '.join(argv)} failed: {done.stderr.strip()}")
        answer = json.loads(done.stdout)
        key_path = self.workdir / f"{prefix}-key.pem"
        key_path.touch(mode=0o600)
        key_path.write_text(answer["key"])
        (self.workdir / f"{prefix}.pem").write_text(answer["cert"])

    def _prepare(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        ca_request = {"CN": self.ca_name, "key": {"algo": "ecdsa", "size": 256}, "ca": {"expiry": self.ca_expiry}}
        self._gencert(["-initca"], ca_request, "ca")
        self.config_path.write_text(json.dumps(signing_config(self.auth_key), indent=2))
        if self.tls:
            # The TLS server certificate comes from its own CA, so a test can tell the two trust anchors apart.
            self._gencert(["-initca"], {"CN": "zeroinit test TLS CA", "key": {"algo": "ecdsa", "size": 256}}, "tls-ca")
            self._gencert(
                [
                    "-ca",
                    str(self.tls_ca_path),
                    "-ca-key",
                    str(self.workdir / "tls-ca-key.pem"),
                    "-hostname",
                    "127.0.0.1,localhost",
                ],
                {"CN": "127.0.0.1", "key": {"algo": "ecdsa", "size": 256}},
                "tls",
            )

    # -- running ------------------------------------------------------------------------------------------------------
    def start(self, timeout: float = 20.0) -> CfsslServer:
        if self.process is not None:
            return self
        self._prepare()
        for _attempt in range(3):
            self.port = free_port()
            if self._launch(timeout):
                return self
        raise CfsslServerError(f"cfssl serve found no free port: {self.log_tail()}")

    def _launch(self, timeout: float) -> bool:
        """Start on self.port and wait until info answers; False when another process took the port first."""
        argv = [
            find_cfssl(),
            "serve",
            "-address", "127.0.0.1",
            "-port", str(self.port),
            "-ca", str(self.ca_path),
            "-ca-key", str(self.ca_key_path),
            "-config", str(self.config_path),
        ]  # fmt: skip
        if self.tls:
            argv += ["-tls-cert", str(self.workdir / "tls.pem"), "-tls-key", str(self.workdir / "tls-key.pem")]
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self.process = None
                if "address already in use" in self.log_tail():
                    return False
                raise CfsslServerError(f"cfssl serve exited at start: {self.log_tail()}")
            if self._answers_info():
                return True
            time.sleep(0.05)
        self.stop()
        raise CfsslServerError(
            f"cfssl serve did not answer info at {self.url} within {timeout:.0f}s: {self.log_tail()}"
        )

    def _answers_info(self) -> bool:
        context = ssl.create_default_context(cafile=str(self.tls_ca_path)) if self.tls else None
        request = urllib.request.Request(f"{self.url}/api/v1/cfssl/info", data=b"{}", method="POST")
        try:
            with urllib.request.urlopen(request, timeout=1, context=context) as response:
                return json.load(response).get("success") is True
        except (OSError, ValueError):
            return False

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is not None:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)

    def restart(self, timeout: float = 20.0) -> CfsslServer:
        """Start again after stop(), on the same port with the same CA: clients holding the URL find it again."""
        self.stop()
        if not self._launch(timeout):
            raise CfsslServerError(f"port {self.port} was taken while cfssl serve was stopped")
        return self

    def remove(self) -> None:
        """Stop, and remove the work directory when this object made it."""
        self.stop()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> CfsslServer:
        try:
            return self.start()
        except BaseException:
            self.remove()
            raise

    def __exit__(self, *exc) -> None:
        self.remove()

    # -- what the server saw ------------------------------------------------------------------------------------------
    def log_tail(self, size: int = 3000) -> str:
        try:
            data = self.log_path.read_bytes()
        except OSError:
            return ""
        return data[-size:].decode("utf-8", "replace")

    def _log_count(self, text: str) -> int:
        try:
            return self.log_path.read_text(errors="replace").count(text)
        except OSError:
            return 0

    def authsign_count(self) -> int:
        """How many authsign requests reached the server (its access log has one line per answered request)."""
        return self._log_count('"POST /api/v1/cfssl/authsign"')

    def signed_count(self) -> int:
        """How many certificates the server signed."""
        return self._log_count("signed certificate with serial number")
