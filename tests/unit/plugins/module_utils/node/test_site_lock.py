"""The one-way site lock with real CAs and real signed requests: what it records, who it lets through, its file."""

from __future__ import annotations

import json

import pytest

from ansible_collections.zeroinit.bootstrap.plugins.module_utils.choria.security import (
    RequestSigner,
    RequestVerifier,
    ca_key_fingerprints,
    refused_as_site_locked,
)
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.node.site_lock import (
    SITE_LOCKED_ACTIONS,
    SiteLock,
    SiteLockError,
    site_lock_refusal,
)
from tests.support.certificates import Authority

MESSAGE = '{"protocol":"choria:request:1"}'


@pytest.fixture(scope="module")
def site():
    """The node's site: its CA (issued the node's certificate) and its provisioning CA."""
    return {"ca": Authority("site A CA"), "provisioning": Authority("site A provisioning CA")}


def signer_under(authority, bundle_pem):
    """The VerifiedSigner of a provisioner certificate from ``authority``, verified by a node trusting ``bundle_pem``."""
    leaf = authority.issue("prov.site.example.net")
    fields = RequestSigner(leaf.pem, leaf.key_pem).sign(MESSAGE)
    return RequestVerifier(bundle_pem).verify(MESSAGE, fields.signature, fields.pubcert)


def test_a_commit_records_the_site_ca_keys_and_the_provisioning_ca_keys(site):
    lock = SiteLock.at_commit(
        site["ca"].pem,
        site["provisioning"].pem,
        site="site-a",
        committed_at=1_800_000_000,
        committed_by="CN=prov.site.example.net",
        request_id="f" * 32,
    )
    assert lock.site_ca_keys == ca_key_fingerprints(site["ca"].pem)
    assert lock.provisioning_ca_keys == ca_key_fingerprints(site["provisioning"].pem)
    assert lock.site == "site-a"
    assert SiteLock.load(lock.dump()) == lock
    document = json.loads(lock.dump())
    assert document["version"] == 1
    assert document["site_ca_keys_sha256"] == list(lock.site_ca_keys)


def test_a_token_only_commit_records_the_site_ca_alone(site):
    lock = SiteLock.at_commit(site["ca"].pem)
    assert lock.provisioning_ca_keys == ()
    assert SiteLock.load(lock.dump()) == lock


def test_a_configuration_without_a_ca_cannot_lock():
    for bundle in ("", None, "not a certificate"):
        with pytest.raises(SiteLockError, match="cannot lock the node to its site: the configuration's CA bundle"):
            SiteLock.at_commit(bundle)


def _cases():
    stranger = Authority("site B provisioning CA")
    return [
        # (action, who signed: None = token alone, or which authority; the node's verifier trusts what is given)
        ("configure", "provisioning", None),
        ("reprovision", "provisioning", None),
        ("gencsr", "provisioning", None),
        ("configure", "ca", None),  # a provisioner certificate from the site CA itself is of the site too
        ("configure", None, "the token alone is refused"),
        ("reprovision", None, "the token alone is refused"),
        ("gencsr", None, "the token alone is refused"),
        ("configure", stranger, "configure signed under another CA is refused (CN=prov.site.example.net under "),
        ("reprovision", stranger, "reprovision signed under another CA is refused"),
        ("restart", None, None),
        ("shutdown", None, None),
        ("restart", stranger, None),
    ]


@pytest.mark.parametrize(("action", "who", "refused"), _cases())
def test_a_locked_node_moves_only_for_its_site(site, action, who, refused):
    lock = SiteLock.at_commit(site["ca"].pem, site["provisioning"].pem, site="site-a")
    if who is None:
        signer = None
    else:
        authority = site[who] if isinstance(who, str) else who
        signer = signer_under(authority, site["ca"].pem + site["provisioning"].pem + authority.pem)
    outcome = lock.refusal(action, signer)
    if refused is None:
        assert outcome is None
    else:
        assert outcome.startswith("node is locked to site 'site-a' (CA keys sha256 ")
        assert refused in outcome
        assert site_lock_refusal(lock.dump(), action, signer) == outcome
        assert refused_as_site_locked(f"{action} refused by n1.example.net: {outcome}")  # what a provisioner sees


def test_a_trust_moves_the_site_ca_keys_and_keeps_the_provisioning_pins(site):
    lock = SiteLock.at_commit(site["ca"].pem, site["provisioning"].pem, site="site-a")
    permanent = Authority("site A permanent CA")
    moved = lock.with_site_ca_keys(ca_key_fingerprints(permanent.pem), 1_800_000_100, "CN=prov", "e" * 32)
    assert moved.site_ca_keys == ca_key_fingerprints(permanent.pem)
    assert moved.provisioning_ca_keys == lock.provisioning_ca_keys and moved.site == "site-a"
    assert SiteLock.load(moved.dump()) == moved
    everyone = site["ca"].pem + site["provisioning"].pem + permanent.pem
    assert moved.refusal("trust", signer_under(permanent, everyone)) is None
    assert moved.refusal("trust", signer_under(site["provisioning"], everyone)) is None
    assert "signed under another CA" in moved.refusal("trust", signer_under(site["ca"], everyone))


def test_the_lock_pins_keys_so_a_reissued_ca_certificate_keeps_its_nodes(site):
    lock = SiteLock.at_commit(site["ca"].pem)
    reissued = Authority("site A CA (renewed)", key=site["ca"].key)
    signer = signer_under(reissued, reissued.pem)
    assert lock.refusal("configure", signer) is None


def test_an_unlocked_node_judges_nothing():
    anyone = Authority("anyone")
    for signer in (None, signer_under(anyone, anyone.pem)):
        for action in sorted(SITE_LOCKED_ACTIONS):
            assert site_lock_refusal(None, action, signer) is None


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("", "not JSON"),
        ("{", "not JSON"),
        ("[1]", "not a JSON object"),
        ('{"version": 2, "site_ca_keys_sha256": []}', "site lock version 2 is not supported"),
        ('{"version": 1, "site_ca_keys_sha256": []}', "names no site CA key"),
        ('{"version": 1, "site_ca_keys_sha256": ["abc"]}', "holds 'abc', not a hex SHA-256"),
        ('{"version": 1, "site_ca_keys_sha256": "' + "a" * 64 + '"}', "is not a list"),
        ('{"version": 1, "site_ca_keys_sha256": ["' + "a" * 64 + '"], "site": 5}', "site is not a string"),
        ('{"version": 1, "site_ca_keys_sha256": ["' + "a" * 64 + '"], "committed_at": "x"}', "not an integer"),
        ("[" * 60000, "not JSON"),
        ("x" * 70000, "at most 65536"),
    ],
)
def test_an_unreadable_lock_refuses_every_locked_action(site, text, words):
    with pytest.raises(SiteLockError, match=words):
        SiteLock.load(text)
    signer = signer_under(site["provisioning"], site["provisioning"].pem)
    refusal = site_lock_refusal(text, "configure", signer)
    assert words in refusal
    assert refusal.endswith("refusing configure: the lock is removed only by wiping the node's state")
    assert site_lock_refusal(text, "restart", signer) is None
