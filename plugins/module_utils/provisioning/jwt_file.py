# Copyright: zeroinit.bootstrap contributors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)
"""A node image's provisioning JWT kept in a file (the ``provisioning_jwt`` module).

The file is issued when it is absent, and issued anew when the JWT in it no longer does its job: it does not verify
with the issuer's key (another key, altered, not a JWT), its claims are not the ones asked for (token, broker
URLs, identity patterns, ``chs``, organisation, issuer), or it ends within ``renew_before_days``. Otherwise it is
kept, so a play that runs every day changes nothing until the JWT is due. A change of ``valid_days`` alone does
not re-issue: the next JWT gets the new validity.

The file holds the token (``cht``), so it is written 0600, atomically; the result and the diff name the claims
that differ but never show the token or the JWT.
"""

from __future__ import annotations

import hmac
import os
import time

from ..choria.jwt import (
    DEFAULT_JWT_ISSUER,
    IDENTITY_PATTERNS_KEY,
    MAX_IDENTITY_PATTERNS,
    ProvisioningJwtError,
    identity_pattern_problem,
    issue_provisioning_jwt,
    load_jwt_signing_key,
    read_provisioning_jwt,
)
from ..common.files import atomic_write, read_bytes
from ..common.text import iso_utc

DAY = 24 * 3600
FILE_MODE = 0o600


class JwtFileError(Exception):
    """Bad input or a key that cannot issue; ``field`` names the option (``claims``: the JWT all of them make is too
    long for verifiers)."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


def _wanted(params: dict) -> dict:
    """The claims the JWT must carry, as read back from one (``cht`` compared apart, in constant time)."""
    brokers = params["brokers"]
    if not brokers or any(not isinstance(u, str) or not u.strip() or "," in u for u in brokers):
        raise JwtFileError("brokers", "brokers must be a non-empty list of URLs without commas")
    identities = params["identities"]
    if not identities or len(identities) > MAX_IDENTITY_PATTERNS:
        raise JwtFileError("identities", f"identities must list 1 to {MAX_IDENTITY_PATTERNS} identity patterns")
    for pattern in identities:
        problem = identity_pattern_problem(pattern)
        if problem:
            raise JwtFileError("identities", f"identity pattern {str(pattern)[:80]!r} is invalid: {problem}")
    return {
        "brokers": [u.strip() for u in brokers],
        "identities": list(identities),
        "secure": bool(params["secure"]),
        "organization": params.get("organization") or None,
        "issuer": params.get("issuer") or DEFAULT_JWT_ISSUER,
    }


def _summary(claims: dict) -> dict:
    """The claims an operator compares, read from a JWT (no token)."""
    extensions = claims.get("extensions") if isinstance(claims.get("extensions"), dict) else {}
    urls = claims.get("chu") if isinstance(claims.get("chu"), str) else ""
    return {
        "brokers": [u.strip() for u in urls.split(",") if u.strip()],
        "identities": list(extensions.get(IDENTITY_PATTERNS_KEY) or []),
        "secure": claims.get("chs"),
        "organization": claims.get("ou") or None,
        "issuer": claims.get("iss"),
    }


def _iso(stamp) -> str | None:
    """A claim's time as ISO 8601; None when the claim is not a number."""
    if not isinstance(stamp, (int, float)) or isinstance(stamp, bool):
        return None
    return iso_utc(stamp)


def _why_issue(existing: bytes | None, key, token: str, wanted: dict, renew_before: int, now: float):
    """(reason to issue or None, the existing JWT's claims or {})."""
    if existing is None:
        return "the file does not exist", {}
    try:  # an empty or oversize file is refused there, like any text that is not this issuer's JWT
        claims = read_provisioning_jwt(existing.decode("utf-8", "replace").strip(), key.public_key())
    except ProvisioningJwtError as exc:
        return f"the JWT in the file is not usable with this issuer key ({exc.message})", {}
    have = _summary(claims)
    differ = [name for name in wanted if have.get(name) != wanted[name]]
    cht = claims.get("cht")
    if not isinstance(cht, str) or not hmac.compare_digest(cht.encode("utf-8"), token.encode("utf-8")):
        differ.insert(0, "token")
    if differ:
        return f"its claims differ: {', '.join(differ)}", claims
    expires = claims.get("exp")
    if not isinstance(expires, (int, float)) or isinstance(expires, bool) or expires - now <= renew_before:
        return f"it ends at {_iso(expires)}, within renew_before_days", claims
    return None, claims


def ensure_jwt_file(params: dict, check_mode: bool = False, now: float | None = None) -> dict:
    """Make ``params['dest']`` hold a provisioning JWT as asked (see the module doc); the module's result."""
    moment = time.time() if now is None else now
    dest = params["dest"]
    valid_days, renew_days = int(params["valid_days"]), int(params["renew_before_days"])
    if valid_days < 1:
        raise JwtFileError("valid_days", f"valid_days must be at least 1, not {valid_days}")
    if renew_days < 0 or renew_days >= valid_days:
        raise JwtFileError(
            "renew_before_days",
            f"renew_before_days must be at least 0 and less than valid_days ({valid_days}), not {renew_days}",
        )
    if not isinstance(params.get("token"), str) or not params["token"]:
        raise JwtFileError("token", "token must be the site's provisioning token, a non-empty string")
    wanted = _wanted(params)
    try:
        key = load_jwt_signing_key(params["signing_key"], params.get("signing_key_passphrase"))
    except ProvisioningJwtError as exc:
        raise JwtFileError("signing_key", exc.message) from None
    if os.path.islink(dest):
        raise JwtFileError("dest", f"refusing to write {dest}: it is a symbolic link")
    try:
        existing = read_bytes(dest)
    except OSError as exc:
        raise JwtFileError("dest", f"{dest} cannot be read: {exc.strerror or exc}") from None
    reason, claims = _why_issue(existing, key, params["token"], wanted, renew_days * DAY, moment)
    before = dict(_summary(claims), expires=_iso(claims.get("exp"))) if claims else {}
    if reason is None:
        mode_wrong = os.stat(dest).st_mode & 0o777 != FILE_MODE
        if mode_wrong and not check_mode:
            os.chmod(dest, FILE_MODE)
        return {
            "changed": mode_wrong,
            "dest": dest,
            "reason": f"mode set to {FILE_MODE:04o}" if mode_wrong else "",
            "expires": _iso(claims["exp"]),
            "jti": claims.get("jti"),
            **wanted,
        }
    after = dict(wanted, expires=_iso(int(moment) + valid_days * DAY))
    result = {"changed": True, "dest": dest, "reason": reason, "diff": {"before": before, "after": after}, **wanted}
    if check_mode:
        return dict(result, expires=None, jti=None)
    try:
        encoded = issue_provisioning_jwt(
            key,
            params["token"],
            wanted["brokers"],
            wanted["identities"],
            validity=valid_days * DAY,
            secure=wanted["secure"],
            issuer=wanted["issuer"],
            organization=wanted["organization"],
            now=moment,
        )
    except ProvisioningJwtError as exc:  # every option was checked above: what is left is their combined size
        raise JwtFileError("claims", exc.message) from None
    issued = read_provisioning_jwt(encoded, key.public_key())
    os.makedirs(os.path.dirname(os.path.abspath(dest)), mode=0o700, exist_ok=True)
    atomic_write(dest, encoded + "\n", FILE_MODE)
    return dict(result, expires=_iso(issued["exp"]), jti=issued["jti"])
