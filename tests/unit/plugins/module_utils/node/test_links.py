"""LinkPool.trust_more: a widened trust bundle reaches the TLS context of a node's own connection, so a reconnection
(a broker restarted with a certificate from the new CA) is verified against both CAs."""

import asyncio
import ssl
from types import SimpleNamespace

from ansible_collections.zeroinit.bootstrap.plugins.module_utils.choria.config import SECURITY_CA_KEY
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.node.links import Link, LinkPool
from tests.support.fleet import TestCA


def ca_subjects(context: ssl.SSLContext) -> set:
    return {dict(name[0] for name in cert["subject"])["commonName"] for cert in context.get_ca_certs()}


def node_on(link: Link, bundle_path) -> SimpleNamespace:
    return SimpleNamespace(identity="web1.example.net", link=link, config={SECURITY_CA_KEY: str(bundle_path)})


def test_a_widened_bundle_is_added_to_the_nodes_own_connection(tmp_path):
    old, new = TestCA("temporary CA"), TestCA("permanent CA")
    bundle = tmp_path / "ca.pem"
    bundle.write_text(old.pem)
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(bundle))
    link = Link(["tls://127.0.0.1:4222"], "web1", lambda *_: None, tls=context, dedicated=True)
    pool = LinkPool([], 1, lambda *_: None, asyncio.Event())
    bundle.write_text(old.pem + new.pem)
    assert pool.trust_more(node_on(link, bundle)) is True
    assert ca_subjects(context) == {"temporary CA", "permanent CA"}


def test_a_shared_or_plain_connection_or_an_unreadable_bundle_is_left_as_it_is(tmp_path):
    ca = TestCA()
    bundle = tmp_path / "ca.pem"
    bundle.write_text(ca.pem)
    pool = LinkPool([], 1, lambda *_: None, asyncio.Event())
    shared = Link(["nats://127.0.0.1:4222"], "shared", lambda *_: None)
    assert pool.trust_more(node_on(shared, bundle)) is False
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    own = Link(["tls://127.0.0.1:4222"], "web1", lambda *_: None, tls=context, dedicated=True)
    (tmp_path / "garbage.pem").write_text("not a certificate")
    assert pool.trust_more(node_on(own, tmp_path / "garbage.pem")) is False
    assert pool.trust_more(node_on(own, tmp_path / "missing.pem")) is False
    assert pool.trust_more(node_on(None, bundle)) is False
