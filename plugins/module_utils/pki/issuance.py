# Copyright: zeroinit.bootstrap contributors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)
"""The signer's options (one argument spec for pki_sign and choria_provision's ``signer``), the policy and the signer
of either backend built from them, and the whole flow of the ``pki_sign`` module.

``backend: builtin`` signs in-process with a CA in files (``ca.py``, ``signer.py``); ``backend: cfssl`` sends the CSR
to a CFSSL CA server (``cfssl.py``) after the same policy. :func:`signer_from_params` is THE choice between them, for
pki_sign, the provisioner and the renewal responder alike. The options are documented once, in
``plugins/doc_fragments/signer.py``; a unit test keeps the two in step.
"""

from __future__ import annotations

import os
import stat

from ansible.module_utils.basic import missing_required_lib
from ansible.module_utils.common.arg_spec import ArgumentSpecValidator
from ansible.module_utils.errors import UnsupportedError

from ..common.deps import CRYPTOGRAPHY_IMPORT_ERROR, HAS_CRYPTOGRAPHY
from ..common.files import atomic_write
from .ca import CA_KEY_TYPES, DEFAULT_CA_COMMON_NAME, DEFAULT_CA_VALID_DAYS, CertificateAuthority, require_directory
from .cfssl import CFSSL_SIGNER_OPTIONS, cfssl_signer_from_params
from .policy import (
    DEFAULT_EC_CURVES,
    DEFAULT_KEY_TYPES,
    DEFAULT_MAX_VALID_DAYS,
    DEFAULT_MIN_RSA_BITS,
    DEFAULT_VALID_DAYS,
    KEY_TYPES,
    CsrPolicy,
    PolicyError,
)
from .signer import (
    PROFILES,
    IssuedCertificate,
    Signer,
    certificate_needs_renewal,
    extended_key_usage,
    lifetime_problem,
)
from .x509 import EKU_NAMES, PkiError, certificate_properties, iso8601, load_certificates, public_key_sha256, utc_now

BACKENDS = ("builtin", "cfssl")
# Which options each backend needs: the argument spec's required_if (pki_sign's, and choria_provision's signer).
SIGNER_REQUIRED_IF = [
    ("backend", "builtin", ("ca_cert", "ca_key")),
    ("backend", "cfssl", ("cfssl_url", "cfssl_auth_key")),
]


def signer_argument_spec() -> dict:
    """Options of the signer (backend, CA files or CFSSL server, CA creation, policy): pki_sign's, and reusable as
    sub-options. ``ca_cert``/``ca_key`` are required with the builtin backend only (:data:`SIGNER_REQUIRED_IF`)."""
    return dict(
        ca_cert=dict(type="path"),
        ca_key=dict(type="path"),
        ca_passphrase=dict(type="str", no_log=True),
        create_ca=dict(type="bool", default=False),
        ca_common_name=dict(type="str", default=DEFAULT_CA_COMMON_NAME),
        ca_key_type=dict(type="str", default="ec", choices=list(CA_KEY_TYPES)),
        ca_valid_days=dict(type="int", default=DEFAULT_CA_VALID_DAYS),
        allowed_sans=dict(type="list", elements="str"),
        deny=dict(type="list", elements="str", default=[]),
        default_deny=dict(type="bool", default=True),
        allowed_key_types=dict(type="list", elements="str", default=list(DEFAULT_KEY_TYPES), choices=list(KEY_TYPES)),
        min_rsa_bits=dict(type="int", default=DEFAULT_MIN_RSA_BITS),
        ec_curves=dict(type="list", elements="str", default=list(DEFAULT_EC_CURVES)),
        valid_days=dict(type="int", default=DEFAULT_VALID_DAYS),
        valid_seconds=dict(type="int"),
        max_valid_days=dict(type="int", default=DEFAULT_MAX_VALID_DAYS),
        profile=dict(type="str", default="both", choices=list(PROFILES)),
        **CFSSL_SIGNER_OPTIONS,
        ocsp_url=dict(type="str"),
    )


def check_signer_params(params: dict) -> dict:
    """Options given outside a module (the provisioner service's ``signer:``) checked by the same argument spec:
    the validated options with their defaults; ValueError with the spec's messages (unknown, missing, wrong type)."""
    result = ArgumentSpecValidator(signer_argument_spec(), required_if=SIGNER_REQUIRED_IF).validate(dict(params))
    if result.error_messages:
        # Ansible words an unknown option for its module's error line ("Unsupported parameters for ..."): say it.
        messages = [f"unknown option {e.msg}" if isinstance(e, UnsupportedError) else e.msg for e in result.errors]
        raise ValueError("; ".join(messages))
    return result.validated_parameters


def policy_from_params(params: dict) -> CsrPolicy:
    """A CsrPolicy from options shaped like :func:`signer_argument_spec` (missing ones take the defaults)."""
    return CsrPolicy(
        allowed_sans=params.get("allowed_sans"),
        deny=params.get("deny") or (),
        default_deny=params.get("default_deny", True) is not False,
        key_types=params.get("allowed_key_types") or DEFAULT_KEY_TYPES,
        min_rsa_bits=params.get("min_rsa_bits") or DEFAULT_MIN_RSA_BITS,
        ec_curves=params.get("ec_curves") or DEFAULT_EC_CURVES,
        max_valid_days=params.get("max_valid_days") or DEFAULT_MAX_VALID_DAYS,
    )


def ca_from_params(params: dict, check_mode: bool = False) -> tuple[CertificateAuthority, bool]:
    """(CA, created) from options shaped like :func:`signer_argument_spec`; creates it only with ``create_ca``."""
    cert_path, key_path = params.get("ca_cert"), params.get("ca_key")
    for option, path in (("ca_cert", cert_path), ("ca_key", key_path)):
        if not path:
            raise PkiError(f"{option} is required with backend builtin", field=option)
    if params.get("create_ca"):
        return CertificateAuthority.load_or_create(
            cert_path,
            key_path,
            params.get("ca_passphrase"),
            common_name=params.get("ca_common_name") or DEFAULT_CA_COMMON_NAME,
            key_type=params.get("ca_key_type") or "ec",
            valid_days=params.get("ca_valid_days") or DEFAULT_CA_VALID_DAYS,
            check_mode=check_mode,
        )
    for option, path in (("ca_cert", cert_path), ("ca_key", key_path)):
        if not os.path.lexists(path):
            raise PkiError(f"{option} {path} does not exist (set create_ca to create the CA)", field=option)
    return CertificateAuthority.load(cert_path, key_path, params.get("ca_passphrase")), False


def signer_from_params(params: dict, check_mode: bool = False):
    """(signer, CA created) from options shaped like :func:`signer_argument_spec`: THE choice of the backend.

    The policy comes first, so a bad pattern is reported before any CA is made or server asked. The signer is a
    ``Signer`` or a ``CfsslSigner``; close it (``close()``, or ``with``) when done: a CfsslSigner keeps connections.
    """
    backend = params.get("backend") or "builtin"
    if backend not in BACKENDS:
        raise PkiError(f"backend must be one of {', '.join(BACKENDS)}, not {backend!r}", field="backend")
    policy = policy_from_params(params)
    if backend == "cfssl":
        if params.get("create_ca"):
            raise PkiError(
                "create_ca is for the builtin backend: a CFSSL server keeps its own CA (cfssl gencert -initca)",
                field="create_ca",
            )
        if params.get("valid_seconds"):
            raise PkiError(
                "valid_seconds is for the builtin backend: with cfssl the CFSSL profile's expiry sets the lifetime",
                field="valid_seconds",
            )
        if params.get("ocsp_url"):
            raise PkiError(
                "ocsp_url is for the builtin backend: a CFSSL server names its OCSP responder in its own configuration",
                field="ocsp_url",
            )
        return cfssl_signer_from_params(params, policy), False
    problem = lifetime_problem(params.get("valid_seconds"), policy.max_valid_days)
    if problem:  # before a CA is made for it
        raise PkiError(problem, field="valid_seconds")
    ca, created = ca_from_params(params, check_mode)
    return Signer(ca, policy, params.get("valid_seconds"), ocsp_url=params.get("ocsp_url")), created


CERTIFICATE_MODE = 0o644


class CertificateIssuance:
    """One CSR signed for one identity, optionally kept at ``dest``; the whole flow of the ``pki_sign`` module.

    Load (or create) the CA → check the CSR against the policy → compare with what ``dest`` holds → sign → write.
    Check mode is handled here only: everything is computed, nothing is written (not even a new CA).
    """

    def __init__(self, params: dict):
        self.params = params

    def _csr_text(self) -> str:
        if self.params.get("csr"):
            return self.params["csr"]
        path = self.params.get("csr_path")
        if not path:
            raise PkiError("one of csr or csr_path is required", field="csr")
        try:
            with open(path, encoding="ascii") as handle:
                return handle.read()
        except (OSError, UnicodeDecodeError) as exc:
            raise PkiError(
                f"csr_path {path} cannot be read: {getattr(exc, 'strerror', None) or exc}", field="csr_path"
            ) from exc

    @staticmethod
    def _existing(path: str | None, option: str) -> str | None:
        if not path or not os.path.lexists(path):
            return None
        if os.path.islink(path) or not os.path.isfile(path):
            raise PkiError(f"{option} {path} exists and is not a regular file; refusing to replace it", field=option)
        try:
            with open(path, encoding="ascii", errors="replace") as handle:
                return handle.read()
        except OSError as exc:
            raise PkiError(f"{option} {path} cannot be read: {exc.strerror or exc}", field=option) from exc

    def run(self, check_mode: bool = False) -> dict:
        p = self.params
        identity = p["identity"]
        valid_days = p.get("valid_days") or DEFAULT_VALID_DAYS
        renew_before_days = int(p.get("renew_before_days", 30))
        dest, chain_dest = p.get("dest"), p.get("chain_dest")
        if dest and (p.get("backend") or "builtin") == "builtin":  # before a CA is made (cfssl: once it answered)
            lifetime = p.get("valid_seconds") or int(valid_days) * 86400
            self._check_renewal_window(renew_before_days, lifetime)
        csr_text = self._csr_text()
        for option, path in (("dest", dest), ("chain_dest", chain_dest)):
            if path:
                require_directory(path, option)
        existing = self._existing(dest, "dest")
        existing_chain = self._existing(chain_dest, "chain_dest")
        policy = policy_from_params(p)
        facts = policy.evaluate(csr_text, identity, valid_days)  # refusals surface in check mode too
        signer, ca_created = signer_from_params(p, check_mode)
        try:
            return self._run(signer, ca_created, facts, existing, existing_chain, renew_before_days, check_mode)
        finally:
            signer.close()

    def _run(self, signer, ca_created, facts, existing, existing_chain, renew_before_days, check_mode) -> dict:
        p = self.params
        identity, profile = p["identity"], p.get("profile") or "both"
        dest, chain_dest = p.get("dest"), p.get("chain_dest")
        ca = signer.ca
        not_after, plan_warnings = signer.plan(facts)
        if dest and (p.get("backend") or "builtin") == "cfssl":
            self._check_renewal_window(renew_before_days, (not_after - utc_now()).total_seconds())
        warnings = list(ca.warnings)

        before = {}
        keep, reason = False, "no certificate at dest" if dest else "no dest: a certificate is issued on every run"
        if existing is not None:
            try:
                before = certificate_properties(load_certificates(existing, "dest")[0])
            except PkiError:
                before = {"state": "not a PEM certificate"}
            need, reason = certificate_needs_renewal(
                signer, existing, facts.csr, renew_before_days, identity=identity, profile=profile
            )
            keep = not need

        changed = ca_created
        if keep:
            issued = IssuedCertificate.from_certificate(load_certificates(existing)[0], ca.chain_pem)
            if stat.S_IMODE(os.stat(dest).st_mode) != CERTIFICATE_MODE:
                changed = True
                if not check_mode:
                    os.chmod(dest, CERTIFICATE_MODE)
            after = dict(before)
        elif check_mode:
            changed = True
            issued = None
            warnings.extend(plan_warnings)
            after = {
                "subject": f"CN={identity}",
                "issuer": ca.subject.rfc4514_string(),
                "subject_alt_names": facts.subject_alt_names,
                "serial": "(assigned when signed)",
                "not_before": "(when signed)",
                "not_after": iso8601(not_after),
                "extended_key_usage": sorted(EKU_NAMES[oid] for oid in extended_key_usage(profile)),
                "public_key": (f"{facts.key_type} {facts.key_detail}").strip(),
                "public_key_sha256": public_key_sha256(facts.public_key),
            }
        else:
            changed = True
            issued = signer.issue(facts, profile)
            warnings.extend(issued.warnings)
            after = issued.properties()
            if dest:
                self._write(dest, issued.certificate, "dest")

        if chain_dest and existing_chain != ca.chain_pem:
            changed = True
            if not check_mode:
                self._write(chain_dest, ca.chain_pem, "chain_dest")

        result = {
            "changed": changed,
            "ca_created": ca_created,
            "certificate": issued.certificate if issued else None,
            "ca": ca.chain_pem,
            "serial": issued.serial_hex if issued else None,
            "not_after": issued.not_after_iso if issued else after.get("not_after"),
            "dest": dest,
            "chain_dest": chain_dest,
            "msg": (f"kept: {reason}") if keep else (f"issued: {reason}"),
            "warnings": warnings,
            "diff": {
                "before_header": dest or "certificate",
                "after_header": dest or "certificate",
                "before": before,
                "after": after,
            },
        }
        if ca_created:
            result["diff"]["before"] = dict(before, ca="absent")
            result["diff"]["after"] = dict(after, ca=ca.subject.rfc4514_string())
        return result

    def _check_renewal_window(self, renew_before_days: int, lifetime_seconds: float) -> None:
        if lifetime_seconds > renew_before_days * 86400:
            return
        p = self.params
        if (p.get("backend") or "builtin") == "cfssl":
            what = f"the {lifetime_seconds / 86400:g} days of the CFSSL profile's expiry"
        elif p.get("valid_seconds"):
            what = f"valid_seconds {p['valid_seconds']}"
        else:
            what = f"valid_days {p.get('valid_days') or DEFAULT_VALID_DAYS}"
        raise PkiError(
            f"renew_before_days {renew_before_days} must be shorter than {what}, or every run would re-issue",
            field="renew_before_days",
        )

    @staticmethod
    def _write(path: str, data: str, option: str) -> None:
        require_directory(path, option)
        owner = group = None
        if os.path.isfile(path) and not os.path.islink(path) and os.geteuid() == 0:
            # Replacing a file keeps its owner and group (a service may read its certificate as another user).
            info = os.stat(path)
            owner, group = info.st_uid, info.st_gid
        try:
            atomic_write(path, data, mode=CERTIFICATE_MODE, owner=owner, group=group)
        except OSError as exc:
            raise PkiError(f"{option} {path} cannot be written: {exc}", field=option) from exc


def issuance_outcome(params: dict, check_mode: bool, diff: bool) -> dict:
    """The ``pki_sign`` module's whole result from its validated parameters, for the module and its action plugin
    alike: ``failed``, ``msg`` (and the policy's ``rule`` and ``field``) when it fails, ``warnings`` a list, ``diff``
    in diff mode only."""
    if not HAS_CRYPTOGRAPHY:
        return {
            "failed": True,
            "msg": missing_required_lib("cryptography"),
            "exception": CRYPTOGRAPHY_IMPORT_ERROR,
            "warnings": [],
        }
    identity = params["identity"]
    try:
        result = CertificateIssuance(params).run(check_mode=check_mode)
    except PolicyError as exc:
        return {
            "failed": True,
            "msg": f"identity {identity}: {exc}",
            "rule": exc.rule,
            "field": exc.field,
            "warnings": [],
        }
    except PkiError as exc:
        return {"failed": True, "msg": f"identity {identity}: {exc}", "field": exc.field, "warnings": []}
    if not diff:
        result.pop("diff")
    return result
