# Copyright: zeroinit.bootstrap contributors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)
"""The provisioning JWT (Choria's ``provisioning.jwt``): issued by the site, carried in the node's image, verified
by the provisioner before it signs anything for the node.

Claims, named as Choria's provisioning tokens name them (``choria-io/tokens`` ``ProvisioningClaims``)::

    purpose     "choria_provisioning"           sub   "choria_provisioning"
    cht         the provisioning token           chu   broker URLs, one comma-joined string (as Choria writes them)
    chs         secure provisioning (bool)       ou    organisation (optional)
    iss iat nbf exp jti                         the registered claims (exp is required)
    extensions  {"zeroinit_identity_patterns": ["*.rack1.example.net", ...]}

``extensions`` is Choria's free-form claim; :data:`IDENTITY_PATTERNS_KEY` in it lists the identities a node
holding this token may claim. Pattern syntax: a DNS-style glob, not a regular expression, because a pattern is
written by people and compared with host names: labels separated by dots, each label either literal or holding one
``*`` that stands for zero or more of ``A-Z a-z 0-9 _ : -`` (never a dot, so ``*.example.net`` does not match
``a.b.example.net``); compared without regard to case, as DNS names are. At most :data:`MAX_IDENTITY_PATTERNS` patterns of
:data:`MAX_PATTERN_LENGTH` characters. A glob with one star per label matches in linear time and cannot be
mis-anchored or have an unescaped ``.``, the two classic mistakes of identity regexes. The token is signed by the
site, so a pattern is trusted input; it is still checked, and a malformed one refuses the token.

Algorithms: EdDSA (Ed25519) and ES256 (EC P-256) only, and the one the key has: the header's ``alg`` must be it
(PyJWT is given that one algorithm, so ``none``, HS*, RS* and any other are refused before any signature
check, and the refusal names the algorithm the token asked for). Verify keys load from a PEM public key, a
PEM certificate, a file holding a hex Ed25519 public key, or that hex text itself, as Choria's
``jwt_verify_cert`` does; signing keys from a PEM private key or a hex Ed25519 seed file.

The ``cht`` check: :func:`verify_provisioning_jwt` compares ``cht`` with the provisioner's token when given one
(``expected_token``, compared in constant time). Choria does not: its node takes the token from ``cht`` and refuses
a wrong one itself. Here the node's token is configured apart from the JWT, so the comparison is what binds the
token to this site's provisioning: a JWT issued for another site or an earlier token (by the same issuer key) is
refused with its reason before any CSR is made, rather than failing later at the node with "incorrect token".

Time is the caller's (``now``), so the service, the module and tests judge with one clock; ``leeway`` seconds
absorb clock skew.
"""

from __future__ import annotations

import hmac
import math
import os
import re
import time
import uuid
from dataclasses import dataclass, field
from typing import Sequence

from ..common.deps import (
    CRYPTOGRAPHY_IMPORT_ERROR,
    HAS_CRYPTOGRAPHY,
    HAS_JWT,
    JWT_IMPORT_ERROR,
    UnsupportedAlgorithm,
    ec,
    ed25519,
    serialization,
    x509,
)
from ..common.deps import jwt as pyjwt
from ..common.text import iso_utc
from .subjects import IDENTITY_RULE, valid_identity

PROVISIONING_PURPOSE = "choria_provisioning"
IDENTITY_PATTERNS_KEY = "zeroinit_identity_patterns"
DEFAULT_JWT_ISSUER = "zeroinit.bootstrap"
DEFAULT_JWT_VALIDITY = 365 * 24 * 3600
DEFAULT_JWT_LEEWAY = 60
MAX_JWT_CHARS = 8192
MAX_IDENTITY_PATTERNS = 16
MAX_PATTERN_LENGTH = 253
MAX_KEY_FILE_BYTES = 64 * 1024

_IDENTITY_CHARACTERS = "A-Za-z0-9_:-"
_LABEL_RE = re.compile(rf"^[{_IDENTITY_CHARACTERS}]*\*?[{_IDENTITY_CHARACTERS}]*$")
_HEX_KEY_RE = re.compile(r"^[0-9a-fA-F]{64}$")


class ProvisioningJwtError(Exception):
    """A provisioning JWT refused (or one that cannot be issued); the message names the reason, ``code`` tags it:
    token, algorithm, signature, claims, purpose, expired, not_yet_valid, site_token, identity, key."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class ProvisioningJwt:
    """A verified provisioning JWT. ``claims`` is what the helper gets as its ``jwt`` input."""

    claims: dict = field(repr=False)
    identity_patterns: tuple
    broker_urls: tuple
    secure: bool
    expires: int
    token: str = field(repr=False)


def _require_libraries() -> None:
    if not HAS_JWT:
        raise ProvisioningJwtError("key", f"the Python library 'PyJWT' is required: {JWT_IMPORT_ERROR}")
    if not HAS_CRYPTOGRAPHY:
        raise ProvisioningJwtError("key", f"the Python library 'cryptography' is required: {CRYPTOGRAPHY_IMPORT_ERROR}")


# ---------------------------------------------------------------------------------------------- identity patterns


def identity_pattern_problem(pattern) -> str | None:
    """None for a valid identity pattern, else what is wrong with it."""
    if not isinstance(pattern, str) or not pattern:
        return "it is not a non-empty string"
    if len(pattern) > MAX_PATTERN_LENGTH:
        return f"it is longer than {MAX_PATTERN_LENGTH} characters"
    for label in pattern.split("."):
        if not label:
            return "it has an empty label"
        if not _LABEL_RE.match(label):
            return f"label {label!r} holds a character other than letters, digits, '_', ':', '-' and one '*'"
    return None


def _pattern_regex(pattern: str):
    labels = []
    for label in pattern.split("."):
        prefix, star, suffix = label.partition("*")
        labels.append(re.escape(prefix) + (f"[{_IDENTITY_CHARACTERS}]*" if star else "") + re.escape(suffix))
    return re.compile(r"\.".join(labels), re.IGNORECASE)


def identity_matches_patterns(identity: str, patterns: Sequence[str]) -> bool:
    """Whether ``identity`` matches one of the (valid) identity patterns."""
    return any(_pattern_regex(p).fullmatch(identity) for p in patterns)


def _patterns(value, code: str) -> tuple:
    patterns = [value] if isinstance(value, str) else value
    if not isinstance(patterns, (list, tuple)) or not patterns:
        raise ProvisioningJwtError(code, "identity patterns must be a non-empty list of strings")
    if len(patterns) > MAX_IDENTITY_PATTERNS:
        raise ProvisioningJwtError(
            code, f"{len(patterns)} identity patterns; at most {MAX_IDENTITY_PATTERNS} are accepted"
        )
    for pattern in patterns:
        problem = identity_pattern_problem(pattern)
        if problem:
            raise ProvisioningJwtError(code, f"identity pattern {str(pattern)[:80]!r} is invalid: {problem}")
    return tuple(patterns)


# ---------------------------------------------------------------------------------------------- keys


def jwt_algorithm(key) -> str:
    """The one algorithm a key signs or verifies with: EdDSA for Ed25519, ES256 for EC P-256."""
    if isinstance(key, (ed25519.Ed25519PrivateKey, ed25519.Ed25519PublicKey)):
        return "EdDSA"
    if isinstance(key, (ec.EllipticCurvePrivateKey, ec.EllipticCurvePublicKey)) and key.curve.name == "secp256r1":
        return "ES256"
    name = f"EC {key.curve.name}" if isinstance(key, (ec.EllipticCurvePrivateKey, ec.EllipticCurvePublicKey)) else ""
    name = name or type(key).__name__.lstrip("_").replace("PrivateKey", "").replace("PublicKey", "")
    raise ProvisioningJwtError("key", f"a {name} key cannot sign provisioning JWTs: use Ed25519 (EdDSA) or EC P-256")


def _read_key_file(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as handle:
            return handle.read(MAX_KEY_FILE_BYTES)
    except OSError as exc:
        raise ProvisioningJwtError("key", f"{what} {path} cannot be read: {exc.strerror or exc}") from None


def load_jwt_verify_key(source: str):
    """The site's JWT verification key from a file (PEM public key, PEM certificate, hex Ed25519 public key) or,
    when ``source`` is not a file, from ``source`` itself as a hex Ed25519 public key (as Choria allows)."""
    _require_libraries()
    if os.path.exists(source):
        data = _read_key_file(source, "jwt_verify_key").strip()
        where = f"jwt_verify_key {source}"
    elif _HEX_KEY_RE.match(source.strip()):
        data, where = source.strip().encode("ascii"), "jwt_verify_key"
    else:
        raise ProvisioningJwtError("key", f"jwt_verify_key {source!r} is neither a file nor a hex Ed25519 public key")
    try:
        if data.startswith(b"-----BEGIN CERTIFICATE"):
            key = x509.load_pem_x509_certificate(data).public_key()
        elif data.startswith(b"-----BEGIN"):
            key = serialization.load_pem_public_key(data)
        elif _HEX_KEY_RE.match(data.decode("ascii", "replace")):
            key = ed25519.Ed25519PublicKey.from_public_bytes(bytes.fromhex(data.decode("ascii")))
        else:
            raise ValueError("not a PEM public key, certificate or 64 hex digits")
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise ProvisioningJwtError("key", f"{where} is not a usable key: {exc}") from None
    jwt_algorithm(key)
    return key


def load_jwt_signing_key(path: str, passphrase: str | bytes | None = None):
    """The issuer's signing key from a PEM private key file or a file holding a hex Ed25519 seed."""
    _require_libraries()
    data = _read_key_file(path, "jwt_signing_key").strip()
    password = passphrase.encode("utf-8") if isinstance(passphrase, str) else passphrase
    try:
        if _HEX_KEY_RE.match(data.decode("ascii", "replace")):
            key = ed25519.Ed25519PrivateKey.from_private_bytes(bytes.fromhex(data.decode("ascii")))
        else:
            key = serialization.load_pem_private_key(data, password=password or None)
    except TypeError:
        raise ProvisioningJwtError(
            "key", f"jwt_signing_key {path} is encrypted and needs its passphrase (or was given one it does not use)"
        ) from None
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise ProvisioningJwtError("key", f"jwt_signing_key {path} is not a usable private key: {exc}") from None
    jwt_algorithm(key)
    return key


# ---------------------------------------------------------------------------------------------- issuing


def issue_provisioning_jwt(
    signing_key,
    token: str,
    broker_urls: Sequence[str],
    identity_patterns,
    validity: int = DEFAULT_JWT_VALIDITY,
    secure: bool = True,
    issuer: str = DEFAULT_JWT_ISSUER,
    organization: str | None = None,
    now: float | None = None,
) -> str:
    """A signed provisioning JWT for node images (init-site, tests)."""
    _require_libraries()
    algorithm = jwt_algorithm(signing_key)
    if not isinstance(token, str):
        raise ProvisioningJwtError("claims", "the provisioning token must be a string")
    urls = [broker_urls] if isinstance(broker_urls, str) else list(broker_urls)
    if not urls or any(not isinstance(u, str) or not u or "," in u for u in urls):
        raise ProvisioningJwtError("claims", "broker URLs must be a non-empty list of URLs without commas")
    patterns = _patterns(identity_patterns, "claims")
    if int(validity) < 1:
        raise ProvisioningJwtError("claims", f"validity must be at least 1 second, not {validity}")
    issued = int(time.time() if now is None else now)
    claims = {
        "purpose": PROVISIONING_PURPOSE,
        "sub": PROVISIONING_PURPOSE,
        "iss": issuer,
        "iat": issued,
        "nbf": issued,
        "exp": issued + int(validity),
        "jti": uuid.uuid4().hex,
        "cht": token,
        "chu": ",".join(urls),
        "chs": bool(secure),
        "extensions": {IDENTITY_PATTERNS_KEY: list(patterns)},
    }
    if organization:
        claims["ou"] = organization
    encoded = pyjwt.encode(claims, signing_key, algorithm=algorithm)
    if len(encoded) > MAX_JWT_CHARS:
        raise ProvisioningJwtError(
            "claims", f"the JWT takes {len(encoded)} characters; verifiers accept {MAX_JWT_CHARS}"
        )
    return encoded


# ---------------------------------------------------------------------------------------------- verifying


def verify_provisioning_jwt(
    encoded,
    verify_key,
    identity,
    expected_token: str | None = None,
    now: float | None = None,
    leeway: int = DEFAULT_JWT_LEEWAY,
) -> ProvisioningJwt:
    """The verified claims of a node's provisioning JWT, or :class:`ProvisioningJwtError` naming why not.

    ``encoded`` came from the network (the node's ``choria_provision#jwt`` reply): any type, any size.
    ``identity`` is the identity the node claims; ``expected_token`` the provisioner's token (see the module doc).
    """
    _require_libraries()
    if not isinstance(encoded, str) or not encoded:
        raise ProvisioningJwtError("token", "the node returned no provisioning JWT")
    if len(encoded) > MAX_JWT_CHARS:
        raise ProvisioningJwtError("token", f"JWT of {len(encoded)} characters is longer than {MAX_JWT_CHARS}")
    algorithm = jwt_algorithm(verify_key)
    try:
        claims = _decode(encoded, verify_key, algorithm)
    except ProvisioningJwtError:
        raise
    except Exception as exc:  # network input: a refusal whatever PyJWT or json raise (deep nesting: RecursionError)
        raise ProvisioningJwtError("token", f"JWT does not parse: {type(exc).__name__}") from None
    if PROVISIONING_PURPOSE not in (claims.get("purpose"), claims.get("sub")):
        raise ProvisioningJwtError(
            "purpose",
            f"not a provisioning token (purpose {str(claims.get('purpose'))[:40]!r}, expected {PROVISIONING_PURPOSE!r})",
        )
    moment = time.time() if now is None else now
    _check_times(claims, moment, leeway)
    token, urls, secure = claims.get("cht"), claims.get("chu"), claims.get("chs", False)
    if not isinstance(token, str):
        raise ProvisioningJwtError("claims", "the token claim cht is missing or not a string")
    if not isinstance(urls, str) or not urls.strip():
        raise ProvisioningJwtError("claims", "the broker URLs claim chu is missing or not a string")
    if not isinstance(secure, bool):
        raise ProvisioningJwtError("claims", "the claim chs is not a boolean")
    if expected_token is not None and not hmac.compare_digest(token.encode("utf-8"), expected_token.encode("utf-8")):
        raise ProvisioningJwtError(
            "site_token", "the token claim cht does not match this provisioner's token (a JWT of another site or round)"
        )
    extensions = claims.get("extensions")
    value = extensions.get(IDENTITY_PATTERNS_KEY) if isinstance(extensions, dict) else None
    if value is None:
        raise ProvisioningJwtError(
            "claims", f"the JWT carries no identity pattern (extensions.{IDENTITY_PATTERNS_KEY})"
        )
    patterns = _patterns(value, "claims")
    if not valid_identity(identity):
        raise ProvisioningJwtError(
            "identity",
            f"the node's identity {str(identity)[:80]!r} is not a string of 1 to 253 characters that follows the "
            f"identity rule ({IDENTITY_RULE})",
        )
    if not identity_matches_patterns(identity, patterns):
        raise ProvisioningJwtError(
            "identity", f"identity {identity!r} does not match the JWT's identity patterns {', '.join(patterns)}"
        )
    return ProvisioningJwt(
        claims=claims,
        identity_patterns=patterns,
        broker_urls=tuple(u.strip() for u in urls.split(",") if u.strip()),
        secure=secure,
        expires=int(claims["exp"]),
        token=token,
    )


def read_provisioning_jwt(encoded, verify_key) -> dict:
    """The claims of a JWT whose signature verifies with ``verify_key``, its times and identities not judged: how the
    issuer reads back a JWT it issued (``provisioning_jwt``). ProvisioningJwtError when it does not verify or parse."""
    _require_libraries()
    if not isinstance(encoded, str) or not encoded or len(encoded) > MAX_JWT_CHARS:
        raise ProvisioningJwtError("token", f"not a JWT of 1 to {MAX_JWT_CHARS} characters")
    try:
        return _decode(encoded, verify_key, jwt_algorithm(verify_key))
    except ProvisioningJwtError:
        raise
    except Exception as exc:  # a file anyone may have edited: a refusal whatever PyJWT or json raise
        raise ProvisioningJwtError("token", f"JWT does not parse: {type(exc).__name__}") from None


def _decode(encoded: str, verify_key, algorithm: str) -> dict:
    try:
        return pyjwt.decode(
            encoded,
            verify_key,
            algorithms=[algorithm],
            # Times are judged by _check_times with the caller's clock; PyJWT checks signature, shape, presence.
            options={
                "verify_exp": False,
                "verify_nbf": False,
                "verify_iat": False,
                "verify_aud": False,
                "require": ["exp"],
            },
        )
    except pyjwt.InvalidAlgorithmError:
        given = pyjwt.get_unverified_header(encoded).get("alg")  # it parsed a moment ago
        raise ProvisioningJwtError(
            "algorithm", f"JWT algorithm {str(given)[:20]!r} is not accepted: the site's key verifies {algorithm} only"
        ) from None
    except pyjwt.InvalidSignatureError:
        raise ProvisioningJwtError("signature", "JWT signature does not verify with the site's key") from None
    except pyjwt.MissingRequiredClaimError as exc:
        raise ProvisioningJwtError("claims", f"JWT lacks the {exc.claim} claim") from None
    except pyjwt.PyJWTError as exc:
        raise ProvisioningJwtError("token", f"JWT does not parse: {exc}") from None


def _number(claims: dict, name: str):
    value = claims.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ProvisioningJwtError("claims", f"the claim {name} is not a finite number")
    return value


def _check_times(claims: dict, now: float, leeway: int) -> None:
    expires, not_before, issued = _number(claims, "exp"), _number(claims, "nbf"), _number(claims, "iat")
    if expires <= now - leeway:
        raise ProvisioningJwtError("expired", f"JWT expired at {iso_utc(expires)}")
    if not_before is not None and not_before > now + leeway:
        raise ProvisioningJwtError("not_yet_valid", f"JWT is not valid before {iso_utc(not_before)}")
    if issued is not None and issued > now + leeway:
        raise ProvisioningJwtError("not_yet_valid", f"JWT is issued in the future ({iso_utc(issued)})")
