"""The adversarial suite's generators: every class is produced, the same seed gives the same bytes, each message is
broken where its class says and none could change a node, and each CSR case is labelled as the policy judges it."""

from __future__ import annotations

import base64
import binascii
import hashlib
import json

import pytest
from cryptography import x509

from ansible_collections.zeroinit.bootstrap.plugins.module_utils.choria.protocol import ProtocolError, decode_request
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.pki.issuance import policy_from_params
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.pki.x509 import PkiError
from tests.support.hostile import (
    CSR_CLASS_NAMES,
    CSR_POLICY,
    FIELD_TYPES,
    MESSAGE_CLASS_NAMES,
    MESSAGE_CLASSES,
    fleet_identities,
    hostile_csrs,
    hostile_messages,
)

NOW = 1_800_000_000
FLEET_TOKEN = "the-fleet-token"
HEAVY = [name for name, heavy, _make in MESSAGE_CLASSES if heavy]
CYCLE = len(MESSAGE_CLASSES)


@pytest.fixture(scope="module")
def two_cycles():
    return list(hostile_messages(2 * CYCLE, seed=3, now=NOW, token=FLEET_TOKEN, heavy_limit=2 * len(HEAVY)))


def digest(items) -> str:
    hashed = hashlib.sha256()
    for item in items:
        hashed.update(repr(item).encode("utf-8", "surrogatepass"))
    return hashed.hexdigest()


# ---------------------------------------------------------------------------------------------- messages


def test_every_message_class_is_produced_on_node_and_broadcast_subjects(two_cycles):
    assert len(set(MESSAGE_CLASS_NAMES)) == CYCLE > 120
    assert [m.class_name for m in two_cycles[:CYCLE]] == list(MESSAGE_CLASS_NAMES)
    for kind in ("node", "broadcast"):
        assert {m.class_name for m in two_cycles if m.subject_kind == kind} == set(MESSAGE_CLASS_NAMES)
    identities = fleet_identities()
    assert len(identities) == 20
    assert {m.identity for m in two_cycles} == set(identities)
    for message in two_cycles:
        assert message.agent.isidentifier()
        assert isinstance(message.payload, bytes)
        assert len(message.reply_to) < 4000


def test_the_layers_and_fields_the_issue_lists_are_all_covered():
    names = set(MESSAGE_CLASS_NAMES)
    for layer, fields in (
        ("transport", ("protocol", "data", "headers")),
        ("headers", ("reply-to", "mc_sender", "seen-by", "federation")),
        ("secure", ("protocol", "message", "signature", "pubcert")),
        ("request", ("protocol", "message", "envelope")),
        ("envelope", ("requestid", "senderid", "callerid", "collective", "agent", "ttl", "time", "filter")),
        ("filter", ("fact", "cf_class", "agent", "identity", "compound")),
        ("body", ("agent", "action", "data")),
        ("data.gencsr", ("token", "cn", "C", "L", "O", "OU", "ST")),
        ("data.configure", ("token", "config", "certificate", "ca", "ssldir", "key", "action_policies")),
        ("data.restart", ("token", "splay")),
    ):
        for field in fields:
            assert f"wrong_type.{layer}.{field}" in names
    for name in (
        "random_bytes",
        "truncated_json",
        "invalid_base64",
        "invalid_utf8",
        "wrong_collective",
        "no_reply_subject",
        "huge_reply_subject.header",
        "unicode.envelope.callerid",
        "stale_huge_ttl",
        "deep_nesting.body",
        "huge_string.data.token",
    ):
        assert name in names


def test_the_same_seed_gives_the_same_bytes_and_another_seed_others():
    first = list(hostile_messages(CYCLE, seed=5, now=NOW))
    assert digest(first) == digest(hostile_messages(CYCLE, seed=5, now=NOW))
    assert digest(first) != digest(hostile_messages(CYCLE, seed=6, now=NOW))


def test_heavy_classes_are_limited_and_every_payload_fits_the_broker(two_cycles):
    assert len(HEAVY) >= 10
    assert max(len(m.payload) for m in two_cycles) <= 1_000_000
    assert max(len(m.payload) for m in two_cycles if m.class_name.startswith("huge_string.")) > 600_000
    limited = list(hostile_messages(3 * CYCLE, seed=1, now=NOW, heavy_limit=4))
    assert sum(1 for m in limited if m.class_name in HEAVY) == 4


def _layers(payload: bytes):
    """The message's documents as far as they parse: (transport, secure, request, body); None where not."""
    found = [None, None, None, None]
    try:
        found[0] = json.loads(payload)
        found[1] = json.loads(base64.b64decode(found[0]["data"], validate=True))
        found[2] = json.loads(found[1]["message"])
        found[3] = json.loads(found[2]["message"])
    except (ValueError, TypeError, KeyError, RecursionError, binascii.Error):
        pass
    return found


def _field(documents, layer: str, field: str):
    transport, secure, request, body = documents
    parent = {
        "transport": transport,
        "headers": (transport or {}).get("headers"),
        "secure": secure,
        "request": request,
        "envelope": (request or {}).get("envelope"),
        "filter": ((request or {}).get("envelope") or {}).get("filter"),
        "body": body,
    }.get(layer)
    if layer.startswith("data."):
        parent = (body or {}).get("data")
    assert isinstance(parent, dict), f"{layer} does not parse"
    return parent.get(field, KeyError)


def test_wrong_type_classes_put_a_wrong_type_in_their_field(two_cycles):
    checked = 0
    for message in two_cycles:
        if not message.class_name.startswith("wrong_type."):
            continue
        layer, field = message.class_name[len("wrong_type.") :].rsplit(".", 1)
        value = _field(_layers(message.payload), layer, field)
        assert value is not KeyError, message.class_name
        valid = FIELD_TYPES[layer][field]
        assert isinstance(value, bool) or not isinstance(value, valid), (message.class_name, value)
        checked += 1
    assert checked == 2 * sum(1 for name in MESSAGE_CLASS_NAMES if name.startswith("wrong_type.")) >= 100


def test_no_message_could_change_a_node_if_it_were_accepted(two_cycles):
    """Whatever decodes carries a wrong token, is read-only, or is a configure whose certificate cannot parse."""
    decoded = 0
    for message in two_cycles:
        try:
            request = decode_request(message.payload)
        except (ProtocolError, RecursionError):
            continue
        decoded += 1
        data = request.data
        if request.agent != "choria_provision":
            continue
        assert request.action not in ("shutdown", "reprovision"), message.class_name
        if request.action == "configure":
            if isinstance(data.get("certificate"), str):
                with pytest.raises(ValueError):
                    x509.load_pem_x509_certificate(data["certificate"].encode())
        elif data.get("token") == FLEET_TOKEN and request.action != "jwt":
            # With the fleet's token only the data-input classes, each broken in its data (restart: the loop guard
            # refuses it on a node in provisioning mode), and a stale request with a huge ttl.
            assert message.class_name.startswith(("wrong_type.data.", "bad_value.data.", "unicode.data.")) or (
                message.class_name in ("stale_huge_ttl", "huge_string.data.token", "huge_string.data.cn")
            ), message.class_name
    assert decoded > CYCLE // 2


# ---------------------------------------------------------------------------------------------- CSRs


@pytest.fixture(scope="module")
def csr_cases():
    return list(hostile_csrs(seed=4))


def test_at_least_a_thousand_csrs_and_every_class(csr_cases):
    assert len(csr_cases) >= 1000
    assert [c.class_name for c in csr_cases[: len(CSR_CLASS_NAMES)]] == list(CSR_CLASS_NAMES)
    counts = {name: sum(1 for c in csr_cases if c.class_name == name) for name in CSR_CLASS_NAMES}
    assert min(counts.values()) >= 40
    assert sum(1 for c in csr_cases if c.may_sign) >= 200
    assert sum(1 for c in csr_cases if not c.may_sign) >= 700


def test_csr_cases_are_deterministic():
    first = list(hostile_csrs(count=2 * len(CSR_CLASS_NAMES), seed=8))
    again = list(hostile_csrs(count=2 * len(CSR_CLASS_NAMES), seed=8))
    assert digest(first) == digest(again)
    assert digest(first) != digest(hostile_csrs(count=2 * len(CSR_CLASS_NAMES), seed=9))


def test_each_csr_case_is_labelled_as_the_reference_policy_judges_it(csr_cases):
    """The labels the suite will hold the signer to: refused by exactly the named rule, or allowed."""
    policy = policy_from_params(CSR_POLICY)
    for case in csr_cases:
        if case.may_sign:
            facts = policy.evaluate(case.csr, case.identity, CSR_POLICY["valid_days"])
            assert facts.identity == case.identity, case.class_name
            continue
        with pytest.raises(PkiError) as info:
            policy.evaluate(case.csr, case.identity, CSR_POLICY["valid_days"])
        assert info.value.field == case.rule, (case.class_name, str(info.value))
