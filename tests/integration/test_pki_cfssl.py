"""The cfssl signer backend against a real ``cfssl serve`` (Debian golang-cfssl 1.2.0) on loopback.

Node-made CSRs are signed by the CFSSL CA and verified as TLS certificates against the CA file cfssl itself wrote;
policy refusals are shown never to reach the server (its access log); a wrong auth key, a stopped server, a
profile that does not fit the policy and TLS trust are checked end to end. A misbehaving server is a proxy in front
of the real one holding the same auth key (a CA server gone rogue, or whatever answers in its place): it rewrites
requests so that the real CFSSL signs something else (another key, CA:TRUE, more names, O=system:masters, ten
years), or answers bytes of its own; every such answer is refused.
"""

from __future__ import annotations

import base64
import concurrent.futures
import http.server
import ipaddress
import json
import re
import threading
import time
import urllib.error
import urllib.request

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID
from cryptography.x509.verification import PolicyBuilder, Store

from ansible_collections.zeroinit.bootstrap.plugins.module_utils.pki.cfssl import (
    CfsslError,
    authenticated_request,
    cfssl_signer_from_params,
)
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.pki.policy import CsrPolicy, PolicyError
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.pki.x509 import PkiError
from tests.support.broker import free_port
from tests.support.cfssl import CfsslServer

IDENTITY = "node1.example.net"
POLICY_DAYS = 30  # the fixture's node profile issues 720h


def node_csr(key_type: str = "ec", identity: str = IDENTITY, dns=(), ips=(), organization: str | None = None):
    """What a node does on gencsr: a key that stays with it, and a CSR for it."""
    if key_type == "ec":
        key = ec.generate_private_key(ec.SECP256R1())
    elif key_type == "rsa":
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    else:
        key = ed25519.Ed25519PrivateKey.generate()
    names = [x509.NameAttribute(NameOID.COMMON_NAME, identity)]
    if organization:
        names.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization))
    builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name(names))
    sans = [x509.DNSName(n) for n in dns] + [x509.IPAddress(ipaddress.ip_address(a)) for a in ips]
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    csr = builder.sign(key, None if key_type == "ed25519" else hashes.SHA256())
    return key, csr.public_bytes(serialization.Encoding.PEM).decode("ascii")


def params(server: CfsslServer, **overrides) -> dict:
    values = dict(cfssl_url=server.url, cfssl_auth_key=server.auth_key, cfssl_profile="node")
    if server.tls:
        values["cfssl_ca_bundle"] = str(server.tls_ca_path)
    values.update(overrides)
    return values


def policy(**overrides) -> CsrPolicy:
    return CsrPolicy(**dict(dict(max_valid_days=POLICY_DAYS), **overrides))


def load(pem: str):
    return x509.load_pem_x509_certificate(pem.encode("ascii"))


def wait_for(predicate, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


@pytest.fixture(scope="module")
def cfssl(tmp_path_factory):
    with CfsslServer(tmp_path_factory.mktemp("cfssl")) as server:
        yield server


@pytest.fixture
def signer(cfssl):
    with cfssl_signer_from_params(params(cfssl), policy()) as signer:
        yield signer


def sign_once(signer_params: dict, signer_policy: CsrPolicy | None = None, csr: str | None = None, **kwargs):
    """A signer started for one signature and closed after it, as one pki_sign run uses it."""
    with cfssl_signer_from_params(signer_params, signer_policy or policy()) as signer:
        return signer.sign(csr or node_csr()[1], IDENTITY, **dict(dict(valid_days=POLICY_DAYS), **kwargs))


# ------------------------------------------------------------------------------------------------- signing


@pytest.mark.parametrize("key_type", ["ec", "rsa"])
def test_node_csr_is_signed_by_the_cfssl_ca_and_carries_the_node_key(cfssl, signer, key_type):
    key, csr = node_csr(key_type)
    issued = signer.sign(csr, IDENTITY, valid_days=POLICY_DAYS, profile="both")

    cert = load(issued.certificate)
    ca = load(cfssl.ca_pem)  # the file cfssl gencert -initca wrote, not what the server said
    store = Store([ca])
    chain = PolicyBuilder().store(store).build_server_verifier(x509.DNSName(IDENTITY)).verify(cert, [])
    assert chain[-1] == ca
    assert PolicyBuilder().store(store).build_client_verifier().verify(cert, []).subjects == [x509.DNSName(IDENTITY)]
    assert cert.public_key() == key.public_key()
    assert cert.subject.rfc4514_string() == f"CN={IDENTITY}"
    assert load(issued.ca) == ca and issued.issuer == ca.subject.rfc4514_string()
    assert issued.subject_alt_names == (f"DNS:{IDENTITY}",)
    assert (cert.not_valid_after_utc - cert.not_valid_before_utc).days == POLICY_DAYS
    assert issued.warnings == ()


def test_sans_are_the_ones_the_policy_allowed(cfssl):
    allowing = policy(allowed_sans=["{identity}", r"[a-z]+\.{identity}", r"10\.20\.\d+\.\d+"])
    issued = sign_once(params(cfssl), allowing, node_csr(dns=["api.node1.example.net"], ips=["10.20.0.7"])[1])
    assert sorted(issued.subject_alt_names) == ["DNS:api.node1.example.net", f"DNS:{IDENTITY}", "IP:10.20.0.7"]


def test_shorter_profile_than_valid_days_is_signed_with_a_warning(cfssl):
    issued = sign_once(params(cfssl), policy(max_valid_days=365), valid_days=90)
    assert len(issued.warnings) == 1
    assert "the CFSSL profile 'node' issues 30 days, not the 90 days of valid_days" in issued.warnings[0]


def test_certificate_outliving_its_ca_is_signed_with_a_warning(tmp_path):
    with CfsslServer(tmp_path / "cfssl", ca_expiry="240h") as server:
        issued = sign_once(params(server))
    ca_end = load(server.ca_pem).not_valid_after_utc
    assert issued.not_after > ca_end
    assert issued.warnings == (
        f"certificate for {IDENTITY} ends on {issued.not_after_iso}, after its CA (CFSSL at {server.url}) on "
        f"{ca_end:%Y-%m-%dT%H:%M:%SZ}: it verifies only until then",
    )


def test_many_threads_share_one_signer(cfssl, signer):
    csrs = [node_csr(identity=f"node{i}.example.net") for i in range(24)]
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        issued = list(
            pool.map(lambda item: signer.sign(item[1][1], f"node{item[0]}.example.net", POLICY_DAYS), enumerate(csrs))
        )
    assert [load(i.certificate).public_key() for i in issued] == [key.public_key() for key, _csr in csrs]
    assert len({i.serial for i in issued}) == 24


# ------------------------------------------------------------------------------------------------- refusals


def test_wrong_auth_key_is_refused_with_cfssl_error(cfssl):
    signed_before = cfssl.signed_count()
    with pytest.raises(CfsslError) as info:
        sign_once(params(cfssl, cfssl_auth_key="ab" * 16))  # info needs no key: the signer starts
    assert info.value.code == 400 and info.value.field == "cfssl_auth_key"
    assert str(info.value).startswith(f"CFSSL at {cfssl.url} refused authsign: CFSSL error 400: invalid token")
    assert "ab" * 16 not in str(info.value)
    assert cfssl.signed_count() == signed_before


@pytest.mark.parametrize(
    "csr_kwargs, identity, rule",
    [
        (dict(identity="evil.example.net"), IDENTITY, "cn_matches_identity"),
        (dict(dns=["other.example.net"]), IDENTITY, "allowed_sans"),
        (dict(identity="node1.choria"), "node1.choria", "deny"),
        (dict(organization="system:masters"), IDENTITY, "subject_attributes"),
    ],
    ids=["other-cn", "other-san", "denied-name", "organization"],
)
def test_csr_the_policy_refuses_never_reaches_the_server(cfssl, signer, csr_kwargs, identity, rule):
    before = cfssl.authsign_count()
    with pytest.raises(PolicyError) as info:
        signer.sign(node_csr(**csr_kwargs)[1], identity, valid_days=POLICY_DAYS)
    assert info.value.rule == rule
    # A request that passes afterwards is counted, so the log is current: the refused one never arrived.
    signer.sign(node_csr()[1], IDENTITY, valid_days=POLICY_DAYS)
    assert wait_for(lambda: cfssl.authsign_count() == before + 1)
    assert cfssl.authsign_count() == before + 1


def test_valid_days_beyond_the_policy_never_reaches_the_server(cfssl, signer):
    before = cfssl.authsign_count()
    with pytest.raises(PolicyError) as info:
        signer.sign(node_csr()[1], IDENTITY, valid_days=POLICY_DAYS + 1)
    assert info.value.rule == "max_valid_days"
    assert cfssl.authsign_count() == before


def test_profile_whose_usages_do_not_fit_is_refused_before_the_request(cfssl, signer):
    before = cfssl.authsign_count()
    with pytest.raises(PkiError) as info:
        signer.sign(node_csr()[1], IDENTITY, valid_days=POLICY_DAYS, profile="server")
    assert info.value.field == "cfssl_profile"
    assert (
        "gives the extended key usages ['client auth', 'server auth'], profile 'server' needs exactly ['server auth']"
        in str(info.value)
    )
    assert cfssl.authsign_count() == before


def test_server_profile_signs_server_certificates(cfssl):
    cert = load(sign_once(params(cfssl, cfssl_profile="server"), profile="server").certificate)
    store = Store([load(cfssl.ca_pem)])
    PolicyBuilder().store(store).build_server_verifier(x509.DNSName(IDENTITY)).verify(cert, [])
    with pytest.raises(Exception, match="EKU"):
        PolicyBuilder().store(store).build_client_verifier().verify(cert, [])


@pytest.mark.parametrize(
    "profile, max_days, reason",
    [
        (
            None,
            30,
            "the CFSSL profile default at {url} issues certificates for 8760h (365 days), more than max_valid_days 30",
        ),
        (
            "long",
            365,
            "the CFSSL profile 'long' at {url} issues certificates for 87600h (3650 days), more than max_valid_days 365",
        ),
        ("intermediate", 30, "has the usages ['cert sign', 'crl sign']: its certificates could sign certificates"),
    ],
)
def test_profile_that_exceeds_the_policy_is_refused_when_the_signer_starts(cfssl, profile, max_days, reason):
    with pytest.raises(PkiError) as info:
        cfssl_signer_from_params(params(cfssl, cfssl_profile=profile), policy(max_valid_days=max_days))
    assert info.value.field == "cfssl_profile"
    assert reason.format(url=cfssl.url) in str(info.value)


def test_ed25519_csr_is_refused_by_cfssl_1_2_with_its_error(cfssl, signer):
    with pytest.raises(CfsslError) as info:
        signer.sign(node_csr("ed25519")[1], IDENTITY, valid_days=POLICY_DAYS)
    assert info.value.code == 9300 and "algorithm unimplemented" in str(info.value)


def test_stopped_server_gives_a_connection_error_naming_the_url(tmp_path):
    with CfsslServer(tmp_path / "cfssl") as server:
        with cfssl_signer_from_params(params(server), policy()) as signer:
            signer.sign(node_csr()[1], IDENTITY, valid_days=POLICY_DAYS)  # a kept-alive connection to a live server
            server.stop()
            with pytest.raises(PkiError) as info:
                signer.sign(node_csr()[1], IDENTITY, valid_days=POLICY_DAYS)
        assert str(info.value) == f"cannot reach CFSSL at {server.url} (authsign): Connection refused"
        assert info.value.field == "cfssl_url"
        with pytest.raises(PkiError, match=f"cannot reach CFSSL at {server.url} \\(info\\): Connection refused"):
            cfssl_signer_from_params(params(server), policy())


# ------------------------------------------------------------------------------------------------- the CA pinned


def test_pinned_ca_is_accepted_and_silences_the_plain_http_warning(cfssl, tmp_path, signer):
    assert any("plain http and cfssl_ca_cert is not set" in w for w in signer.ca.warnings)
    with cfssl_signer_from_params(params(cfssl, cfssl_ca_cert=str(cfssl.ca_path)), policy()) as pinned:
        issued = pinned.sign(node_csr()[1], IDENTITY, valid_days=POLICY_DAYS)
    assert pinned.ca.warnings == []
    assert load(issued.ca) == load(cfssl.ca_pem)


def test_server_signing_with_another_ca_than_the_pinned_one_is_refused(cfssl, tmp_path):
    with CfsslServer(tmp_path / "other", ca_name="another CA") as other, pytest.raises(PkiError) as info:
        cfssl_signer_from_params(params(other, cfssl_ca_cert=str(cfssl.ca_path)), policy())
    assert info.value.field == "cfssl_ca_cert"
    assert "signs with the CA 'CN=another CA'" in str(info.value) and "which is not in cfssl_ca_cert" in str(info.value)


# ------------------------------------------------------------------------------------------------- TLS


def test_https_with_the_ca_bundle_signs_and_without_it_is_refused(tmp_path):
    with CfsslServer(tmp_path / "cfssl", tls=True) as server:
        with cfssl_signer_from_params(params(server), policy()) as signer:
            issued = signer.sign(node_csr()[1], IDENTITY, valid_days=POLICY_DAYS)
        assert signer.ca.warnings == []
        assert load(issued.certificate).issuer == load(server.ca_pem).subject
        with pytest.raises(PkiError) as info:
            cfssl_signer_from_params(params(server, cfssl_ca_bundle=None), policy())
        assert info.value.field == "cfssl_ca_bundle"
        assert f"TLS to CFSSL at {server.url} failed (info)" in str(info.value)
        assert "certificate verify failed" in str(info.value)


# ------------------------------------------------------------------------------------------------- a hostile server


class HostileProxy(http.server.ThreadingHTTPServer):
    """Answers in place of the CFSSL server: forwards to the real one, after ``rewrite`` changed the sign request
    (re-authenticated with the real key, as a compromised CA server would), or answers ``reply`` itself."""

    daemon_threads = True

    def __init__(self, upstream: CfsslServer):
        self.upstream = upstream
        self.rewrite = None  # sign request dict -> dict
        self.reply = None  # (endpoint, handler -> None)
        super().__init__(("127.0.0.1", free_port()), _ProxyHandler)
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.shutdown()
        self.server_close()
        self.thread.join(10)


class _ProxyHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        endpoint = self.path.rsplit("/", 1)[-1]
        proxy: HostileProxy = self.server
        if proxy.reply and proxy.reply[0] == endpoint:
            proxy.reply[1](self)
            return
        if endpoint == "authsign" and proxy.rewrite:
            request = proxy.rewrite(json.loads(base64.b64decode(json.loads(body)["request"])))
            body = authenticated_request(bytes.fromhex(proxy.upstream.auth_key), json.dumps(request).encode())
        upstream = urllib.request.Request(f"{proxy.upstream.url}{self.path}", data=body, method="POST")
        try:
            with urllib.request.urlopen(upstream, timeout=10) as response:
                status, answer = response.status, response.read()
        except urllib.error.HTTPError as exc:
            status, answer = exc.code, exc.read()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)


def answer(status: int, body: bytes, headers: dict | None = None):
    def reply(handler):
        handler.send_response(status)
        for name, value in (headers or {"Content-Length": str(len(body))}).items():
            handler.send_header(name, value)
        handler.end_headers()
        handler.wfile.write(body)
        handler.close_connection = True

    return reply


def envelope(result: dict) -> bytes:
    return json.dumps({"success": True, "result": result, "errors": [], "messages": []}).encode()


def info_answer(**result):
    """An info answer with the real CA certificate, and ``result`` instead of the profile's usages and expiry."""

    def reply(handler):
        document = dict(
            dict(certificate=handler.server.upstream.ca_pem, usages=["server auth", "client auth"]), **result
        )
        answer(200, envelope(document))(handler)

    return reply


def raw(data: bytes):
    def reply(handler):
        handler.wfile.write(data)
        handler.close_connection = True

    return reply


def trickle(handler):
    handler.send_response(200)
    handler.send_header("Content-Length", "100")
    handler.end_headers()
    for _index in range(30):
        handler.wfile.write(b" ")
        handler.wfile.flush()
        time.sleep(0.1)
    handler.close_connection = True


@pytest.fixture
def hostile(cfssl):
    with HostileProxy(cfssl) as proxy:
        yield proxy


def hostile_params(proxy: HostileProxy, **overrides) -> dict:
    return dict(cfssl_url=proxy.url, cfssl_auth_key=proxy.upstream.auth_key, cfssl_profile="node", **overrides)


OTHER_KEY_CSR = node_csr()[1]


@pytest.mark.parametrize(
    "rewrite, reason",
    [
        pytest.param(
            lambda r: dict(r, certificate_request=OTHER_KEY_CSR),
            "does not carry the public key of the CSR",
            id="other-key",
        ),
        pytest.param(
            lambda r: dict(r, profile="intermediate"), "is a CA certificate (BasicConstraints CA:TRUE)", id="ca-true"
        ),
        pytest.param(
            lambda r: dict(r, hosts=[*r["hosts"], "node2.example.net"]),
            "names ['DNS:node1.example.net', 'DNS:node2.example.net'], the policy allowed ['DNS:node1.example.net']",
            id="extra-san",
        ),
        pytest.param(
            lambda r: dict(r, subject={"CN": IDENTITY, "names": [{"O": "system:masters"}]}),
            "has the subject 'CN=node1.example.net,O=system:masters', not CN=node1.example.net alone",
            id="organization",
        ),
        pytest.param(
            lambda r: dict(r, subject={"CN": "node2.example.net"}),
            "has the subject 'CN=node2.example.net'",
            id="other-cn",
        ),
        pytest.param(lambda r: dict(r, profile="long"), "beyond max_valid_days 30", id="ten-years"),
        pytest.param(
            lambda r: dict(r, profile="server"),
            "has the extended key usages ['1.3.6.1.5.5.7.3.1'], profile 'both' needs",
            id="other-usage",
        ),
    ],
)
def test_certificate_the_policy_did_not_grant_is_refused(cfssl, hostile, rewrite, reason):
    hostile.rewrite = rewrite
    signed_before = cfssl.signed_count()
    with pytest.raises(CfsslError) as info:
        sign_once(hostile_params(hostile))
    assert str(info.value).startswith(
        f"CFSSL at {hostile.url} answered authsign for {IDENTITY} with a certificate that "
    )
    assert reason in str(info.value) and str(info.value).endswith("; it is refused")
    assert cfssl.signed_count() == signed_before + 1  # the real CA did sign it: only the client's check stopped it


def test_certificate_from_another_ca_is_refused(cfssl, hostile, tmp_path):
    with (
        CfsslServer(tmp_path / "other", ca_name="another CA") as other,
        cfssl_signer_from_params(hostile_params(hostile), policy()) as signer,  # info from the real CA
    ):
        hostile.upstream, hostile.rewrite = other, lambda request: request  # re-authenticated with other's key
        with pytest.raises(CfsslError) as info:
            signer.sign(node_csr()[1], IDENTITY, valid_days=POLICY_DAYS)
    assert "was not signed by the CA 'CN=zeroinit test CFSSL CA' (issuer 'CN=another CA')" in str(info.value)


@pytest.mark.parametrize(
    "endpoint, reply, reason",
    [
        pytest.param(
            "authsign", raw(b"\x00\xff\x16\x03garbage\r\n\r\n"), "did not answer authsign in HTTP", id="not-http"
        ),
        pytest.param(
            "authsign",
            answer(502, b"<html>Bad Gateway</html>"),
            "answered authsign with HTTP 502 and a body that is not a CFSSL response: '<html>Bad Gateway</html>'",
            id="html",
        ),
        pytest.param(
            "authsign", answer(200, envelope({})), "answered authsign without a PEM certificate", id="no-certificate"
        ),
        pytest.param(
            "authsign",
            answer(200, envelope({"certificate": "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----"})),
            "answered authsign with a certificate that does not parse",
            id="bad-certificate",
        ),
        pytest.param(
            "authsign",
            answer(200, b"", {"Content-Length": str(64 * 1024 * 1024)}),
            "answered authsign with 67108864 bytes, more than the 1048576 allowed",
            id="announced-too-big",
        ),
        pytest.param(
            "authsign",
            answer(200, b"x" * (1024 * 1024 + 10), {"Connection": "close"}),
            "answered authsign with more than the 1048576 bytes allowed",
            id="too-big",
        ),
        pytest.param("authsign", trickle, "(authsign): timed out", id="trickle"),
        pytest.param(
            "info", info_answer(certificate=""), "answered info without a CA certificate", id="info-no-certificate"
        ),
        pytest.param(
            "info",
            info_answer(expiry="forever"),
            "answered info with an expiry that cannot be read: 'forever' is not a Go duration",
            id="info-bad-expiry",
        ),
        pytest.param(
            "info",
            info_answer(expiry="720h", usages=None),
            "answered info without the profile's usages",
            id="info-no-usages",
        ),
    ],
)
def test_hostile_answer_is_refused_with_a_message(cfssl, hostile, endpoint, reply, reason):
    hostile.reply = (endpoint, reply)
    with pytest.raises(PkiError) as info:
        sign_once(hostile_params(hostile, cfssl_timeout=1.0))
    assert reason in str(info.value) and hostile.url in str(info.value)


def test_info_answered_with_a_leaf_certificate_is_refused(cfssl, hostile, signer):
    leaf = signer.sign(node_csr()[1], IDENTITY, valid_days=POLICY_DAYS).certificate
    document = {
        "success": True,
        "result": {"certificate": leaf, "usages": ["server auth"], "expiry": "720h"},
        "errors": [],
        "messages": [],
    }
    hostile.reply = ("info", answer(200, json.dumps(document).encode()))
    with pytest.raises(
        CfsslError, match=re.escape("answered info with 'CN=node1.example.net', which is not a CA certificate")
    ):
        cfssl_signer_from_params(hostile_params(hostile), policy())
