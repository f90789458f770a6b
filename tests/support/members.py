"""A members' network for tests and benchmarks of renewal and CA migration: configured nodes on a TLS broker.

::

    site = MemberSite(tmp_path / "site")                       # a site CA (the collection's built-in CA)
    with site.broker() as broker:                               # nats-server: TLS, client certificates from the site
        site.seed(tmp_path / "fleet", identities, broker.url)   # configured nodes, as provisioning leaves them
        with MemberFleet(broker.url, identities, tmp_path / "fleet", site) as fleet, \\
             ResponderThread(responder, broker.url, site.client_tls("zeroinit-ca"), ["members"]) as served, \\
             PingWatch(broker.url, identities, site.client_tls("watch")) as watch:
            ...
            watch.longest_gap()   # the longest time any node went without answering ping

Seeding writes what ``configure`` writes (key 0600 made for the node, certificate, CA bundle, server.conf with
provisioning off, the site lock on the CA bundle) straight into the agent's state directory, so a test of renewal does
not spend its time provisioning. The nodes are locked to the site: ``site.provisioner()`` signs what changes their
trust.
The broker's certificate is issued for 127.0.0.1 (the built-in deny list refuses loopback names, so that signer's
policy lifts it for this one certificate).
"""

from __future__ import annotations

import asyncio
import itertools
import os
import pathlib
import ssl
import sys
import threading
import time

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ansible_collections.zeroinit.bootstrap.plugins.module_utils.choria.config import render_config
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.choria.transport import connect
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.node.site_lock import SiteLock
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.node.state import SITE_LOCK_CA_FILE, SITE_LOCK_FILE
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.pki.ca import CertificateAuthority
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.pki.policy import CsrPolicy
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.pki.signer import Signer
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.provisioning.rpc import RpcClient
from tests.support.broker import EmbeddedBroker
from tests.support.certificates import Authority
from tests.support.fleet import AgentProcess

COLLECTIVE = "members"


def _key_and_csr(common_name: str, ips=()):
    import ipaddress

    key = ec.generate_private_key(ec.SECP256R1())
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    )
    if ips:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(a)) for a in ips]), critical=False
        )
    csr = builder.sign(key, hashes.SHA256())
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode("ascii")
    return key_pem, csr


class MemberSite:
    """A site CA in files, and certificates from it for nodes, the broker and clients."""

    def __init__(self, workdir, name: str = "site CA", valid_seconds: int | None = None, ca=None):
        self.workdir = pathlib.Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.ca = ca or CertificateAuthority.create(name)
        self.ca_cert_path = self.workdir / "ca.pem"
        self.ca_key_path = self.workdir / "ca-key.pem"
        self.ca.write(str(self.ca_cert_path), str(self.ca_key_path))
        self.trust_path = self.workdir / "trust.pem"
        # Broker and client certificates: loopback and client names the node policy refuses on purpose.
        self._service_signer = Signer(self.ca, CsrPolicy(default_deny=False, allowed_sans=[r".*"]))
        self.use_signer(Signer(self.ca, CsrPolicy(), valid_seconds=valid_seconds))

    def use_signer(self, signer) -> None:
        """Node certificates from ``signer`` (either backend); the trust bundle holds its CA and the site CA."""
        self.signer = signer
        chain = signer.ca.chain_pem
        self.trust_pem = self.ca.chain_pem + ("" if chain == self.ca.chain_pem else chain)
        self.trust_path.write_text(self.trust_pem)

    @property
    def ca_pem(self) -> str:
        return self.ca.chain_pem

    def issue(self, common_name: str, profile: str = "client", ips=()) -> dict:
        """Files ``<name>.pem`` and ``<name>-key.pem`` (0600) for a service or a client: {cert, key, ca} paths."""
        key_pem, csr = _key_and_csr(common_name, ips)
        issued = self._service_signer.sign(csr, common_name, profile=profile)
        cert_path, key_path = self.workdir / f"{common_name}.pem", self.workdir / f"{common_name}-key.pem"
        cert_path.write_text(issued.certificate)
        key_path.touch(mode=0o600)
        key_path.write_text(key_pem)
        return {"cert": str(cert_path), "key": str(key_path), "ca": str(self.trust_path)}

    def provisioner(self, common_name: str = "provisioner.site.example.net") -> dict:
        """A provisioner certificate of the site CA (the provisioner usage), {cert, key} paths: what signs requests
        the nodes' site lock accepts."""
        return Authority.from_files(self.ca_cert_path, self.ca_key_path).write_leaf(self.workdir, common_name)

    def client_tls(self, name: str = "operator") -> ssl.SSLContext:
        files = self.issue(name)
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=files["ca"])
        context.load_cert_chain(files["cert"], files["key"])
        return context

    def broker(self, **options) -> EmbeddedBroker:
        """A nats-server that requires TLS client certificates from this site (not started); its client CA file is
        its own copy of the trust bundle (``broker.tls["ca"]``), so a test can change one without the other."""
        files = self.issue("broker", profile="server", ips=["127.0.0.1"])
        files["ca"] = str(self.workdir / "broker-ca.pem")
        pathlib.Path(files["ca"]).write_text(self.trust_pem)
        return EmbeddedBroker(tls={**files, "verify": True}, **options)

    def seed(self, state_dir, identities, broker_url: str, configuration: dict | None = None) -> None:
        """Configured nodes in an agent's fleet state directory, as provisioning leaves them."""
        state_dir = pathlib.Path(state_dir)
        for identity in identities:
            ssl_dir = state_dir / identity / "ssl"
            ssl_dir.mkdir(parents=True, exist_ok=True)
            key_pem, csr = _key_and_csr(identity)
            issued = self.signer.sign(csr, identity)
            paths = {name: ssl_dir / f"{name}.pem" for name in ("private", "certificate", "ca")}
            paths["private"].touch(mode=0o600)
            paths["private"].write_text(key_pem)
            paths["certificate"].write_text(issued.certificate)
            paths["ca"].write_text(self.trust_pem)
            config = {
                "identity": identity,
                "plugin.choria.server.provision": "false",
                "plugin.choria.middleware_hosts": broker_url,
                "collectives": COLLECTIVE,
                "main_collective": COLLECTIVE,
                "plugin.security.provider": "file",
                "plugin.security.file.certificate": str(paths["certificate"]),
                "plugin.security.file.key": str(paths["private"]),
                "plugin.security.file.ca": str(paths["ca"]),
                **(configuration or {}),
            }
            (state_dir / identity / "server.conf").write_text(render_config(config))
            (state_dir / identity / SITE_LOCK_CA_FILE).write_text(self.trust_pem)
            lock_path = state_dir / identity / SITE_LOCK_FILE
            lock_path.touch(mode=0o600)
            lock_path.write_text(SiteLock.at_commit(self.trust_pem, committed_by="seed").dump())


class MemberFleet(AgentProcess):
    """Seeded configured nodes served by one agent process (fleet mode); ready once all answer on the TLS broker."""

    def __init__(
        self,
        broker_url: str,
        identities: list[str],
        state_dir,
        site: MemberSite,
        prefix="node",
        provisioning_url: str | None = None,
        **options,
    ):
        """``provisioning_url``: the agent's provisioning broker (``--broker``), where a reprovisioned node goes."""
        count = len(identities)
        super().__init__(provisioning_url or broker_url, prefix, state_dir, fleet=count, **options)
        self.members_url = broker_url
        self.site = site
        assert sorted(identities) == self.identities, "seed the fleet's own identities"

    def wait_ready(self, timeout: float = 60.0) -> list[str]:
        seen = asyncio.run(answering(self.members_url, self.identities, self.site.client_tls("ready"), timeout))
        missing = sorted(set(self.identities) - set(seen))
        if missing or (self.process is not None and self.process.poll() is not None):
            raise RuntimeError(
                f"fleet not ready: {len(seen)} of {self.count} answered in {COLLECTIVE} (missing e.g. {missing[:3]})"
                f"\n{self.log_tail()}"
            )
        return seen

    def start(self, timeout: float | None = None) -> MemberFleet:
        # Each member opens its own TLS connection, one after the other at start.
        return super().start(timeout if timeout is not None else max(30.0, self.count / 10.0))


async def answering(broker_url: str, identities: list[str], tls, timeout: float) -> list[str]:
    """Identities that answered a discovery ping in the members' collective within ``timeout``."""
    wanted, seen = set(identities), set()
    deadline = time.monotonic() + timeout
    async with RpcClient([broker_url], callerid="ready", collective=COLLECTIVE, tls=tls) as client:
        while time.monotonic() < deadline and not wanted <= seen:
            seen.update(
                await client.discover(timeout=min(1.0, max(0.1, deadline - time.monotonic())), expect=len(wanted))
            )
    return sorted(seen & wanted)


class _LoopThread:
    """An asyncio loop in a thread, running ``main(stopping)`` until stop(); errors surface in stop()."""

    def __init__(self):
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._ready = threading.Event()
        self.error: BaseException | None = None

    async def main(self, stopping: asyncio.Event) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def _run(self) -> None:
        async def runner():
            self._loop = asyncio.get_running_loop()
            self._stopping = asyncio.Event()
            try:
                await self.main(self._stopping)
            except BaseException as exc:
                self.error = exc
                self._ready.set()

        asyncio.run(runner())

    def start(self, timeout: float = 20.0):
        self._thread = threading.Thread(target=self._run, name=type(self).__name__, daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout) or self.error is not None:
            self.stop()
            raise RuntimeError(f"{type(self).__name__} did not start: {self.error!r}")
        return self

    def stop(self) -> None:
        if self._thread is None:
            return
        if self._loop is not None and self._stopping is not None and not self._loop.is_closed():
            try:
                self._loop.call_soon_threadsafe(self._stopping.set)
            except RuntimeError:
                pass
        self._thread.join(30)
        self._thread = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class ResponderThread(_LoopThread):
    """A RenewalResponder serving on its own connection in a thread, as the service daemon would run it."""

    def __init__(self, responder, broker_url: str, tls, collectives=(COLLECTIVE,)):
        super().__init__()
        self.responder = responder
        self.broker_url = broker_url
        self.tls = tls
        self.collectives = list(collectives)

    async def main(self, stopping: asyncio.Event) -> None:
        nc = await connect([self.broker_url], name="zeroinit-ca", tls=self.tls)
        try:
            served = asyncio.ensure_future(self.responder.serve(nc, self.collectives, stopping))
            await asyncio.sleep(0.2)  # subscribed and flushed
            self._ready.set()
            await served
        finally:
            await nc.close()


class PingWatch(_LoopThread):
    """Pings every node (a discovery broadcast) every ``interval`` seconds and keeps when each one answered."""

    def __init__(self, broker_url: str, identities, tls, interval: float = 0.5, collective: str = COLLECTIVE):
        super().__init__()
        self.broker_url = broker_url
        self.identities = sorted(identities)
        self.tls = tls
        self.interval = interval
        self.collective = collective
        self.answers: dict[str, list[float]] = {identity: [] for identity in self.identities}
        self.started = self.finished = 0.0
        self.rounds = 0
        self.round_log: list[tuple[float, int]] = []  # (when a round began, how many answered in it)

    async def main(self, stopping: asyncio.Event) -> None:
        async with RpcClient([self.broker_url], callerid="pingwatch", collective=self.collective, tls=self.tls) as c:
            self.started = time.monotonic()
            self._ready.set()
            while not stopping.is_set():
                begun = time.monotonic()
                answered = await c.discover(timeout=self.interval, expect=len(self.identities))
                for identity in answered:
                    if identity in self.answers:
                        self.answers[identity].append(time.monotonic())
                self.round_log.append((begun, len(answered)))
                self.rounds += 1
                await asyncio.sleep(max(0.0, self.interval - (time.monotonic() - begun)))
            self.finished = time.monotonic()

    def gaps(self) -> dict[str, float]:
        """Per node, the longest time without an answer (from the start, between answers, until the end)."""
        end = self.finished or time.monotonic()
        out = {}
        for identity, stamps in self.answers.items():
            points = [self.started, *stamps, end]
            out[identity] = max(b - a for a, b in itertools.pairwise(points))
        return out

    def longest_gap(self, identities=None) -> tuple[str, float]:
        gaps = self.gaps()
        chosen = {i: gaps[i] for i in (identities or gaps)}
        identity = max(chosen, key=chosen.get)
        return identity, chosen[identity]


class EventWatch(_LoopThread):
    """Collects lifecycle events of configured nodes (component ``server``): ``events[type]`` = [(time, data)]."""

    def __init__(self, broker_url: str, tls, types=("renewed", "renewal_failed")):
        super().__init__()
        self.broker_url = broker_url
        self.tls = tls
        self.types = types
        self.events: dict[str, list[tuple[float, dict]]] = {t: [] for t in types}

    async def main(self, stopping: asyncio.Event) -> None:
        from ansible_collections.zeroinit.bootstrap.plugins.module_utils.choria.events import parse_lifecycle_event

        nc = await connect([self.broker_url], name="eventwatch", tls=self.tls)

        async def received(msg) -> None:
            data = parse_lifecycle_event(msg.data)
            self.events.setdefault(data["type"], []).append((time.time(), data))

        try:
            for event_type in self.types:
                await nc.subscribe(f"choria.lifecycle.event.{event_type}.server", cb=received)
            await nc.flush()
            self._ready.set()
            await stopping.wait()
        finally:
            await nc.close()

    def of(self, event_type: str, identity: str | None = None) -> list[dict]:
        return [d for _t, d in self.events.get(event_type, []) if identity is None or d["identity"] == identity]


def fleet_identities(count: int, prefix: str = "node", domain: str = "fleet.example.net") -> list[str]:
    return sorted(f"{prefix}{i}.{domain}" for i in range(1, count + 1))


def node_files(state_dir, identity: str) -> dict:
    base = pathlib.Path(state_dir) / identity / "ssl"
    return {name: base / f"{name}.pem" for name in ("private", "certificate", "ca")}


def certificate_of(state_dir, identity: str):
    return x509.load_pem_x509_certificate(node_files(state_dir, identity)["certificate"].read_bytes())


def key_mode(state_dir, identity: str) -> int:
    return os.stat(node_files(state_dir, identity)["private"]).st_mode & 0o777


def migration_run(workdir, site: MemberSite, broker, permanent, token: str = "s3cret") -> tuple[pathlib.Path, dict]:
    """(inventory, extra vars) for playbooks/migrate_ca.yaml: ``site``'s members on ``broker`` move to the CFSSL server
    ``permanent``; the broker is this machine's (``kill -HUP`` reloads it), the controller a client of the old CA."""
    signer = {
        "backend": "cfssl",
        "cfssl_url": permanent.url,
        "cfssl_auth_key": permanent.auth_key,
        "cfssl_profile": "node",
        "cfssl_ca_cert": str(permanent.ca_path),
        "valid_days": 30,
        "max_valid_days": 30,
    }
    host = {
        "ansible_connection": "local",
        "ansible_python_interpreter": sys.executable,
        "zeroinit_broker_tls_cert": broker.tls["cert"],
        "zeroinit_broker_tls_key": broker.tls["key"],
        "zeroinit_broker_tls_ca": broker.tls["ca"],
        "zeroinit_broker_name": "members-broker",
        "zeroinit_broker_sans": ["IP:127.0.0.1"],
        "zeroinit_broker_reload": ["kill", "-HUP", str(broker.process.pid)],
        # The broker's certificate names 127.0.0.1, which the node policy's deny list refuses.
        "zeroinit_broker_signer": dict(
            signer, cfssl_profile="server", default_deny=False, allowed_sans=[r"127\.0\.0\.1", "members-broker"]
        ),
    }
    inventory = pathlib.Path(workdir) / "inventory.yml"
    inventory.write_text(yaml.safe_dump({"zeroinit_brokers": {"hosts": {"members-broker": host}}}))
    controller = site.issue("controller")
    provisioner = site.provisioner()
    extra = {
        "zeroinit_migrate_brokers": [broker.url],
        "zeroinit_migrate_collective": COLLECTIVE,
        "zeroinit_migrate_tls_cert": controller["cert"],
        "zeroinit_migrate_tls_key": controller["key"],
        "zeroinit_migrate_old_ca": str(site.ca_cert_path),
        "zeroinit_migrate_new_ca": str(permanent.ca_path),
        "zeroinit_migrate_signer": signer,
        "zeroinit_provision_token": token,
        "zeroinit_provision_signing_cert": provisioner["cert"],
        "zeroinit_provision_signing_key": provisioner["key"],
    }
    return inventory, extra
