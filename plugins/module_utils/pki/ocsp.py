# Copyright: zeroinit.bootstrap contributors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)
"""The site's OCSP responder (RFC 6960): at every TLS handshake the members' broker asks it whether a member's
certificate is revoked, and it answers from the site's CRL.

Why OCSP rather than the CRL itself: nats-server loads no CRL file; its TLS block verifies peers over OCSP
(``ocsp_peer``), the way its maintainers chose instead of CRL files (nats-server issue 929). So the CRL the CA signs
(``crl.py``) stays the one record of revocation, and this responder is how the broker reads it.

Trust: responses are signed by a delegated responder certificate the site CA issued for the broker host (extended
key usage OCSPSigning, ``pki_sign`` profile ``ocsp``); its key is made on that host. The CA key stays with the CA.

Answers, per request (one certificate per request, as Go's client asks; RFC 6960 4.2.1 and 2.3):

* a request that does not parse, asks about more than one certificate or carries a nonce longer than 32 bytes:
  ``malformedRequest``;
* a certificate of another issuer (its issuer name and key hashes are not this CA's): ``unauthorized``;
* no CRL that verifies with the CA yet: ``tryLater``, so the broker refuses the member (fail closed);
* a serial the CRL lists: ``revoked``, with the CRL entry's time and reason; any other: ``good``.

``thisUpdate`` is now and ``nextUpdate`` ``response_validity`` seconds later; a request's nonce is echoed
(RFC 8954). The CRL file is read again when its size or modification time changes (looked at once a second at
most); a CRL that does not verify with the CA is refused, logged, and the last good one stays. A CRL past its
``nextUpdate`` is still used (it holds every revocation up to when it was signed) and logged.
"""

from __future__ import annotations

import datetime
import logging
import os
import threading
import time

from ..common.deps import ExtendedKeyUsageOID, ed448, ed25519, hashes, ocsp, serialization, x509
from ..common.files import read_bytes
from .crl import RevocationError, load_crl
from .x509 import PkiError, certificate_matches_key, is_issued_by, iso8601, require_cryptography, utc_now

log = logging.getLogger("zeroinit.ocsp")

MAX_OCSP_REQUEST_BYTES = 4096
MAX_NONCE_BYTES = 32
DEFAULT_RESPONSE_VALIDITY = 60
CRL_CHECK_INTERVAL = 1.0


def _sign_hash(private_key):
    return None if isinstance(private_key, (ed25519.Ed25519PrivateKey, ed448.Ed448PrivateKey)) else hashes.SHA256()


class OcspResponder:
    """Answers DER OCSP requests about certificates of ``ca_certificate`` from the CRL at ``crl_path``.

    Thread-safe: the answer to a request reads one snapshot of the revoked serials.
    """

    def __init__(self, ca_certificate, responder_certificate, responder_key, crl_path: str, response_validity=60):
        require_cryptography()
        if not hasattr(ocsp.OCSPResponseBuilder, "add_response_by_hash"):
            raise PkiError(
                "the OCSP responder needs cryptography 43 or newer (OCSPResponseBuilder.add_response_by_hash)"
            )
        if not is_issued_by(responder_certificate, ca_certificate):
            raise PkiError("the responder certificate was not issued by the CA", field="cert")
        if not certificate_matches_key(responder_certificate, responder_key):
            raise PkiError("the responder key does not match the responder certificate", field="key")
        try:
            usages = responder_certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        except x509.ExtensionNotFound:
            usages = []
        if ExtendedKeyUsageOID.OCSP_SIGNING not in usages:
            raise PkiError("the responder certificate lacks the OCSPSigning extended key usage", field="cert")
        self.ca = ca_certificate
        self.responder = responder_certificate
        self.key = responder_key
        self.crl_path = crl_path
        self.validity = datetime.timedelta(seconds=float(response_validity))
        self._issuer_hashes: dict[str, tuple[bytes, bytes]] = {}
        self._revoked: dict[int, tuple] | None = None  # serial -> (time, reason flag or None)
        self._crl_stamp: tuple | None = None
        self._crl_checked = 0.0
        self._lock = threading.Lock()

    # -- the CRL -------------------------------------------------------------------------------------------------------
    def refresh(self, force: bool = False) -> None:
        """Read the CRL again when its file changed; keep the last good one when the new one does not verify."""
        now = time.monotonic()
        if not force and now - self._crl_checked < CRL_CHECK_INTERVAL:
            return
        with self._lock:
            self._crl_checked = now
            try:
                info = os.stat(self.crl_path)
            except OSError as exc:
                if self._crl_stamp != ("missing",):
                    log.error("CRL %s cannot be read (%s): answering tryLater until there is one", self.crl_path, exc)
                    self._crl_stamp = ("missing",)
                return
            stamp = (info.st_size, info.st_mtime_ns, info.st_ino)
            if stamp == self._crl_stamp:
                return
            self._crl_stamp = stamp
            try:
                crl = load_crl(read_bytes(self.crl_path) or b"", self.ca, f"CRL {self.crl_path}")
            except RevocationError as exc:
                log.error(
                    "%s; %s", exc, "keeping the last good CRL" if self._revoked is not None else "answering tryLater"
                )
                return
            revoked = {}
            for entry in crl:
                try:
                    reason = entry.extensions.get_extension_for_class(x509.CRLReason).value.reason
                except x509.ExtensionNotFound:
                    reason = None
                revoked[entry.serial_number] = (entry.revocation_date_utc, reason)
            self._revoked = revoked
            ends = crl.next_update_utc
            log.info("CRL %s loaded: %d revoked certificate(s), next update %s", self.crl_path, len(revoked), ends)
            if ends is not None and ends < utc_now():
                log.warning(
                    "CRL %s ended on %s: sign a new one (pki_revoke); answering from it meanwhile",
                    self.crl_path,
                    iso8601(ends),
                )

    # -- answers -------------------------------------------------------------------------------------------------------
    def _hashes_for(self, algorithm) -> tuple[bytes, bytes]:
        """This CA's issuer name and key hashes under ``algorithm``, as cryptography computes them for a request."""
        cached = self._issuer_hashes.get(algorithm.name)
        if cached is None:
            probe = ocsp.OCSPRequestBuilder().add_certificate(self.ca, self.ca, algorithm).build()
            cached = (probe.issuer_name_hash, probe.issuer_key_hash)
            self._issuer_hashes[algorithm.name] = cached
        return cached

    @staticmethod
    def unsuccessful(status_name: str) -> bytes:
        status = getattr(ocsp.OCSPResponseStatus, status_name)
        return ocsp.OCSPResponseBuilder.build_unsuccessful(status).public_bytes(serialization.Encoding.DER)

    def answer(self, der: bytes) -> tuple[bytes, str]:
        """(DER response, a short description for the log) for one DER request; never raises for its input."""
        if not isinstance(der, (bytes, bytearray)) or not 0 < len(der) <= MAX_OCSP_REQUEST_BYTES:
            return self.unsuccessful("MALFORMED_REQUEST"), "malformed: empty or too large"
        try:
            request = ocsp.load_der_ocsp_request(bytes(der))
            algorithm = request.hash_algorithm
            serial = request.serial_number
            nonce = None
            try:
                nonce = request.extensions.get_extension_for_class(x509.OCSPNonce).value.nonce
            except x509.ExtensionNotFound:
                pass
        except Exception as exc:  # any bytes at all: a parse failure is the client's malformed request
            return self.unsuccessful("MALFORMED_REQUEST"), f"malformed: {str(exc)[:120]}"
        if nonce is not None and not 0 < len(nonce) <= MAX_NONCE_BYTES:
            return self.unsuccessful("MALFORMED_REQUEST"), "malformed: nonce of more than 32 bytes"
        try:
            expected = self._hashes_for(algorithm)
        except Exception:  # a hash algorithm cryptography cannot compute here
            return self.unsuccessful("MALFORMED_REQUEST"), f"malformed: unsupported hash {algorithm.name}"
        if (request.issuer_name_hash, request.issuer_key_hash) != expected:
            return self.unsuccessful("UNAUTHORIZED"), f"unauthorized: serial {serial:x} of another issuer"
        self.refresh()
        revoked = self._revoked
        if revoked is None:
            return self.unsuccessful("TRY_LATER"), f"tryLater: no CRL yet for serial {serial:x}"
        now = utc_now()
        if serial in revoked:
            revoked_at, reason = revoked[serial]
            status, label = ocsp.OCSPCertStatus.REVOKED, "revoked"
        else:
            revoked_at = reason = None
            status, label = ocsp.OCSPCertStatus.GOOD, "good"
        builder = (
            ocsp.OCSPResponseBuilder()
            .add_response_by_hash(
                request.issuer_name_hash,
                request.issuer_key_hash,
                serial,
                algorithm,
                status,
                now,
                now + self.validity,
                revoked_at,
                reason,
            )
            .responder_id(ocsp.OCSPResponderEncoding.HASH, self.responder)
            .certificates([self.responder])
        )
        if nonce is not None:
            builder = builder.add_extension(x509.OCSPNonce(nonce), critical=False)
        response = builder.sign(self.key, _sign_hash(self.key))
        return response.public_bytes(serialization.Encoding.DER), f"{label}: serial {serial:x}"
