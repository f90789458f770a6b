# Copyright: zeroinit.bootstrap contributors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)
"""Choria protocol v1, insecure provisioning mode or signed secure requests: the one implementation of the wire
format.

Layers, outside in, for a request::

    choria:transport:1       {protocol, data = base64(secure request JSON), headers {reply-to, mc_sender, seen-by}}
    choria:secure:request:1  {protocol, message = request JSON as a string, signature, pubcert}
    choria:request:1         {protocol, message = body as a string, envelope {...}}

and for a reply ``choria:transport:1`` -> ``choria:secure:reply:1`` {message, hash = base64(sha256(message))}
-> ``choria:reply:1``. In insecure provisioning mode ``signature`` and ``pubcert`` are the string ``insecure``;
signed, they are the signature over ``message`` and the provisioner's certificate (``choria/security.py``).

Pure Python with no third-party imports: the node agent, the modules, the inventory plugin and the tests all
build and read messages through this file. Subjects are in ``subjects.py``, filters in ``filters.py``, lifecycle
events and registration data in ``events.py``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
import threading
import time
from dataclasses import dataclass, field
from json.encoder import encode_basestring_ascii as _json_string  # json.dumps' own escaping of a str
from typing import Any

from ..common.text import printable
from .filters import empty_filter
from .subjects import MAX_TOKEN_LENGTH, PROVISIONING_COLLECTIVE, reply_subject, valid_subject_token

TRANSPORT = "choria:transport:1"
SECURE_REQUEST = "choria:secure:request:1"
REQUEST = "choria:request:1"
SECURE_REPLY = "choria:secure:reply:1"
REPLY = "choria:reply:1"
INSECURE = "insecure"

DEFAULT_TTL = 60
MIN_TTL = 30  # the request schema's minimum

PROVISION_AGENT = "choria_provision"

# The discovery agent's raw body and answer (not mcorpc JSON).
DISCOVERY_PING = "ping"
DISCOVERY_PONG = "pong"

MAX_MESSAGE_BYTES = 1024 * 1024
MAX_CALLER_LENGTH = 256  # callerid and senderid
MAX_ACTION_LENGTH = 64


class StatusCode:
    """mcorpc reply status codes."""

    OK = 0
    ABORTED = 1
    UNKNOWN_ACTION = 2
    MISSING_DATA = 3
    INVALID_DATA = 4
    UNKNOWN_ERROR = 5

    NAMES = {
        0: "OK",
        1: "Aborted",
        2: "Unknown Action",
        3: "Missing Data",
        4: "Invalid Data",
        5: "Unknown Error",
    }


class ProtocolError(ValueError):
    """A message that is not valid Choria protocol v1; the text says which layer and field."""


# --------------------------------------------------------------------------------------------- ids, time


class _RequestIds:
    """Unpredictable request ids (a reply subject ends in one), 16 bytes of the kernel's CSPRNG each, read 256 ids at
    a time: one getrandom call per id cost a bulk run a fifth of its event loop's time on a loaded machine.

    The batch belongs to one process: a forked child (an Ansible worker per task, a signing worker) would otherwise
    hand out the very ids its parent and its siblings hand out next, and the nodes refuse repeated ids as replays.
    """

    BATCH = 256

    def __init__(self):
        self._reset()
        if hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=self._reset)  # also a fresh lock, in case a thread held it at fork

    def _reset(self) -> None:
        self.lock = threading.Lock()
        self.pool = b""
        self.used = 0
        self.pid = os.getpid()

    def next(self) -> str:
        with self.lock:
            if self.used >= len(self.pool) or self.pid != os.getpid():
                self.pool, self.used, self.pid = os.urandom(16 * self.BATCH), 0, os.getpid()
            pool, start = self.pool, self.used
            self.used += 16
        return pool[start : start + 16].hex()


_REQUEST_IDS = _RequestIds()


def new_request_id() -> str:
    """32 hex characters, never predictable from earlier ids."""
    return _REQUEST_IDS.next()


def now() -> int:
    return int(time.time())


def caller_id(name: str) -> str:
    """Choria caller ids look like ``choria=name``."""
    return name if "=" in name else f"choria={name}"


def constant_time_equal(given: Any, expected: str) -> bool:
    if not isinstance(given, str):
        return False
    # surrogatepass: network text may hold a lone surrogate; it compares unequal instead of raising
    return hmac.compare_digest(given.encode("utf-8", "surrogatepass"), expected.encode("utf-8", "surrogatepass"))


def valid_action(action: Any) -> bool:
    """An mcorpc action name as a node reads it: a short run of printable characters."""
    return isinstance(action, str) and 0 < len(action) <= MAX_ACTION_LENGTH and action.isprintable()


# --------------------------------------------------------------------------------------------- messages


@dataclass
class Request:
    """A decoded ``choria:request:1`` with its transport's reply-to."""

    agent: str
    body: Any  # dict for mcorpc agents, str for the discovery agent
    callerid: str
    senderid: str
    collective: str = PROVISIONING_COLLECTIVE
    requestid: str = field(default_factory=new_request_id)
    ttl: int = DEFAULT_TTL
    time: int = field(default_factory=now)
    filter: dict = field(default_factory=empty_filter)
    reply_to: str = ""
    # The secure request's fields as received: the exact ``message`` string a signature covers, the
    # ``signature`` (base64) and the signer's ``pubcert`` (PEM); both are ``insecure`` on an unsigned request.
    secure_message: str = field(default="", repr=False)
    signature: str = field(default=INSECURE, repr=False)
    pubcert: str = field(default=INSECURE, repr=False)

    @property
    def signed(self) -> bool:
        return self.signature != INSECURE or self.pubcert != INSECURE

    @property
    def action(self) -> str:
        """The mcorpc action; "" unless it is a valid action name (see :attr:`body_problem`)."""
        action = self.body.get("action") if isinstance(self.body, dict) else None
        return action if valid_action(action) else ""

    @property
    def body_problem(self) -> str:
        """Why the body is not an mcorpc request a node can act on ("" when it is); the discovery agent's is raw."""
        if self.agent == "discovery" and isinstance(self.body, str):
            return ""
        if not isinstance(self.body, dict):
            return "request body is not an mcorpc JSON object"
        action = self.body.get("action")
        if not isinstance(action, str):
            return f"request body: field 'action' must be a string, got {type(action).__name__}"
        if not valid_action(action):
            return f"request body: field 'action' must be 1 to {MAX_ACTION_LENGTH} printable characters"
        data = self.body.get("data", {})
        if not isinstance(data, dict):
            return f"request body: field 'data' must be an object, got {type(data).__name__}"
        return ""

    @property
    def data(self) -> dict:
        data = self.body.get("data") if isinstance(self.body, dict) else None
        return data if isinstance(data, dict) else {}


@dataclass
class Reply:
    """A decoded ``choria:reply:1``."""

    requestid: str
    senderid: str
    agent: str
    body: Any  # dict for mcorpc replies, str for the discovery agent's "pong"
    time: int = field(default_factory=now)

    @property
    def statuscode(self) -> int:
        """The mcorpc statuscode; Unknown Error when a reply's is missing or not an integer."""
        if not isinstance(self.body, dict):
            return StatusCode.OK
        code = self.body.get("statuscode", StatusCode.UNKNOWN_ERROR)
        return code if isinstance(code, int) and not isinstance(code, bool) else StatusCode.UNKNOWN_ERROR

    @property
    def statusmsg(self) -> str:
        message = self.body.get("statusmsg", "") if isinstance(self.body, dict) else ""
        return message if isinstance(message, str) else ""

    @property
    def data(self) -> dict:
        data = self.body.get("data") if isinstance(self.body, dict) else None
        return data if isinstance(data, dict) else {}

    @property
    def ok(self) -> bool:
        return self.statuscode == StatusCode.OK


def rpc_request_body(agent: str, action: str, data: dict | None = None) -> dict:
    return {"agent": agent, "action": action, "data": data or {}}


def rpc_reply_body(
    action: str, statuscode: int = StatusCode.OK, statusmsg: str = "OK", data: dict | None = None
) -> dict:
    return {"action": action, "statuscode": statuscode, "statusmsg": statusmsg, "data": data or {}}


def _dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), sort_keys=False)


def _body_text(body: Any) -> str:
    return body if isinstance(body, str) else _dumps(body)


def request_document(req: Request) -> dict:
    """The ``choria:request:1`` document."""
    return {
        "protocol": REQUEST,
        "message": _body_text(req.body),
        "envelope": {
            "requestid": req.requestid,
            "senderid": req.senderid,
            "callerid": req.callerid,
            "collective": req.collective,
            "agent": req.agent,
            "ttl": req.ttl,
            "time": req.time,
            "filter": req.filter if req.filter else empty_filter(),
        },
    }


def secure_request_document(req: Request, signer=None) -> dict:
    """The ``choria:secure:request:1`` document; with ``signer`` (``choria.security.RequestSigner``) it is signed."""
    message = _dumps(request_document(req))
    signature, pubcert = (INSECURE, INSECURE) if signer is None else signer.sign(message)
    return {"protocol": SECURE_REQUEST, "message": message, "signature": signature, "pubcert": pubcert}


def reply_document(rep: Reply) -> dict:
    return {
        "protocol": REPLY,
        "message": _body_text(rep.body),
        "envelope": {"requestid": rep.requestid, "senderid": rep.senderid, "agent": rep.agent, "time": rep.time},
    }


def reply_hash(message: str) -> str:
    """A secure reply's ``hash``: base64 of the SHA-256 of its message."""
    return base64.b64encode(hashlib.sha256(message.encode("utf-8")).digest()).decode("ascii")


def secure_reply_document(rep: Reply) -> dict:
    message = _dumps(reply_document(rep))
    digest = reply_hash(message)
    return {"protocol": SECURE_REPLY, "message": message, "hash": digest}


def transport_document(secure: dict, reply_to: str | None, sender: str) -> dict:
    headers: dict = {"mc_sender": sender, "seen-by": [["", sender, ""]]}
    if reply_to:
        headers["reply-to"] = reply_to
    return {
        "protocol": TRANSPORT,
        "data": base64.b64encode(_dumps(secure).encode("utf-8")).decode("ascii"),
        "headers": headers,
    }


# The encoders below write the outer two layers by hand: byte for byte what _dumps of secure_*_document and
# transport_document gives (same key order, same escaping), without serialising the inner document's JSON
# again at each layer.
_SECURE_REQUEST_HEAD = f'{{"protocol":"{SECURE_REQUEST}","message":'
_SECURE_REQUEST_TAIL = f',"signature":"{INSECURE}","pubcert":"{INSECURE}"}}'
_SECURE_REPLY_HEAD = f'{{"protocol":"{SECURE_REPLY}","message":'
_TRANSPORT_HEAD = (f'{{"protocol":"{TRANSPORT}","data":"').encode("ascii")
_SENDER_HEADERS: dict[str, bytes] = {}


def _transport_bytes(secure_text: str, reply_to: str | None, sender: str) -> bytes:
    headers = _SENDER_HEADERS.get(sender)
    if headers is None:
        quoted = _json_string(sender)
        headers = (f'","headers":{{"mc_sender":{quoted},"seen-by":[["",{quoted},""]]').encode("ascii")
        if len(_SENDER_HEADERS) > 1024:
            _SENDER_HEADERS.clear()
        _SENDER_HEADERS[sender] = headers
    tail = (f',"reply-to":{_json_string(reply_to)}}}}}').encode("ascii") if reply_to else b"}}"
    return _TRANSPORT_HEAD + base64.b64encode(secure_text.encode("utf-8")) + headers + tail


def encode_request(req: Request, signer=None) -> bytes:
    """Serialise a request; ``req.reply_to`` defaults to Choria's reply subject for the caller.

    With ``signer`` (a ``choria.security.RequestSigner``) the secure request carries the signature over its
    ``message`` and the signer's ``pubcert``, as go-choria's x509 security does; without, both say ``insecure``.
    """
    reply_to = req.reply_to or reply_subject(req.callerid, req.requestid, req.collective)
    message = _dumps(request_document(req))
    if signer is None:
        tail = _SECURE_REQUEST_TAIL
    else:
        signature, pubcert = signer.sign(message)
        tail = f',"signature":{_json_string(signature)},"pubcert":{_json_string(pubcert)}}}'
    return _transport_bytes(_SECURE_REQUEST_HEAD + _json_string(message) + tail, reply_to, req.senderid)


def encode_reply(rep: Reply) -> bytes:
    message = _dumps(reply_document(rep))
    digest = reply_hash(message)
    secure = _SECURE_REPLY_HEAD + _json_string(message) + ',"hash":"' + digest + '"}'
    return _transport_bytes(secure, None, rep.senderid)


# --------------------------------------------------------------------------------------------- decoding


def parse_json_object(raw: Any, where: str) -> dict:
    """A JSON object from bytes or text, refused (ProtocolError naming ``where``) when too large or not one."""
    if isinstance(raw, (bytes, bytearray)):
        if len(raw) > MAX_MESSAGE_BYTES:
            raise ProtocolError(f"{where}: message of {len(raw)} bytes is larger than {MAX_MESSAGE_BYTES}")
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ProtocolError(f"{where}: not UTF-8 text ({exc})") from None
    try:
        doc = json.loads(raw)
    except (TypeError, ValueError) as exc:
        raise ProtocolError(f"{where}: not JSON ({printable(str(exc), 120)})") from None
    except RecursionError:
        raise ProtocolError(f"{where}: JSON nested too deeply") from None
    if not isinstance(doc, dict):
        raise ProtocolError(f"{where}: expected a JSON object, got {type(doc).__name__}")
    return doc


def _expect_protocol(doc: dict, protocol: str, where: str) -> None:
    if doc.get("protocol") != protocol:
        raise ProtocolError(f"{where}: protocol is {doc.get('protocol')!r}, expected {protocol!r}")


def _string_field(doc: dict, name: str, where: str, allow_empty: bool = False) -> str:
    value = doc.get(name)
    if not isinstance(value, str) or (not allow_empty and not value):
        raise ProtocolError(f"{where}: field {name!r} must be a non-empty string")
    return value


def _b64_text(value: str) -> str | None:
    try:
        return base64.b64decode(value.encode("ascii"), validate=True).decode("utf-8")
    except (binascii.Error, ValueError, UnicodeError):
        return None


def decode_body(message: str) -> Any:
    """An inner ``message``: raw JSON (current Choria), base64 JSON (older clients) or a raw string.

    Returns a dict for JSON objects and the string itself otherwise (the discovery agent's ``ping``/``pong``).
    """
    text = message.strip()
    if text.startswith("{"):
        try:
            return parse_json_object(text, "body")
        except ProtocolError:
            raise ProtocolError("body: starts like JSON but does not parse") from None
    if text in (DISCOVERY_PING, DISCOVERY_PONG):
        return text
    decoded = _b64_text(text)
    if decoded is not None:
        decoded = decoded.strip()
        if decoded.startswith("{"):
            return parse_json_object(decoded, "body (base64)")
        if decoded in (DISCOVERY_PING, DISCOVERY_PONG):
            return decoded
    return message


def _unwrap_transport(raw: Any, secure_protocol: str) -> tuple[dict, dict]:
    transport = parse_json_object(raw, "transport")
    _expect_protocol(transport, TRANSPORT, "transport")
    headers = transport.get("headers")
    if not isinstance(headers, dict):
        raise ProtocolError("transport: field 'headers' must be an object")
    data = _string_field(transport, "data", "transport")
    secure_text = _b64_text(data)
    if secure_text is None:
        raise ProtocolError("transport: field 'data' is not base64 of UTF-8 text")
    secure = parse_json_object(secure_text, "secure message")
    _expect_protocol(secure, secure_protocol, "secure message")
    return headers, secure


def decode_request(raw: Any) -> Request:
    """Parse a transport message carrying a request. Raises ProtocolError naming what is wrong."""
    headers, secure = _unwrap_transport(raw, SECURE_REQUEST)
    message = secure_message = _string_field(secure, "message", "secure request")
    signature = secure.get("signature") if isinstance(secure.get("signature"), str) else ""
    pubcert = secure.get("pubcert") if isinstance(secure.get("pubcert"), str) else ""
    if not message.lstrip().startswith("{"):
        # Older clients base64 the request inside the secure request.
        message = _b64_text(message.strip()) or message
    inner = parse_json_object(message, "request")
    _expect_protocol(inner, REQUEST, "request")
    env = inner.get("envelope")
    if not isinstance(env, dict):
        raise ProtocolError("request: field 'envelope' must be an object")
    for name in ("requestid", "callerid", "collective", "agent"):
        _string_field(env, name, "request envelope")
    # These become subject tokens (the reply subject, the agent and collective of the subscription).
    if len(env["requestid"]) != 32 or not valid_subject_token(env["requestid"]):
        raise ProtocolError("request envelope: requestid must be 32 characters usable in a NATS subject")
    for name in ("collective", "agent"):
        if not valid_subject_token(env[name]):
            raise ProtocolError(
                f"request envelope: field {name!r} must be at most {MAX_TOKEN_LENGTH} printable ASCII characters "
                "without '.', '*', '>' or space"
            )
    senderid = env.get("senderid", "")
    for name, value in (("callerid", env["callerid"]), ("senderid", senderid)):
        if not isinstance(value, str) or len(value) > MAX_CALLER_LENGTH or not value.isprintable():
            raise ProtocolError(
                f"request envelope: field {name!r} must be a string of at most {MAX_CALLER_LENGTH} printable characters"
            )
    for name in ("ttl", "time"):
        if not isinstance(env.get(name), int) or isinstance(env.get(name), bool):
            raise ProtocolError(f"request envelope: field {name!r} must be an integer")
    flt = env.get("filter", None)
    if flt is None:
        flt = empty_filter()
    elif not isinstance(flt, dict):
        raise ProtocolError(f"request envelope: field 'filter' must be an object, got {type(flt).__name__}")
    body = decode_body(_string_field(inner, "message", "request"))
    reply_to = headers.get("reply-to") if isinstance(headers.get("reply-to"), str) else ""
    return Request(
        agent=env["agent"],
        body=body,
        callerid=env["callerid"],
        senderid=senderid,
        collective=env["collective"],
        requestid=env["requestid"],
        ttl=env["ttl"],
        time=env["time"],
        filter=flt,
        reply_to=reply_to,
        secure_message=secure_message,
        signature=signature,
        pubcert=pubcert,
    )


def decode_reply(raw: Any) -> Reply:
    """Parse a transport message carrying a reply; the secure reply's hash must match its message."""
    _headers, secure = _unwrap_transport(raw, SECURE_REPLY)
    message = _string_field(secure, "message", "secure reply")
    expected = reply_hash(message)
    if not constant_time_equal(secure.get("hash"), expected):
        raise ProtocolError("secure reply: hash does not match the message")
    inner = parse_json_object(message, "reply")
    _expect_protocol(inner, REPLY, "reply")
    env = inner.get("envelope")
    if not isinstance(env, dict):
        raise ProtocolError("reply: field 'envelope' must be an object")
    for name in ("requestid", "senderid", "agent"):
        _string_field(env, name, "reply envelope", allow_empty=(name == "senderid"))
    stamp = env.get("time") if isinstance(env.get("time"), int) else 0
    body = decode_body(_string_field(inner, "message", "reply"))
    return Reply(requestid=env["requestid"], senderid=env["senderid"], agent=env["agent"], body=body, time=stamp)
