# Copyright: zeroinit.bootstrap contributors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)
"""The ``node_certificates`` module's work without Ansible: the certificate lifecycle of configured nodes.

``serve``  answer renewal requests (:class:`.renewal.RenewalResponder`) for ``wait`` seconds, or until ``expect``
           nodes renewed: for sites without the provisioner service.
``renew``  ask each node to renew now (``choria_provision#renew``) while serving; a node counts as renewed when its
           ``renewed`` lifecycle event names the serial the responder issued. The CA migration's step 2.
``trust``  set each node's CA bundle (``choria_provision#trust``). The CA migration's steps 1 and 4.

The nodes are ``identities``, or every node that answers a discovery in the collective. Requests carry the token and,
with ``signing_cert``, the provisioner's signature (``choria.security``): a configured node is locked to its site
and takes ``trust`` only signed by a provisioner of that site.
A node that cannot be reached or refuses is reported in ``failed_nodes`` with the reason; the others go on. Check
mode changes nothing: ``trust`` asks each node whether its bundle would change, ``renew`` only pings.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from ..choria.brokers import BrokerUrlError, normalize_brokers
from ..choria.events import parse_lifecycle_event
from ..choria.protocol import PROVISION_AGENT, ProtocolError
from ..choria.renewal import RENEWAL_FAILED_EVENT, RENEWED_EVENT
from ..choria.subjects import CONFIGURED_COMPONENT, lifecycle_subject, valid_identity
from ..choria.transport import ConnectError, tls_context
from ..common.deps import NatsError
from ..pki.x509 import PkiError, load_certificates
from .renewal import RenewalResponder, RenewalSetupError, responder_from_params
from .rpc import RpcClient, RpcError, reply_error
from .settings import ProvisionError, load_request_signer

ACTIONS = ("serve", "renew", "trust")
# How often a waiting run looks whether it is done.
_POLL_SECONDS = 0.1


class CertificateTaskError(Exception):
    """The task as a whole cannot proceed; the message names the option or the reason."""


@dataclass
class CertificateTaskSettings:
    """The module's options, checked once (CertificateTaskError naming the option)."""

    action: str
    brokers: list
    collective: str = "mcollective"
    token: str = field(default="", repr=False)
    callerid: str = "zeroinit-provisioner"
    identities: list | None = None
    ca_bundle: str | None = None  # trust: the bundle PEM
    site_ca: str | None = None  # serve/renew: PEM of the CAs renewal requests must chain to
    signer: dict | None = None
    signing_cert: str | None = None
    signing_key: str | None = None
    signing_key_passphrase: str | None = field(default=None, repr=False)
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    timeout: float = 10.0
    retries: int = 2
    workers: int = 100
    discovery_timeout: float = 2.0
    wait: float = 60.0
    expect: int | None = None
    check_mode: bool = False

    def __post_init__(self) -> None:
        if self.action not in ACTIONS:
            raise CertificateTaskError(f"action must be one of {', '.join(ACTIONS)}, not {self.action!r}")
        try:
            self.brokers = normalize_brokers(self.brokers)
        except BrokerUrlError as exc:
            raise CertificateTaskError(f"brokers: {exc}") from None
        if not valid_identity(self.collective):
            raise CertificateTaskError(f"collective {self.collective!r} is not a valid collective name")
        for name in ("timeout", "discovery_timeout"):
            if getattr(self, name) <= 0:
                raise CertificateTaskError(f"{name} must be greater than 0, not {getattr(self, name)}")
        if self.wait < 0 or self.retries < 0 or self.workers < 1:
            raise CertificateTaskError("wait and retries must not be negative, and workers must be at least 1")
        if self.expect is not None and self.expect < 1:
            raise CertificateTaskError(f"expect must be at least 1, not {self.expect}")
        bad = [i for i in self.identities or [] if not valid_identity(i)]
        if bad:
            raise CertificateTaskError(f"identities: {bad[0]!r} is not a valid node name")
        if self.action == "trust":
            if not self.ca_bundle:
                raise CertificateTaskError("ca_bundle is required with action trust")
            try:
                load_certificates(self.ca_bundle, "ca_bundle", "ca_bundle")
            except PkiError as exc:
                raise CertificateTaskError(str(exc)) from None
        elif not self.signer:
            raise CertificateTaskError(f"signer is required with action {self.action}")


class CertificateTask:
    """One ``node_certificates`` task (see the module doc)."""

    def __init__(self, settings: CertificateTaskSettings):
        self.s = settings
        self.failed: dict[str, str] = {}
        self.client: RpcClient | None = None

    # -- the run -------------------------------------------------------------------------------------------------------
    async def run(self) -> dict:
        started = time.monotonic()
        client = self._client()
        try:
            await client.connect()
        except (ConnectError, RpcError, OSError) as exc:
            raise CertificateTaskError(str(exc)) from None
        self.client = client
        try:
            if self.s.action == "serve":
                result = await self._serve()
            else:
                identities = await self._identities()
                if self.s.check_mode:
                    result = await self._check(identities)
                elif self.s.action == "trust":
                    result = await self._trust(identities)
                else:
                    result = await self._renew(identities)
        finally:
            await client.close()
        result["failed_nodes"] = dict(sorted(self.failed.items()))
        result["elapsed_s"] = round(time.monotonic() - started, 2)
        return result

    def _client(self) -> RpcClient:
        try:
            tls = tls_context(self.s.tls_ca, self.s.tls_cert, self.s.tls_key)
        except (OSError, ValueError) as exc:
            raise CertificateTaskError(f"broker TLS options: {exc}") from None
        try:
            signer = load_request_signer(self.s.signing_cert, self.s.signing_key, self.s.signing_key_passphrase)
        except ProvisionError as exc:
            raise CertificateTaskError(str(exc)) from None
        return RpcClient(self.s.brokers, callerid=self.s.callerid, collective=self.s.collective, tls=tls, signer=signer)

    async def _identities(self) -> list[str]:
        if self.s.identities:
            return sorted(set(self.s.identities))
        return await self.client.discover(timeout=self.s.discovery_timeout)

    async def _each(self, identities: list[str], work) -> dict:
        """``work(identity)`` for every node, ``workers`` at once; failures recorded with their reason."""
        slots = asyncio.Semaphore(self.s.workers)
        results: dict = {}

        async def one(identity: str) -> None:
            async with slots:
                try:
                    results[identity] = await work(identity)
                except _NodeRefused as exc:
                    self.failed[identity] = str(exc)
                except RpcError as exc:
                    self.failed[identity] = str(exc)

        await asyncio.gather(*(one(i) for i in identities))
        return results

    async def _ask(self, identity: str, action: str, data: dict | None = None, agent: str = PROVISION_AGENT):
        payload = dict(data or {})
        if agent == PROVISION_AGENT:
            payload["token"] = self.s.token
        reply = await self.client.call(
            identity, agent, action, payload, timeout=self.s.timeout, retries=self.s.retries, step=f"{agent}#{action}"
        )
        if not reply.ok:
            raise _NodeRefused(reply_error(reply, f"{agent}#{action}"))
        return reply.data

    async def _check(self, identities: list[str]) -> dict:
        """Check mode: ``trust`` asks each node whether its bundle would change (it changes nothing); ``renew`` pings."""
        if self.s.action == "trust":
            answers = await self._each(
                identities, lambda i: self._ask(i, "trust", {"ca": self.s.ca_bundle, "check": True})
            )
            nodes = sorted(i for i, data in answers.items() if data.get("changed"))
            verb = "would set the CA bundle of"
        else:
            nodes = sorted(await self._each(identities, lambda i: self._ask(i, "ping", agent="rpcutil")))
            verb = "would renew"
        return {
            "changed": bool(nodes),
            "msg": f"{verb} {len(nodes)} node(s)",
            "nodes": nodes,
            "counts": {"nodes": len(identities), "would_change": len(nodes), "failed": len(self.failed)},
        }

    # -- trust ---------------------------------------------------------------------------------------------------------
    async def _trust(self, identities: list[str]) -> dict:
        answers = await self._each(identities, lambda i: self._ask(i, "trust", {"ca": self.s.ca_bundle}))
        changed = sorted(i for i, data in answers.items() if data.get("changed"))
        unchanged = sorted(i for i, data in answers.items() if not data.get("changed"))
        return {
            "changed": bool(changed),
            "trusted": changed,
            "unchanged": unchanged,
            "counts": {
                "nodes": len(identities),
                "trusted": len(changed),
                "unchanged": len(unchanged),
                "failed": len(self.failed),
            },
        }

    # -- serve and renew -----------------------------------------------------------------------------------------------
    def _responder(self) -> tuple[RenewalResponder, object]:
        try:
            responder = responder_from_params(self.s.signer, self.s.site_ca)
        except RenewalSetupError as exc:
            raise CertificateTaskError(str(exc)) from None
        return responder, responder.signer

    async def _serve(self) -> dict:
        if self.s.check_mode:
            return {"changed": False, "msg": "check mode: no renewal request is answered", "renewed": {}}
        responder, signer = self._responder()
        stopping = asyncio.Event()
        serving = asyncio.ensure_future(responder.serve(self.client.nc, [self.s.collective], stopping))
        try:
            deadline = time.monotonic() + self.s.wait
            while time.monotonic() < deadline and not serving.done():
                if self.s.expect is not None and len(responder.record.renewed) >= self.s.expect:
                    break
                await asyncio.sleep(_POLL_SECONDS)
        finally:
            stopping.set()
            await serving
            signer.close()
        record = responder.record
        return {
            "changed": bool(record.renewed),
            "renewed": dict(sorted(record.renewed.items())),
            "refused": dict(sorted(record.refused.items())),
            "counts": dict(sorted(record.counts.items())),
        }

    async def _renew(self, identities: list[str]) -> dict:
        responder, signer = self._responder()
        events = _RenewalEvents()
        subs = [
            await self.client.nc.subscribe(lifecycle_subject(kind, CONFIGURED_COMPONENT), cb=events.received)
            for kind in (RENEWED_EVENT, RENEWAL_FAILED_EVENT)
        ]
        stopping = asyncio.Event()
        serving = asyncio.ensure_future(responder.serve(self.client.nc, [self.s.collective], stopping))
        try:
            await self.client.nc.flush()
            started = await self._each(identities, lambda i: self._ask(i, "renew"))
            deadline = time.monotonic() + max(self.s.wait, self.s.timeout)
            while time.monotonic() < deadline and not serving.done():
                if all(events.done(i, responder.record.renewed.get(i)) for i in started):
                    break
                await asyncio.sleep(_POLL_SECONDS)
        finally:
            stopping.set()
            await serving
            for sub in subs:
                try:
                    await sub.unsubscribe()
                except (NatsError, OSError):
                    pass
            signer.close()
        renewed = {}
        for identity in sorted(started):
            serial = responder.record.renewed.get(identity)
            if serial and events.done(identity, serial):
                renewed[identity] = serial
            else:
                self.failed[identity] = (
                    events.failures.get(identity)
                    or responder.record.refused.get(identity)
                    or (
                        f"renewed (serial {serial}) but no renewed event from the node within {self.s.wait:g}s"
                        if serial
                        else f"no renewal request arrived within {self.s.wait:g}s"
                    )
                )
        return {
            "changed": bool(renewed),
            "renewed": renewed,
            "counts": {"nodes": len(identities), "renewed": len(renewed), "failed": len(self.failed)},
        }


class _NodeRefused(Exception):
    """A node answered with a non-OK status; the message is the human sentence for it."""


class _RenewalEvents:
    """The renewed / renewal_failed events nodes publish while a renew run waits."""

    def __init__(self):
        self.serials: dict[str, set] = {}
        self.failures: dict[str, str] = {}

    async def received(self, msg) -> None:
        try:
            data = parse_lifecycle_event(msg.data)
        except ProtocolError:
            return
        identity = data.get("identity")
        if data["type"] == RENEWED_EVENT and isinstance(data.get("serial"), str):
            self.serials.setdefault(identity, set()).add(data["serial"])
            self.failures.pop(identity, None)
        elif data["type"] == RENEWAL_FAILED_EVENT:
            self.failures[identity] = f"the node reports: {str(data.get('reason'))[:300]}"

    def done(self, identity: str, serial: str | None) -> bool:
        return serial is not None and serial in self.serials.get(identity, ())


def run_certificate_task(params: dict, check_mode: bool) -> dict:
    """Synchronous entry point: the module's parameters in, its result out (CertificateTaskError when it fails)."""
    names = CertificateTaskSettings.__dataclass_fields__
    settings = CertificateTaskSettings(
        check_mode=check_mode, **{k: v for k, v in params.items() if k in names and k != "check_mode"}
    )
    return asyncio.run(CertificateTask(settings).run())
