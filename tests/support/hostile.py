"""Deterministic hostile input for the adversarial suite: malformed Choria v1 messages and mutated CSRs.

::

    for message in hostile_messages(100_000, seed=1, identities=fleet.identities, now=int(time.time())):
        subject = node_subject(message.identity) if message.subject_kind == "node" else broadcast_subject(message.agent)
        await nc.publish(subject, message.payload, reply=message.reply_to)

    for case in hostile_csrs(1_200, seed=1, identities=fleet.identities):
        ...  # signer.sign(case.csr, case.identity) under policy_from_params(CSR_POLICY): refused naming case.rule,
             # or (case.may_sign) issued with CA:FALSE and only allow-listed SANs

Same seed, same arguments: the same sequence, byte for byte (key pairs are derived from the seed; ECDSA signatures
are RFC 6979 deterministic, which needs cryptography 44 or later).

Messages (:func:`hostile_messages`, classes in :data:`MESSAGE_CLASSES`). Each valid base message is made by the
collection's own encoder and then broken in one way: random bytes, truncated or non-object JSON, a wrong type in
every field of every layer (transport, its headers, secure request, request, envelope, filter, mcorpc body, each
action's data inputs), missing fields, wrong protocol names, invalid base64 and UTF-8, deep nesting, 1 MB
strings, unicode (lone surrogates, NUL, bidi overrides, homoglyphs, newlines), wrong collective, agent
mismatches, stale times with a huge ttl, catastrophic filter regexes, and missing, huge or hostile reply subjects.
About half go to a node's subject, half to the agent's broadcast subject.

No message is a request that would change a node if it were accepted: the messages that are not broken in their
data carry a wrong token (``WRONG_TOKEN``), or ask ``rpcutil``/``discovery``; ``configure`` always carries a
certificate that does not parse; ``shutdown`` and ``reprovision`` are never sent. Pass the fleet's real token as
``token`` to make the data-input classes reach the actions' own input checks (the token is checked first).

Heavy classes (1 MB strings, deep nesting, huge filters) are limited to ``heavy_limit`` messages in all, so 100,000
messages stay a few hundred megabytes of traffic; every payload is at most ``max_payload`` bytes (nats-server's
default limit is 1 MiB).

CSRs (:func:`hostile_csrs`, classes in :data:`CSR_CLASSES`): each case is one defect against the reference policy
:data:`CSR_POLICY` (signer options, as ``pki_sign`` takes them), with the identity the signer is asked to sign for,
whether that policy may sign it (``may_sign``) and else the policy rule that must refuse it (``rule``: the
``field`` of the error the signer raises).
"""

from __future__ import annotations

import base64
import functools
import ipaddress
import json
import random
import warnings
from typing import Callable, NamedTuple

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

# The collection's encoder: the one import that follows the protocol module when it moves.
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.choria.protocol import (
    Request,
    request_document,
    secure_request_document,
    transport_document,
)
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.choria.subjects import reply_subject
from tests.support.certificates import PROVISIONER, sha1_resigned

WRONG_TOKEN = "hostile-wrong-token"
DEFAULT_MAX_PAYLOAD = 1_000_000
DEFAULT_HEAVY_LIMIT = 48
NESTING_DEPTH = 100_000
NATS_MAX_SUBJECT = 3_500  # nats-server refuses control lines above 4 KiB


def fleet_identities(count: int = 20, domain: str = "hostile.example.net") -> tuple:
    return tuple(f"node-{index:02d}.{domain}" for index in range(count))


# ---------------------------------------------------------------------------------------------- messages


class HostileMessage(NamedTuple):
    subject_kind: str  # "node": publish to the node subject of ``identity``; "broadcast": to ``agent``'s
    payload: bytes
    reply_to: str  # the NATS reply subject to publish with ("" for none)
    class_name: str
    agent: str
    identity: str


class _Context(NamedTuple):
    rng: random.Random
    identity: str
    identities: tuple
    now: int
    token: str
    collective: str
    max_payload: int


class _Layers:
    """One message as its four documents; a layer set to None keeps the field that links it as the layer above has
    it (a mutation of that field), a str layer is written as raw text."""

    def __init__(self, transport, secure, request, body):
        self.transport, self.secure, self.request, self.body = transport, secure, request, body

    def payload(self) -> bytes:
        text = _text(self.body) if self.body is not None else None
        request = self.request
        if isinstance(request, dict) and text is not None:
            request = {**request, "message": text}
        secure = self.secure
        if isinstance(secure, dict) and request is not None:
            secure = {**secure, "message": _text(request)}
        transport = self.transport
        if isinstance(transport, dict) and secure is not None:
            encoded = _text(secure).encode("utf-8", "surrogatepass")
            transport = {**transport, "data": base64.b64encode(encoded).decode("ascii")}
        return _text(transport).encode("utf-8", "surrogatepass")


_COMPACT = json.JSONEncoder(separators=(",", ":"))  # one encoder: json.dumps with options builds one per call


def _text(document) -> str:
    return document if isinstance(document, str) else _COMPACT.encode(document)


# The valid requests mutations start from. Data-input classes use the context's token; every other class a wrong
# token or an open agent, so an accepted copy changes nothing.
_BAD_CERTIFICATE = "-----BEGIN CERTIFICATE-----\nTUlJQmJhZA==\n-----END CERTIFICATE-----\n"
_ACTION_DATA = {
    ("choria_provision", "gencsr"): lambda ctx: {
        "token": ctx.token,
        "cn": ctx.identity,
        "C": "DE",
        "L": "Berlin",
        "O": "zeroinit",
        "OU": "fleet",
        "ST": "BE",
        "key_type": "ecdsa",
    },
    ("choria_provision", "configure"): lambda ctx: {
        "token": ctx.token,
        "config": json.dumps({"plugin.choria.server.provision": "false", "collectives": "prod"}),
        "certificate": _BAD_CERTIFICATE,
        "ca": _BAD_CERTIFICATE,
        "ssldir": "/etc/choria/ssl",
        "key": "",
        "ecdh_public": "",
        "server_jwt": "",
        "action_policies": {},
        "opa_policies": {},
    },
    ("choria_provision", "restart"): lambda ctx: {"token": ctx.token, "splay": 1},
    ("choria_provision", "jwt"): lambda ctx: {"token": ctx.token},
    ("rpcutil", "inventory"): lambda ctx: {},
    ("rpcutil", "ping"): lambda ctx: {},
}
_DATA_TYPES = {
    ("choria_provision", "gencsr"): {"token": str, "cn": str, "C": str, "L": str, "O": str, "OU": str, "ST": str},
    ("choria_provision", "configure"): {
        "token": str,
        "config": str,
        "certificate": str,
        "ca": str,
        "ssldir": str,
        "key": str,
        "ecdh_public": str,
        "server_jwt": str,
        "action_policies": dict,
        "opa_policies": dict,
    },
    ("choria_provision", "restart"): {"token": str, "splay": (int, float)},
    ("choria_provision", "jwt"): {"token": str},
}
_SAFE_BASES = (("rpcutil", "ping"), ("rpcutil", "inventory"), ("discovery", "ping"), ("choria_provision", "gencsr"))

_TRANSPORT_TYPES = {"protocol": str, "data": str, "headers": dict}
_HEADER_TYPES = {"reply-to": str, "mc_sender": str, "seen-by": list, "federation": dict}
_SECURE_TYPES = {"protocol": str, "message": str, "signature": str, "pubcert": str}
_REQUEST_TYPES = {"protocol": str, "message": str, "envelope": dict}
_ENVELOPE_TYPES = {
    "requestid": str,
    "senderid": str,
    "callerid": str,
    "collective": str,
    "agent": str,
    "ttl": int,
    "time": int,
    "filter": dict,
}
_FILTER_TYPES = {"fact": list, "cf_class": list, "agent": list, "identity": list, "compound": list}
_BODY_TYPES = {"agent": str, "action": str, "data": dict}

# Each field's valid JSON type, per layer: a wrong_type.<layer>.<field> class puts a value of another type there.
FIELD_TYPES = {
    "transport": _TRANSPORT_TYPES,
    "headers": _HEADER_TYPES,
    "secure": _SECURE_TYPES,
    "request": _REQUEST_TYPES,
    "envelope": _ENVELOPE_TYPES,
    "filter": _FILTER_TYPES,
    "body": _BODY_TYPES,
    **{f"data.{action}": types for (_agent, action), types in _DATA_TYPES.items()},
}

_VALUES = (None, True, False, 0, -1, 2**64, -(2**63) - 1, 1.5, "", "x", "60", [], {}, ["a", 1], {"k": {"n": [1]}})


def _wrong_value(rng: random.Random, kind):
    """A JSON value of a type other than ``kind`` (bool is not an int here, as the schemas say)."""
    kinds = kind if isinstance(kind, tuple) else (kind,)

    def right(value) -> bool:
        if isinstance(value, bool):
            return bool in kinds
        return isinstance(value, kinds)

    return rng.choice([v for v in _VALUES if not right(v)])


def _base(ctx: _Context, agent: str, action: str, token: str | None = None) -> tuple[_Layers, str]:
    """A valid request made by the collection's encoder, taken apart into its layers; and its reply subject."""
    rng = ctx.rng
    if agent == "discovery":
        body = "ping"
    else:
        data = _ACTION_DATA[(agent, action)](ctx)
        if token is not None and "token" in data:
            data["token"] = token
        body = {"agent": agent, "action": action, "data": data}
    requestid = f"{rng.getrandbits(128):032x}"
    callerid = f"choria=hostile{rng.randrange(100)}.mcollective"
    request = Request(
        agent=agent,
        body=body,
        callerid=callerid,
        senderid=f"hostile{rng.randrange(100)}",
        collective=ctx.collective,
        requestid=requestid,
        ttl=60,
        time=ctx.now,
        filter={"fact": [], "cf_class": [], "agent": [agent], "identity": [ctx.identity], "compound": []},
    )
    # The collection's documents, as encode_request writes them (without a JSON round trip per layer).
    inner = request_document(request)
    secure = secure_request_document(request)
    reply_to = reply_subject(callerid, requestid, ctx.collective)
    transport = transport_document(secure, reply_to, request.senderid)
    body_document = body if isinstance(body, str) else {**body, "data": dict(body["data"])}
    return _Layers(transport, secure, inner, body_document), reply_to


def _safe_base(ctx: _Context) -> tuple[_Layers, str]:
    agent, action = ctx.rng.choice(_SAFE_BASES)
    return _base(ctx, agent, action, token=WRONG_TOKEN)


def _message(layers: _Layers, reply_to: str, agent: str = "") -> tuple:
    if not agent and isinstance(layers.request, dict) and isinstance(layers.request.get("envelope"), dict):
        agent = layers.request["envelope"].get("agent")
    return layers.payload(), reply_to, agent if _subject_token(agent) else ""


def _subject_token(agent) -> bool:
    return isinstance(agent, str) and agent.isascii() and agent.isidentifier()


# A class is (name, heavy, make(ctx) -> (payload, reply_to, agent or "")); an empty agent means the base's.
_MessageClass = tuple


def _layer_fields(layer_name: str, types: dict) -> list:
    classes = []
    for field_name, kind in types.items():

        def wrong(ctx, field_name=field_name, kind=kind):
            layers, reply = _safe_base(ctx)
            _set(layers, layer_name, field_name, _wrong_value(ctx.rng, kind))
            return _message(layers, reply)

        def missing(ctx, field_name=field_name):
            layers, reply = _safe_base(ctx)
            _set(layers, layer_name, field_name, _DELETE)
            return _message(layers, reply)

        classes.append((f"wrong_type.{layer_name}.{field_name}", False, wrong))
        if layer_name not in ("headers", "filter"):
            classes.append((f"missing.{layer_name}.{field_name}", False, missing))
    return classes


_DELETE = object()


def _set(layers: _Layers, layer_name: str, field_name: str, value) -> None:
    """Set (or delete) one field; a field that links to the layer below detaches that layer."""
    if layer_name == "headers":
        target = layers.transport["headers"]
    elif layer_name == "envelope":
        target = layers.request["envelope"]
    elif layer_name == "filter":
        target = layers.request["envelope"]["filter"]
    else:
        target = getattr(layers, layer_name)
    if not isinstance(target, dict):  # a discovery body: make it mcorpc to have fields
        layers.body = target = {"agent": "discovery", "action": "ping", "data": {}}
    if value is _DELETE:
        target.pop(field_name, None)
    else:
        target[field_name] = value
    links = {("transport", "data"): "secure", ("secure", "message"): "request", ("request", "message"): "body"}
    below = links.get((layer_name, field_name))
    if below:
        setattr(layers, below, None)


def _data_classes() -> list:
    classes = []
    for (agent, action), types in _DATA_TYPES.items():
        for field_name, kind in types.items():

            def wrong(ctx, agent=agent, action=action, field_name=field_name, kind=kind):
                layers, reply = _base(ctx, agent, action)
                layers.body["data"][field_name] = _wrong_value(ctx.rng, kind)
                return _message(layers, reply)

            classes.append((f"wrong_type.data.{action}.{field_name}", False, wrong))
    return classes


_BAD_DATA_VALUES = {
    ("gencsr", "cn"): ("*.hostile.example.net", "a" * 10_000, "node 1", "../../etc/passwd", "x\x00y", "\u202enode"),
    ("gencsr", "C"): ("USA", "", "d", "\x00\x00"),
    ("gencsr", "key_type"): ("dsa", "rsa-512", "", "ECDSA\x00"),
    ("configure", "config"): (
        "not json",
        "[]",
        '{"a": 1}',
        '{"a": {"b": "c"}}',
        "{" * 5000,
        json.dumps({"k": "v" * 3000}),
    ),
    ("configure", "ssldir"): ("../../../../etc", "/", "/proc/self", "relative/dir", "x" * 600, "/tmp/\x00"),
    ("configure", "certificate"): ("", "-----BEGIN CERTIFICATE-----", "A" * 20_000),
    ("configure", "key"): ("-----BEGIN RSA PRIVATE KEY-----\nMIIB\n-----END RSA PRIVATE KEY-----\n",),
    ("configure", "action_policies"): ({"../../escape.policy": "x"}, {"a.policy": 5}, {"x" * 300: "y"}),
    ("restart", "splay"): (-1, 10**9, 1e308, float("nan")),
}


def _bad_value_classes() -> list:
    classes = []
    for (action, field_name), values in _BAD_DATA_VALUES.items():

        def bad(ctx, action=action, field_name=field_name, values=values):
            layers, reply = _base(ctx, "choria_provision", action)
            layers.body["data"][field_name] = ctx.rng.choice(values)
            return _message(layers, reply)

        classes.append((f"bad_value.data.{action}.{field_name}", False, bad))
    return classes


def _random_bytes(ctx):
    return ctx.rng.randbytes(ctx.rng.randrange(0, 4096)), "", ""


def _truncated_json(ctx):
    layers, reply = _safe_base(ctx)
    payload = layers.payload()
    return payload[: ctx.rng.randrange(1, len(payload))], reply, ""


def _not_an_object(ctx):
    return ctx.rng.choice([b"[]", b"null", b'"transport"', b"42", b"true", b"{}", b"", b" ", b"\xef\xbb\xbf{}"]), "", ""


def _trailing_garbage(ctx):
    layers, reply = _safe_base(ctx)
    return layers.payload() + ctx.rng.choice([b"x", b"}", b"\x00", b"{}"]), reply, ""


def _duplicate_keys(ctx):
    layers, reply = _safe_base(ctx)
    payload = layers.payload()
    return payload[:-1] + b',"data":"!!!not base64!!!","protocol":"choria:reply:1"}', reply, ""


def _invalid_utf8(ctx):
    layers, reply = _safe_base(ctx)
    where = ctx.rng.choice(["transport", "secure"])
    if where == "transport":
        payload = layers.payload()
        return payload[:-2] + b"\xff\xfe" + payload[-2:], reply, ""
    raw = _text(layers.secure).encode("utf-8")
    layers.transport["data"] = base64.b64encode(raw[:20] + b"\xc3\x28" + raw[20:]).decode("ascii")
    layers.secure = None
    return _message(layers, reply)


def _invalid_base64(ctx):
    layers, reply = _safe_base(ctx)
    layers.transport["data"] = ctx.rng.choice(
        [
            "!!!not base64!!!",
            "YWJj=",
            "YW Jj",
            "-_-_",
            "é",
            base64.b64encode(b"hello").decode(),
            base64.b64encode(b"[1,2,3]").decode(),
            base64.urlsafe_b64encode(b'{"protocol":"choria:secure:request:1",">>?":"~~~"}').decode(),
        ]
    )
    layers.secure = None
    return _message(layers, reply)


def _wrong_protocol(layer_name: str, values: tuple):
    def make(ctx):
        layers, reply = _safe_base(ctx)
        _set(layers, layer_name, "protocol", ctx.rng.choice(values))
        return _message(layers, reply)

    return make


def _request_not_json(ctx):
    layers, reply = _safe_base(ctx)
    layers.secure["message"] = ctx.rng.choice(["{garbage", "{}", "[]", base64.b64encode(b"{garbage").decode(), " "])
    layers.request = None
    return _message(layers, reply)


def _body_not_json(ctx):
    layers, reply = _safe_base(ctx)
    layers.body = ctx.rng.choice(["{garbage", '{"agent":', "[]", "pong", base64.b64encode(b"{bad").decode(), ""])
    return _message(layers, reply)


_UNICODE = (
    "\ud800",
    "\udfff",
    "\u202e",
    "\x00",
    "\U0001f600",
    "\u0441horia",  # Cyrillic es
    "e\u0301",
    "\ufeff",
    "a\nb",
    "\r\n",
    "..",
    "*",
    ">",
)


def _unicode_in(where: str):
    def make(ctx):
        layers, reply = _safe_base(ctx)
        value = ctx.rng.choice(_UNICODE)
        if where.startswith("envelope."):
            field_name = where.split(".", 1)[1]
            envelope = layers.request["envelope"]
            envelope[field_name] = (envelope[field_name] + value) if ctx.rng.random() < 0.5 else value
        elif where == "headers.mc_sender":
            layers.transport["headers"]["mc_sender"] = "hostile" + value
        elif where == "body.action":
            _mcorpc(layers)["action"] = "ping" + value
        else:  # data.token / data.cn
            layers, reply = _base(ctx, "choria_provision", "gencsr")
            layers.body["data"][where.split(".", 1)[1]] = "x" + value
        return _message(layers, reply)

    return make


def _mcorpc(layers: _Layers) -> dict:
    if not isinstance(layers.body, dict):
        layers.body = {"agent": "discovery", "action": "ping", "data": {}}
    return layers.body


def _huge_string(where: str):
    def make(ctx):
        # base64 grows the inner layers by 4/3: this keeps the whole payload under max_payload
        size = (
            int(ctx.max_payload * 0.7)
            if where not in ("headers.mc_sender", "headers.reply-to")
            else ctx.max_payload - 4096
        )
        huge = "A" * size
        layers, reply = _safe_base(ctx)
        if where.startswith("headers."):
            layers.transport["headers"][where.split(".", 1)[1]] = huge
        elif where.startswith("secure."):
            layers.secure[where.split(".", 1)[1]] = huge
        elif where.startswith("envelope."):
            layers.request["envelope"][where.split(".", 1)[1]] = huge
        elif where == "body.action":
            _mcorpc(layers)["action"] = huge
        else:
            layers, reply = _base(ctx, "choria_provision", "gencsr")
            layers.body["data"][where.split(".", 1)[1]] = huge
        return _message(layers, reply)

    return make


def _nested(depth: int) -> str:
    return "[" * depth + "]" * depth


def _deep_nesting(where: str):
    def make(ctx):
        layers, reply = _safe_base(ctx)
        nested = _nested(NESTING_DEPTH)
        marker = '"__nested__"'
        if where == "transport":
            layers.transport["headers"]["federation"] = "__nested__"
            text = layers.payload().decode("ascii").replace(marker, nested)
            return text.encode("ascii"), reply, ""
        if where == "secure":
            layers.secure["pubcert"] = "__nested__"
            layers.transport["data"] = base64.b64encode(_text(layers.secure).replace(marker, nested).encode()).decode()
            layers.secure = None
        elif where == "filter":
            layers.request["envelope"]["filter"]["fact"] = "__nested__"
            layers.secure["message"] = _text({**layers.request, "message": _text(layers.body)}).replace(marker, nested)
            layers.request = None
        else:  # body data
            body = _mcorpc(layers)
            body["data"] = "__nested__"
            layers.body = _text(body).replace(marker, nested)
        return _message(layers, reply)

    return make


def _number_oddities(ctx):
    layers, reply = _safe_base(ctx)
    field_name = ctx.rng.choice(["ttl", "time"])
    layers.request["envelope"][field_name] = "__number__"
    raw = ctx.rng.choice(["NaN", "Infinity", "-Infinity", "1e999", "9" * 5000, "60.0", "-0"])
    layers.secure["message"] = _text({**layers.request, "message": _text(layers.body)}).replace('"__number__"', raw)
    layers.request = None
    return _message(layers, reply)


def _envelope_value(field_name: str, values: Callable):
    def make(ctx):
        layers, reply = _safe_base(ctx)
        layers.request["envelope"][field_name] = ctx.rng.choice(values(ctx))
        return _message(layers, reply)

    return make


def _stale_huge_ttl(ctx):
    # The case: ten minutes old (or more), asking to be judged with a ttl of a day and more.
    layers, reply = _base(ctx, "choria_provision", "gencsr")
    envelope = layers.request["envelope"]
    envelope["time"] = ctx.now - ctx.rng.choice([600, 3600, 86400])
    envelope["ttl"] = ctx.rng.choice([100_000, 10**9, 2**31 - 1])
    return _message(layers, reply)


def _wrong_collective(ctx):
    layers, reply = _safe_base(ctx)
    layers.request["envelope"]["collective"] = ctx.rng.choice(["mcollective", "choria", "provisioningx", "", "*"])
    return _message(layers, reply)


def _agent_mismatch(ctx):
    layers, reply = _safe_base(ctx)
    layers.request["envelope"]["agent"] = ctx.rng.choice(["rpcutil", "choria_provision", "discovery", "nonexistent"])
    body = _mcorpc(layers)
    body["agent"] = ctx.rng.choice(["rpcutil", "choria_util", "nonexistent"])
    return _message(layers, reply, ctx.rng.choice(["choria_provision", "rpcutil", "discovery"]))


def _unknown_action(ctx):
    layers, reply = _base(ctx, "choria_provision", "jwt", token=WRONG_TOKEN)
    layers.body["action"] = ctx.rng.choice(["release_update", "gen25519", "nonexistent", "", "__class__", "GENCSR"])
    return _message(layers, reply)


def _filter_redos(ctx):
    layers, reply = _safe_base(ctx)
    flt = layers.request["envelope"]["filter"]
    if ctx.rng.random() < 0.5:
        flt["fact"] = [
            {"fact": ctx.rng.choice(["hostname", "os.family", "x"]), "operator": "=~", "value": "/(a|a|aa)+$/"}
        ]
    else:
        flt["identity"] = ["/(x+x+)+y/", "/^(([a-z])+.)+[A-Z]([a-z])+$/"]
    return _message(layers, reply)


def _filter_huge(ctx):
    layers, reply = _safe_base(ctx)
    flt = layers.request["envelope"]["filter"]
    flt["fact"] = [{"fact": f"f{index}", "operator": "==", "value": "v"} for index in range(5_000)]
    flt["identity"] = [f"/node-{index}/" for index in range(2_000)]
    return _message(layers, reply)


def _filter_compound(ctx):
    layers, reply = _safe_base(ctx)
    layers.request["envelope"]["filter"]["compound"] = [[{"expr": "facts.os == 'linux' and 1/0"}]]
    return _message(layers, reply)


def _signed_garbage(ctx):
    layers, reply = _safe_base(ctx)
    layers.secure["signature"] = ctx.rng.choice(["!!!", "c2ln", "", "insecure", "A" * 5000])
    layers.secure["pubcert"] = ctx.rng.choice(
        [
            "-----BEGIN CERTIFICATE-----\nZ2FyYmFnZQ==\n-----END CERTIFICATE-----\n",
            _BAD_CERTIFICATE * 6,
            "insecure",
            "not a pem",
            "-----BEGIN CERTIFICATE-----\n" + "A" * 20_000 + "\n-----END CERTIFICATE-----\n",
        ]
    )
    return _message(layers, reply)


def _no_reply_subject(ctx):
    layers, _reply = _safe_base(ctx)
    layers.transport["headers"].pop("reply-to", None)
    return _message(layers, "")


def _huge_reply_subject_header(ctx):
    layers, reply = _safe_base(ctx)
    layers.transport["headers"]["reply-to"] = "provisioning.reply." + "r" * 65_536
    return _message(layers, reply)


def _huge_reply_subject_nats(ctx):
    layers, _reply = _safe_base(ctx)
    huge = "provisioning.reply." + "r" * (NATS_MAX_SUBJECT - 20)
    layers.transport["headers"]["reply-to"] = huge
    return _message(layers, huge)


def _reply_subject_injection(ctx):
    layers, _reply = _safe_base(ctx)
    target = ctx.rng.choice(
        [
            "choria.lifecycle.event.startup.provision_mode_server",
            f"provisioning.node.{ctx.rng.choice(ctx.identities)}",
            "provisioning.broadcast.agent.choria_provision",
            "provisioning.reply.>",
            "_INBOX.*",
            "a b",
            "x..y",
            ".",
            "$SYS.REQ.SERVER.PING",
        ]
    )
    layers.transport["headers"]["reply-to"] = target
    # The NATS reply stays sane (the broker would refuse the publish otherwise); the header is the attack.
    return _message(layers, "provisioning.reply.hostile")


MESSAGE_CLASSES: tuple = (
    ("random_bytes", False, _random_bytes),
    ("truncated_json", False, _truncated_json),
    ("json_not_an_object", False, _not_an_object),
    ("trailing_garbage", False, _trailing_garbage),
    ("duplicate_keys", False, _duplicate_keys),
    ("invalid_utf8", False, _invalid_utf8),
    ("invalid_base64", False, _invalid_base64),
    ("wrong_protocol.transport", False, _wrong_protocol("transport", ("choria:transport:2", "choria:reply:1", ""))),
    (
        "wrong_protocol.secure",
        False,
        _wrong_protocol("secure", ("choria:secure:reply:1", "choria:secure:request:2")),
    ),
    ("wrong_protocol.request", False, _wrong_protocol("request", ("choria:reply:1", "choria:request:0"))),
    ("request_not_json", False, _request_not_json),
    ("body_not_json", False, _body_not_json),
    *_layer_fields("transport", _TRANSPORT_TYPES),
    *_layer_fields("headers", _HEADER_TYPES),
    *_layer_fields("secure", _SECURE_TYPES),
    *_layer_fields("request", _REQUEST_TYPES),
    *_layer_fields("envelope", _ENVELOPE_TYPES),
    *_layer_fields("filter", _FILTER_TYPES),
    *_layer_fields("body", _BODY_TYPES),
    *_data_classes(),
    *_bad_value_classes(),
    *[
        (f"unicode.{where}", False, _unicode_in(where))
        for where in (
            "envelope.callerid",
            "envelope.senderid",
            "envelope.agent",
            "envelope.collective",
            "envelope.requestid",
            "headers.mc_sender",
            "body.action",
            "data.token",
            "data.cn",
        )
    ],
    ("number_oddities", False, _number_oddities),
    (
        "bad_value.envelope.requestid",
        False,
        _envelope_value("requestid", lambda ctx: ["a" * 31, "a" * 33, "g" * 32, "../" * 10 + "aa", " " * 32]),
    ),
    (
        "bad_value.envelope.ttl",
        False,
        _envelope_value("ttl", lambda ctx: [0, -1, -(2**31), 2**63, 1]),
    ),
    (
        "bad_value.envelope.time",
        False,
        _envelope_value("time", lambda ctx: [0, -1, ctx.now + 10**9, ctx.now - 10**9, 2**63]),
    ),
    ("stale_huge_ttl", False, _stale_huge_ttl),
    ("wrong_collective", False, _wrong_collective),
    ("agent_mismatch", False, _agent_mismatch),
    ("unknown_action", False, _unknown_action),
    ("filter.redos", False, _filter_redos),
    ("filter.compound", False, _filter_compound),
    ("signed_garbage", False, _signed_garbage),
    ("no_reply_subject", False, _no_reply_subject),
    ("huge_reply_subject.header", False, _huge_reply_subject_header),
    ("huge_reply_subject.nats", False, _huge_reply_subject_nats),
    ("reply_subject_injection", False, _reply_subject_injection),
    ("filter.huge", True, _filter_huge),
    *[
        (f"huge_string.{where}", True, _huge_string(where))
        for where in (
            "headers.mc_sender",
            "headers.reply-to",
            "secure.pubcert",
            "secure.signature",
            "envelope.callerid",
            "envelope.agent",
            "body.action",
            "data.token",
            "data.cn",
        )
    ],
    *[(f"deep_nesting.{where}", True, _deep_nesting(where)) for where in ("transport", "secure", "filter", "body")],
)
MESSAGE_CLASS_NAMES = tuple(name for name, _heavy, _make in MESSAGE_CLASSES)


def hostile_messages(
    count: int,
    seed: int = 0,
    identities: tuple = fleet_identities(),
    now: int = 1_800_000_000,
    token: str = WRONG_TOKEN,
    collective: str = "provisioning",
    heavy_limit: int = DEFAULT_HEAVY_LIMIT,
    max_payload: int = DEFAULT_MAX_PAYLOAD,
):
    """``count`` malformed messages, the classes in turn (every class within the first ``len(MESSAGE_CLASSES)``
    messages, heavy ones while ``heavy_limit`` lasts); pass ``now`` = the fleet's clock so only the intended
    field is wrong."""
    rng = random.Random(seed)
    light = [c for c in MESSAGE_CLASSES if not c[1]]
    heavy_sent = 0
    for index in range(count):
        cycle, position = divmod(index, len(MESSAGE_CLASSES))
        name, heavy, make = MESSAGE_CLASSES[position]
        if heavy:
            if heavy_sent >= heavy_limit:
                name, heavy, make = light[index % len(light)]
            else:
                heavy_sent += 1
        identity = identities[rng.randrange(len(identities))]
        ctx = _Context(rng, identity, identities, now, token, collective, max_payload)
        payload, reply_to, agent = make(ctx)
        if len(payload) > max_payload:
            raise AssertionError(f"hostile class {name} made {len(payload)} bytes, more than {max_payload}")
        kind = "node" if (cycle + position) % 2 == 0 else "broadcast"
        yield HostileMessage(kind, payload, reply_to, name, agent or "choria_provision", identity)


# ---------------------------------------------------------------------------------------------- CSRs


# The signer options the CSR cases are judged against (as pki_sign takes them; policy_from_params reads them).
CSR_POLICY = {
    "allowed_sans": ["{identity}", r"[a-z0-9-]+\.svc\.example\.net", r"10\.20\.\d{1,3}\.\d{1,3}"],
    "deny": [r"^forbidden"],
    "valid_days": 30,
    "max_valid_days": 90,
}


class HostileCsr(NamedTuple):
    class_name: str
    csr: bytes
    identity: str  # the identity the signer is asked to sign for
    may_sign: bool  # whether CSR_POLICY allows it; the certificate must still never be CA:TRUE or name more
    rule: str | None  # else the rule (the error's field) that refuses it


def _curve_key(rng: random.Random, curve):
    return ec.derive_private_key(rng.getrandbits(min(curve.key_size, 256) - 8) + 1, curve)


@functools.lru_cache(maxsize=16)
def _rsa_key(bits: int, seed: int):
    """A deterministic RSA key (primes searched from a seeded generator; tests only)."""
    rng = random.Random(f"rsa-{bits}-{seed}")
    e = 65537
    while True:
        p, q = _prime(rng, bits // 2), _prime(rng, bits - bits // 2)
        n = p * q
        phi = (p - 1) * (q - 1)
        if p != q and n.bit_length() == bits and phi % e:
            break
    d = pow(e, -1, phi)
    numbers = rsa.RSAPrivateNumbers(
        p, q, d, rsa.rsa_crt_dmp1(d, p), rsa.rsa_crt_dmq1(d, q), rsa.rsa_crt_iqmp(p, q), rsa.RSAPublicNumbers(e, n)
    )
    return numbers.private_key()


_SMALL_PRIMES = [p for p in range(3, 2000, 2) if all(p % f for f in range(3, int(p**0.5) + 1, 2))]


def _prime(rng: random.Random, bits: int) -> int:
    while True:
        candidate = rng.getrandbits(bits) | (3 << (bits - 2)) | 1
        if any(candidate % p == 0 for p in _SMALL_PRIMES):
            continue
        if _probably_prime(candidate, rng):
            return candidate


def _probably_prime(n: int, rng: random.Random, rounds: int = 24) -> bool:
    d, s = n - 1, 0
    while d % 2 == 0:
        d, s = d // 2, s + 1
    for _round in range(rounds):
        x = pow(rng.randrange(2, n - 2), d, n)
        if x in (1, n - 1):
            continue
        for _step in range(s - 1):
            x = pow(x, 2, n)
            if x == n - 1:
                break
        else:
            return False
    return True


def _build_csr(key, names: list, sans: list = (), extensions: tuple = (), attributes: list | None = None) -> bytes:
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name(attributes if attributes is not None else [_cn(n) for n in names])
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(sans)), critical=False)
    for extension, critical in extensions:
        builder = builder.add_extension(extension, critical=critical)
    if isinstance(key, (ed25519.Ed25519PrivateKey, ed448.Ed448PrivateKey)):
        csr = builder.sign(key, None)
    elif isinstance(key, ec.EllipticCurvePrivateKey):
        csr = builder.sign(key, hashes.SHA256(), ecdsa_deterministic=True)
    else:
        csr = builder.sign(key, hashes.SHA256())
    return csr.public_bytes(serialization.Encoding.PEM)


def _cn(value: str) -> x509.NameAttribute:
    return _attribute(NameOID.COMMON_NAME, value)


def _attribute(oid, value: str) -> x509.NameAttribute:
    """A name attribute of any length: an oversized one is the point of some cases, so no warning for it."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return x509.NameAttribute(oid, value, _validate=False)


def _dns(*names) -> list:
    return [x509.DNSName(n) for n in names]


def _ip(*addresses) -> list:
    return [x509.IPAddress(ipaddress.ip_address(a)) for a in addresses]


class _CsrContext(NamedTuple):
    rng: random.Random
    identity: str
    other: str
    seed: int

    def key(self):
        return _curve_key(self.rng, ec.SECP256R1())


def _case(ctx: _CsrContext, csr: bytes, may_sign: bool, rule: str | None, identity: str | None = None) -> tuple:
    return csr, identity if identity is not None else ctx.identity, may_sign, rule


def _valid(ctx):
    rng, identity = ctx.rng, ctx.identity
    key = rng.choice(
        [
            ctx.key,
            lambda: _curve_key(rng, ec.SECP384R1()),
            lambda: ed25519.Ed25519PrivateKey.from_private_bytes(rng.randbytes(32)),
            lambda: _rsa_key(2048, ctx.seed),
        ]
    )()
    sans = rng.choice([[], _dns(identity), _dns(identity, "api-1.svc.example.net"), _dns(identity) + _ip("10.20.3.4")])
    return _case(ctx, _build_csr(key, [identity], sans), True, None)


def _garbage_pem(ctx):
    rng = ctx.rng
    real = _build_csr(ctx.key(), [ctx.identity])
    der = x509.load_pem_x509_csr(real).public_bytes(serialization.Encoding.DER)
    options = [
        lambda: rng.randbytes(rng.randrange(1, 2000)),
        lambda: (
            b"-----BEGIN CERTIFICATE REQUEST-----\n"
            + base64.encodebytes(rng.randbytes(rng.randrange(1, 600)))
            + b"-----END CERTIFICATE REQUEST-----\n"
        ),
        lambda: real[: rng.randrange(10, len(real) - 40)],
        lambda: real.replace(b"CERTIFICATE REQUEST", b"CERTIFICATE"),
        lambda: b"",
        lambda: b"   \n\t",
        lambda: b"-----BEGIN CERTIFICATE REQUEST-----\n\n-----END CERTIFICATE REQUEST-----\n",
        lambda: der,
        lambda: (
            b"-----BEGIN CERTIFICATE REQUEST-----\n"
            + base64.encodebytes(der[:-30])
            + b"-----END CERTIFICATE REQUEST-----\n"
        ),
        lambda: real.replace(b"\n", b"\r\n\x00", 3),
    ]
    return _case(ctx, rng.choice(options)(), False, "csr")


def _other_identity_cn(ctx):
    return _case(ctx, _build_csr(ctx.key(), [ctx.other], _dns(ctx.other)), False, "cn_matches_identity")


def _cn_not_exact(ctx):
    identity = ctx.identity
    cn = ctx.rng.choice(
        [identity.upper(), identity + ".", " " + identity, identity.replace("o", "\u043e", 1), identity + "\u200b"]
    )
    return _case(ctx, _build_csr(ctx.key(), [cn]), False, "cn_matches_identity")


def _cn_count(ctx):
    names = ctx.rng.choice([[], [ctx.identity, ctx.identity], [ctx.identity, ctx.other]])
    return _case(ctx, _build_csr(ctx.key(), names), False, "cn_matches_identity")


def _disallowed_san(ctx):
    name = ctx.rng.choice(
        [ctx.other, "www.example.org", "svc.example.net", "a.b.svc.example.net", "xn--nde-6qa.example.net"]
    )
    return _case(ctx, _build_csr(ctx.key(), [ctx.identity], _dns(ctx.identity, name)), False, "allowed_sans")


def _wildcard_san(ctx):
    name = ctx.rng.choice(["*.svc.example.net", "*", f"*.{ctx.identity}", "api-*.svc.example.net"])
    return _case(ctx, _build_csr(ctx.key(), [ctx.identity], _dns(name)), False, "deny")


def _ip_san(ctx):
    address = ctx.rng.choice(["192.168.1.10", "10.21.0.1", "fe80::1", "8.8.8.8", "2001:db8::1"])
    return _case(ctx, _build_csr(ctx.key(), [ctx.identity], _ip(address)), False, "allowed_sans")


def _ip_san_allowed(ctx):
    address = f"10.20.{ctx.rng.randrange(256)}.{ctx.rng.randrange(1, 255)}"
    return _case(ctx, _build_csr(ctx.key(), [ctx.identity], _ip(address)), True, None)


def _ip_san_denied(ctx):
    address = ctx.rng.choice(["127.0.0.1", "127.1.2.3", "::1", "0.0.0.0", "::"])
    return _case(ctx, _build_csr(ctx.key(), [ctx.identity], _ip(address)), False, "deny")


def _denied_name(ctx):
    name = ctx.rng.choice(
        [
            "localhost",
            "x.privileged.choria",
            "foo.mcollective",
            "bar.choria",
            "root.svc.example.net",
            "admin.svc.example.net",
            "forbidden-1.svc.example.net",
            "x.localhost",
        ]
    )
    return _case(ctx, _build_csr(ctx.key(), [ctx.identity], _dns(name)), False, "deny")


def _san_type(ctx):
    name = ctx.rng.choice(
        [
            x509.RFC822Name("root@example.net"),
            x509.UniformResourceIdentifier("spiffe://example.net/node"),
            x509.RegisteredID(x509.ObjectIdentifier("1.2.3.4")),
            x509.DirectoryName(x509.Name([_cn("admin")])),
            x509.OtherName(x509.ObjectIdentifier("1.3.6.1.4.1.311.20.2.3"), b"\x0c\x05admin"),
        ]
    )
    return _case(ctx, _build_csr(ctx.key(), [ctx.identity], [name]), False, "san_types")


def _weak_rsa(ctx):
    key = _rsa_key(ctx.rng.choice([512, 1024, 1536]), ctx.seed)
    return _case(ctx, _build_csr(key, [ctx.identity]), False, "key_types")


def _unsupported_key(ctx):
    rng = ctx.rng
    curve = rng.choice([ec.SECP192R1(), ec.SECP224R1(), ec.SECP521R1(), ec.SECP256K1(), ec.BrainpoolP256R1(), None])
    key = ed448.Ed448PrivateKey.from_private_bytes(rng.randbytes(57)) if curve is None else _curve_key(rng, curve)
    return _case(ctx, _build_csr(key, [ctx.identity]), False, "key_types")


def _broken_signature(ctx):
    der = bytearray(
        x509.load_pem_x509_csr(_build_csr(ctx.key(), [ctx.identity])).public_bytes(serialization.Encoding.DER)
    )
    der[-1 - ctx.rng.randrange(8)] ^= 1 << ctx.rng.randrange(8)
    pem = (
        b"-----BEGIN CERTIFICATE REQUEST-----\n"
        + base64.encodebytes(bytes(der))
        + b"-----END CERTIFICATE REQUEST-----\n"
    )
    return _case(ctx, pem, False, "csr_signature")


def _sha1_signature(ctx):
    key = _rsa_key(2048, ctx.seed)
    csr = x509.load_pem_x509_csr(_build_csr(key, [ctx.identity]))
    der = sha1_resigned(csr.tbs_certrequest_bytes, key)
    pem = b"-----BEGIN CERTIFICATE REQUEST-----\n" + base64.encodebytes(der) + b"-----END CERTIFICATE REQUEST-----\n"
    return _case(ctx, pem, False, "csr_signature")


def _ca_requested(ctx):
    extensions = [(x509.BasicConstraints(ca=True, path_length=ctx.rng.choice([None, 0, 5])), ctx.rng.random() < 0.5)]
    if ctx.rng.random() < 0.5:
        usage = x509.KeyUsage(True, False, False, False, False, True, True, False, False)
        extensions.append((usage, True))
    return _case(ctx, _build_csr(ctx.key(), [ctx.identity], extensions=tuple(extensions)), True, None)


def _provisioner_usage_requested(ctx):
    usages = ctx.rng.choice([list(PROVISIONER), [PROVISIONER[0]], [ExtendedKeyUsageOID.CODE_SIGNING, PROVISIONER[0]]])
    extension = (x509.ExtendedKeyUsage(usages), False)
    return _case(ctx, _build_csr(ctx.key(), [ctx.identity], extensions=(extension,)), True, None)


def _unknown_extension_requested(ctx):
    extension = (x509.UnrecognizedExtension(x509.ObjectIdentifier("1.3.6.1.4.1.55555.7"), b"\x05\x00"), True)
    return _case(ctx, _build_csr(ctx.key(), [ctx.identity], extensions=(extension,)), True, None)


def _nul_bytes(ctx):
    if ctx.rng.random() < 0.5:
        return _case(ctx, _build_csr(ctx.key(), [ctx.identity + "\x00.evil.org"]), False, "cn_matches_identity")
    sans = _dns(ctx.identity, ctx.identity + "\x00.evil.org")
    return _case(ctx, _build_csr(ctx.key(), [ctx.identity], sans), False, "allowed_sans")


def _long_names(ctx):
    choice = ctx.rng.randrange(3)
    if choice == 0:
        return _case(ctx, _build_csr(ctx.key(), ["n" * 10_240]), False, "cn_matches_identity")
    if choice == 1:
        sans = _dns(ctx.identity, "x" * 10_240 + ".elsewhere.org")
        return _case(ctx, _build_csr(ctx.key(), [ctx.identity], sans), False, "allowed_sans")
    # Subject attributes other than the CN never reach the certificate.
    attributes = [_cn(ctx.identity), _attribute(NameOID.ORGANIZATION_NAME, "o" * 10_240)]
    return _case(ctx, _build_csr(ctx.key(), [], attributes=attributes), True, None)


def _long_dns_label(ctx):
    # The allow pattern matches any label length; DNS allows 63 characters.
    name = "a" * ctx.rng.choice([64, 100, 300]) + ".svc.example.net"
    return _case(ctx, _build_csr(ctx.key(), [ctx.identity], _dns(ctx.identity, name)), False, "dns_lengths")


def _many_sans(ctx):
    sans = _dns(ctx.identity, *[f"n{index}.elsewhere.org" for index in range(300)])
    return _case(ctx, _build_csr(ctx.key(), [ctx.identity], sans), False, "allowed_sans")


def _bad_identity(ctx):
    identity = ctx.rng.choice(["*.hostile.example.net", "a b", "node\x00", "-" * 300])
    return _case(ctx, _build_csr(ctx.key(), [identity]), False, "identity", identity=identity)


CSR_CLASSES: tuple = (
    ("valid", _valid),
    ("garbage_pem", _garbage_pem),
    ("other_identity_cn", _other_identity_cn),
    ("cn_not_exact", _cn_not_exact),
    ("cn_count", _cn_count),
    ("disallowed_san", _disallowed_san),
    ("wildcard_san", _wildcard_san),
    ("ip_san", _ip_san),
    ("ip_san_allowed", _ip_san_allowed),
    ("ip_san_denied", _ip_san_denied),
    ("denied_name", _denied_name),
    ("san_type", _san_type),
    ("weak_rsa", _weak_rsa),
    ("unsupported_key", _unsupported_key),
    ("broken_signature", _broken_signature),
    ("sha1_signature", _sha1_signature),
    ("ca_requested", _ca_requested),
    ("provisioner_usage_requested", _provisioner_usage_requested),
    ("unknown_extension_requested", _unknown_extension_requested),
    ("nul_bytes", _nul_bytes),
    ("long_names", _long_names),
    ("long_dns_label", _long_dns_label),
    ("many_sans", _many_sans),
    ("bad_identity", _bad_identity),
)
CSR_CLASS_NAMES = tuple(name for name, _make in CSR_CLASSES)


def hostile_csrs(count: int = 1_200, seed: int = 0, identities: tuple = fleet_identities()):
    """``count`` CSR cases, the classes in turn (every class within the first ``len(CSR_CLASSES)``)."""
    rng = random.Random(seed)
    for index in range(count):
        name, make = CSR_CLASSES[index % len(CSR_CLASSES)]
        identity = identities[rng.randrange(len(identities))]
        other = identities[(identities.index(identity) + 1 + rng.randrange(len(identities) - 1)) % len(identities)]
        csr, asked, may_sign, rule = make(_CsrContext(rng, identity, other, seed))
        yield HostileCsr(name, csr, asked, may_sign, rule)
