"""Choria protocol v1: every message we build validates against go-choria's schemas, and decoding is strict."""

import base64
import hashlib
import json
import os

import jsonschema
import pytest

from ansible_collections.zeroinit.bootstrap.plugins.module_utils.choria import protocol as p
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.choria.filters import identity_filter
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.choria.subjects import reply_subject


def schema(choria_reference, name):
    with open(choria_reference / "protocol-v1" / (f"{name}.json")) as handle:
        return json.load(handle)


def validate(choria_reference, name, doc):
    jsonschema.Draft4Validator(schema(choria_reference, name)).validate(doc)


def sample_request(**kw):
    args = dict(
        agent="choria_provision",
        body=p.rpc_request_body("choria_provision", "gencsr", {"token": "t"}),
        callerid="choria=zeroinit",
        senderid="controller",
    )
    args.update(kw)
    return p.Request(**args)


def test_request_layers_validate_against_go_choria_schemas(choria_reference):
    req = sample_request()
    validate(choria_reference, "request", p.request_document(req))
    validate(choria_reference, "secure_request", p.secure_request_document(req))
    transport = json.loads(p.encode_request(req))
    validate(choria_reference, "transport", transport)
    secure = json.loads(base64.b64decode(transport["data"]))
    assert secure["signature"] == secure["pubcert"] == "insecure"
    assert transport["headers"]["reply-to"] == reply_subject("choria=zeroinit", req.requestid)


def test_reply_layers_validate_and_hash_is_sha256_of_message(choria_reference):
    rep = p.Reply(
        requestid=p.new_request_id(),
        senderid="node1.example.net",
        agent="rpcutil",
        body=p.rpc_reply_body("ping", data={"pong": 1}),
    )
    validate(choria_reference, "reply", p.reply_document(rep))
    secure = p.secure_reply_document(rep)
    validate(choria_reference, "secure_reply", secure)
    assert secure["hash"] == base64.b64encode(hashlib.sha256(secure["message"].encode()).digest()).decode()
    validate(choria_reference, "transport", json.loads(p.encode_reply(rep)))


def test_round_trip_keeps_every_field():
    req = sample_request(ttl=90, filter=identity_filter(["node1"]))
    got = p.decode_request(p.encode_request(req))
    assert (got.agent, got.action, got.data, got.requestid, got.ttl, got.filter["identity"]) == (
        "choria_provision",
        "gencsr",
        {"token": "t"},
        req.requestid,
        90,
        ["node1"],
    )
    rep = p.Reply(
        requestid=req.requestid,
        senderid="node1",
        agent="choria_provision",
        body=p.rpc_reply_body("gencsr", p.StatusCode.INVALID_DATA, "bad token"),
    )
    back = p.decode_reply(p.encode_reply(rep))
    assert (back.statuscode, back.statusmsg, back.ok) == (4, "bad token", False)


def test_discovery_ping_is_a_raw_body():
    req = sample_request(agent="discovery", body=p.DISCOVERY_PING)
    inner = json.loads(p.secure_request_document(req)["message"])
    assert inner["message"] == "ping"
    assert p.decode_request(p.encode_request(req)).body == "ping"


def test_base64_bodies_from_older_clients_are_accepted():
    req = sample_request()
    doc = p.request_document(req)
    doc["message"] = base64.b64encode(doc["message"].encode()).decode()
    secure = {"protocol": p.SECURE_REQUEST, "message": json.dumps(doc), "signature": "insecure", "pubcert": "insecure"}
    transport = {"protocol": p.TRANSPORT, "headers": {}, "data": base64.b64encode(json.dumps(secure).encode()).decode()}
    assert p.decode_request(json.dumps(transport).encode()).data == {"token": "t"}
    # and a base64 request inside the secure request
    secure["message"] = base64.b64encode(json.dumps(p.request_document(req)).encode()).decode()
    transport["data"] = base64.b64encode(json.dumps(secure).encode()).decode()
    assert p.decode_request(json.dumps(transport).encode()).action == "gencsr"


@pytest.mark.parametrize(
    "raw, words",
    [
        (b"\xff\xfe", "UTF-8"),
        (b"not json", "not JSON"),
        (b"[1,2]", "JSON object"),
        (b'{"protocol":"choria:transport:2","data":"","headers":{}}', "protocol"),
        (b'{"protocol":"choria:transport:1","data":"%%%","headers":{}}', "base64"),
        (b'{"protocol":"choria:transport:1","data":"e30=","headers":{}}', "secure message"),
    ],
)
def test_garbage_raises_protocol_error_naming_the_layer(raw, words):
    with pytest.raises(p.ProtocolError, match=words):
        p.decode_request(raw)


def test_tampered_reply_hash_is_refused():
    rep = p.Reply(requestid=p.new_request_id(), senderid="n", agent="rpcutil", body=p.rpc_reply_body("ping"))
    transport = json.loads(p.encode_reply(rep))
    secure = json.loads(base64.b64decode(transport["data"]))
    secure["message"] = secure["message"].replace("OK", "KO")
    assert "KO" in secure["message"]
    transport["data"] = base64.b64encode(json.dumps(secure).encode()).decode()
    with pytest.raises(p.ProtocolError, match="hash"):
        p.decode_reply(json.dumps(transport).encode())


@pytest.mark.parametrize("text", ["plain", 'quo"te\\back', "tab\tnew\nline\x01", "ünïcødé ✓ 🚀", ""])
def test_fast_encoders_equal_the_layered_documents(text):
    """encode_request/encode_reply write the outer layers by hand: they must equal the documents, byte for byte."""
    body = p.rpc_request_body("choria_provision", "configure", {"config": text, "token": text})
    req = sample_request(senderid=f"sender {text}", body=body)
    layered = p._dumps(
        p.transport_document(p.secure_request_document(req), reply_subject(req.callerid, req.requestid), req.senderid)
    )
    assert p.encode_request(req) == layered.encode("utf-8")
    rep = p.Reply(
        requestid=req.requestid,
        senderid=f"node {text}",
        agent="choria_provision",
        body=p.rpc_reply_body("configure", p.StatusCode.INVALID_DATA, text),
    )
    layered = p._dumps(p.transport_document(p.secure_reply_document(rep), None, rep.senderid))
    assert p.encode_reply(rep) == layered.encode("utf-8")
    assert p.decode_reply(p.encode_reply(rep)).statusmsg == text


@pytest.mark.parametrize("key", ["ec", "rsa"])
def test_signed_request_validates_decodes_and_verifies(choria_reference, key):
    """A signed request is still protocol v1, and what the node decodes is exactly what the signature covers."""
    from ansible_collections.zeroinit.bootstrap.plugins.module_utils.choria.security import (
        RequestSigner,
        RequestTrustError,
        RequestVerifier,
    )
    from tests.support.certificates import Authority, ec_key, rsa_key

    authority = Authority("provisioning CA")
    leaf = authority.issue("prov1.example.net", key=ec_key() if key == "ec" else rsa_key())
    signer = RequestSigner(leaf.pem, leaf.key_pem)
    req = sample_request()
    transport = json.loads(p.encode_request(req, signer))
    validate(choria_reference, "transport", transport)
    secure = json.loads(base64.b64decode(transport["data"]))
    validate(choria_reference, "secure_request", secure)
    assert secure["pubcert"] == leaf.pem
    assert secure == p.secure_request_document(req, signer) | {"signature": secure["signature"]}

    got = p.decode_request(p.encode_request(req, signer))
    assert got.signed and got.pubcert == leaf.pem and got.secure_message == secure["message"]
    verifier = RequestVerifier(authority.pem)
    assert verifier.verify(got.secure_message, got.signature, got.pubcert).subject == "CN=prov1.example.net"

    tampered = p.decode_request(p.encode_request(sample_request(requestid=req.requestid, ttl=req.ttl + 1), None))
    assert not tampered.signed
    with pytest.raises(RequestTrustError, match="signature does not verify"):
        verifier.verify(tampered.secure_message, got.signature, got.pubcert)


def _transport(secure_text: str, headers=None) -> bytes:
    data = base64.b64encode(secure_text.encode("utf-8", "surrogatepass")).decode()
    return json.dumps({"protocol": p.TRANSPORT, "data": data, "headers": headers or {}}).encode()


def _with_envelope(**changes) -> bytes:
    doc = p.request_document(sample_request())
    doc["envelope"].update(changes)
    secure = {"protocol": p.SECURE_REQUEST, "message": json.dumps(doc), "signature": "insecure", "pubcert": "insecure"}
    return _transport(json.dumps(secure))


DEEP = "[" * 100_000 + "]" * 100_000


@pytest.mark.parametrize(
    "raw",
    [
        ('{"protocol":"choria:transport:1","headers":{"federation":' + DEEP + "}}").encode(),
        _transport('{"protocol":"choria:secure:request:1","pubcert":' + DEEP + "}"),
        _transport(
            json.dumps(
                {
                    "protocol": p.SECURE_REQUEST,
                    "message": json.dumps(p.request_document(sample_request())).replace('"fact": []', '"fact":' + DEEP),
                    "signature": "insecure",
                    "pubcert": "insecure",
                }
            )
        ),
    ],
    ids=["transport", "secure", "request"],
)
def test_deep_nesting_is_a_protocol_error_not_a_recursion_error(raw):
    with pytest.raises(p.ProtocolError, match="nested too deeply"):
        p.decode_request(raw)


def test_deep_nesting_in_the_body_is_a_protocol_error():
    doc = p.request_document(sample_request())
    doc["message"] = '{"agent":"rpcutil","action":"ping","data":' + DEEP + "}"
    secure = {"protocol": p.SECURE_REQUEST, "message": json.dumps(doc), "signature": "insecure", "pubcert": "insecure"}
    with pytest.raises(p.ProtocolError, match="body: starts like JSON"):
        p.decode_request(_transport(json.dumps(secure)))


@pytest.mark.parametrize(
    "changes, words",
    [
        ({"callerid": "choria=x\ud800"}, "'callerid' must be a string of at most 256 printable"),
        ({"callerid": "choria=a\nFORGED LOG LINE"}, "'callerid' must be a string of at most 256 printable"),
        ({"senderid": "s" * 300}, "'senderid' must be a string of at most 256 printable"),
        ({"senderid": ["s"]}, "'senderid' must be a string"),
        ({"requestid": "a" * 15 + "." + "b" * 16}, "requestid must be 32 characters usable in a NATS subject"),
        ({"requestid": " " * 32}, "requestid must be 32 characters usable in a NATS subject"),
        ({"agent": "rpc*"}, "field 'agent' must be at most 128 printable ASCII"),
        ({"collective": "provisioning.x"}, "field 'collective' must be"),
        ({"collective": "pr\u043evisioning"}, "field 'collective' must be"),
        ({"filter": ["identity"]}, "field 'filter' must be an object, got list"),
        ({"ttl": 1e999}, "field 'ttl' must be an integer"),
    ],
)
def test_envelope_fields_that_become_subjects_or_log_text_are_checked(changes, words):
    with pytest.raises(p.ProtocolError, match=words):
        p.decode_request(_with_envelope(**changes))


@pytest.mark.parametrize(
    "body, problem",
    [
        ({"agent": "rpcutil", "action": ["ping"], "data": {}}, "field 'action' must be a string, got list"),
        ({"agent": "rpcutil", "action": "p" * 65, "data": {}}, "field 'action' must be 1 to 64 printable"),
        ({"agent": "rpcutil", "action": "ping\n", "data": {}}, "field 'action' must be 1 to 64 printable"),
        ({"agent": "rpcutil", "action": "ping", "data": "x"}, "field 'data' must be an object, got str"),
        ("not an object", "request body is not an mcorpc JSON object"),
    ],
)
def test_a_body_a_node_cannot_act_on_says_why(body, problem):
    req = p.decode_request(p.encode_request(sample_request(agent="rpcutil", body=body)))
    assert problem in req.body_problem
    assert req.action == ("ping" if "'data'" in problem else "")


def test_a_well_formed_body_has_no_problem():
    assert p.decode_request(p.encode_request(sample_request())).body_problem == ""
    assert p.decode_request(p.encode_request(sample_request(agent="discovery", body="ping"))).body_problem == ""


def test_token_compare_takes_any_text():
    assert not p.constant_time_equal("x\ud800", "x")
    assert p.constant_time_equal("s3cret", "s3cret") and not p.constant_time_equal(["s3cret"], "s3cret")


def test_request_ids_are_32_hex_characters_and_never_repeat_across_batches():
    ids = [p.new_request_id() for _index in range(1000)]  # several batches of the kernel's random bytes
    assert len(set(ids)) == 1000 and all(len(i) == 32 and int(i, 16) >= 0 for i in ids)


def test_a_forked_child_never_hands_out_its_parents_next_request_ids():
    """Ansible forks a worker per task after the inventory plugin drew ids: each worker's ids must be its own."""
    p.new_request_id()  # the parent now holds a batch with ids left in it
    read_end, write_end = os.pipe()
    children = []
    for _child in range(2):
        pid = os.fork()
        if pid == 0:  # the child: report its next ids and leave at once
            os.write(write_end, "".join(p.new_request_id() for _index in range(3)).encode() + b"\n")
            os._exit(0)
        children.append(pid)
    for pid in children:
        os.waitpid(pid, 0)
    os.close(write_end)
    with os.fdopen(read_end) as reader:
        child_ids = [line.strip() for line in reader]
    parent_ids = "".join(p.new_request_id() for _index in range(3))
    assert len(child_ids) == 2 and len({*child_ids, parent_ids}) == 3
