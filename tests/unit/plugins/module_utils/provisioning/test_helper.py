"""Choria's helper contract: what a helper gets on stdin, how its answer is judged, and how a bad helper fails."""

import asyncio
import datetime
import json
import os
import stat
import sys
import time

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ansible_collections.zeroinit.bootstrap.plugins.module_utils.provisioning import helper as ph
from tests.support.rules import LOOP_GUARD, loop_guard_config

CERT = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"


def good_answer(**overrides):
    doc = {
        "defer": False,
        "shutdown": False,
        "msg": "",
        "certificate": CERT,
        "ca": CERT,
        "ssldir": "/ssl",
        "configuration": {"plugin.choria.server.provision": "false", "identity": "n1"},
    }
    doc.update(overrides)
    return json.dumps(doc)


def test_helper_request_has_exactly_chorias_fields_and_inventory_as_a_string():
    req = ph.helper_request("n1", {"csr": "C", "public_key": "P", "ssldir": "/s", "extra": 1}, {"facts": {"a": 1}})
    assert set(req) == {"identity", "csr", "ed25519_pubkey", "inventory", "jwt"}
    assert req["csr"] == {"csr": "C", "public_key": "P", "ssldir": "/s"}
    assert req["ed25519_pubkey"] is None and req["jwt"] is None
    assert isinstance(req["inventory"], str) and json.loads(req["inventory"]) == {"facts": {"a": 1}}
    assert ph.helper_request("n1", None, "{}")["csr"] is None
    claims = {"purpose": "choria_provisioning", "cht": "tok", "chu": "nats://h:4222"}
    assert ph.helper_request("n1", None, "{}", claims)["jwt"] == claims  # the verified claims object, as Choria


def test_good_answer_is_a_configure_decision():
    decision = ph.parse_helper_output("n1", 0, good_answer(msg="ok", server_claims={"x": 1}), "")
    assert not decision.defer and not decision.shutdown
    assert decision.certificate == CERT and decision.ssldir == "/ssl"
    assert decision.configuration["identity"] == "n1"
    assert decision.ignored == ("server_claims",)


def test_without_pki_a_chorias_helper_answer_without_a_certificate_is_a_decision():
    # What Choria's Go helpers print: every field, the unused ones empty.
    answer = good_answer(certificate="", ca="", ssldir="", key="", server_claims=None, action_policies={})
    decision = ph.parse_helper_output("n1", 0, answer, "", require_certificate=False)
    assert (decision.certificate, decision.ca, decision.ssldir) == ("", "", "")
    assert decision.configuration["identity"] == "n1" and decision.ignored == ()
    missing = json.dumps({"configuration": {"plugin.choria.server.provision": "false"}})
    assert ph.parse_helper_output("n1", 0, missing, "", require_certificate=False).certificate == ""


@pytest.mark.parametrize("field", ["certificate", "ca"])
def test_with_pki_the_certificate_and_ca_are_required_and_without_they_must_still_be_pem(field):
    with pytest.raises(ph.NodeFailure, match=f"field '{field}'"):
        ph.parse_helper_output("n1", 0, good_answer(**{field: ""}), "")
    with pytest.raises(ph.NodeFailure, match=f"field '{field}'"):
        ph.parse_helper_output("n1", 0, good_answer(**{field: "not a PEM"}), "", require_certificate=False)


def test_without_pki_the_configuration_is_still_required():
    with pytest.raises(ph.NodeFailure, match="no configuration"):
        ph.parse_helper_output("n1", 0, json.dumps({"msg": "hi"}), "", require_certificate=False)


def test_defer_and_shutdown_carry_the_message():
    assert ph.parse_helper_output("n1", 0, json.dumps({"defer": True, "msg": "not yet"}), "").msg == "not yet"
    decision = ph.parse_helper_output("n1", 0, json.dumps({"shutdown": True}), "")
    assert decision.shutdown and decision.msg


@pytest.mark.parametrize(
    "rc,stdout,needle",
    [
        (3, good_answer(), "exited with status 3"),
        (0, "", "printed nothing"),
        (0, "{not json", "not JSON"),
        (0, "[1, 2]", "not an object"),
        (0, good_answer(configuration={}), "no configuration"),
        (0, good_answer(configuration={"plugin.choria.server.provision": False}), "must be a string"),
        (0, good_answer(certificate=""), "no PEM certificate"),
        (0, good_answer(ca="junk"), "no PEM CA"),
    ],
)
def test_bad_helper_output_fails_the_node_with_stderr(rc, stdout, needle):
    with pytest.raises(ph.NodeFailure) as err:
        ph.parse_helper_output("n7", rc, stdout, "helper says: boom")
    text = str(err.value)
    assert needle in text and "n7" in text
    if needle != "must be a string":
        assert "helper says: boom" in text


@pytest.mark.parametrize("value,enabled", LOOP_GUARD)
def test_loop_guard_refuses_a_configuration_unless_provisioning_is_explicitly_off(value, enabled):
    conf = loop_guard_config(value, identity="n1")
    if enabled:
        with pytest.raises(ph.NodeFailure, match="leaves provisioning on"):
            ph.check_configuration("n1", conf)
    else:
        ph.check_configuration("n1", conf)


def test_a_renewal_setting_the_node_could_not_use_is_refused_before_configure():
    conf = {"plugin.choria.server.provision": "false", "plugin.zeroinit.renewal.fraction": "2"}
    with pytest.raises(ph.NodeFailure) as info:
        ph.check_configuration("n1", conf)
    assert str(info.value).startswith("configuration for n1: plugin.zeroinit.renewal.fraction must be between 0 and 1")
    ph.check_configuration("n1", dict(conf, **{"plugin.zeroinit.renewal.fraction": "0.75"}))


def test_helper_configuration_wins_over_base():
    merged = ph.merge_configuration({"a": "base", "b": "base"}, {"b": "helper"})
    assert merged == {"a": "base", "b": "helper"}


def _script(tmp_path, body):
    path = tmp_path / "helper.py"
    path.write_text(f"#!{sys.executable}\nimport json, sys, time\n{body}\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


def test_helper_argv_accepts_string_or_list_and_rejects_missing_program(tmp_path):
    script = _script(tmp_path, "pass")
    assert ph.helper_argv(f"{script} --flag 'a b'") == [script, "--flag", "a b"]
    assert ph.helper_argv([script, "x"]) == [script, "x"]
    with pytest.raises(ValueError, match="not an executable"):
        ph.helper_argv(str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="empty"):
        ph.helper_argv([])


def test_run_helper_passes_the_request_on_stdin(tmp_path):
    script = _script(
        tmp_path,
        "req = json.load(sys.stdin)\n"
        f"print(json.dumps({{'certificate': {CERT!r}, 'ca': {CERT!r}, 'configuration': "
        "{'identity': req['identity'], 'plugin.choria.server.provision': 'false', "
        "'seen.inventory': json.loads(req['inventory'])['version']}}))",
    )
    decision = asyncio.run(ph.run_helper([script], ph.helper_request("n3", None, {"version": "1.2"})))
    assert decision.certificate == CERT and decision.configuration == {
        "identity": "n3",
        "plugin.choria.server.provision": "false",
        "seen.inventory": "1.2",
    }


def test_run_helper_wants_a_certificate_only_when_the_request_carries_a_csr(tmp_path):
    script = _script(
        tmp_path, "sys.stdin.read(); print(json.dumps({'configuration': {'plugin.choria.server.provision': 'no'}}))"
    )
    decision = asyncio.run(ph.run_helper([script], ph.helper_request("n3", None, {})))
    assert decision.configuration == {"plugin.choria.server.provision": "no"} and decision.certificate == ""
    csr = {"csr": "C", "public_key": "P", "ssldir": "/s"}
    with pytest.raises(ph.NodeFailure, match="no PEM certificate"):
        asyncio.run(ph.run_helper([script], ph.helper_request("n3", csr, {})))


def test_run_helper_kills_a_helper_that_runs_too_long(tmp_path):
    script = _script(tmp_path, "sys.stderr.write('thinking'); sys.stderr.flush(); time.sleep(60)")
    with pytest.raises(ph.NodeFailure) as err:
        asyncio.run(ph.run_helper([script], ph.helper_request("n4", None, {}), timeout=0.5))
    assert "longer than 0.5s" in str(err.value) and "thinking" in str(err.value)


def test_run_helper_reports_nonzero_exit_with_stderr(tmp_path):
    script = _script(tmp_path, "sys.stderr.write('no CA for you'); sys.exit(2)")
    with pytest.raises(ph.NodeFailure, match=r"status 2.*no CA for you"):
        asyncio.run(ph.run_helper([script], ph.helper_request("n5", None, {})))
    assert os.path.exists(script)


def test_helper_certificate_must_parse_and_carry_the_csr_key():
    def key_and_csr():
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "n1")])
        csr = x509.CertificateSigningRequestBuilder().subject_name(name).sign(key, hashes.SHA256())
        return key, csr.public_bytes(serialization.Encoding.PEM).decode()

    key, csr_pem = key_and_csr()
    other_key, other_csr = key_and_csr()
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "n1")]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ca")]))
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(other_key, hashes.SHA256())
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM).decode()
    assert ph.certificate_problem(cert_pem, csr_pem) == ""
    assert "public key" in ph.certificate_problem(cert_pem, other_csr)
    assert "does not parse" in ph.certificate_problem(CERT, csr_pem)


def test_run_helper_kills_a_helper_that_prints_too_much(tmp_path):
    script = _script(
        tmp_path,
        "sys.stderr.write('e' * 200000 + 'last words'); sys.stderr.flush()\n"
        "chunk = 'x' * 65536\n"
        "while True: sys.stdout.write(chunk)",
    )
    with pytest.raises(ph.NodeFailure) as err:
        asyncio.run(ph.run_helper([script], ph.helper_request("n6", None, {}), timeout=20))
    assert f"helper printed more than {ph.MAX_HELPER_OUTPUT} bytes for n6 and was killed" in str(err.value)
    assert str(err.value).endswith("last words")


def test_helpers_killed_for_printing_too_much_are_waited_for_at_once(tmp_path):
    # One write of 8 MB fills the pipe's reader past its high-water mark: a reader that stopped at the cap left the
    # pipe paused, its end unseen, and the run waited for the time limit instead.
    script = _script(tmp_path, "sys.stdout.write('x' * 8 * 1024 * 1024)")

    async def ten():
        runs = (ph.run_helper([script], ph.helper_request(f"n{i}", None, {}), timeout=30) for i in range(10))
        return await asyncio.gather(*runs, return_exceptions=True)

    started = time.monotonic()
    failures = asyncio.run(ten())
    assert all(f"printed more than {ph.MAX_HELPER_OUTPUT} bytes" in str(failure) for failure in failures), failures
    assert time.monotonic() - started < 15
