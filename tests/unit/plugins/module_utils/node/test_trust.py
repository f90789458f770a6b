"""What the agent trusts: the provisioning CA read once, its problems named, site CA verifiers shared per bundle."""

import pytest

from ansible_collections.zeroinit.bootstrap.plugins.module_utils.choria.security import (
    PROVISIONER_USAGE_OID,
    TrustConfigError,
)
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.node.trust import AgentTrust
from tests.support.certificates import Authority


def test_without_a_file_the_token_alone_decides():
    trust = AgentTrust.from_files("", max_ttl=90)
    assert (trust.verifier, trust.provisioning_ca_pem, trust.max_ttl) == (None, None, 90)


def test_the_provisioning_ca_gives_one_verifier_with_the_provisioner_usage(tmp_path):
    path = tmp_path / "ca.pem"
    path.write_text(Authority("provisioning CA").pem)
    trust = AgentTrust.from_files(str(path))
    assert trust.verifier.policy.required_usage == PROVISIONER_USAGE_OID
    assert trust.provisioning_ca_pem == path.read_text()


@pytest.mark.parametrize(
    "content,phrase",
    [(None, "cannot be read: No such file"), ("junk", "not PEM"), (b"\xff\xfe", "cannot be read")],
)
def test_an_unusable_provisioning_ca_is_named(tmp_path, content, phrase):
    path = tmp_path / "ca.pem"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    with pytest.raises(TrustConfigError, match=f"the provisioning CA {path}.*{phrase}"):
        AgentTrust.from_files(str(path))


def test_site_verifiers_are_made_once_per_bundle_and_refuse_a_bundle_without_a_ca():
    trust = AgentTrust()
    site = Authority("site CA")
    assert trust.site_verifier(site.pem) is trust.site_verifier(site.pem)
    assert trust.site_verifier(site.pem).policy.ca_label == "site CA"
    leaf = site.issue("node1.example.net")
    with pytest.raises(TrustConfigError, match="is not a CA certificate"):
        trust.site_verifier(leaf.pem)
