# Copyright: zeroinit.bootstrap contributors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)
"""Everything a provisioning run needs, checked once when it is made: ProvisionSettings.

Field names follow the ``choria_provision`` module's options; a bad value raises ProvisionError naming the
option. ``broker_argument_spec`` is the argument spec of the broker and TLS options that
``plugins/doc_fragments/brokers.py`` documents, ``request_signing_argument_spec`` and
``jwt_verification_argument_spec`` those of ``plugins/doc_fragments/request_signing.py`` (unit tests keep each
pair in step).

Trust: ``signing_cert`` + ``signing_key`` make the RequestSigner every request is signed with (a provisioner
certificate: the nodes' ``--provisioning-ca`` and their site locks verify it); ``jwt_verify_key`` is the site's
provisioning-JWT issuer key, with which the flow verifies each node's JWT before it asks for anything that writes.
Both are loaded here, once per run, so a bad file fails the run before any node is touched.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..choria.brokers import BrokerUrlError, normalize_brokers
from ..choria.jwt import ProvisioningJwtError, load_jwt_verify_key
from ..choria.security import RequestSigner, TrustConfigError
from ..choria.subjects import PROVISIONING_COLLECTIVE
from ..choria.transport import tls_context
from .flow import FlowOptions
from .helper import DEFAULT_HELPER_TIMEOUT, HELPER_MODES, ONESHOT, helper_argv
from .rpc import RpcClient


class ProvisionError(Exception):
    """The run as a whole cannot proceed (bad options, broker unreachable, signer unusable)."""


def broker_argument_spec() -> dict:
    """The broker and TLS client options (brokers, collective, tls_ca, tls_cert, tls_key) of the modules."""
    return dict(
        brokers=dict(type="list", elements="str", required=True),
        collective=dict(type="str", default=PROVISIONING_COLLECTIVE),
        tls_ca=dict(type="path"),
        tls_cert=dict(type="path"),
        tls_key=dict(type="path", no_log=False),
    )


def request_signing_argument_spec() -> dict:
    """The options of the provisioner certificate that signs every request (signing_cert, signing_key, passphrase)."""
    return dict(
        signing_cert=dict(type="path"),
        signing_key=dict(type="path", no_log=False),
        signing_key_passphrase=dict(type="str", no_log=True),
    )


def jwt_verification_argument_spec() -> dict:
    """The site's provisioning-JWT verification key (a path, or a hex Ed25519 public key: not a secret)."""
    return dict(jwt_verify_key=dict(type="str", no_log=False))


def load_request_signer(cert: str | None, key: str | None, passphrase: str | None = None) -> RequestSigner | None:
    """The RequestSigner of the signing options (None when unset); ProvisionError naming the option otherwise."""
    if not cert and not key:
        if passphrase:
            raise ProvisionError("signing_key_passphrase is set but signing_cert and signing_key are not")
        return None
    if not cert or not key:
        raise ProvisionError("signing_cert and signing_key come together: a signing certificate needs its key")
    try:
        return RequestSigner.from_files(cert, key, passphrase)
    except TrustConfigError as exc:
        raise ProvisionError(f"signing_cert/signing_key: {exc}") from None


@dataclass
class ProvisionSettings:
    """Everything a provisioning run or a single-node action needs; checked when made."""

    brokers: list
    token: str = field(default="", repr=False)
    collective: str = PROVISIONING_COLLECTIVE
    callerid: str = "zeroinit-provisioner"
    timeout: float = 10.0
    retries: int = 2
    workers: int = 500
    wait: float = 0.0
    expect: int | None = None
    discovery_timeout: float = 2.0
    splay: int = 0
    identities: list | None = None
    helper: Any = None
    helper_timeout: float = DEFAULT_HELPER_TIMEOUT
    helper_concurrency: int = 0
    helper_mode: str = ONESHOT
    signer: dict | None = None
    configuration: dict = field(default_factory=dict)
    csr_subject: dict = field(default_factory=dict)
    key_type: str = "ec"
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    signing_cert: str | None = None
    signing_key: str | None = None
    signing_key_passphrase: str | None = field(default=None, repr=False)
    jwt_verify_key: str | None = None
    check_mode: bool = False
    pki: bool = True  # gencsr and a certificate for each node; false: the helper's configuration alone (Choria's)
    helper_argv: list | None = field(default=None, init=False)  # the helper resolved to an executable and its args
    request_signer: RequestSigner | None = field(default=None, init=False, repr=False)
    jwt_key: Any = field(default=None, init=False, repr=False)  # the loaded jwt_verify_key

    def __post_init__(self) -> None:
        for name in ("timeout", "helper_timeout", "discovery_timeout"):
            if getattr(self, name) <= 0:
                raise ProvisionError(f"{name} must be greater than 0, not {getattr(self, name)}")
        if self.workers < 1:
            raise ProvisionError(f"workers must be at least 1, not {self.workers}")
        for name in ("retries", "splay", "helper_concurrency"):
            if getattr(self, name) < 0:
                raise ProvisionError(f"{name} must not be negative, not {getattr(self, name)}")
        if self.helper_mode not in HELPER_MODES:
            raise ProvisionError(f"helper_mode must be one of {', '.join(HELPER_MODES)}, not {self.helper_mode!r}")
        if self.expect is not None and self.expect < 1:
            raise ProvisionError(f"expect must be at least 1, not {self.expect}")
        try:
            self.brokers = normalize_brokers(self.brokers)
        except BrokerUrlError as exc:
            raise ProvisionError(f"brokers: {exc}") from None
        if not self.pki and self.signer:
            raise ProvisionError("the built-in signer needs the node's CSR: it cannot be used with pki off")
        if self.helper is not None and self.helper != "" and self.helper != []:
            if self.signer:
                raise ProvisionError("helper and signer are mutually exclusive")
            try:
                self.helper_argv = helper_argv(self.helper)
            except ValueError as exc:
                raise ProvisionError(f"helper: {exc}") from None
        self.request_signer = load_request_signer(self.signing_cert, self.signing_key, self.signing_key_passphrase)
        if self.jwt_verify_key:
            try:
                self.jwt_key = load_jwt_verify_key(self.jwt_verify_key)
            except ProvisioningJwtError as exc:
                raise ProvisionError(str(exc)) from None

    def flow_options(self) -> FlowOptions:
        return FlowOptions(
            token=self.token,
            timeout=self.timeout,
            retries=self.retries,
            splay=self.splay,
            csr_subject=dict(self.csr_subject or {}),
            key_type=self.key_type,
            check_mode=self.check_mode,
            pki=self.pki,
            jwt_verify_key=self.jwt_key,
        )

    def tls(self):
        """The client TLS context of the broker options (None without them); ProvisionError when unusable."""
        try:
            return tls_context(self.tls_ca, self.tls_cert, self.tls_key)
        except (OSError, ValueError) as exc:
            raise ProvisionError(f"broker TLS options: {exc}") from None

    def client(self, **options) -> RpcClient:
        """An RPC client for these brokers (not connected yet); ``options`` are RpcClient's (``connection``,
        ``senderid``, ``reply_scope``, ``observer``)."""
        return RpcClient(
            self.brokers,
            callerid=self.callerid,
            collective=self.collective,
            tls=self.tls(),
            signer=self.request_signer,
            **options,
        )
