# Copyright: zeroinit.bootstrap contributors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)
"""The signer: issues node certificates from a CA under a policy, and judges certificates it issued before.

The certificate is built from the policy's facts, never copied from the CSR (see ``policy.py``). What both signer
backends share lives here too: the profiles and their extended key usages, and :func:`certificate_needs_renewal`
(``pki_sign``'s idempotency with ``dest``), which judges a certificate with whichever signer issued it.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from typing import Sequence

from ..common.deps import (
    AuthorityInformationAccessOID,
    ExtendedKeyUsageOID,
    NameOID,
    UnsupportedAlgorithm,
    serialization,
    x509,
)
from .ca import CLOCK_SKEW, CertificateAuthority, random_serial
from .policy import DEFAULT_VALID_DAYS, CsrFacts, CsrPolicy, PolicyError
from .x509 import (
    PkiError,
    certificate_matches_key,
    certificate_properties,
    is_issued_by,
    iso8601,
    load_certificates,
    load_csr,
    not_after,
    not_before,
    public_key_sha256,
    to_bytes,
    utc_now,
)

# What a certificate is for: its extended key usages, for the built-in and the cfssl backend alike.
PROFILE_USAGES = {
    "server": ("serverAuth",),
    "client": ("clientAuth",),
    "both": ("serverAuth", "clientAuth"),
    "ocsp": ("OCSPSigning",),  # a delegated OCSP responder (RFC 6960 4.2.2.2)
}
PROFILES = tuple(PROFILE_USAGES)
# The shortest certificate lifetime a signer is asked for: a node needs some of it to renew in.
MIN_VALID_SECONDS = 30
_USAGE_OIDS = {"serverAuth": "SERVER_AUTH", "clientAuth": "CLIENT_AUTH", "OCSPSigning": "OCSP_SIGNING"}
MAX_OCSP_URL = 2048


@dataclass(frozen=True)
class IssuedCertificate:
    """A certificate the signer issued (or found valid at a destination), with its parsed properties."""

    certificate: str
    ca: str
    serial: int
    not_after: datetime.datetime
    public_key_sha256: str
    not_before: datetime.datetime | None = None
    subject: str = ""
    issuer: str = ""
    subject_alt_names: tuple = ()
    warnings: tuple = field(default_factory=tuple)

    @property
    def serial_hex(self) -> str:
        return f"{self.serial:x}"

    @property
    def not_after_iso(self) -> str:
        return iso8601(self.not_after)

    def properties(self) -> dict:
        """Non-secret parsed properties (see :func:`certificate_properties`) for diffs and reports."""
        return certificate_properties(x509.load_pem_x509_certificate(self.certificate.encode("ascii")))

    @classmethod
    def from_certificate(cls, cert, ca_pem: str, warnings: Sequence[str] = ()) -> IssuedCertificate:
        props = certificate_properties(cert)
        return cls(
            certificate=cert.public_bytes(serialization.Encoding.PEM).decode("ascii"),
            ca=ca_pem,
            serial=cert.serial_number,
            not_after=not_after(cert),
            not_before=not_before(cert),
            public_key_sha256=props["public_key_sha256"],
            subject=props["subject"],
            issuer=props["issuer"],
            subject_alt_names=tuple(props["subject_alt_names"]),
            warnings=tuple(warnings),
        )


def leaf_key_usage(key_type: str):
    """The KeyUsage of a certificate that is no CA: keyEncipherment only for RSA (TLS RSA key transport); EC and
    EdDSA keys only sign."""
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=key_type == "rsa",
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=False,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )


def check_profile(profile: str) -> None:
    if profile not in PROFILE_USAGES:
        raise PkiError(f"profile must be one of {', '.join(PROFILES)}, not {profile!r}", field="profile")


def extended_key_usage(profile: str):
    """The ExtendedKeyUsage extension of ``profile`` (serverAuth, clientAuth, both, or OCSPSigning)."""
    return x509.ExtendedKeyUsage([getattr(ExtendedKeyUsageOID, _USAGE_OIDS[u]) for u in PROFILE_USAGES[profile]])


def lifetime_problem(valid_seconds, max_valid_days: int) -> str | None:
    """Why ``valid_seconds`` cannot be a certificate lifetime under ``max_valid_days``, or None."""
    if valid_seconds is None:
        return None
    if isinstance(valid_seconds, bool) or not isinstance(valid_seconds, int) or valid_seconds < MIN_VALID_SECONDS:
        return f"valid_seconds must be a whole number of at least {MIN_VALID_SECONDS}, not {valid_seconds!r}"
    if valid_seconds > int(max_valid_days) * 86400:
        return f"valid_seconds {valid_seconds} is more than max_valid_days {max_valid_days} allows"
    return None


def check_ocsp_url(url: str) -> str:
    """``url`` when it can serve as an OCSP responder URL in a certificate; PkiError naming ocsp_url otherwise."""
    if (
        not isinstance(url, str)
        or not url.startswith(("http://", "https://"))
        or len(url) > MAX_OCSP_URL
        or any(c.isspace() or ord(c) < 33 or ord(c) > 126 for c in url)
    ):
        raise PkiError(
            f"ocsp_url {str(url)[:100]!r} is not an http:// or https:// URL without spaces", field="ocsp_url"
        )
    return url


def ocsp_access(url: str):
    """The Authority Information Access extension naming ``url`` as the OCSP responder."""
    return x509.AuthorityInformationAccess(
        [x509.AccessDescription(AuthorityInformationAccessOID.OCSP, x509.UniformResourceIdentifier(url))]
    )


def ocsp_urls(cert) -> list[str]:
    """The OCSP responder URLs a certificate names (empty when it names none)."""
    try:
        access = cert.extensions.get_extension_for_class(x509.AuthorityInformationAccess).value
    except x509.ExtensionNotFound:
        return []
    return [d.access_location.value for d in access if d.access_method == AuthorityInformationAccessOID.OCSP]


class Signer:
    """Issues node certificates from a CA under a policy. Thread-safe: it holds only read-only state.

    ``valid_seconds``, when set, is the lifetime of every certificate instead of the ``valid_days`` asked for:
    short-lived certificates that their nodes renew (:mod:`..node.renewal`). ``ocsp_url`` is named in every
    certificate as the site's OCSP responder.
    """

    def __init__(
        self,
        ca: CertificateAuthority,
        policy: CsrPolicy | None = None,
        valid_seconds: int | None = None,
        ocsp_url: str | None = None,
    ):
        self.ca = ca
        self.policy = policy if policy is not None else CsrPolicy()
        problem = lifetime_problem(valid_seconds, self.policy.max_valid_days)
        if problem:
            raise PkiError(problem, field="valid_seconds")
        self.valid_seconds = valid_seconds
        self.ocsp_url = check_ocsp_url(ocsp_url) if ocsp_url else None

    def sign(
        self, csr, identity: str, valid_days: int = DEFAULT_VALID_DAYS, profile: str = "both"
    ) -> IssuedCertificate:
        """Check ``csr`` against the policy for ``identity`` and issue a certificate (PolicyError / PkiError)."""
        check_profile(profile)
        facts = self.policy.evaluate(csr, identity, valid_days)
        return self.issue(facts, profile)

    def plan(self, facts: CsrFacts, now: datetime.datetime | None = None) -> tuple[datetime.datetime, list[str]]:
        """(not_after, warnings) a certificate issued now for ``facts`` would get."""
        now = now or utc_now()
        if self.valid_seconds:
            not_after = now + datetime.timedelta(seconds=self.valid_seconds)
        else:
            not_after = now + datetime.timedelta(days=facts.valid_days)
        warnings = []
        ca_end = self.ca.not_after
        if ca_end <= now:
            raise PkiError(f"the CA certificate expired on {iso8601(ca_end)}", field="ca_cert")
        if not_after > ca_end:
            warnings.append(
                f"certificate for {facts.identity} ends on {iso8601(ca_end)} with its CA, not after the "
                f"{f'{self.valid_seconds} seconds' if self.valid_seconds else f'{facts.valid_days} days'} asked for"
            )
            not_after = ca_end
        return not_after, warnings

    def issue(self, facts: CsrFacts, profile: str = "both") -> IssuedCertificate:
        """Issue a certificate for facts the policy already established (see :meth:`CsrPolicy.evaluate`)."""
        now = utc_now()
        not_after, warnings = self.plan(facts, now)
        names = [x509.DNSName(n) for n in facts.dns_names] + [x509.IPAddress(a) for a in facts.ip_addresses]
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, facts.identity)]))
            .issuer_name(self.ca.subject)
            .public_key(facts.public_key)
            .serial_number(random_serial())
            .not_valid_before(now - CLOCK_SKEW)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(leaf_key_usage(facts.key_type), critical=True)
            .add_extension(extended_key_usage(profile), critical=False)
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(facts.public_key), critical=False)
            .add_extension(self.ca.authority_key_identifier, critical=False)
        )
        if profile == "ocsp":
            # A delegated responder's own status is not asked for (RFC 6960 4.2.2.2.1).
            builder = builder.add_extension(x509.OCSPNoCheck(), critical=False)
        elif self.ocsp_url:
            builder = builder.add_extension(ocsp_access(self.ocsp_url), critical=False)
        cert = builder.sign(self.ca.private_key, self.ca.signature_hash)
        # Built from what is already known rather than by re-parsing the certificate: a fifth of the cost per CSR.
        return IssuedCertificate(
            certificate=cert.public_bytes(serialization.Encoding.PEM).decode("ascii"),
            ca=self.ca.chain_pem,
            serial=cert.serial_number,
            not_after=not_after,
            not_before=now - CLOCK_SKEW,
            public_key_sha256=public_key_sha256(facts.public_key),
            subject=f"CN={facts.identity}",
            issuer=self.ca.issuer_string,
            subject_alt_names=tuple(facts.subject_alt_names),
            warnings=tuple(warnings),
        )

    def verify_issued(self, cert) -> bool:
        """True when ``cert`` was signed by this CA's key and names it as issuer."""
        return is_issued_by(cert, self.ca.certificate)

    def close(self) -> None:
        """Nothing to release (the cfssl backend's ``close`` ends its connections); for uniform use."""

    def __enter__(self) -> Signer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def certificate_needs_renewal(
    signer,
    cert_pem,
    csr_or_public_key_pem,
    renew_before_days: int = 30,
    identity: str | None = None,
    profile: str | None = None,
) -> tuple[bool, str]:
    """Whether an existing certificate must be replaced, and why (for idempotent ``dest`` handling).

    ``signer`` is either backend (anything with ``verify_issued(cert)``): the certificate must be its CA's.

    Kept only when it parses, was issued by this CA (signature verifies), certifies the same public key as the
    CSR (or public key), is already valid and does not end within ``renew_before_days``. With ``identity`` its CN
    must equal it; with a CSR its SANs must be the ones the CSR would get now; with ``profile`` its EKU must match.
    """
    try:
        cert = load_certificates(cert_pem, "existing certificate")[0]
    except PkiError as exc:
        return True, str(exc)
    if not signer.verify_issued(cert):
        return True, f"the existing certificate was not issued by this CA (issuer {cert.issuer.rfc4514_string()})"
    wanted_key, csr = _wanted_public_key(csr_or_public_key_pem)
    if not certificate_matches_key(cert, wanted_key):
        return True, "the existing certificate is for a different public key than the CSR"
    now = utc_now()
    if not_before(cert) > now:
        return True, f"the existing certificate is not valid before {iso8601(not_before(cert))}"
    if not_after(cert) <= now:
        return True, f"the existing certificate expired on {iso8601(not_after(cert))}"
    if not_after(cert) - now <= datetime.timedelta(days=int(renew_before_days)):
        return True, (
            f"the existing certificate ends on {iso8601(not_after(cert))}, within renew_before_days {int(renew_before_days)}"
        )
    cns = [a.value for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    if identity is not None and cns != [identity]:
        return True, f"the existing certificate is for CN {cns}, not the identity {identity!r}"
    if csr is not None and identity is not None:
        try:
            dns_names, ips = CsrPolicy.requested_names(csr, identity)
        except PolicyError as exc:
            return True, str(exc)
        wanted = sorted([f"DNS:{n.lower()}" for n in dns_names] + [f"IP:{a}" for a in ips])
        have = sorted(
            "DNS:" + s[4:].lower() if s.startswith("DNS:") else s
            for s in certificate_properties(cert)["subject_alt_names"]
        )
        if wanted != have:
            return True, f"the existing certificate names {have}, the CSR asks for {wanted}"
    if profile is not None:
        try:
            have_eku = set(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
        except x509.ExtensionNotFound:
            have_eku = set()
        if have_eku != set(extended_key_usage(profile)):
            return True, f"the existing certificate's extended key usage does not match profile {profile!r}"
    ocsp_url = getattr(signer, "ocsp_url", None)
    if ocsp_url and profile != "ocsp" and ocsp_url not in ocsp_urls(cert):
        return True, f"the existing certificate does not name the OCSP responder {ocsp_url}"
    return False, f"the existing certificate is valid until {iso8601(not_after(cert))}"


def _wanted_public_key(csr_or_public_key_pem):
    if isinstance(csr_or_public_key_pem, x509.CertificateSigningRequest):
        return csr_or_public_key_pem.public_key(), csr_or_public_key_pem
    data = to_bytes(csr_or_public_key_pem)
    if b"CERTIFICATE REQUEST" in data:
        csr = load_csr(data)
        return csr.public_key(), csr
    try:
        return serialization.load_pem_public_key(data), None
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise PkiError(f"neither a CSR nor a public key: {exc}", field="csr") from exc
