"""The provisioning JWT: issued and verified with real keys; every refusal names its reason; identity patterns."""

from __future__ import annotations

import base64
import json
import random

import jwt as pyjwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from ansible_collections.zeroinit.bootstrap.plugins.module_utils.choria.jwt import (
    IDENTITY_PATTERNS_KEY,
    MAX_JWT_CHARS,
    ProvisioningJwtError,
    identity_matches_patterns,
    identity_pattern_problem,
    issue_provisioning_jwt,
    jwt_algorithm,
    load_jwt_signing_key,
    load_jwt_verify_key,
    verify_provisioning_jwt,
)
from tests.support.certificates import Authority, key_pem, rsa_key

NOW = 1_800_000_000
TOKEN = "s3cret-provisioning-token"
URLS = ("nats://prov1.example.net:4222", "nats://prov2.example.net:4222")
PATTERNS = ("*.rack1.example.net", "node-*.example.net")
ED_KEY = ed25519.Ed25519PrivateKey.generate()
EC_KEY = ec.generate_private_key(ec.SECP256R1())


def issue(key=ED_KEY, **options) -> str:
    arguments = {"token": TOKEN, "broker_urls": URLS, "identity_patterns": PATTERNS, "now": NOW}
    arguments.update(options)
    return issue_provisioning_jwt(key, **arguments)


def verify(encoded, key=ED_KEY, identity="n1.rack1.example.net", **options):
    options.setdefault("now", NOW + 10)
    return verify_provisioning_jwt(
        encoded, key.public_key() if hasattr(key, "public_key") else key, identity, **options
    )


def refusal(encoded, key=ED_KEY, identity="n1.rack1.example.net", **options) -> ProvisioningJwtError:
    with pytest.raises(ProvisioningJwtError) as info:
        verify(encoded, key, identity, **options)
    return info.value


def forged(claims: dict, key=ED_KEY, algorithm: str = "EdDSA", headers: dict | None = None) -> str:
    """A token with exactly these claims, signed by ``key`` (bypassing the issuer's own checks)."""
    return pyjwt.encode(claims, key, algorithm=algorithm, headers=headers)


def good_claims(**changes) -> dict:
    claims = json.loads(base64.urlsafe_b64decode(issue().split(".")[1] + "=="))
    claims.update(changes)
    return {k: v for k, v in claims.items() if v is not None}


# ---------------------------------------------------------------------------------------------- accepted


@pytest.mark.parametrize(("key", "algorithm"), [(ED_KEY, "EdDSA"), (EC_KEY, "ES256")])
def test_issued_token_verifies_and_carries_choria_s_claims(key, algorithm):
    encoded = issue(key, validity=3600, organization="site-a")
    assert pyjwt.get_unverified_header(encoded)["alg"] == algorithm
    verified = verify(encoded, key)
    claims = verified.claims
    assert claims["purpose"] == claims["sub"] == "choria_provisioning"
    assert claims["cht"] == TOKEN
    assert claims["chu"] == "nats://prov1.example.net:4222,nats://prov2.example.net:4222"
    assert claims["chs"] is True
    assert claims["ou"] == "site-a"
    assert claims["iat"] == claims["nbf"] == NOW
    assert claims["exp"] == NOW + 3600
    assert len(claims["jti"]) == 32
    assert claims["extensions"] == {IDENTITY_PATTERNS_KEY: list(PATTERNS)}
    assert verified.broker_urls == URLS
    assert verified.identity_patterns == PATTERNS
    assert verified.secure is True
    assert verified.expires == NOW + 3600
    # What the helper gets as "jwt": the verified claims, JSON as they are.
    assert json.loads(json.dumps(claims)) == claims


def test_the_site_token_is_checked_when_the_provisioner_gives_its_own():
    encoded = issue()
    assert verify(encoded, expected_token=TOKEN).token == TOKEN
    error = refusal(encoded, expected_token="another-token")
    assert error.code == "site_token"
    assert "cht does not match this provisioner's token" in str(error)


def test_leeway_absorbs_a_little_clock_skew():
    encoded = issue(validity=100)
    assert verify(encoded, now=NOW + 130, leeway=60)
    assert verify(issue(now=NOW + 30), now=NOW, leeway=60)


# ---------------------------------------------------------------------------------------------- refused


def _unsigned_none():
    header = base64.urlsafe_b64encode(b'{"alg":"none","typ":"JWT"}').rstrip(b"=").decode()
    payload = base64.urlsafe_b64encode(json.dumps(good_claims()).encode()).rstrip(b"=").decode()
    return f"{header}.{payload}."


def _hs256_with_the_public_key():
    # The classic confusion: the public key's bytes used as an HMAC secret.
    public = ED_KEY.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return forged(good_claims(), public, "HS256")


REFUSALS = [
    # (token maker, verify key, identity, code, words)
    (issue, ED_KEY, "n1.rack1.example.net", None, None),
    (lambda: issue(ed25519.Ed25519PrivateKey.generate()), ED_KEY, None, "signature", "signature does not verify"),
    (lambda: issue()[:-4] + "AAAA", ED_KEY, None, "signature", "signature does not verify"),
    (_unsigned_none, ED_KEY, None, "algorithm", "JWT algorithm 'none' is not accepted"),
    (_hs256_with_the_public_key, ED_KEY, None, "algorithm", "'HS256' is not accepted"),
    (lambda: forged(good_claims(), rsa_key(2048), "RS256"), ED_KEY, None, "algorithm", "'RS256' is not accepted"),
    (lambda: issue(EC_KEY), ED_KEY, None, "algorithm", "'ES256' is not accepted: the site's key verifies EdDSA only"),
    (issue, EC_KEY, None, "algorithm", "'EdDSA' is not accepted: the site's key verifies ES256 only"),
    (lambda: issue(validity=5, now=NOW - 100), ED_KEY, None, "expired", "JWT expired at 2027-01-15T07:58:25Z"),
    (lambda: issue(now=NOW + 3600), ED_KEY, None, "not_yet_valid", "JWT is not valid before 2027-01-15T09:00:00Z"),
    (lambda: forged(good_claims(nbf=None, iat=NOW + 999)), ED_KEY, None, "not_yet_valid", "issued in the future"),
    (lambda: forged(good_claims(exp=None)), ED_KEY, None, "claims", "JWT lacks the exp claim"),
    (lambda: forged(good_claims(exp="tomorrow")), ED_KEY, None, "claims", "the claim exp is not a finite number"),
    (
        lambda: forged(good_claims(purpose="choria_server", sub="n1")),
        ED_KEY,
        None,
        "purpose",
        "not a provisioning token",
    ),
    (lambda: forged(good_claims(cht=None)), ED_KEY, None, "claims", "cht is missing or not a string"),
    (lambda: forged(good_claims(cht=12345)), ED_KEY, None, "claims", "cht is missing or not a string"),
    (lambda: forged(good_claims(chu=["nats://x"])), ED_KEY, None, "claims", "chu is missing or not a string"),
    (lambda: forged(good_claims(chs="yes")), ED_KEY, None, "claims", "chs is not a boolean"),
    (lambda: forged(good_claims(extensions=None)), ED_KEY, None, "claims", "carries no identity pattern"),
    (lambda: forged(good_claims(extensions={"other": 1})), ED_KEY, None, "claims", "carries no identity pattern"),
    (
        lambda: forged(good_claims(extensions={IDENTITY_PATTERNS_KEY: ["^.*$"]})),
        ED_KEY,
        None,
        "claims",
        "identity pattern '^.*$' is invalid",
    ),
    (issue, ED_KEY, "n1.rack2.example.net", "identity", "does not match the JWT's identity patterns"),
    (issue, ED_KEY, "", "identity", "not a string of 1 to 253"),
    (issue, ED_KEY, "x" * 300, "identity", "not a string of 1 to 253"),
    (lambda: "a.b.c", ED_KEY, None, "token", "JWT does not parse"),
    (lambda: "not a jwt at all", ED_KEY, None, "token", "JWT does not parse"),
    (lambda: "", ED_KEY, None, "token", "returned no provisioning JWT"),
    (lambda: {"jwt": "x"}, ED_KEY, None, "token", "returned no provisioning JWT"),
    (lambda: "e" * (MAX_JWT_CHARS + 1), ED_KEY, None, "token", f"longer than {MAX_JWT_CHARS}"),
    (
        lambda: base64.urlsafe_b64encode(b"[" * 5000).decode() + ".e30.c2ln",
        ED_KEY,
        None,
        "token",
        "JWT does not parse",
    ),
]


@pytest.mark.parametrize(
    ("make", "key", "identity", "code", "words"), REFUSALS, ids=[str(r[4] or "accepted")[:50] for r in REFUSALS]
)
def test_refusals_name_the_reason(make, key, identity, code, words):
    identity = identity if identity is not None else "n1.rack1.example.net"
    if code is None:
        assert verify(make(), key, identity).token == TOKEN
        return
    error = refusal(make(), key, identity)
    assert error.code == code
    assert words in str(error)


def test_no_damage_to_a_token_gives_anything_but_a_refusal():
    encoded = issue()
    rng = random.Random(11)
    alphabet = "ABCabc0123-_.=+/ \x00é"
    for _round in range(500):
        text = list(encoded)
        for _hit in range(rng.randint(1, 3)):
            text[rng.randrange(len(text))] = rng.choice(alphabet)
        damaged = "".join(text)
        if damaged == encoded:
            continue
        try:
            verify(damaged)
        except ProvisioningJwtError:
            continue
        # Only a change that leaves the decoded bytes equal can verify (base64url's last character has spare bits).
        assert damaged.split(".")[:2] == encoded.split(".")[:2]


# ---------------------------------------------------------------------------------------------- identity patterns


@pytest.mark.parametrize(
    ("pattern", "identity", "matches"),
    [
        ("*.rack1.example.net", "n1.rack1.example.net", True),
        ("*.rack1.example.net", "N1.Rack1.Example.NET", True),
        ("*.rack1.example.net", "a.b.rack1.example.net", False),
        ("*.rack1.example.net", "rack1.example.net", False),
        ("*.rack1.example.net", "n1.rack1.example.net.evil.org", False),
        ("node-*.example.net", "node-12.example.net", True),
        ("node-*.example.net", "node-.example.net", True),
        ("node-*.example.net", "web-12.example.net", False),
        ("*-web.example.net", "eu1-web.example.net", True),
        ("n1.example.net", "n1.example.net", True),
        ("n1.example.net", "n1xexample.net", False),  # an unescaped regex dot would match this
        ("*", "single", True),
        ("*", "two.labels", False),
        ("*.example.net", "evil\n.example.net", False),
        ("*.example.net", "a b.example.net", False),
        ("*.example.net", "a/b.example.net", False),
    ],
)
def test_identity_patterns_are_dns_globs_with_one_star_per_label(pattern, identity, matches):
    assert identity_pattern_problem(pattern) is None
    assert identity_matches_patterns(identity, [pattern]) is matches


@pytest.mark.parametrize(
    ("pattern", "problem"),
    [
        ("", "not a non-empty string"),
        (None, "not a non-empty string"),
        ("a..example.net", "empty label"),
        (".example.net", "empty label"),
        ("**.example.net", "holds a character other than"),
        ("a*b*c.example.net", "holds a character other than"),
        ("^n[0-9]+$", "holds a character other than"),
        ("n?.example.net", "holds a character other than"),
        ("a" * 254, "longer than 253"),
    ],
)
def test_invalid_identity_patterns_are_named(pattern, problem):
    assert problem in identity_pattern_problem(pattern)


def test_issuing_refuses_what_verification_would():
    for options, words in (
        ({"identity_patterns": ["a..b"]}, "is invalid: it has an empty label"),
        ({"identity_patterns": []}, "non-empty list"),
        ({"identity_patterns": [f"n{i}.example.net" for i in range(17)]}, "at most 16"),
        ({"broker_urls": []}, "broker URLs"),
        ({"broker_urls": ["nats://a:4222,nats://b:4222"]}, "without commas"),
        ({"validity": 0}, "at least 1 second"),
        ({"token": None}, "must be a string"),
    ):
        with pytest.raises(ProvisioningJwtError, match=words):
            issue(**options)
    assert verify(issue(identity_patterns="*.rack1.example.net")).identity_patterns == ("*.rack1.example.net",)


@pytest.mark.parametrize(
    ("key", "words"),
    [
        (rsa_key(2048), "a RSA key cannot sign provisioning JWTs"),
        (ec.generate_private_key(ec.SECP384R1()), "a EC secp384r1 key cannot sign"),
    ],
)
def test_only_ed25519_and_p256_keys(key, words):
    with pytest.raises(ProvisioningJwtError, match=words):
        jwt_algorithm(key)
    with pytest.raises(ProvisioningJwtError, match=words):
        issue(key)


# ---------------------------------------------------------------------------------------------- keys


def test_verify_keys_load_as_choria_s_jwt_verify_cert_does(tmp_path):
    public = ED_KEY.public_key()
    raw_hex = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw).hex()
    pem_file = tmp_path / "issuer.pub"
    pem_file.write_bytes(
        public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    hex_file = tmp_path / "issuer.hex"
    hex_file.write_text(raw_hex + "\n")
    encoded = issue()
    for source in (str(pem_file), str(hex_file), raw_hex):
        assert verify(encoded, load_jwt_verify_key(source)).token == TOKEN
    issuer_ca = Authority("JWT issuer", key=EC_KEY)
    cert_file = tmp_path / "issuer.pem"
    cert_file.write_text(issuer_ca.pem)
    assert verify(issue(EC_KEY), load_jwt_verify_key(str(cert_file))).token == TOKEN


def test_verify_key_errors_name_the_source(tmp_path):
    garbage = tmp_path / "garbage"
    garbage.write_text("hello")
    rsa_file = tmp_path / "rsa.pub"
    rsa_file.write_bytes(
        rsa_key(2048)
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    for source, words in (
        (str(tmp_path / "missing"), "is neither a file nor a hex Ed25519 public key"),
        (str(garbage), f"jwt_verify_key {garbage} is not a usable key"),
        (str(rsa_file), "a RSA key cannot sign provisioning JWTs"),
    ):
        with pytest.raises(ProvisioningJwtError, match=words):
            load_jwt_verify_key(source)


def test_signing_keys_load_from_pem_or_a_hex_seed(tmp_path):
    seed = tmp_path / "issuer.seed"
    seed.write_text(
        ED_KEY.private_bytes(
            serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
        ).hex()
    )
    encrypted = tmp_path / "issuer.key"
    encrypted.write_text(key_pem(EC_KEY, passphrase=b"pass phrase"))
    assert verify(issue(load_jwt_signing_key(str(seed)))).token == TOKEN
    assert verify(issue(load_jwt_signing_key(str(encrypted), "pass phrase")), EC_KEY).token == TOKEN
    with pytest.raises(ProvisioningJwtError, match="is encrypted and needs its passphrase"):
        load_jwt_signing_key(str(encrypted))
    with pytest.raises(ProvisioningJwtError, match="cannot be read"):
        load_jwt_signing_key(str(tmp_path / "missing"))
