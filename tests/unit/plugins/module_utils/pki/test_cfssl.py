"""The cfssl backend's pure parts: the authsign token against known vectors, CFSSL's envelope, Go durations, options."""

from __future__ import annotations

import base64
import datetime
import json
import pathlib

import pytest

from ansible_collections.zeroinit.bootstrap.plugins.module_utils.pki.cfssl import (
    CFSSL_SIGNER_OPTIONS,
    CfsslClient,
    CfsslError,
    authenticated_request,
    authsign_token,
    parse_auth_key,
    parse_envelope,
    parse_go_duration,
)
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.pki.x509 import PkiError

CFSSL_DATA = pathlib.Path(__file__).resolve().parents[4] / "data" / "cfssl"
CFSSL_TEST_KEY = "0123456789ABCDEF0123456789ABCDEF"  # the key of CFSSL's auth/auth_test.go
KEY = "00112233445566778899aabbccddeeff"


# ---------------------------------------------------------------------------------------------------- the token


def test_token_matches_cfssl_pre_generated_authenticated_request():
    document = json.loads((CFSSL_DATA / "authrequest.json").read_text())
    request = base64.b64decode(document["request"])
    token = authsign_token(parse_auth_key(CFSSL_TEST_KEY), request)
    assert (
        base64.b64encode(token).decode("ascii") == document["token"] == "tSU1WTE/322iXrOBfJSQ9/u1dleqpwUmCj1LXYHw07Y="
    )


def test_token_is_hmac_sha256_rfc4231_test_case_2():
    # RFC 4231 section 4.3: key "Jefe", data "what do ya want for nothing?".
    token = authsign_token(parse_auth_key("4a656665"), b"what do ya want for nothing?")
    assert token.hex() == "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"


def test_authenticated_request_carries_the_exact_request_bytes_and_their_token_in_base64():
    request = b'{"certificate_request":"-----BEGIN CERTIFICATE REQUEST-----\\n...","profile":"node"}'
    body = json.loads(authenticated_request(parse_auth_key(CFSSL_TEST_KEY), request))
    assert set(body) == {"token", "request"}
    assert base64.b64decode(body["request"]) == request
    assert base64.b64decode(body["token"]) == authsign_token(bytes.fromhex(CFSSL_TEST_KEY), request)


@pytest.mark.parametrize("text", ["", None, "   ", "abc", "xyz0", "0123456789abcdeg"])
def test_auth_key_that_is_not_hex_is_refused_without_echoing_it(text):
    with pytest.raises(PkiError) as info:
        parse_auth_key(text)
    assert info.value.field == "cfssl_auth_key"
    if text and text.strip():
        assert text.strip() not in str(info.value)


def test_auth_key_in_either_case_and_with_a_trailing_newline_is_the_same_key():
    assert (
        parse_auth_key(CFSSL_TEST_KEY + "\n") == parse_auth_key(CFSSL_TEST_KEY.lower()) == bytes.fromhex(CFSSL_TEST_KEY)
    )


# ---------------------------------------------------------------------------------------------------- Go durations


@pytest.mark.parametrize(
    "text, expected",
    [
        ("8760h", datetime.timedelta(days=365)),
        ("720h", datetime.timedelta(days=30)),
        ("1h30m", datetime.timedelta(minutes=90)),
        ("1.5h", datetime.timedelta(minutes=90)),
        ("90m0s", datetime.timedelta(minutes=90)),
        ("300ms", datetime.timedelta(milliseconds=300)),
        ("2\u00b5s", datetime.timedelta(microseconds=2)),
        ("0", datetime.timedelta(0)),
    ],
)
def test_go_durations_as_cfssl_profiles_write_them(text, expected):
    assert parse_go_duration(text) == expected


@pytest.mark.parametrize("text", ["", None, 8760, "365d", "1y", "h", "1h 30m", "-1h", "1hx", "9" * 400 + "h"])
def test_what_go_would_not_parse_is_refused(text):
    with pytest.raises(ValueError):
        parse_go_duration(text)


# ---------------------------------------------------------------------------------------------------- the envelope


def envelope(**fields) -> bytes:
    document = {"success": True, "result": None, "errors": [], "messages": []}
    document.update(fields)
    return json.dumps(document).encode()


def test_envelope_result_is_returned():
    assert parse_envelope(envelope(result={"certificate": "PEM"}), 200, "CFSSL at X", "authsign") == {
        "certificate": "PEM"
    }


def test_envelope_error_surfaces_cfssl_code_and_message():
    body = envelope(success=False, errors=[{"code": 5300, "message": "Policy violation request"}])
    with pytest.raises(CfsslError) as info:
        parse_envelope(body, 400, "CFSSL at http://ca:8888", "authsign")
    assert info.value.code == 5300 and info.value.field == "cfssl_url"
    assert str(info.value) == "CFSSL at http://ca:8888 refused authsign: CFSSL error 5300: Policy violation request"


def test_invalid_token_names_the_auth_key_option():
    body = envelope(success=False, errors=[{"code": 400, "message": "invalid token"}])
    with pytest.raises(CfsslError) as info:
        parse_envelope(body, 400, "CFSSL at http://ca:8888", "authsign")
    assert info.value.field == "cfssl_auth_key" and info.value.code == 400
    assert "cfssl_auth_key is not the key of the profile's auth_key" in str(info.value)


@pytest.mark.parametrize(
    "body, expected",
    [
        (b"\xff\xfe\x00garbage", "not a CFSSL response"),
        (b"<html>502 Bad Gateway</html>", "not a CFSSL response"),
        (b"[" * 100000 + b"]" * 100000, "not a CFSSL response"),
        (b'["success"]', "not a CFSSL response envelope"),
        (b'{"success": "yes"}', "not a CFSSL response envelope"),
        (envelope(result="certificate"), "no result object"),
        (envelope(success=False, errors="boom"), "CFSSL error None: no error message"),
        (envelope(success=False, errors=[{"code": True, "message": 7}]), "CFSSL error None: 7"),
    ],
)
def test_hostile_bodies_are_refused_with_a_message_not_a_traceback(body, expected):
    with pytest.raises(CfsslError) as info:
        parse_envelope(body, 200, "CFSSL at http://ca:8888", "info")
    assert expected in str(info.value)


def test_control_characters_and_length_of_a_server_message_are_tamed():
    body = envelope(success=False, errors=[{"code": 1, "message": "line\nbreak\x1b[31m" + "A" * 5000}])
    with pytest.raises(CfsslError) as info:
        parse_envelope(body, 400, "CFSSL at X", "authsign")
    message = str(info.value)
    assert "\n" not in message and "\x1b" not in message and "line\\nbreak\\x1b[31m" in message
    assert len(message) < 500


# ---------------------------------------------------------------------------------------------------- options


@pytest.mark.parametrize(
    "url, reason",
    [
        ("", "not an http:// or https:// URL"),
        ("ca.example.net:8888", "not an http:// or https:// URL"),
        ("ftp://ca.example.net", "not an http:// or https:// URL"),
        ("https://", "not an http:// or https:// URL"),
        ("https://user:pw@ca.example.net", "may not carry credentials"),
        ("https://ca.example.net/?x=1", "may not carry credentials, a query"),
        ("https://ca.example.net:99999", "cfssl_url"),
        ("https://ca.example.net/a path", "may only hold"),
    ],
)
def test_bad_url_is_refused_naming_the_option(url, reason):
    with pytest.raises(PkiError) as info:
        CfsslClient(url, KEY)
    assert info.value.field == "cfssl_url" and reason in str(info.value)


def test_ca_bundle_with_plain_http_is_refused():
    with pytest.raises(PkiError) as info:
        CfsslClient("http://ca.example.net:8888", KEY, ca_bundle="/etc/ssl/certs/ca-certificates.crt")
    assert info.value.field == "cfssl_ca_bundle"


def test_ca_bundle_that_does_not_exist_is_refused(tmp_path):
    with pytest.raises(PkiError) as info:
        CfsslClient("https://ca.example.net:8888", KEY, ca_bundle=str(tmp_path / "missing.pem"))
    assert info.value.field == "cfssl_ca_bundle" and "missing.pem" in str(info.value)


@pytest.mark.parametrize("timeout", [0, -1, float("nan"), float("inf")])
def test_timeout_must_be_positive(timeout):
    with pytest.raises(PkiError) as info:
        CfsslClient("https://ca.example.net", KEY, timeout=timeout)
    assert info.value.field == "cfssl_timeout"


def test_url_with_a_path_prefix_keeps_it_before_the_api_path():
    client = CfsslClient("https://ca.example.net:8443/pki/", KEY)
    assert (client.scheme, client.host, client.port, client.path) == ("https", "ca.example.net", 8443, "/pki")


def test_option_spec_hides_the_auth_key_and_defaults_to_the_builtin_signer():
    assert CFSSL_SIGNER_OPTIONS["cfssl_auth_key"]["no_log"] is True
    assert CFSSL_SIGNER_OPTIONS["backend"] == dict(type="str", default="builtin", choices=["builtin", "cfssl"])
    assert all(name == "backend" or name.startswith("cfssl_") for name in CFSSL_SIGNER_OPTIONS)
