"""Node agents for tests and benchmarks: ``.venv/bin/zeroinit-agent`` as a subprocess, started and stopped.

::

    with AgentFleet(broker.url, 50, tmp_path / "fleet") as fleet:   # starts and waits for discovery
        fleet.identities, fleet.node_dir(fleet.identities[0])
    with AgentProcess(broker.url, "web1.example.net", tmp_path / "node") as agent:
        agent.node_dir()

``start(timeout)`` returns once every node answers a broadcast discovery; ``stop()`` sends SIGTERM, waits,
then SIGKILLs, and never leaves a process behind (also when start fails).
"""

from __future__ import annotations

import asyncio
import json
import os
import pathlib
import signal
import subprocess
import sys
import tempfile
import time

from ansible_collections.zeroinit.bootstrap.plugins.module_utils.choria.filters import identity_filter
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.provisioning.rpc import RpcClient

ROOT = pathlib.Path(__file__).resolve().parents[2]
AGENT = ROOT / ".venv" / "bin" / "zeroinit-agent"
DEFAULT_DOMAIN = "fleet.example.net"


def agent_command() -> list[str]:
    """The agent's command: the venv's ``zeroinit-agent``, or this Python running the module."""
    if AGENT.exists():
        return [str(AGENT)]
    return [sys.executable, "-m", "ansible_collections.zeroinit.bootstrap.plugins.module_utils.node"]


async def discover(
    broker_url: str, identities: list[str], timeout: float, collective: str = "provisioning", tls=None
) -> list[str]:
    """Broadcast discovery repeated until every one of ``identities`` answered or ``timeout`` passed.

    A few identities are asked for by an identity filter (other agents on the broker stay quiet); a big
    fleet by plain discovery, because each node checks a filter list linearly.
    """
    wanted = set(identities)
    flt = identity_filter(sorted(wanted)) if len(wanted) <= 50 else None
    deadline = time.monotonic() + timeout
    seen: set[str] = set()
    attempt = 0
    async with RpcClient([broker_url], callerid="fleet-support", collective=collective, tls=tls) as client:
        while time.monotonic() < deadline and not wanted <= seen:
            attempt += 1
            wait = max(0.1, min(0.25 * attempt, 2.0, deadline - time.monotonic()))
            seen.update(await client.discover(timeout=wait, expect=len(wanted), flt=flt))
    return sorted(seen & wanted)


def terminate(proc: subprocess.Popen, timeout: float) -> int:
    """SIGTERM ``proc`` if it runs, wait ``timeout`` seconds, then SIGKILL; its exit status."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
    return proc.returncode


class AgentProcess:
    """``zeroinit-agent`` as a subprocess; a single node unless ``fleet`` is given (see AgentFleet)."""

    def __init__(
        self,
        broker_url: str,
        identity: str | None,
        state_dir,
        token: str = "s3cret",
        facts: dict | None = None,
        extra_args=(),
        env: dict | None = None,
        fleet: int = 0,
        connections: int | None = None,
        domain: str = DEFAULT_DOMAIN,
        command: list[str] | None = None,
        config: dict | None = None,
        probe: tuple | None = None,
    ):
        self.broker_url = broker_url
        self.config = dict(config or {})  # more agent settings for its config file (key = value)
        # How the test reaches the broker to see the nodes answer: (URL, TLS context); default the agent's URL.
        self.probe = probe or (broker_url, None)
        self.identity = identity
        self.state_dir = pathlib.Path(state_dir)
        self.token = token
        self.facts = facts
        self.extra_args = list(extra_args)
        self.env = env
        self.count = fleet or 1
        self.fleet = fleet
        self.connections = connections
        self.domain = domain
        # The agent's command without arguments: the checkout's by default, an installed collection's when given.
        self.agent_command = list(command) if command else agent_command()
        self.process: subprocess.Popen | None = None
        self.log_path = self.state_dir.parent / (f"{self.state_dir.name}-agent.log")
        self._log = None
        self._config_dir: str | None = None

    # ------------------------------------------------------------------------------------------ names

    @property
    def identities(self) -> list[str]:
        if self.fleet:
            prefix = self.identity or "node"
            return sorted(f"{prefix}{i}.{self.domain}" for i in range(1, self.fleet + 1))
        return [self.identity]

    def node_dir(self, identity: str | None = None) -> pathlib.Path:
        if self.fleet:
            return self.state_dir / (identity or self.identities[0])
        return self.state_dir

    # ------------------------------------------------------------------------------------------ life

    def command(self) -> list[str]:
        self._config_dir = tempfile.mkdtemp(prefix="zeroinit-agent-conf-")
        # The token goes in a config file, as on a node: argv is visible to every process.
        conf = os.path.join(self._config_dir, "agent.conf")
        with open(conf, "w") as handle:
            handle.write(f"plugin.zeroinit.agent.token = {self.token}\n")
            handle.writelines(f"{key} = {value}\n" for key, value in self.config.items())
        os.chmod(conf, 0o600)
        argv = [*self.agent_command, "--config", conf, "--broker", self.broker_url, "--state-dir", str(self.state_dir)]
        if self.facts is not None:
            facts = os.path.join(self._config_dir, "facts.json")
            with open(facts, "w") as handle:
                json.dump(self.facts, handle)
            argv += ["--facts", facts]
        if self.fleet:
            argv += ["--fleet", str(self.fleet), "--domain", self.domain]
            if self.identity:
                argv += ["--identity", self.identity]
        elif self.identity:
            argv += ["--identity", self.identity]
        if self.connections:
            argv += ["--connections", str(self.connections)]
        return argv + self.extra_args

    def launch(self) -> AgentProcess:
        """Start the process without waiting for discovery."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        env.update(self.env or {})
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - the agent writes to it until stop() closes it
        self.process = subprocess.Popen(
            self.command(),
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        return self

    def start(self, timeout: float = 60.0) -> AgentProcess:
        self.launch()
        try:
            self.wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def wait_ready(self, timeout: float = 60.0) -> list[str]:
        """Block until every identity answers discovery; raises with the agent's log tail otherwise."""
        seen = asyncio.run(discover(self.probe[0], self.identities, timeout, tls=self.probe[1]))
        missing = sorted(set(self.identities) - set(seen))
        if missing or (self.process is not None and self.process.poll() is not None):
            raise RuntimeError(
                f"agent not ready: {len(seen)} of {self.count} nodes answered discovery (missing e.g. "
                f"{missing[:3]}), exit {self.process.poll() if self.process else None}\n{self.log_tail()}"
            )
        return seen

    def log_tail(self, size: int = 4000) -> str:
        try:
            data = self.log_path.read_bytes()
        except OSError:
            return ""
        return data[-size:].decode("utf-8", "replace")

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL (a node dying), then reap."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        self._cleanup()

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM, wait, then SIGKILL; returns the exit code."""
        status = None if self.process is None else terminate(self.process, timeout)
        self._cleanup()
        return status

    def _cleanup(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None
        if self._config_dir:
            for name in os.listdir(self._config_dir):
                os.unlink(os.path.join(self._config_dir, name))
            os.rmdir(self._config_dir)
            self._config_dir = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class AgentFleet(AgentProcess):
    """``count`` simulated nodes in one agent process: identities ``node<i>.fleet.example.net``."""

    def __init__(
        self,
        broker_url: str,
        count: int,
        state_dir,
        token: str = "s3cret",
        facts: dict | None = None,
        connections: int | None = None,
        extra_args=(),
        env: dict | None = None,
        prefix: str | None = None,
        domain: str = DEFAULT_DOMAIN,
        command: list[str] | None = None,
        config: dict | None = None,
        probe: tuple | None = None,
    ):
        super().__init__(
            broker_url,
            prefix,
            state_dir,
            token=token,
            facts=facts,
            extra_args=extra_args,
            env=env,
            fleet=count,
            connections=connections,
            domain=domain,
            command=command,
            config=config,
            probe=probe,
        )

    def start(self, timeout: float | None = None) -> AgentFleet:
        return super().start(timeout if timeout is not None else max(30.0, self.count / 100.0))


# ---------------------------------------------------------------------------------------------- test PKI


class TestCA:
    """A small CA made with ``cryptography`` for tests and benchmarks (not the collection's pki module)."""

    __test__ = False  # not a pytest class

    def __init__(self, name: str = "zeroinit test CA"):
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        self.key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = _utcnow()
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _days(1))
            .not_valid_after(now + _days(30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self.key, hashes.SHA256())
        )

    @property
    def pem(self) -> str:
        from cryptography.hazmat.primitives import serialization

        return self.cert.public_bytes(serialization.Encoding.PEM).decode("ascii")

    def _issue(
        self,
        public_key,
        cn: str,
        ips=(),
        dns=(),
        server: bool = False,
        client: bool = True,
        issuer_key=None,
        issuer_cert=None,
        extra_usages=(),
    ) -> str:
        import ipaddress

        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

        now = _utcnow()
        usages = (
            list(extra_usages)
            + ([ExtendedKeyUsageOID.SERVER_AUTH] if server else [])
            + ([ExtendedKeyUsageOID.CLIENT_AUTH] if client else [])
        )
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
            .issuer_name((issuer_cert or self.cert).subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _days(1))
            .not_valid_after(now + _days(7))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        )
        names = [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips] + [x509.DNSName(d) for d in dns]
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        cert = builder.sign(issuer_key or self.key, hashes.SHA256())
        return cert.public_bytes(serialization.Encoding.PEM).decode("ascii")

    def provisioner_signer(self, cn: str = "prov.example.net"):
        """A RequestSigner with a new provisioner certificate of this CA (what a site's provisioner signs with)."""
        from ansible_collections.zeroinit.bootstrap.plugins.module_utils.choria.security import RequestSigner

        return RequestSigner(*self.issue_key_pair(cn, provisioner=True))

    def sign_csr(self, csr_pem: str, server: bool = True) -> str:
        """A certificate for a node's CSR: CN and key from the CSR, usable for client and server TLS."""
        from cryptography import x509
        from cryptography.x509.oid import NameOID

        csr = x509.load_pem_x509_csr(csr_pem.encode("ascii"))
        cn = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
        return self._issue(csr.public_key(), cn, dns=[cn], server=server, client=True)

    def issue_key_pair(
        self, cn: str, ips=(), server: bool = False, client: bool = True, provisioner: bool = False
    ) -> tuple[str, str]:
        """A new key and certificate (e.g. the broker's, or a client's): (cert PEM, key PEM). ``provisioner`` adds
        the provisioner extended key usage, so the certificate can sign requests to nodes that trust this CA."""
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ec

        from ansible_collections.zeroinit.bootstrap.plugins.module_utils.choria.security import PROVISIONER_USAGE

        key = ec.generate_private_key(ec.SECP256R1())
        extra = (PROVISIONER_USAGE,) if provisioner else ()
        cert = self._issue(key.public_key(), cn, ips=ips, server=server, client=client, extra_usages=extra)
        key_pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ).decode("ascii")
        return cert, key_pem

    def write_key_pair(
        self, directory, cn: str, ips=(), server: bool = False, client: bool = True, provisioner: bool = False
    ) -> dict:
        """Files ``<cn>.crt``, ``<cn>.key`` (0600) and ``ca.pem`` in ``directory``: {cert, key, ca} paths."""
        directory = pathlib.Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        cert, key = self.issue_key_pair(cn, ips=ips, server=server, client=client, provisioner=provisioner)
        paths = {"cert": directory / (f"{cn}.crt"), "key": directory / (f"{cn}.key"), "ca": directory / "ca.pem"}
        paths["cert"].write_text(cert)
        paths["key"].write_text(key)
        os.chmod(paths["key"], 0o600)
        paths["ca"].write_text(self.pem)
        return {name: str(path) for name, path in paths.items()}


def _utcnow():
    import datetime

    return datetime.datetime.now(datetime.UTC)


def _days(count: int):
    import datetime

    return datetime.timedelta(days=count)


# ---------------------------------------------------------------------------------------------- a driver


async def provision_node(
    client: RpcClient,
    identity: str,
    ca: TestCA,
    configuration: dict,
    token: str = "s3cret",
    splay: float = 0,
    timeout: float = 20.0,
) -> dict:
    """The provisioner's per-node steps against one agent: inventory, gencsr, configure, restart.

    A minimal stand-in for the collection's provisioner so the agent's tests and benchmark do not depend on it.
    Returns {step: Reply}; raises RuntimeError naming the step that was refused.
    """
    from ansible_collections.zeroinit.bootstrap.plugins.module_utils.provisioning.rpc import reply_error

    replies = {}
    replies["inventory"] = await client.call(identity, "rpcutil", "inventory", timeout=timeout)
    gencsr = await client.call(identity, "choria_provision", "gencsr", {"token": token}, timeout=timeout)
    replies["gencsr"] = gencsr
    if not gencsr.ok:
        raise RuntimeError(reply_error(gencsr, "gencsr"))
    cert = ca.sign_csr(gencsr.data["csr"])
    configure = await client.call(
        identity,
        "choria_provision",
        "configure",
        {
            "token": token,
            "config": json.dumps(configuration),
            "certificate": cert,
            "ca": ca.pem,
            "ssldir": gencsr.data["ssldir"],
        },
        timeout=timeout,
    )
    replies["configure"] = configure
    if not configure.ok:
        raise RuntimeError(reply_error(configure, "configure"))
    restart = await client.call(
        identity, "choria_provision", "restart", {"token": token, "splay": splay}, timeout=timeout
    )
    replies["restart"] = restart
    if not restart.ok:
        raise RuntimeError(reply_error(restart, "restart"))
    return replies
