"""zeroinit.bootstrap.pki_sign through ansible-playbook: check/real/check/real, files and modes, diff, errors."""

from __future__ import annotations

import os
import pathlib
import stat

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from cryptography.x509.verification import PolicyBuilder, Store

from ansible_collections.zeroinit.bootstrap.plugins.module_utils.pki.ca import CertificateAuthority
from tests.support.ansible_run import run_module, run_playbook

MODULE = "zeroinit.bootstrap.pki_sign"
IDENTITY = "node1.example.net"


def make_csr(identity: str = IDENTITY, key=None) -> str:
    key = key if key is not None else ec.generate_private_key(ec.SECP256R1())
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, identity)])
    )
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM).decode("ascii")


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def four_runs(params: dict, diff: bool = False) -> list[dict]:
    """check, real, check, real: the community.crypto pattern."""
    results = []
    for check in (True, False, True, False):
        result = run_module(MODULE, params, check=check, diff=diff)
        assert not result.get("failed"), result.get("msg")
        results.append(result)
    return results


@pytest.fixture
def pki_dir(tmp_path):
    return tmp_path


def test_create_ca_and_dest_check_real_check_real(pki_dir):
    ca_cert, ca_key = pki_dir / "ca" / "ca.crt", pki_dir / "ca" / "ca.key"
    (pki_dir / "ca").mkdir()
    dest, chain = pki_dir / "node1.crt", pki_dir / "chain.pem"
    params = dict(
        csr=make_csr(),
        identity=IDENTITY,
        ca_cert=str(ca_cert),
        ca_key=str(ca_key),
        create_ca=True,
        ca_common_name="site CA",
        dest=str(dest),
        chain_dest=str(chain),
        profile="server",
    )

    first_check = run_module(MODULE, params, check=True)
    assert first_check["changed"] is True and first_check["ca_created"] is True
    assert first_check["certificate"] is None and first_check["not_after"]
    assert sorted(p.name for p in pki_dir.rglob("*")) == ["ca"], "check mode must write nothing, not even the CA"

    real = run_module(MODULE, params)
    assert real["changed"] is True and real["ca_created"] is True and not real.get("failed")
    assert mode(ca_key) == 0o600 and mode(ca_cert) == 0o644 and mode(dest) == 0o644 and mode(chain) == 0o644
    cert = x509.load_pem_x509_certificate(dest.read_bytes())
    assert real["certificate"] == dest.read_text() and real["serial"] == f"{cert.serial_number:x}"
    assert chain.read_text() == ca_cert.read_text() == real["ca"]
    ca = CertificateAuthority.load(str(ca_cert), str(ca_key))
    verified = (
        PolicyBuilder().store(Store([ca.certificate])).build_server_verifier(x509.DNSName(IDENTITY)).verify(cert, [])
    )
    assert verified[-1].subject.rfc4514_string() == "CN=site CA"

    for check in (True, False):
        again = run_module(MODULE, params, check=check)
        assert again["changed"] is False and again["ca_created"] is False
        assert again["serial"] == real["serial"] and again["certificate"] == real["certificate"]
        assert again["not_after"] == real["not_after"] and again["msg"].startswith("kept")
    assert x509.load_pem_x509_certificate(dest.read_bytes()).serial_number == cert.serial_number


def test_existing_encrypted_ca_csr_path_and_passphrase_never_shown(pki_dir):
    ca_cert, ca_key = str(pki_dir / "ca.crt"), str(pki_dir / "ca.key")
    CertificateAuthority.load_or_create(ca_cert, ca_key, passphrase="correct horse battery")
    csr_path = pki_dir / "csr.pem"
    csr_path.write_text(make_csr())
    params = dict(
        csr_path=str(csr_path),
        identity=IDENTITY,
        ca_cert=ca_cert,
        ca_key=ca_key,
        ca_passphrase="correct horse battery",
        dest=str(pki_dir / "node.crt"),
        valid_days=90,
        max_valid_days=90,
    )
    results = four_runs(params)
    assert [r["changed"] for r in results] == [True, True, False, False]
    assert not any(r["ca_created"] for r in results)
    assert all("correct horse battery" not in str(r) for r in results)

    play = run_playbook(
        "- hosts: localhost\n  gather_facts: false\n  tasks:\n    - name: sign\n      {}:\n{}".format(
            MODULE, "".join("        {}: {!r}\n".format(*item) for item in params.items())
        ),
        args=["-vvv"],
    )
    assert play.rc == 0 and "correct horse battery" not in play.stdout + play.stderr


def test_renewal_window_reissues_once_then_settles(pki_dir):
    ca_cert, ca_key = str(pki_dir / "ca.crt"), str(pki_dir / "ca.key")
    csr = make_csr()
    base = dict(csr=csr, identity=IDENTITY, ca_cert=ca_cert, ca_key=ca_key, create_ca=True, dest=str(pki_dir / "n.crt"))
    short = run_module(MODULE, dict(base, valid_days=40, renew_before_days=10))
    assert short["changed"] is True
    # The 40-day certificate is now inside a 45-day renewal window: re-issued once, then kept.
    results = four_runs(dict(base, valid_days=90, renew_before_days=45))
    assert [r["changed"] for r in results] == [True, True, False, False]
    assert "renew_before_days 45" in results[0]["msg"]
    assert results[1]["serial"] != short["serial"] and results[3]["serial"] == results[1]["serial"]


def test_new_key_or_other_ca_replaces_the_certificate(pki_dir):
    ca_cert, ca_key = str(pki_dir / "ca.crt"), str(pki_dir / "ca.key")
    dest = str(pki_dir / "n.crt")
    base = dict(identity=IDENTITY, ca_cert=ca_cert, ca_key=ca_key, create_ca=True, dest=dest)
    first = run_module(MODULE, dict(base, csr=make_csr()))
    new_csr = make_csr()  # the node made a new key
    results = four_runs(dict(base, csr=new_csr))
    assert [r["changed"] for r in results] == [True, True, False, False]
    assert "different public key" in results[0]["msg"]
    assert results[1]["serial"] != first["serial"]

    # Same key, another CA (the permanent CA replacing the bootstrap one): re-issued by the new CA, then kept.
    other = dict(
        base,
        csr=new_csr,
        ca_cert=str(pki_dir / "other.crt"),
        ca_key=str(pki_dir / "other.key"),
        ca_common_name="permanent CA",
    )
    CertificateAuthority.load_or_create(other["ca_cert"], other["ca_key"], common_name="permanent CA")
    moved = four_runs(other)
    assert [r["changed"] for r in moved] == [True, True, False, False]
    assert "not issued by this CA" in moved[0]["msg"]
    issuer = x509.load_pem_x509_certificate(pathlib.Path(dest).read_bytes()).issuer.rfc4514_string()
    assert issuer == "CN=permanent CA"


def test_diff_shows_parsed_properties_and_no_key_material(pki_dir):
    params = dict(
        csr=make_csr(),
        identity=IDENTITY,
        ca_cert=str(pki_dir / "ca.crt"),
        ca_key=str(pki_dir / "ca.key"),
        create_ca=True,
        dest=str(pki_dir / "n.crt"),
    )
    results = four_runs(params, diff=True)
    predicted, issued, kept = results[0]["diff"], results[1]["diff"], results[3]["diff"]
    assert predicted["before"] == {"ca": "absent"}
    assert predicted["after"]["subject"] == f"CN={IDENTITY}"
    assert predicted["after"]["subject_alt_names"] == [f"DNS:{IDENTITY}"]
    assert predicted["after"]["issuer"] == "CN=zeroinit CA" and predicted["after"]["ca"] == "CN=zeroinit CA"
    assert issued["after"]["serial"] == results[1]["serial"]
    assert issued["after"]["public_key_sha256"] == predicted["after"]["public_key_sha256"]
    assert kept["before"] == kept["after"] and kept["after"]["serial"] == results[1]["serial"]
    assert all("PRIVATE KEY" not in str(r["diff"]) and "BEGIN" not in str(r["diff"]) for r in results)


def test_mismatched_ca_key_is_refused_naming_the_field(pki_dir):
    ca_cert = str(pki_dir / "ca.crt")
    CertificateAuthority.load_or_create(ca_cert, str(pki_dir / "ca.key"))
    CertificateAuthority.load_or_create(str(pki_dir / "b.crt"), str(pki_dir / "b.key"))
    dest = pki_dir / "n.crt"
    for check in (True, False):
        result = run_module(
            MODULE,
            dict(csr=make_csr(), identity=IDENTITY, ca_cert=ca_cert, ca_key=str(pki_dir / "b.key"), dest=str(dest)),
            check=check,
        )
        assert result["failed"] is True and result["field"] == "ca_key"
        assert "ca_key %s does not match the CA certificate" % (pki_dir / "b.key") in result["msg"]
    assert not dest.exists()


def test_refused_csr_fails_with_rule_value_and_identity_in_check_mode_too(pki_dir):
    params = dict(
        csr=make_csr("evil.example.net"),
        identity=IDENTITY,
        ca_cert=str(pki_dir / "ca.crt"),
        ca_key=str(pki_dir / "ca.key"),
        create_ca=True,
        dest=str(pki_dir / "n.crt"),
    )
    for check in (True, False):
        result = run_module(MODULE, params, check=check)
        assert result["failed"] is True and result["rule"] == "cn_matches_identity"
        assert result["msg"] == (
            "identity node1.example.net: CSR refused by policy 'cn_matches_identity': "
            "CN 'evil.example.net' is not the identity 'node1.example.net'"
        )
    # A refused CSR must not leave a new CA behind either: the policy is checked before anything is written.
    assert os.listdir(pki_dir) == []


def test_missing_ca_without_create_ca_and_bad_options_name_the_field(pki_dir):
    base = dict(csr=make_csr(), identity=IDENTITY, ca_cert=str(pki_dir / "ca.crt"), ca_key=str(pki_dir / "ca.key"))
    result = run_module(MODULE, base)
    assert result["failed"] and result["field"] == "ca_cert" and "set create_ca" in result["msg"]
    result = run_module(MODULE, dict(base, create_ca=True, valid_days=400))
    assert result["failed"] and result["rule"] == "max_valid_days" and "valid_days 400" in result["msg"]
    result = run_module(MODULE, dict(base, create_ca=True, dest=str(pki_dir / "n.crt"), valid_days=20))
    assert result["failed"] and result["field"] == "renew_before_days"
    result = run_module(MODULE, dict(base, csr_path=str(pki_dir / "csr.pem")))
    assert result["failed"] and "mutually exclusive" in result["msg"]


def test_parallel_hosts_sharing_one_new_ca_all_get_certificates_from_it(pki_dir):
    """The csr_signing pattern: one task per node, all creating/using one CA directory, in parallel forks."""
    hosts = [f"node{i}.example.net" for i in range(4)]
    inventory = pki_dir / "hosts.yml"
    inventory.write_text(
        "all:\n  hosts:\n{}".format("".join(f"    {h}:\n      ansible_connection: local\n" for h in hosts))
    )
    for host in hosts:
        (pki_dir / (f"{host}.csr")).write_text(make_csr(host))
    play = """- hosts: all
  gather_facts: false
  tasks:
    - name: sign
      zeroinit.bootstrap.pki_sign:
        csr_path: "{{ d }}/{{ inventory_hostname }}.csr"
        identity: "{{ inventory_hostname }}"
        ca_cert: "{{ d }}/ca/ca.crt"
        ca_key: "{{ d }}/ca/ca.key"
        create_ca: true
        dest: "{{ d }}/{{ inventory_hostname }}.crt"
"""
    (pki_dir / "ca").mkdir()
    for check, expect_changed in ((True, True), (False, True), (True, False), (False, False)):
        result = run_playbook(
            play, inventory=inventory, extra_vars={"d": str(pki_dir)}, check=check, args=["--forks", "4"]
        )
        assert result.rc == 0, result.stdout[-2000:]
        for host in hosts:
            assert result.result("sign", host)["changed"] is expect_changed
        created = [result.result("sign", host)["ca_created"] for host in hosts].count(True)
        # First check run: each host predicts creating it; the real run: exactly one host created it.
        assert created == {(True, True): 4, (False, True): 1}.get((check, expect_changed), 0)
    ca = CertificateAuthority.load(str(pki_dir / "ca" / "ca.crt"), str(pki_dir / "ca" / "ca.key"))
    for host in hosts:
        cert = x509.load_pem_x509_certificate((pki_dir / (f"{host}.crt")).read_bytes())
        cert.verify_directly_issued_by(ca.certificate)


def test_cfssl_backend_check_real_check_real_and_the_auth_key_never_shows(pki_dir):
    """backend=cfssl against a real cfssl serve: the same idempotency with dest, the chain from the server, no key."""
    from tests.support.cfssl import CfsslServer

    with CfsslServer(pki_dir / "cfssl") as server:
        dest, chain = pki_dir / "node.crt", pki_dir / "chain.pem"
        params = dict(
            csr=make_csr(),
            identity=IDENTITY,
            backend="cfssl",
            cfssl_url=server.url,
            cfssl_auth_key=server.auth_key,
            cfssl_profile="node",
            cfssl_ca_cert=str(server.ca_path),
            valid_days=30,
            max_valid_days=30,
            dest=str(dest),
            chain_dest=str(chain),
            renew_before_days=10,
        )
        results = four_runs(params, diff=True)
        assert [r["changed"] for r in results] == [True, True, False, False]
        assert results[0]["certificate"] is None and results[1]["serial"] == results[3]["serial"]
        assert chain.read_text() == server.ca_pem and mode(dest) == 0o644
        assert server.signed_count() == 1
        cert = x509.load_pem_x509_certificate(dest.read_bytes())
        assert cert.issuer == x509.load_pem_x509_certificate(server.ca_path.read_bytes()).subject
        assert results[1]["diff"]["after"]["subject"] == f"CN={IDENTITY}"
        assert all(server.auth_key not in str(r) for r in results)
        refused = run_module(MODULE, dict(params, cfssl_auth_key="00" * 16, dest=str(pki_dir / "other.crt")))
        assert refused["failed"] and refused["field"] == "cfssl_auth_key" and "invalid token" in refused["msg"]
        (pki_dir / "csr.pem").write_text(params.pop("csr"))
        params["csr_path"] = str(pki_dir / "csr.pem")
        play = run_playbook(
            "- hosts: localhost\n  gather_facts: false\n  tasks:\n    - name: sign\n      {}:\n{}".format(
                MODULE, "".join("        {}: {!r}\n".format(*item) for item in params.items())
            ),
            args=["-vvv"],
        )
        assert play.rc == 0, play.stdout[-3000:]
        assert server.auth_key not in play.stdout + play.stderr
    missing = run_module(MODULE, dict(csr=make_csr(), identity=IDENTITY, backend="cfssl"))
    assert missing["failed"] and "cfssl_url" in missing["msg"] and "cfssl_auth_key" in missing["msg"]
