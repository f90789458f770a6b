"""Requests for one node's dispatcher, as a provisioner sends them, and a node taken through gencsr and configure."""

from __future__ import annotations

import json

from ansible_collections.zeroinit.bootstrap.plugins.module_utils.choria.protocol import (
    Request,
    decode_request,
    encode_request,
    rpc_request_body,
)
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.node.dispatch import handle

TOKEN = "s3cret"
CONFIG = {
    "plugin.choria.server.provision": "false",
    "plugin.choria.middleware_hosts": "nats://127.0.0.1:4222",
    "collectives": "ops",
}


def request(action, data=None, agent="choria_provision", caller="choria=alice", signer=None, **kw):
    """A request as the node receives it; with ``signer`` (a RequestSigner) signed, encoded and decoded again."""
    body = rpc_request_body(agent, action, data or {})
    req = Request(agent=agent, body=body, callerid=caller, senderid="controller", **kw)
    return req if signer is None else decode_request(encode_request(req, signer))


def call(node, action, data=None, **kw):
    result = handle(node, request(action, data, **kw))
    return result.body["statuscode"], result.body["statusmsg"], result.body["data"], result


def provisioned_files(node, ca, signer=None):
    """gencsr and configure under ``ca`` (which locks the node to it); ``signer`` signs both when given."""
    code, msg, data, _result = call(node, "gencsr", {"token": TOKEN}, signer=signer)
    assert code == 0, msg
    cert = ca.sign_csr(data["csr"])
    code, msg, _data, _result = call(
        node,
        "configure",
        {"token": TOKEN, "config": json.dumps(CONFIG), "certificate": cert, "ca": ca.pem},
        signer=signer,
    )
    assert code == 0, msg
    return cert
