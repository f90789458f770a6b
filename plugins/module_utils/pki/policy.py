# Copyright: zeroinit.bootstrap contributors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)
"""The policy CA: a certificate authority, the policy a CSR must pass, and the signer that issues node certificates.

Used by the ``pki_sign`` module (one CSR) and in-process by the bulk provisioner (thousands of CSRs, maybe from worker
threads), so :meth:`Signer.sign` parses nothing of the CA per call and keeps no mutable state.

Policy, in the order it is checked (each refusal is a :class:`PolicyError` naming the rule and the value):

``csr_signature``       the CSR's own signature verifies (proof that the requester holds the private key),
                        and is not made with MD5 or SHA-1.
``identity``            the identity is a plain host name (letters, digits, ``-``, ``_``, dots; no wildcard).
``cn_matches_identity`` the CSR subject has exactly one CN and it equals the identity.
``san_types``           only DNS and IP address SANs are requested (no e-mail, URI, other names).
``deny``                no name (the identity and every SAN) matches a deny pattern (``re.search``, on the
                        lower-cased name). The built-in list :data:`DEFAULT_DENY` refuses wildcards, loopback and
                        unspecified addresses, ``localhost``, ``root``/``admin`` names, and names ending ``.choria`` or
                        ``.mcollective`` (Choria accepts those as *client* certificates, and ``*.privileged.choria``
                        as privileged users, so a node must never hold one).
``allowed_sans``        every name matches an allow pattern (``re.fullmatch``, on the lower-cased name). Without
                        patterns only the identity itself is allowed: a node may not name another node, so the safe
                        default is no extra SAN at all. ``{identity}`` in a pattern stands for the escaped identity.
``dns_lengths``         every DNS name is usable in DNS: labels of at most 63 characters, at most 253 in all (an
                        allow pattern for names under ``svc.example.net`` usually says nothing about length).
``key_types``           key type allowed (``ec``, ``rsa``, ``ed25519``, ``ed448``); RSA at least ``min_rsa_bits``;
                        EC only on ``ec_curves``.
``valid_days``          at least 1 day, and not more than ``max_valid_days``: a longer request is refused, not capped,
                        so nobody gets a shorter certificate than they asked for without noticing. A certificate that
                        would outlive its CA is cut to the CA's end, with a warning.

The issued certificate is built from the policy, never copied from the CSR: subject ``CN=<identity>`` only (other
subject attributes such as O/OU can carry authority in some systems), SANs = identity + allowed requested SANs,
BasicConstraints CA:FALSE (critical), KeyUsage and ExtendedKeyUsage from ``profile``, SubjectKeyIdentifier,
AuthorityKeyIdentifier, a random positive 128-bit serial, ``not_before`` five minutes in the past for clock skew.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Sequence

from ..choria.subjects import valid_identity
from ..common.deps import NameOID, UnsupportedAlgorithm, x509
from ..common.text import printable
from .x509 import PkiError, key_description, load_csr

KEY_TYPES = ("ec", "rsa", "ed25519", "ed448")

DEFAULT_KEY_TYPES = ("ec", "rsa", "ed25519")
DEFAULT_EC_CURVES = ("secp256r1", "secp384r1")
DEFAULT_MIN_RSA_BITS = 2048
DEFAULT_VALID_DAYS = 365
DEFAULT_MAX_VALID_DAYS = 365

IDENTITY_PLACEHOLDER = "{identity}"
# RFC 1035 limits: a longer name cannot be resolved, and some TLS stacks reject the certificate carrying it.
MAX_DNS_LABEL = 63
MAX_DNS_NAME = 253

# Names no node certificate may carry (re.search on the lower-cased name). Why each one: see the module docstring.
DEFAULT_DENY = (
    r"\*",  # wildcards: a node certificate names exactly its own host
    r"(^|\.)choria$",  # Choria client names, and *.privileged.choria (privileged users)
    r"(^|\.)mcollective$",  # the same for MCollective-style names
    r"(^|\.)privileged(\.|$)",  # anything that looks like a privileged-user certificate
    r"^localhost(\.localdomain)?$",  # loopback names: any TLS client would trust it for itself
    r"\.localhost$",
    r"^(root|admin|administrator)(\.|$)",  # privileged-looking account names
    r"^127\.",
    r"^0\.0\.0\.0$",
    r"^::1?$",  # loopback and unspecified addresses
    r"^::ffff:7f",  # IPv4-mapped loopback
)

_WEAK_CSR_HASHES = ("md5", "sha1")


class PolicyError(PkiError):
    """A CSR refused by the policy; ``rule`` and ``value`` say which rule and what was refused."""

    def __init__(self, rule: str, value, message: str):
        super().__init__(f"CSR refused by policy '{rule}': {message}", field=rule)
        self.rule = rule
        self.value = value


@dataclass(frozen=True)
class CsrFacts:
    """What the policy established about one CSR: the names and key the certificate will carry."""

    csr: object
    identity: str
    public_key: object
    key_type: str
    key_detail: str
    dns_names: tuple
    ip_addresses: tuple
    valid_days: int

    @property
    def subject_alt_names(self) -> list[str]:
        return [f"DNS:{n}" for n in self.dns_names] + [f"IP:{a}" for a in self.ip_addresses]


class CsrPolicy:
    """The rules a CSR must pass before the CA signs it (see the module docstring for each rule and why)."""

    def __init__(
        self,
        allowed_sans: Sequence[str] | None = None,
        deny: Sequence[str] | None = None,
        key_types: Sequence[str] = DEFAULT_KEY_TYPES,
        min_rsa_bits: int = DEFAULT_MIN_RSA_BITS,
        ec_curves: Sequence[str] = DEFAULT_EC_CURVES,
        max_valid_days: int = DEFAULT_MAX_VALID_DAYS,
        default_deny: bool = True,
    ):
        """``allowed_sans`` None or empty: only the identity. ``deny`` adds to :data:`DEFAULT_DENY` unless
        ``default_deny`` is false."""
        self.allowed_sans = tuple(allowed_sans or ())
        self.deny = tuple(DEFAULT_DENY if default_deny else ()) + tuple(deny or ())
        self.key_types = tuple(str(k).lower() for k in key_types)
        self.min_rsa_bits = int(min_rsa_bits)
        self.ec_curves = tuple(ec_curves)
        self.max_valid_days = int(max_valid_days)
        for kt in self.key_types:
            if kt not in KEY_TYPES:
                raise PkiError(
                    f"allowed_key_types: unknown key type {kt!r} (known: {', '.join(KEY_TYPES)})",
                    field="allowed_key_types",
                )
        if self.max_valid_days < 1:
            raise PkiError(f"max_valid_days must be at least 1, not {self.max_valid_days}", field="max_valid_days")
        self._deny = tuple(self._compile(p, "deny") for p in self.deny)
        # Patterns without {identity} are compiled once; the others per identity (cheap next to a signature).
        self._allow_static = tuple(
            self._compile(p, "allowed_sans") for p in self.allowed_sans if IDENTITY_PLACEHOLDER not in p
        )
        self._allow_templates = tuple(p for p in self.allowed_sans if IDENTITY_PLACEHOLDER in p)
        for template in self._allow_templates:
            self._compile(template.replace(IDENTITY_PLACEHOLDER, "x"), "allowed_sans")

    @staticmethod
    def _compile(pattern: str, option: str):
        try:
            return re.compile(pattern)
        except re.error as exc:
            raise PkiError(f"{option}: invalid regular expression {pattern!r}: {exc}", field=option) from exc

    # -- the rules ----------------------------------------------------------------------------------------------------
    def evaluate(self, csr, identity: str, valid_days: int = DEFAULT_VALID_DAYS) -> CsrFacts:
        """Check one CSR against every rule; returns the facts to issue from, or raises PolicyError/PkiError."""
        request = load_csr(csr)
        self._check_signature(request)
        identity = self._check_identity(identity)
        self._check_subject(request, identity)
        dns_names, ips = self.requested_names(request, identity)
        for name in list(dns_names) + [str(a) for a in ips]:
            self._check_name(name, identity)
        for name in dns_names:
            self._check_dns_lengths(name)
        public_key = request.public_key()
        key_type, key_detail = self._check_key(public_key)
        days = self._check_validity(valid_days)
        return CsrFacts(request, identity, public_key, key_type, key_detail, tuple(dns_names), tuple(ips), days)

    @staticmethod
    def _check_signature(request) -> None:
        try:
            algorithm = request.signature_hash_algorithm
        except UnsupportedAlgorithm:
            algorithm = None  # EdDSA has no separate hash; an unknown algorithm fails the verification below
        if algorithm is not None and algorithm.name in _WEAK_CSR_HASHES:
            raise PolicyError(
                "csr_signature", algorithm.name, f"the CSR is signed with {algorithm.name}, which is too weak"
            )
        try:
            valid = request.is_signature_valid
        except (ValueError, UnsupportedAlgorithm) as exc:
            raise PolicyError("csr_signature", None, f"the CSR signature cannot be checked: {exc}") from exc
        if not valid:
            raise PolicyError(
                "csr_signature",
                None,
                "the CSR signature does not verify (altered or not made with the key it contains)",
            )

    @staticmethod
    def _check_identity(identity) -> str:
        if not isinstance(identity, str) or not identity:
            raise PolicyError("identity", identity, "identity must be a non-empty host name")
        if not valid_identity(identity):
            raise PolicyError(
                "identity",
                identity,
                f"identity '{printable(identity, 100)}' is not a plain host name (letters, digits, '-', '_' and dots; no wildcards)",
            )
        return identity

    @staticmethod
    def _check_subject(request, identity: str) -> None:
        cns = request.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        if len(cns) != 1:
            raise PolicyError(
                "cn_matches_identity",
                len(cns),
                (
                    f"the CSR subject has {len(cns)} CN attributes, expected exactly "
                    f"one equal to the identity {identity!r}"
                ),
            )
        cn = cns[0].value
        if cn != identity:
            raise PolicyError(
                "cn_matches_identity", cn, f"CN '{printable(cn, 100)}' is not the identity '{printable(identity, 100)}'"
            )

    @staticmethod
    def requested_names(request, identity: str):
        try:
            requested = list(request.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)
        except x509.ExtensionNotFound:
            requested = []
        except ValueError as exc:
            raise PolicyError("san_types", None, f"the CSR's extensions cannot be parsed: {exc}") from exc
        # The identity always comes first so TLS host name verification of the node works.
        try:
            identity_ip = ipaddress.ip_address(identity)
        except ValueError:
            identity_ip = None
        dns_names: list[str] = [] if identity_ip else [identity]
        ips: list = [identity_ip] if identity_ip else []
        for name in requested:
            if isinstance(name, x509.DNSName):
                if name.value.lower() not in (n.lower() for n in dns_names):
                    dns_names.append(name.value)
            elif isinstance(name, x509.IPAddress):
                if name.value not in ips:
                    ips.append(name.value)
            else:
                value = getattr(name, "value", name)
                raise PolicyError(
                    "san_types",
                    str(value),
                    f"SAN {type(name).__name__} {str(value)!r} is not allowed (only DNS names and IP addresses)",
                )
        for ip in ips:
            if isinstance(ip, (ipaddress.IPv4Network, ipaddress.IPv6Network)):
                raise PolicyError("san_types", str(ip), f"SAN IP {ip} is a network, not an address")
        return dns_names, ips

    def _check_name(self, name: str, identity: str) -> None:
        lowered = name.lower()
        for pattern in self._deny:
            if pattern.search(lowered):
                raise PolicyError("deny", name, f"name {name!r} matches the deny pattern {pattern.pattern!r}")
        if not self.allowed_sans:
            if lowered != identity.lower():
                raise PolicyError(
                    "allowed_sans",
                    name,
                    f"SAN {name!r} is not the identity {identity!r} and no allowed_sans patterns permit other names",
                )
            return
        for pattern in self._allow_static:
            if pattern.fullmatch(lowered):
                return
        escaped = re.escape(identity.lower())
        for template in self._allow_templates:
            if re.fullmatch(template.replace(IDENTITY_PLACEHOLDER, escaped), lowered):
                return
        raise PolicyError(
            "allowed_sans",
            name,
            f"name {name!r} matches none of the allowed_sans patterns {', '.join(repr(p) for p in self.allowed_sans)}",
        )

    @staticmethod
    def _check_dns_lengths(name: str) -> None:
        longest = max(name.rstrip(".").split("."), key=len)
        shown = repr(name) if len(name) <= 80 else f"{name[:80]!r}..."
        if len(longest) > MAX_DNS_LABEL:
            message = f"DNS name {shown} has a label of {len(longest)} characters (at most {MAX_DNS_LABEL})"
            raise PolicyError("dns_lengths", name, message)
        if len(name) > MAX_DNS_NAME:
            raise PolicyError(
                "dns_lengths", name, f"DNS name {shown} is {len(name)} characters (at most {MAX_DNS_NAME})"
            )

    def _check_key(self, public_key) -> tuple[str, str]:
        key_type, detail = key_description(public_key)
        if key_type not in self.key_types:
            raise PolicyError(
                "key_types",
                key_type,
                f"key type {key_type!r} is not allowed (allowed: {', '.join(self.key_types)})",
            )
        if key_type == "rsa" and int(detail) < self.min_rsa_bits:
            raise PolicyError(
                "key_types",
                f"rsa-{detail}",
                f"RSA key of {detail} bits is smaller than min_rsa_bits {self.min_rsa_bits}",
            )
        if key_type == "ec" and detail not in self.ec_curves:
            raise PolicyError(
                "key_types",
                detail,
                f"EC curve {detail!r} is not allowed (allowed: {', '.join(self.ec_curves)})",
            )
        return key_type, detail

    def _check_validity(self, valid_days) -> int:
        try:
            days = int(valid_days)
        except (TypeError, ValueError):
            raise PolicyError("valid_days", valid_days, f"valid_days {valid_days!r} is not a whole number") from None
        if days < 1:
            raise PolicyError("valid_days", days, f"valid_days must be at least 1, not {days}")
        if days > self.max_valid_days:
            raise PolicyError(
                "max_valid_days", days, f"valid_days {days} is more than max_valid_days {self.max_valid_days}"
            )
        return days
