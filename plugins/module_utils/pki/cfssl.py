# Copyright: zeroinit.bootstrap contributors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)
"""The ``cfssl`` signer backend: a CFSSL CA server (``cfssl serve``) signs node certificates over its HTTP API.

:class:`CfsslSigner` has the shape of the built-in ``Signer`` (``sign(csr, identity, valid_days, profile)`` returning
an ``IssuedCertificate``, ``plan``, ``issue``, ``verify_issued``, and a ``ca`` with the CA certificate PEM), so the
provisioner, ``pki_sign`` and the renewal path can use either backend. The CA's private key stays on the CA server.

Before a request leaves, the CSR passes the same :class:`CsrPolicy` as with the built-in signer, plus one rule the
built-in signer does not need: ``subject_attributes``, the CSR subject is the CN alone. CFSSL copies the CSR's
subject into the certificate (the built-in signer drops everything but the CN), so an ``O=system:masters`` in a CSR
would otherwise reach the certificate. The request names the certificate's SANs (``hosts``) from what the policy
allowed, never from the CSR. The CFSSL profile's usages must give exactly the extended key usage ``profile`` asks for.

After the answer comes back, the certificate is refused unless it parses (one PEM certificate), is signed by the CA
that ``info`` returned (and, with ``cfssl_ca_cert``, that the operator pinned), carries the CSR's public key, has the
subject ``CN=<identity>`` and nothing else, exactly the SANs the policy allowed, no CA:TRUE, no keyCertSign or
cRLSign, exactly the EKU of ``profile``, and does not end later than ``max_valid_days`` from now. A CA server that
signs something else, or anything in between that answers in its place, gets no certificate delivered.

Validity: the CFSSL profile's ``expiry`` decides the lifetime, not ``valid_days``. The signer reads the expiry from
``info`` when it starts and refuses a profile whose expiry exceeds the policy's ``max_valid_days``. ``valid_days`` is
still checked by the policy (1 to ``max_valid_days``); a certificate shorter than ``valid_days`` gets a warning, as the
built-in signer warns when the CA's own end cuts a certificate short.

Transport: ``http.client`` with one kept-alive connection per thread, TLS with the system's or ``cfssl_ca_bundle``'s
trust anchors and host name verification for ``https://`` URLs, a timeout per request, responses bounded to
:data:`CFSSL_MAX_RESPONSE_BYTES`. ``authsign`` is authenticated with HMAC-SHA256 under the hex key of the profile's
``auth_key`` (CFSSL's ``standard`` provider); ``info`` is public. Errors from CFSSL's response envelope are raised as
:class:`CfsslError` with CFSSL's code and message.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import hmac
import http.client
import json
import math
import re
import socket
import ssl
import threading
import time
import urllib.parse
from typing import Sequence

from ..common.deps import (
    HAS_CRYPTOGRAPHY,
    LIBRARIES,
    NameOID,
    UnsupportedAlgorithm,
    hashes,
    serialization,
    x509,
)
from .policy import PolicyError
from .signer import PROFILE_USAGES, IssuedCertificate, check_profile, extended_key_usage
from .x509 import PkiError, is_issued_by, san_strings

CFSSL_API_PATH = "/api/v1/cfssl/"
CFSSL_MAX_RESPONSE_BYTES = 1024 * 1024  # a certificate or CA answer is a few KiB; anything near this is not CFSSL
CFSSL_DEFAULT_TIMEOUT = 10.0
REMOTE_CLOCK_TOLERANCE = datetime.timedelta(minutes=5)
# CFSSL's names of the extended key usages a profile (signer.PROFILE_USAGES) gives.
_CFSSL_USAGE_NAMES = {"serverAuth": "server auth", "clientAuth": "client auth"}
# CFSSL's extended key usage names (config.ExtKeyUsage); its other usage names are key usages.
_CFSSL_EKU_NAMES = frozenset(
    (
        "any",
        "server auth",
        "client auth",
        "code signing",
        "email protection",
        "s/mime",
        "ipsec end system",
        "ipsec tunnel",
        "ipsec user",
        "timestamping",
        "ocsp signing",
        "microsoft sgc",
        "netscape sgc",
    )
)
_CFSSL_CA_USAGES = frozenset(("cert sign", "crl sign"))
_URL_PATH = re.compile(r"[A-Za-z0-9._~%/-]*")
# Go's time.ParseDuration units; microseconds may be spelled with the micro sign or the Greek mu.
_GO_DURATION_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "\u00b5s": 1e-6,
    "\u03bcs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}
_GO_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|\u00b5s|\u03bcs|ms|s|m|h)")


class CfsslError(PkiError):
    """CFSSL answered with an error envelope (``code`` and ``message`` are CFSSL's), or not like CFSSL at all."""

    def __init__(self, message: str, field: str | None = "cfssl_url", code: int | None = None, endpoint: str = ""):
        super().__init__(message, field=field)
        self.code = code
        self.endpoint = endpoint


# --------------------------------------------------------------------------------------------------------------------
# The wire format: authenticated requests, the response envelope, Go durations
# --------------------------------------------------------------------------------------------------------------------


def parse_auth_key(text) -> bytes:
    """The HMAC key from the hex text CFSSL's ``auth_keys`` use; the key itself is never put in a message."""
    value = (text or "").strip() if isinstance(text, str) else ""
    if not value:
        raise PkiError(
            "cfssl_auth_key is required for the cfssl backend (the hex key of the profile's auth_key)",
            field="cfssl_auth_key",
        )
    try:
        key = bytes.fromhex(value)
    except ValueError:
        raise PkiError(
            f"cfssl_auth_key is not an even number of hexadecimal digits ({len(value)} characters): CFSSL's "
            "standard auth keys are hex",
            field="cfssl_auth_key",
        ) from None
    return key


def authsign_token(key: bytes, request: bytes) -> bytes:
    """CFSSL's ``standard`` token: HMAC-SHA256 over the exact request bytes (no additional data)."""
    return hmac.new(key, request, hashlib.sha256).digest()


def authenticated_request(key: bytes, request: bytes) -> bytes:
    """The ``authsign`` body: ``{"token", "request"}``, both standard base64 (Go's encoding of ``[]byte``)."""
    document = {
        "token": base64.b64encode(authsign_token(key, request)).decode("ascii"),
        "request": base64.b64encode(request).decode("ascii"),
    }
    return json.dumps(document, separators=(",", ":")).encode("ascii")


def parse_go_duration(text) -> datetime.timedelta:
    """A Go ``time.ParseDuration`` string (CFSSL's profile ``expiry``, e.g. ``8760h`` or ``1h30m``)."""
    if not isinstance(text, str) or not text:
        raise ValueError(f"{text!r} is not a duration")
    if text == "0":
        return datetime.timedelta(0)
    seconds, position = 0.0, 0
    for match in _GO_DURATION_PART.finditer(text):
        if match.start() != position:
            break
        seconds += float(match.group(1)) * _GO_DURATION_UNITS[match.group(2)]
        position = match.end()
    if position != len(text):
        raise ValueError(f"{text!r} is not a Go duration such as 8760h")
    try:
        return datetime.timedelta(seconds=seconds)
    except OverflowError:
        raise ValueError(f"{text!r} is longer than any certificate lifetime") from None


def _printable(text, limit: int = 300) -> str:
    """Text from the network made safe for one line of a message: control characters escaped, length capped."""
    value = text if isinstance(text, str) else str(text)
    value = "".join(c if c.isprintable() else repr(c)[1:-1] for c in value)
    return value if len(value) <= limit else value[:limit] + "..."


def parse_envelope(body: bytes, status: int, where: str, endpoint: str) -> dict:
    """The ``result`` of CFSSL's ``{"success", "result", "errors", "messages"}`` envelope, or CfsslError."""
    try:
        document = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise CfsslError(
            f"{where} answered {endpoint} with HTTP {status} and a body that is not a CFSSL response: "
            f"{_printable(body[:120].decode('utf-8', 'replace'))!r}",
            endpoint=endpoint,
        ) from None
    if not isinstance(document, dict) or not isinstance(document.get("success"), bool):
        raise CfsslError(
            f"{where} answered {endpoint} with HTTP {status} and JSON that is not a CFSSL response envelope",
            endpoint=endpoint,
        )
    if not document["success"]:
        errors = document.get("errors") if isinstance(document.get("errors"), list) else []
        first = errors[0] if errors and isinstance(errors[0], dict) else {}
        code = (
            first.get("code")
            if isinstance(first.get("code"), int) and not isinstance(first.get("code"), bool)
            else None
        )
        message = _printable(first.get("message", "no error message")) if first else "no error message"
        field = "cfssl_url"
        hint = ""
        if message == "invalid token":
            field, hint = "cfssl_auth_key", " (cfssl_auth_key is not the key of the profile's auth_key)"
        raise CfsslError(
            f"{where} refused {endpoint}: CFSSL error {code}: {message}{hint}",
            field=field,
            code=code,
            endpoint=endpoint,
        )
    result = document.get("result")
    if not isinstance(result, dict):
        raise CfsslError(f"{where} answered {endpoint} with success but no result object", endpoint=endpoint)
    return result


# --------------------------------------------------------------------------------------------------------------------
# The HTTP client
# --------------------------------------------------------------------------------------------------------------------


class CfsslClient:
    """CFSSL's ``info`` and ``authsign`` endpoints at ``url``; thread-safe (one kept-alive connection per thread)."""

    def __init__(self, url: str, auth_key, ca_bundle: str | None = None, timeout: float = CFSSL_DEFAULT_TIMEOUT):
        self.url = str(url or "").rstrip("/")
        parts = urllib.parse.urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise PkiError(
                f"cfssl_url {self.url!r} is not an http:// or https:// URL of a CFSSL server", field="cfssl_url"
            )
        if parts.username or parts.password or parts.query or parts.fragment:
            raise PkiError(
                f"cfssl_url {self.url!r} may not carry credentials, a query or a fragment", field="cfssl_url"
            )
        try:
            self.port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError as exc:
            raise PkiError(f"cfssl_url {self.url!r}: {exc}", field="cfssl_url") from None
        if not _URL_PATH.fullmatch(parts.path):
            raise PkiError(
                f"cfssl_url {self.url!r}: the path may only hold letters, digits and . _ ~ % / -", field="cfssl_url"
            )
        self.scheme, self.host, self.path = parts.scheme, parts.hostname, parts.path
        self.timeout = float(timeout)
        if not math.isfinite(self.timeout) or self.timeout <= 0:
            raise PkiError(f"cfssl_timeout must be a number of seconds above 0, not {timeout}", field="cfssl_timeout")
        self._key = parse_auth_key(auth_key)
        self._tls = None
        if self.scheme == "https":
            try:
                self._tls = ssl.create_default_context(cafile=ca_bundle or None)
            except (OSError, ssl.SSLError) as exc:
                raise PkiError(f"cfssl_ca_bundle {ca_bundle} cannot be used: {exc}", field="cfssl_ca_bundle") from None
        elif ca_bundle:
            raise PkiError(
                f"cfssl_ca_bundle is set but cfssl_url {self.url} is plain http: use an https:// URL",
                field="cfssl_ca_bundle",
            )
        self._local = threading.local()
        self._lock = threading.Lock()
        self._connections: list[http.client.HTTPConnection] = []

    # -- the endpoints ------------------------------------------------------------------------------------------------
    def info(self, profile: str | None = None, label: str | None = None) -> dict:
        """``info``: the CA certificate, and the usages and expiry of ``profile`` (the default one when unset)."""
        request = {}
        if profile:
            request["profile"] = profile
        if label:
            request["label"] = label
        return self.call("info", json.dumps(request).encode("utf-8"))

    def authsign(self, sign_request: dict) -> dict:
        """``authsign``: ``sign_request`` (``certificate_request``, ``hosts``, ``profile``, ``label``) under the key."""
        request = json.dumps(sign_request, separators=(",", ":")).encode("utf-8")
        return self.call("authsign", authenticated_request(self._key, request))

    def call(self, endpoint: str, body: bytes) -> dict:
        """POST ``body`` to the endpoint; the envelope's ``result``, or CfsslError / PkiError naming the URL."""
        where = f"CFSSL at {self.url}"
        deadline = time.monotonic() + self.timeout
        for attempt in (1, 2):
            connection, reused = self._connection()
            try:
                status, payload = self._exchange(connection, endpoint, body, deadline, where)
                break
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError) as exc:
                self._drop(connection)
                # A kept-alive connection the server closed while idle: one new connection, then give up.
                if reused and attempt == 1:
                    continue
                raise PkiError(
                    f"cannot reach {where} ({endpoint}): {_printable(exc) or type(exc).__name__}", field="cfssl_url"
                ) from None
            except ssl.SSLError as exc:
                self._drop(connection)
                raise PkiError(
                    f"TLS to {where} failed ({endpoint}): {_printable(exc)}", field="cfssl_ca_bundle"
                ) from None
            except http.client.HTTPException as exc:
                self._drop(connection)
                raise CfsslError(
                    f"{where} did not answer {endpoint} in HTTP: {_printable(exc) or type(exc).__name__}",
                    endpoint=endpoint,
                ) from None
            except OSError as exc:
                self._drop(connection)
                reason = "timed out" if isinstance(exc, socket.timeout) else (exc.strerror or _printable(exc))
                raise PkiError(
                    f"cannot reach {where} ({endpoint}): {reason or type(exc).__name__}", field="cfssl_url"
                ) from None
            except CfsslError:
                self._drop(connection)
                raise
        return parse_envelope(payload, status, where, endpoint)

    # -- connections --------------------------------------------------------------------------------------------------
    def _exchange(self, connection, endpoint: str, body: bytes, deadline: float, where: str) -> tuple[int, bytes]:
        connection.request(
            "POST",
            f"{self.path}{CFSSL_API_PATH}{endpoint}",
            body=body,
            headers={"Content-Type": "application/json", "Accept": "application/json"},
        )
        response = connection.getresponse()
        length = response.getheader("Content-Length")
        if length is not None and length.strip().isdigit() and int(length) > CFSSL_MAX_RESPONSE_BYTES:
            raise CfsslError(
                f"{where} answered {endpoint} with {int(length)} bytes, more than the {CFSSL_MAX_RESPONSE_BYTES} allowed",
                endpoint=endpoint,
            )
        chunks, size = [], 0
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise socket.timeout("timed out")
            if connection.sock is not None:
                connection.sock.settimeout(remaining)  # the whole body within the timeout, not each read
            chunk = response.read1(65536)
            if not chunk:
                break
            size += len(chunk)
            if size > CFSSL_MAX_RESPONSE_BYTES:
                raise CfsslError(
                    f"{where} answered {endpoint} with more than the {CFSSL_MAX_RESPONSE_BYTES} bytes allowed",
                    endpoint=endpoint,
                )
            chunks.append(chunk)
        response.close()  # read1 does not mark a Content-Length body finished, and the next request needs that
        if response.will_close:
            self._drop(connection)
        elif connection.sock is not None:
            connection.sock.settimeout(self.timeout)
        return response.status, b"".join(chunks)

    def _connection(self):
        connection = getattr(self._local, "connection", None)
        if connection is not None:
            return connection, True
        if self._tls is not None:
            connection = http.client.HTTPSConnection(self.host, self.port, timeout=self.timeout, context=self._tls)
        else:
            connection = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        self._local.connection = connection
        with self._lock:
            self._connections.append(connection)
        return connection, False

    def _drop(self, connection) -> None:
        connection.close()
        if getattr(self._local, "connection", None) is connection:
            self._local.connection = None
        with self._lock:
            if connection in self._connections:
                self._connections.remove(connection)

    def close(self) -> None:
        """Close every thread's connection (a later call opens a new one)."""
        with self._lock:
            connections, self._connections = self._connections, []
        for connection in connections:
            connection.close()
        self._local = threading.local()


# --------------------------------------------------------------------------------------------------------------------
# The CA as the server describes it, and the signer
# --------------------------------------------------------------------------------------------------------------------


def _is_ca(cert) -> bool:
    try:
        return cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        return False


def _pem(cert) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode("ascii")


def _certificates(pem, what: str, field: str) -> list:
    try:
        certs = x509.load_pem_x509_certificates(pem.encode("ascii") if isinstance(pem, str) else pem)
    except (ValueError, UnicodeError, TypeError) as exc:
        raise PkiError(f"{what} is not a PEM certificate: {_printable(exc)}", field=field) from None
    return certs


class RemoteCertificateAuthority:
    """The CA certificate a CFSSL server signs with (from ``info``), checked, and the chain handed to nodes."""

    def __init__(self, certificate, chain: Sequence, url: str):
        self.certificate = certificate
        self.chain = list(chain)
        self.url = url
        self.warnings: list[str] = []
        self.certificate_pem = _pem(certificate)
        self.chain_pem = "".join(_pem(c) for c in self.chain)
        self.issuer_string = certificate.subject.rfc4514_string()

    @property
    def subject(self):
        return self.certificate.subject

    @property
    def not_after(self) -> datetime.datetime:
        return self.certificate.not_valid_after_utc

    @property
    def fingerprint_sha256(self) -> str:
        return self.certificate.fingerprint(hashes.SHA256()).hex()

    @classmethod
    def from_info(cls, info: dict, url: str, pinned_pem: str | None = None) -> RemoteCertificateAuthority:
        """The CA from an ``info`` result; with ``pinned_pem`` (``cfssl_ca_cert``) it must be one of those."""
        try:
            return cls._from_info(info, url, pinned_pem)
        except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
            raise CfsslError(
                f"CFSSL at {url} answered info with a CA certificate that cannot be read: {_printable(exc)}",
                endpoint="info",
            ) from None

    @classmethod
    def _from_info(cls, info: dict, url: str, pinned_pem: str | None) -> RemoteCertificateAuthority:
        where = f"CFSSL at {url}"
        text = info.get("certificate")
        if not isinstance(text, str) or not text.strip():
            raise CfsslError(f"{where} answered info without a CA certificate", endpoint="info")
        certs = _certificates(text, f"the CA certificate {where} answered info with", "cfssl_url")
        if len(certs) != 1:
            raise CfsslError(
                f"{where} answered info with {len(certs)} certificates, expected its CA certificate", endpoint="info"
            )
        ca = certs[0]
        if not _is_ca(ca):
            raise CfsslError(
                f"{where} answered info with {ca.subject.rfc4514_string()!r}, which is not a CA certificate "
                "(BasicConstraints CA:TRUE missing)",
                endpoint="info",
            )
        now = datetime.datetime.now(datetime.timezone.utc)
        if ca.not_valid_after_utc <= now:
            raise PkiError(
                f"the CA certificate of {where} expired on {ca.not_valid_after_utc:%Y-%m-%dT%H:%M:%SZ}",
                field="cfssl_url",
            )
        chain = [ca]
        if pinned_pem is not None:
            pinned = _certificates(pinned_pem, "cfssl_ca_cert", "cfssl_ca_cert")
            if not pinned:
                raise PkiError("cfssl_ca_cert contains no certificate", field="cfssl_ca_cert")
            if ca not in pinned:
                raise PkiError(
                    f"{where} signs with the CA {ca.subject.rfc4514_string()!r} (SHA-256 "
                    f"{ca.fingerprint(hashes.SHA256()).hex()}), which is not in cfssl_ca_cert",
                    field="cfssl_ca_cert",
                )
            # The pinned file may hold the root above an intermediate CA server: nodes get the whole chain.
            chain += [c for c in pinned if c != ca]
        return cls(ca, chain, url)


class CfsslSigner:
    """Issues node certificates through a CFSSL server under a policy. Thread-safe after construction.

    ``policy`` is a CsrPolicy (or anything with ``evaluate(csr, identity, valid_days)`` raising PolicyError, and
    ``max_valid_days``). Construction asks the server's ``info`` once: the CA, and the profile's usages and expiry.
    """

    def __init__(
        self,
        client: CfsslClient,
        policy,
        cfssl_profile: str | None = None,
        label: str | None = None,
        pinned_ca_pem: str | None = None,
    ):
        if not HAS_CRYPTOGRAPHY:
            raise PkiError(f"the Python library 'cryptography' is required: {LIBRARIES['cryptography'][1]}")
        self.client = client
        self.policy = policy
        self.cfssl_profile = cfssl_profile or ""
        self.label = label or ""
        info = client.info(self.cfssl_profile, self.label)
        self.ca = RemoteCertificateAuthority.from_info(info, client.url, pinned_ca_pem)
        self.usages = self._usages(info)
        self.expiry = self._expiry(info)
        if client.scheme == "http" and pinned_ca_pem is None:
            self.ca.warnings.append(
                f"cfssl_url {client.url} is plain http and cfssl_ca_cert is not set: the CA certificate from the server "
                "is not authenticated (use https with cfssl_ca_bundle, or pin the CA with cfssl_ca_cert)"
            )

    def _profile_name(self) -> str:
        return repr(self.cfssl_profile) if self.cfssl_profile else "default"

    def _usages(self, info: dict) -> tuple:
        usages = info.get("usages")
        if not isinstance(usages, list) or not all(isinstance(u, str) for u in usages):
            raise CfsslError(f"CFSSL at {self.client.url} answered info without the profile's usages", endpoint="info")
        usages = tuple(u.lower() for u in usages)
        signing = sorted(_CFSSL_CA_USAGES.intersection(usages))
        if signing:
            raise PkiError(
                f"the CFSSL profile {self._profile_name()} at {self.client.url} has the usages {signing}: its "
                "certificates could sign certificates; a node profile must not",
                field="cfssl_profile",
            )
        return usages

    def _expiry(self, info: dict) -> datetime.timedelta:
        try:
            expiry = parse_go_duration(info.get("expiry"))
        except ValueError as exc:
            raise CfsslError(
                f"CFSSL at {self.client.url} answered info with an expiry that cannot be read: {_printable(exc)}",
                endpoint="info",
            ) from None
        max_days = int(self.policy.max_valid_days)
        if expiry > datetime.timedelta(days=max_days):
            raise PkiError(
                f"the CFSSL profile {self._profile_name()} at {self.client.url} issues certificates for "
                f"{info.get('expiry')} ({expiry.total_seconds() / 86400:g} days), more than max_valid_days {max_days}",
                field="cfssl_profile",
            )
        if expiry <= datetime.timedelta(0):
            raise PkiError(f"the CFSSL profile {self._profile_name()} has no positive expiry", field="cfssl_profile")
        return expiry

    # -- the signer's interface ---------------------------------------------------------------------------------------
    def sign(self, csr, identity: str, valid_days: int = 365, profile: str = "both") -> IssuedCertificate:
        """Check ``csr`` against the policy for ``identity``, have the CA server sign it, check what comes back."""
        check_profile(profile)
        facts = self.policy.evaluate(csr, identity, valid_days)
        return self.issue(facts, profile)

    def plan(self, facts, now: datetime.datetime | None = None) -> tuple[datetime.datetime, list[str]]:
        """(not_after, warnings) a certificate issued now for ``facts`` would get (the profile's expiry decides)."""
        now = now or datetime.datetime.now(datetime.timezone.utc)
        if self.ca.not_after <= now:
            raise PkiError(f"the CA certificate of CFSSL at {self.client.url} expired", field="cfssl_url")
        return now + self.expiry, self._validity_warnings(facts, now + self.expiry)

    def issue(self, facts, profile: str = "both") -> IssuedCertificate:
        """Have the CA server sign for ``facts`` the policy established; refuse an answer that is anything else."""
        check_profile(profile)
        self._check_subject(facts)
        self._check_usages(profile)
        request = {
            "certificate_request": facts.csr.public_bytes(serialization.Encoding.PEM).decode("ascii"),
            "hosts": list(facts.dns_names) + [str(a) for a in facts.ip_addresses],
            "profile": self.cfssl_profile,
        }
        if self.label:
            request["label"] = self.label
        result = self.client.authsign(request)
        return self.check_issued(result.get("certificate"), facts, profile)

    def verify_issued(self, cert) -> bool:
        """True when ``cert`` was signed by this CA's key and names it as issuer."""
        return is_issued_by(cert, self.ca.certificate)

    # -- before the request leaves ------------------------------------------------------------------------------------
    @staticmethod
    def _check_subject(facts) -> None:
        others = [a for a in facts.csr.subject if a.oid != NameOID.COMMON_NAME]
        if others:
            value = x509.Name(others).rfc4514_string()
            raise PolicyError(
                "subject_attributes",
                value,
                f"the CSR subject carries {value!r} besides the CN; the CFSSL server would copy it into the "
                "certificate, so the cfssl backend signs only CSRs whose subject is CN=<identity> alone",
            )

    def _check_usages(self, profile: str) -> None:
        wanted = sorted(_CFSSL_USAGE_NAMES[u] for u in PROFILE_USAGES[profile])
        have = sorted(u for u in self.usages if u in _CFSSL_EKU_NAMES)
        if have != wanted:
            raise PkiError(
                f"the CFSSL profile {self._profile_name()} at {self.client.url} gives the extended key usages {have}, "
                f"profile {profile!r} needs exactly {wanted}",
                field="cfssl_profile",
            )

    # -- after the answer comes back ----------------------------------------------------------------------------------
    def check_issued(self, pem, facts, profile: str) -> IssuedCertificate:
        """The certificate the server answered with, refused unless it is what the policy granted (see module doc)."""
        where = f"CFSSL at {self.client.url}"

        def refuse(reason: str):
            return CfsslError(
                f"{where} answered authsign for {facts.identity} with a certificate that {reason}; it is refused",
                endpoint="authsign",
            )

        if not isinstance(pem, str) or "-----BEGIN CERTIFICATE-----" not in pem:
            raise CfsslError(f"{where} answered authsign without a PEM certificate", endpoint="authsign")
        try:
            certs = x509.load_pem_x509_certificates(pem.encode("utf-8"))
        except (ValueError, UnicodeError) as exc:
            raise CfsslError(
                f"{where} answered authsign with a certificate that does not parse: {_printable(exc)}",
                endpoint="authsign",
            ) from None
        if len(certs) != 1:
            raise refuse(f"is {len(certs)} certificates, not one")
        try:
            return self._checked(certs[0], facts, profile, refuse)
        except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
            raise refuse(f"cannot be read ({_printable(exc)})") from None

    def _checked(self, cert, facts, profile: str, refuse) -> IssuedCertificate:
        if not self.verify_issued(cert):
            raise refuse(
                f"was not signed by the CA {self.ca.issuer_string!r} (issuer {cert.issuer.rfc4514_string()!r})"
            )
        if cert.public_key() != facts.public_key:
            raise refuse("does not carry the public key of the CSR")
        if list(cert.subject) != [x509.NameAttribute(NameOID.COMMON_NAME, facts.identity)]:
            raise refuse(f"has the subject {cert.subject.rfc4514_string()!r}, not CN={facts.identity} alone")
        try:
            if cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca:
                raise refuse("is a CA certificate (BasicConstraints CA:TRUE)")
        except x509.ExtensionNotFound:
            pass  # no BasicConstraints: not a CA (RFC 5280 4.2.1.9)
        try:
            key_usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
            if key_usage.key_cert_sign or key_usage.crl_sign:
                raise refuse("may sign certificates or CRLs (KeyUsage keyCertSign or cRLSign)")
        except x509.ExtensionNotFound:
            pass
        self._check_names(cert, facts, refuse)
        self._check_extended_key_usage(cert, profile, refuse)
        now = datetime.datetime.now(datetime.timezone.utc)
        max_days = int(self.policy.max_valid_days)
        if cert.not_valid_after_utc > now + datetime.timedelta(days=max_days) + REMOTE_CLOCK_TOLERANCE:
            raise refuse(
                f"is valid until {cert.not_valid_after_utc:%Y-%m-%dT%H:%M:%SZ}, beyond max_valid_days {max_days}"
            )
        if cert.not_valid_before_utc > now + REMOTE_CLOCK_TOLERANCE:
            raise refuse(
                f"is not valid before {cert.not_valid_before_utc:%Y-%m-%dT%H:%M:%SZ} (is the CA server's clock ahead?)"
            )
        warnings = self._validity_warnings(facts, cert.not_valid_after_utc)
        return IssuedCertificate.from_certificate(cert, self.ca.chain_pem, warnings)

    @staticmethod
    def _check_names(cert, facts, refuse) -> None:
        try:
            names = list(cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)
        except x509.ExtensionNotFound:
            names = []
        wanted = sorted([f"DNS:{n.lower()}" for n in facts.dns_names] + [f"IP:{a}" for a in facts.ip_addresses])
        have = san_strings(names)
        if sorted(have) != wanted:
            raise refuse(f"names {sorted(have)}, the policy allowed {wanted}")

    @staticmethod
    def _check_extended_key_usage(cert, profile: str, refuse) -> None:
        wanted = set(extended_key_usage(profile))
        try:
            have = set(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
        except x509.ExtensionNotFound:
            have = set()
        if have != wanted:
            raise refuse(
                f"has the extended key usages {sorted(o.dotted_string for o in have)}, profile {profile!r} needs "
                f"{sorted(o.dotted_string for o in wanted)}"
            )

    def _validity_warnings(self, facts, not_after: datetime.datetime) -> list[str]:
        warnings = []
        asked = int(facts.valid_days)
        if self.expiry < datetime.timedelta(days=asked):
            warnings.append(
                f"certificate for {facts.identity} ends on {not_after:%Y-%m-%dT%H:%M:%SZ}: the CFSSL profile "
                f"{self._profile_name()} issues {self.expiry.total_seconds() / 86400:g} days, not the {asked} days of "
                "valid_days"
            )
        if not_after > self.ca.not_after:
            # CFSSL does not cut a certificate at its CA's end, as the built-in signer does: it stops verifying then.
            warnings.append(
                f"certificate for {facts.identity} ends on {not_after:%Y-%m-%dT%H:%M:%SZ}, after its CA "
                f"(CFSSL at {self.client.url}) on {self.ca.not_after:%Y-%m-%dT%H:%M:%SZ}: it verifies only until then"
            )
        return warnings

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> CfsslSigner:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# --------------------------------------------------------------------------------------------------------------------
# Options: ready to join the signer options (pki_sign's, and choria_provision's ``signer`` sub-options)
# --------------------------------------------------------------------------------------------------------------------

# Documented in the signer doc fragment (plugins/doc_fragments/signer.py) with the built-in signer's options.
CFSSL_SIGNER_OPTIONS = dict(
    backend=dict(type="str", default="builtin", choices=["builtin", "cfssl"]),
    cfssl_url=dict(type="str"),
    cfssl_auth_key=dict(type="str", no_log=True),
    cfssl_profile=dict(type="str"),
    cfssl_label=dict(type="str"),
    cfssl_ca_bundle=dict(type="path"),
    cfssl_ca_cert=dict(type="path"),
    cfssl_timeout=dict(type="float", default=CFSSL_DEFAULT_TIMEOUT),
)


def cfssl_signer_from_params(params: dict, policy) -> CfsslSigner:
    """A CfsslSigner from options shaped like :data:`CFSSL_SIGNER_OPTIONS` and a policy (``policy_from_params``)."""
    url = params.get("cfssl_url")
    if not url:
        raise PkiError("cfssl_url is required for the cfssl backend", field="cfssl_url")
    pinned = None
    path = params.get("cfssl_ca_cert")
    if path:
        try:
            with open(path, encoding="ascii") as handle:
                pinned = handle.read()
        except (OSError, UnicodeDecodeError) as exc:
            raise PkiError(
                f"cfssl_ca_cert {path} cannot be read: {getattr(exc, 'strerror', None) or exc}", field="cfssl_ca_cert"
            ) from None
    timeout = params.get("cfssl_timeout")
    client = CfsslClient(
        url,
        params.get("cfssl_auth_key"),
        ca_bundle=params.get("cfssl_ca_bundle"),
        timeout=CFSSL_DEFAULT_TIMEOUT if timeout is None else timeout,
    )
    try:
        return CfsslSigner(client, policy, params.get("cfssl_profile"), params.get("cfssl_label"), pinned)
    except BaseException:
        client.close()
        raise
