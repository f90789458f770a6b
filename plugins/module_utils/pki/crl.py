# Copyright: zeroinit.bootstrap contributors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)
"""Certificate revocation: the site's revocation records and the CRL its CA signs from them (RFC 5280 section 5).

The records file (``revocations.json``, versioned JSON, written atomically) holds one entry per revoked certificate
(serial, identity, reason, time of revocation, end of the certificate) and the number of the last CRL signed. A
serial once recorded stays as it was: revocation is permanent, and recording it again changes nothing.

The CRL is signed by the CA that issued the certificates, from every record: ``crlNumber`` one above the last,
``thisUpdate`` now, ``nextUpdate`` ``crl_valid_days`` later, a reason code per entry. An existing CRL is kept
while it is signed by this CA, lists exactly the recorded serials and does not end within ``renew_before_days``.

The same CRL is what the members' broker enforces: nats-server loads no CRL file, so the site's OCSP responder
(``ocsp.py``) answers the broker from it.
"""

from __future__ import annotations

import datetime
import json
import os
from dataclasses import dataclass

from ..common.deps import NameOID, serialization, x509
from ..common.files import atomic_write_many, read_text
from .ca import CertificateAuthority, require_directory
from .x509 import PkiError, is_issued_by, iso8601, load_certificates, not_after, require_cryptography, utc_now

REVOCATIONS_VERSION = 1
DEFAULT_REVOCATION_REASON = "cessation_of_operation"
DEFAULT_CRL_VALID_DAYS = 30
DEFAULT_CRL_RENEW_BEFORE_DAYS = 10
MAX_REVOCATIONS_BYTES = 64 * 1024 * 1024
# RFC 5280 5.3.1 reason codes a site uses (certificateHold is left out: a hold is not revocation).
REVOCATION_REASONS = (
    "unspecified",
    "key_compromise",
    "ca_compromise",
    "affiliation_changed",
    "superseded",
    "cessation_of_operation",
    "privilege_withdrawn",
)


class RevocationError(PkiError):
    """Revocation records or a CRL that cannot be used; ``field`` names the option at fault."""


def _parse_time(value, what: str) -> datetime.datetime:
    try:
        moment = datetime.datetime.strptime(str(value), "%Y-%m-%dT%H:%M:%SZ")
    except ValueError:
        raise RevocationError(f"{what} is not an ISO 8601 UTC time like 2030-01-31T12:00:00Z: {value!r}") from None
    return moment.replace(tzinfo=datetime.timezone.utc)


def parse_serial(value, what: str = "serial") -> int:
    """A certificate serial from hexadecimal text (colons allowed, as openssl prints them) or an integer."""
    if isinstance(value, int) and not isinstance(value, bool):
        serial = value
    else:
        text = str(value).strip().lower().replace(":", "")
        if text.startswith("0x"):
            text = text[2:]
        try:
            serial = int(text, 16)
        except ValueError:
            raise RevocationError(f"{what} {str(value)[:80]!r} is not a hexadecimal serial number") from None
    if serial <= 0 or serial.bit_length() > 160:
        raise RevocationError(f"{what} {value!r} is not a positive serial of at most 20 octets (RFC 5280 4.1.2.2)")
    return serial


@dataclass(frozen=True)
class RevocationRecord:
    """One revoked certificate."""

    serial: int
    identity: str
    reason: str
    revoked_at: datetime.datetime
    not_after: datetime.datetime | None = None

    @property
    def serial_hex(self) -> str:
        return f"{self.serial:x}"

    def summary(self) -> dict:
        document = {
            "serial": self.serial_hex,
            "identity": self.identity,
            "reason": self.reason,
            "revoked_at": iso8601(self.revoked_at),
        }
        if self.not_after is not None:
            document["not_after"] = iso8601(self.not_after)
        return document

    @classmethod
    def from_document(cls, document, where: str) -> RevocationRecord:
        if not isinstance(document, dict):
            raise RevocationError(f"{where} is not a JSON object")
        reason = document.get("reason", DEFAULT_REVOCATION_REASON)
        if reason not in REVOCATION_REASONS:
            raise RevocationError(f"{where}: reason {reason!r} is not one of {', '.join(REVOCATION_REASONS)}")
        identity = document.get("identity", "")
        if not isinstance(identity, str) or len(identity) > 253:
            raise RevocationError(f"{where}: identity is not a string of at most 253 characters")
        end = document.get("not_after")
        return cls(
            serial=parse_serial(document.get("serial"), f"{where}: serial"),
            identity=identity,
            reason=reason,
            revoked_at=_parse_time(document.get("revoked_at"), f"{where}: revoked_at"),
            not_after=_parse_time(end, f"{where}: not_after") if end else None,
        )


class RevocationRecords:
    """The site's revocation records: every revoked serial, and the number of the last CRL signed from them."""

    def __init__(self, records: list | None = None, crl_number: int = 0):
        self.records: dict[int, RevocationRecord] = {r.serial: r for r in records or ()}
        self.crl_number = crl_number

    @property
    def serials(self) -> list[int]:
        return sorted(self.records)

    def add(self, record: RevocationRecord) -> bool:
        """Record ``record``; False when its serial is recorded already (the first record stays)."""
        if record.serial in self.records:
            return False
        self.records[record.serial] = record
        return True

    def dump(self) -> str:
        document = {
            "version": REVOCATIONS_VERSION,
            "crl_number": self.crl_number,
            "revoked": [self.records[serial].summary() for serial in self.serials],
        }
        return json.dumps(document, indent=2, sort_keys=True) + "\n"

    @classmethod
    def load(cls, text: str | None, path: str = "records") -> RevocationRecords:
        """The records from their JSON text; empty records when there is no file yet."""
        if text is None:
            return cls()
        try:
            document = json.loads(text)
        except ValueError as exc:
            raise RevocationError(f"records {path} is not JSON: {exc}", field="records") from None
        if not isinstance(document, dict) or document.get("version") != REVOCATIONS_VERSION:
            raise RevocationError(
                f"records {path} is not a version {REVOCATIONS_VERSION} revocation file", field="records"
            )
        entries = document.get("revoked", [])
        number = document.get("crl_number", 0)
        if not isinstance(entries, list) or not isinstance(number, int) or isinstance(number, bool) or number < 0:
            raise RevocationError(
                f"records {path}: 'revoked' must be a list and 'crl_number' a whole number", field="records"
            )
        try:
            records = [
                RevocationRecord.from_document(e, f"records {path} entry {i + 1}") for i, e in enumerate(entries)
            ]
        except RevocationError as exc:
            raise RevocationError(str(exc), field="records") from None
        return cls(records, number)


def _reason_flag(reason: str):
    return getattr(x509.ReasonFlags, reason)


def sign_crl(
    ca: CertificateAuthority,
    records: RevocationRecords,
    crl_number: int,
    valid_days: int = DEFAULT_CRL_VALID_DAYS,
    now: datetime.datetime | None = None,
):
    """A CRL over every record, signed by ``ca``, numbered ``crl_number``."""
    require_cryptography()
    now = now or utc_now()
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca.subject)
        .last_update(now)
        .next_update(now + datetime.timedelta(days=int(valid_days)))
        .add_extension(x509.CRLNumber(crl_number), critical=False)
        .add_extension(ca.authority_key_identifier, critical=False)
    )
    for serial in records.serials:
        record = records.records[serial]
        entry = (
            x509.RevokedCertificateBuilder()
            .serial_number(serial)
            .revocation_date(record.revoked_at)
            .add_extension(x509.CRLReason(_reason_flag(record.reason)), critical=False)
            .build()
        )
        builder = builder.add_revoked_certificate(entry)
    return builder.sign(ca.private_key, ca.signature_hash)


def load_crl(pem, issuer_certificate, what: str = "crl"):
    """A PEM CRL whose signature verifies with ``issuer_certificate`` and which names it as issuer."""
    require_cryptography()
    data = pem.encode("ascii") if isinstance(pem, str) else bytes(pem or b"")
    try:
        crl = x509.load_pem_x509_crl(data)
    except ValueError as exc:
        raise RevocationError(f"{what} is not a PEM CRL: {exc}", field="crl") from None
    if crl.issuer != issuer_certificate.subject or not crl.is_signature_valid(issuer_certificate.public_key()):
        raise RevocationError(
            f"{what} is not signed by the CA {issuer_certificate.subject.rfc4514_string()}", field="crl"
        )
    return crl


def crl_number(crl) -> int:
    try:
        return crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    except x509.ExtensionNotFound:
        return 0


def crl_serials(crl) -> list[int]:
    return sorted(entry.serial_number for entry in crl)


def crl_refresh_reason(
    existing_pem: str | None,
    ca: CertificateAuthority,
    records: RevocationRecords,
    renew_before_days: int = DEFAULT_CRL_RENEW_BEFORE_DAYS,
    now: datetime.datetime | None = None,
) -> str | None:
    """Why the CRL at hand must be signed again (None: it is current)."""
    if existing_pem is None:
        return "there is no CRL yet"
    try:
        crl = load_crl(existing_pem, ca.certificate)
    except RevocationError as exc:
        return str(exc)
    if crl_serials(crl) != records.serials:
        return "the CRL does not list exactly the recorded serials"
    if crl_number(crl) != records.crl_number:
        return f"the CRL is number {crl_number(crl)}, the records name number {records.crl_number}"
    now = now or utc_now()
    ends = crl.next_update_utc
    if ends is None or ends - now <= datetime.timedelta(days=int(renew_before_days)):
        return (
            f"the CRL ends on {iso8601(ends) if ends else '(never said)'}, within renew_before_days {renew_before_days}"
        )
    return None


def certificate_identity(cert) -> str:
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if names else ""


class CertificateRevocation:
    """Revoke certificates and keep the CRL current: the whole flow of the ``pki_revoke`` module.

    Load the CA and the records -> judge each certificate given (issued by this CA, and for one a node reported,
    naming that node; else left out with a warning) and each serial given -> add what is new -> sign a CRL when the records changed or the CRL is not current ->
    write the records, then the CRL, each atomically (0600, 0644). Check mode computes everything and writes nothing.
    """

    def __init__(self, params: dict):
        self.params = params

    @staticmethod
    def _judge(cert, ca, reason: str, now, expected_identity: str | None = None):
        """(record, None) for a certificate this run may revoke, else (None, why not)."""
        identity = certificate_identity(cert)
        if not is_issued_by(cert, ca.certificate):
            return None, (
                f"certificate of {identity or '(no CN)'} serial {cert.serial_number:x} was not issued by "
                f"{ca.subject.rfc4514_string()}; it is not revoked here"
            )
        if expected_identity is not None and identity != expected_identity:
            # A node may only have its own certificates revoked: a hostile one must not shut another out.
            return None, (
                f"{expected_identity} reported a certificate of {identity or '(no CN)'} (serial {cert.serial_number:x}); "
                "it is not revoked"
            )
        return RevocationRecord(cert.serial_number, identity, reason, now, not_after(cert)), None

    def _candidates(self, ca: CertificateAuthority, now) -> tuple[list, list[str]]:
        reason = self.params.get("reason") or DEFAULT_REVOCATION_REASON
        if reason not in REVOCATION_REASONS:
            raise RevocationError(f"reason must be one of {', '.join(REVOCATION_REASONS)}", field="reason")
        found, warnings = [], []
        for index, pem in enumerate(self.params.get("certificates") or []):
            for cert in load_certificates(pem, f"certificates[{index}]", "certificates"):
                record, problem = self._judge(cert, ca, reason, now)
                if record is None:
                    warnings.append(problem)
                else:
                    found.append(record)
        for index, item in enumerate(self.params.get("node_certificates") or []):
            where = f"node_certificates[{index}]"
            if not isinstance(item, dict) or not isinstance(item.get("identity"), str) or not item["identity"]:
                raise RevocationError(f"{where} must be a dict with 'identity' and 'certificates'", field=where)
            pems = item.get("certificates") or []
            if isinstance(pems, str) or not isinstance(pems, list):
                raise RevocationError(f"{where}.certificates must be a list of PEM certificates", field=where)
            for number, pem in enumerate(pems):
                for cert in load_certificates(pem, f"{where}.certificates[{number}]", "node_certificates"):
                    record, problem = self._judge(cert, ca, reason, now, expected_identity=item["identity"])
                    if record is None:
                        warnings.append(problem)
                    else:
                        found.append(record)
        for index, item in enumerate(self.params.get("serials") or []):
            where = f"serials[{index}]"
            if not isinstance(item, dict) or "serial" not in item:
                raise RevocationError(f"{where} must be a dict with 'serial' (and 'identity')", field="serials")
            serial = parse_serial(item["serial"], f"{where}.serial")
            found.append(RevocationRecord(serial, str(item.get("identity") or ""), reason, now))
        return found, warnings

    def run(self, check_mode: bool = False) -> dict:
        p = self.params
        records_path, crl_path = p["records"], p["crl"]
        for option, path in (("records", records_path), ("crl", crl_path)):
            require_directory(path, option)
        valid_days = int(p.get("crl_valid_days") or DEFAULT_CRL_VALID_DAYS)
        renew_before_days = int(p.get("renew_before_days", DEFAULT_CRL_RENEW_BEFORE_DAYS))
        if not 0 <= renew_before_days < valid_days:
            raise RevocationError(
                f"renew_before_days {renew_before_days} must be at least 0 and smaller than crl_valid_days "
                f"{valid_days}, or every run would sign the CRL again",
                field="renew_before_days",
            )
        ca = CertificateAuthority.load(p["ca_cert"], p["ca_key"], p.get("ca_passphrase"))
        now = utc_now()
        records = RevocationRecords.load(_read(records_path, "records"), records_path)
        candidates, warnings = self._candidates(ca, now)
        warnings = list(ca.warnings) + warnings
        added = [c for c in candidates if records.add(c)]
        already = sorted({c.serial_hex for c in candidates} - {a.serial_hex for a in added})
        existing_crl = _read(crl_path, "crl")
        refresh = "new revocations" if added else None
        refresh = refresh or crl_refresh_reason(existing_crl, ca, records, renew_before_days, now)
        if refresh:
            records.crl_number += 1
            crl = sign_crl(ca, records, records.crl_number, valid_days, now)
            next_update = crl.next_update_utc
            if not check_mode:
                crl_pem = crl.public_bytes(serialization.Encoding.PEM)
                try:
                    # The records first: a CRL is only ever signed from records that are on disk.
                    atomic_write_many([(records_path, records.dump(), 0o600)])
                    atomic_write_many([(crl_path, crl_pem, 0o644)])
                except OSError as exc:
                    raise RevocationError(f"cannot write {records_path} / {crl_path}: {exc}", field="crl") from None
        else:
            next_update = load_crl(existing_crl, ca.certificate).next_update_utc
        return {
            "changed": bool(refresh),
            "revoked": [a.summary() for a in added],
            "already_revoked": already,
            "serials": [f"{s:x}" for s in records.serials],
            "crl_number": records.crl_number,
            "next_update": iso8601(next_update) if next_update else None,
            "records": records_path,
            "crl": crl_path,
            "msg": f"CRL signed: {refresh}" if refresh else "the CRL is current",
            "warnings": warnings,
        }


def _read(path: str, option: str) -> str | None:
    if os.path.lexists(path) and (os.path.islink(path) or not os.path.isfile(path)):
        raise RevocationError(f"{option} {path} is not a regular file; refusing to use it", field=option)
    try:
        text = read_text(path)
    except (OSError, UnicodeDecodeError) as exc:
        raise RevocationError(f"{option} {path} cannot be read: {exc}", field=option) from None
    if text is not None and len(text) > MAX_REVOCATIONS_BYTES:
        raise RevocationError(f"{option} {path} is larger than {MAX_REVOCATIONS_BYTES} bytes", field=option)
    return text
