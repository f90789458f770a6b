# Copyright: zeroinit.bootstrap contributors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)
"""The site's secrets on the controller (``init-site.yaml``, the ``site_secrets`` action): made once, private
material encrypted with ansible-vault, never overwritten unless a secret is rotated by name.

The site directory (0700; every file 0600, written atomically)::

    ca.pem                    the site's temporary bootstrap CA: issues the members' certificates
    ca-key.pem                its key                                                     (vault)
    operator.pem              a client certificate of the site CA: the controller on the members' broker
    operator-key.pem          its key                                                     (vault)
    provisioning-ca.pem       the provisioning CA: signs the provisioner's certificate only; nodes pin it
    provisioning-ca-key.pem   its key                                                     (vault)
    provisioner.pem           the provisioner's signing certificate (provisioner EKU, clientAuth)
    provisioner-key.pem       its key                                                     (vault)
    jwt-issuer.pub            the provisioning-JWT issuer's public key (Ed25519; the provisioner verifies with it)
    jwt-issuer-key.pem        its key                                                     (vault)
    token                     the provisioning token                                      (vault)
    previous/                 what a rotation replaced, as it was

Why a provisioning CA apart from the site CA: the site CA is temporary by design (the permanent one replaces it,
``migrate_ca.yaml``), while the provisioning CA is baked into every node image (the agent's
``--provisioning-ca``) and must outlive that migration; and its key signs one certificate, then stays vaulted
instead of signing every member's certificate online.

A secret is made when none of its files exist and kept when all do; one with a file missing is an error naming it
(guessing could replace a key that is trusted somewhere). ``rotate`` names the secrets to make anew; rotating a CA
re-issues the certificate it signs here (the site CA's operator, the provisioning CA's provisioner). Check mode computes the plan and writes nothing.
Encryption and decryption are the caller's (the action plugin passes the play's vault secrets), so this file
never sees a vault password.
"""

from __future__ import annotations

import datetime
import os
import secrets
import shutil
import stat
from dataclasses import dataclass
from typing import Callable

from ansible_collections.zeroinit.bootstrap.plugins.module_utils.choria.security import add_provisioner_usage
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.common.deps import (
    ExtendedKeyUsageOID,
    NameOID,
    ec,
    ed25519,
    hashes,
    serialization,
    x509,
)
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.common.files import atomic_write_many, fsync_directory
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.pki.ca import (
    CLOCK_SKEW,
    CertificateAuthority,
    random_serial,
)
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.pki.signer import leaf_key_usage
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.pki.x509 import (
    PkiError,
    iso8601,
    load_certificates,
    utc_now,
)

SITE_SECRETS = ("ca", "operator", "provisioning_ca", "provisioner", "jwt_issuer", "token")
# The files of each secret: (name, private). Private files are vault-encrypted.
SECRET_FILES = {
    "ca": (("ca.pem", False), ("ca-key.pem", True)),
    "operator": (("operator.pem", False), ("operator-key.pem", True)),
    "provisioning_ca": (("provisioning-ca.pem", False), ("provisioning-ca-key.pem", True)),
    "provisioner": (("provisioner.pem", False), ("provisioner-key.pem", True)),
    "jwt_issuer": (("jwt-issuer.pub", False), ("jwt-issuer-key.pem", True)),
    "token": (("token", True),),
}
SITE_DIR_MODE = 0o700
SITE_FILE_MODE = 0o600
TOKEN_BYTES = 32
VAULT_HEADER = b"$ANSIBLE_VAULT;"


class SiteSecretsError(Exception):
    """The site's secrets cannot be made or kept as asked; the message names the secret or file."""


@dataclass
class SiteOptions:
    site_dir: str
    site_name: str = "zeroinit"
    signed_requests: bool = True  # the provisioning CA and the provisioner's certificate
    provisioning_jwt: bool = True  # the JWT issuer key
    ca_valid_days: int = 365
    ca_key_type: str = "ec"
    provisioning_ca_valid_days: int = 3650
    client_valid_days: int = 365


def _pem_key(key) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _pem_cert(cert) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _certificate_facts(cert) -> dict:
    return {
        "subject": cert.subject.rfc4514_string(),
        "not_after": iso8601(cert.not_valid_after_utc),
        "sha256_fingerprint": cert.fingerprint(hashes.SHA256()).hex(),
    }


def issue_client_certificate(ca: CertificateAuthority, name: str, valid_days: int, provisioner: bool = False):
    """(certificate, key): EC P-256, clientAuth (and the provisioner EKU for a provisioner), signed by ``ca``."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = utc_now()
    end = min(now + datetime.timedelta(days=int(valid_days)), ca.not_after)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(random_serial())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(leaf_key_usage("ec"), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(ca.authority_key_identifier, critical=False)
    )
    if provisioner:
        builder = add_provisioner_usage(builder)
    else:
        builder = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
    return builder.sign(ca.private_key, ca.signature_hash), key


class SiteSecrets:
    """Plan and make the secrets of one site directory."""

    def __init__(self, options: SiteOptions, encrypt: Callable[[bytes], bytes], decrypt: Callable[[bytes], bytes]):
        self.options = options
        self.site_dir = os.path.abspath(os.path.expanduser(options.site_dir))
        self.encrypt = encrypt
        self.decrypt = decrypt

    def path(self, name: str) -> str:
        return os.path.join(self.site_dir, name)

    @property
    def wanted(self) -> list[str]:
        o = self.options
        return [
            name
            for name in SITE_SECRETS
            if (name not in ("provisioning_ca", "provisioner") or o.signed_requests)
            and (name != "jwt_issuer" or o.provisioning_jwt)
        ]

    # -- what exists ---------------------------------------------------------------------------------------------------
    def state(self, name: str) -> str:
        """``present``, ``absent``, or an error for a secret with some of its files only."""
        present = [f for f, _private in SECRET_FILES[name] if os.path.lexists(self.path(f))]
        if not present:
            return "absent"
        missing = [f for f, _private in SECRET_FILES[name] if f not in present]
        if missing:
            raise SiteSecretsError(
                f"secret {name} in {self.site_dir} is incomplete: {', '.join(present)} exists but {', '.join(missing)} "
                f"does not; restore the missing file from a backup, or make the secret anew with rotate={name}"
            )
        for file_name, _private in SECRET_FILES[name]:
            path = self.path(file_name)
            if os.path.islink(path) or not os.path.isfile(path):
                raise SiteSecretsError(f"{path} is not a regular file; refusing to use it")
        return "present"

    def plan(self, rotate: list[str]) -> dict[str, str]:
        """Secret -> ``create``, ``rotate`` or ``keep`` (only the secrets this site wants)."""
        unknown = sorted(set(rotate) - set(SITE_SECRETS) - {"all"})
        if unknown:
            raise SiteSecretsError(
                f"rotate names {', '.join(unknown)}; the secrets are {', '.join(SITE_SECRETS)} (or all)"
            )
        rotating = set(self.wanted) if "all" in rotate else set(rotate)
        not_wanted = sorted(rotating - set(self.wanted))
        if not_wanted:
            raise SiteSecretsError(f"rotate names {', '.join(not_wanted)}, which this site does not use (switched off)")
        plan = {}
        for name in self.wanted:
            state = self.state(name) if name not in rotating else None
            if name in rotating:
                plan[name] = "rotate" if self._any_file(name) else "create"
            else:
                plan[name] = "keep" if state == "present" else "create"
        # A certificate must chain to the CA in use: a new CA re-issues what it signs here.
        for ca_name, issued in (("ca", "operator"), ("provisioning_ca", "provisioner")):
            if plan.get(ca_name) in ("create", "rotate") and plan.get(issued) == "keep":
                plan[issued] = "rotate"
        return plan

    def _any_file(self, name: str) -> bool:
        return any(os.path.lexists(self.path(f)) for f, _private in SECRET_FILES[name])

    # -- making --------------------------------------------------------------------------------------------------------
    def _read_private(self, file_name: str) -> bytes:
        with open(self.path(file_name), "rb") as handle:
            data = handle.read()
        if not data.startswith(VAULT_HEADER):
            raise SiteSecretsError(f"{self.path(file_name)} is not vault-encrypted; refusing to use it")
        return self.decrypt(data)

    def _load_ca(self, name: str) -> CertificateAuthority:
        cert_file, key_file = (f for f, _private in SECRET_FILES[name])
        with open(self.path(cert_file), "rb") as handle:
            cert = load_certificates(handle.read(), self.path(cert_file))[0]
        key = serialization.load_pem_private_key(self._read_private(key_file), password=None)
        return CertificateAuthority(cert, key, cert_path=self.path(cert_file), key_path=self.path(key_file))

    def _make(self, name: str, made: dict) -> tuple[dict[str, bytes], dict]:
        """(file name -> plain content, facts to report) of a new ``name``."""
        o = self.options
        if name == "ca":
            ca = CertificateAuthority.create(f"{o.site_name} bootstrap CA", o.ca_key_type, o.ca_valid_days)
            made["ca"] = ca
            return {"ca.pem": _pem_cert(ca.certificate), "ca-key.pem": _pem_key(ca.private_key)}, _certificate_facts(
                ca.certificate
            )
        if name == "operator":
            ca = made.get("ca") or self._load_ca("ca")
            cert, key = issue_client_certificate(ca, f"{o.site_name} operator", o.client_valid_days)
            return {"operator.pem": _pem_cert(cert), "operator-key.pem": _pem_key(key)}, _certificate_facts(cert)
        if name == "provisioning_ca":
            ca = CertificateAuthority.create(f"{o.site_name} provisioning CA", "ec", o.provisioning_ca_valid_days)
            made["provisioning_ca"] = ca
            files = {
                "provisioning-ca.pem": _pem_cert(ca.certificate),
                "provisioning-ca-key.pem": _pem_key(ca.private_key),
            }
            return files, _certificate_facts(ca.certificate)
        if name == "provisioner":
            ca = made.get("provisioning_ca") or self._load_ca("provisioning_ca")
            cert, key = issue_client_certificate(ca, f"{o.site_name} provisioner", o.client_valid_days, True)
            return {"provisioner.pem": _pem_cert(cert), "provisioner-key.pem": _pem_key(key)}, _certificate_facts(cert)
        if name == "jwt_issuer":
            key = ed25519.Ed25519PrivateKey.generate()
            public = key.public_key()
            raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
            pem = public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
            return {"jwt-issuer.pub": pem, "jwt-issuer-key.pem": _pem_key(key)}, {"public_key_hex": raw.hex()}
        return {"token": secrets.token_urlsafe(TOKEN_BYTES).encode("ascii")}, {}

    def _facts_of_existing(self, name: str) -> dict:
        if name in ("ca", "operator", "provisioning_ca", "provisioner"):
            cert_file = SECRET_FILES[name][0][0]
            with open(self.path(cert_file), "rb") as handle:
                return _certificate_facts(load_certificates(handle.read(), self.path(cert_file))[0])
        if name == "jwt_issuer":
            with open(self.path("jwt-issuer.pub"), "rb") as handle:
                public = serialization.load_pem_public_key(handle.read())
            return {
                "public_key_hex": public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw).hex()
            }
        return {}

    def _set_aside(self, name: str) -> None:
        previous = self.path("previous")
        os.makedirs(previous, mode=SITE_DIR_MODE, exist_ok=True)
        for file_name, _private in SECRET_FILES[name]:
            if os.path.lexists(self.path(file_name)):
                shutil.copy2(self.path(file_name), os.path.join(previous, file_name), follow_symlinks=False)
        fsync_directory(previous)

    def _loose_modes(self) -> list[str]:
        loose = []
        for name in self.wanted:
            for file_name, _private in SECRET_FILES[name]:
                path = self.path(file_name)
                if os.path.isfile(path) and stat.S_IMODE(os.stat(path).st_mode) != SITE_FILE_MODE:
                    loose.append(path)
        return loose

    def apply(self, rotate: list[str] | None = None, check_mode: bool = False) -> dict:
        if os.path.lexists(self.site_dir) and not os.path.isdir(self.site_dir):
            raise SiteSecretsError(f"site_dir {self.site_dir} exists and is not a directory")
        plan = self.plan(list(rotate or []))
        warnings = []
        for name in self.wanted:
            if plan[name] == "keep":
                for file_name, private in SECRET_FILES[name]:
                    with open(self.path(file_name), "rb") as handle:
                        if private and not handle.read(len(VAULT_HEADER)).startswith(VAULT_HEADER):
                            warnings.append(
                                f"{self.path(file_name)} is not vault-encrypted: encrypt it (ansible-vault)"
                            )
        if plan.get("ca") == "rotate":
            warnings.append(
                "the site CA was rotated: nodes configured under the old one trust only it; moving a fleet to a new CA "
                "is migrate_ca.yaml's work (the old CA is kept in previous/)"
            )
        loose = self._loose_modes()
        dir_mode_wrong = os.path.isdir(self.site_dir) and stat.S_IMODE(os.stat(self.site_dir).st_mode) != SITE_DIR_MODE
        made: dict = {}
        facts = {}
        writes: list[tuple[str, list]] = []
        try:
            for name in self.wanted:
                if plan[name] == "keep":
                    facts[name] = self._facts_of_existing(name)
                    continue
                files, facts[name] = self._make(name, made)
                staged = []
                for file_name, private in SECRET_FILES[name]:
                    data = files[file_name]
                    staged.append((self.path(file_name), self.encrypt(data) if private else data, SITE_FILE_MODE))
                writes.append((name, staged))
        except (PkiError, ValueError, TypeError) as exc:
            raise SiteSecretsError(f"cannot make the site's secrets: {exc}") from None
        if not check_mode:
            os.makedirs(self.site_dir, mode=SITE_DIR_MODE, exist_ok=True)
            os.chmod(self.site_dir, SITE_DIR_MODE)
            for path in loose:
                os.chmod(path, SITE_FILE_MODE)
            for name, staged in writes:
                if plan[name] == "rotate":
                    self._set_aside(name)
                atomic_write_many(staged)
        by_action = {action: [n for n in self.wanted if plan[n] == action] for action in ("create", "rotate", "keep")}
        changed = bool(writes or loose or dir_mode_wrong)
        if by_action["create"] or by_action["rotate"]:
            made_word, rotated_word = ("would make", "would rotate") if check_mode else ("made", "rotated")
            parts = [f"{made_word} {', '.join(by_action['create'])}" if by_action["create"] else ""]
            parts.append(f"{rotated_word} {', '.join(by_action['rotate'])}" if by_action["rotate"] else "")
            msg = "; ".join(p for p in parts if p) + f" in {self.site_dir}"
            if by_action["keep"]:
                msg += f"; kept {', '.join(by_action['keep'])}"
        else:
            msg = (
                f"the site's secrets exist in {self.site_dir} ({', '.join(by_action['keep'])}): nothing was "
                "overwritten; -e rotate=<secret> makes one anew"
            )
        return {
            "changed": changed,
            "created": by_action["create"],
            "rotated": by_action["rotate"],
            "kept": by_action["keep"],
            "site_dir": self.site_dir,
            "files": {name: [self.path(f) for f, _p in SECRET_FILES[name]] for name in self.wanted},
            "facts": facts,
            "msg": msg,
            "warnings": warnings,
        }
