"""The deciders: a helper program's answer judged in order, and the built-in signer's decision."""

from __future__ import annotations

import asyncio
import json
import stat
import sys

import pytest

from ansible_collections.zeroinit.bootstrap.plugins.module_utils.pki.ca import CertificateAuthority
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.provisioning.deciders import (
    HelperDecider,
    SignerDecider,
    decider_for,
)
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.provisioning.helper import NodeFailure
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.provisioning.settings import ProvisionSettings
from tests.support.x509 import make_csr


def helper(tmp_path, answer: dict) -> list[str]:
    path = tmp_path / "helper.py"
    path.write_text(f"#!{sys.executable}\nimport sys\nsys.stdin.read()\nprint({json.dumps(json.dumps(answer))})\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return [str(path)]


def decide(decider, identity="node1.example.net", csr=None):
    return asyncio.run(decider.decide(identity, {}, {"csr": csr or make_csr(identity), "ssldir": "/ssl"}))


def test_a_looping_configuration_is_named_before_a_bad_certificate(tmp_path):
    bad = {"certificate": "-----BEGIN CERTIFICATE-----\nx", "ca": "-----BEGIN CERTIFICATE-----\nx"}
    decider = HelperDecider(helper(tmp_path, dict(bad, configuration={"plugin.choria.server.provision": "yes"})))
    with pytest.raises(NodeFailure, match="leaves provisioning on"):
        decide(decider)
    decider = HelperDecider(helper(tmp_path, dict(bad, configuration={"plugin.choria.server.provision": "no"})))
    with pytest.raises(NodeFailure, match="certificate does not parse"):
        decide(decider)


def test_helper_fields_this_provisioner_ignores_are_reported_once_per_field(tmp_path):
    decider = HelperDecider(helper(tmp_path, {"defer": True, "msg": "later", "server_jwt": "x"}))
    assert decide(decider).defer and decide(decider).msg == "later"
    assert decider.warnings() == [
        "helper returned the Choria field 'server_jwt' for 2 node(s); this provisioner ignores it"
    ]


def test_the_built_in_signer_turns_provisioning_off_and_names_the_node(tmp_path):
    ca = {"ca_cert": str(tmp_path / "ca.pem"), "ca_key": str(tmp_path / "ca.key"), "create_ca": True}
    decider = SignerDecider(ca, {"collectives": "prod", "plugin.choria.server.provision": "true"})
    decision = decide(decider)
    assert decision.configuration == {
        "collectives": "prod",
        "identity": "node1.example.net",
        "plugin.choria.server.provision": "false",
    }
    assert decision.ca == CertificateAuthority.load(ca["ca_cert"], ca["ca_key"]).chain_pem
    with pytest.raises(NodeFailure, match=r"signer refused the CSR of node2\.example\.net"):
        decide(decider, "node2.example.net", make_csr("node1.example.net"))


def test_without_pki_a_helper_configures_and_the_signer_cannot_sign(tmp_path):
    decider = HelperDecider(
        helper(tmp_path, {"configuration": {"plugin.choria.server.provision": "false"}}), {"a": "1"}
    )
    decision = asyncio.run(decider.decide("node1.example.net", {}, None))
    assert decision.configuration == {"a": "1", "plugin.choria.server.provision": "false"} and not decision.certificate
    signer = SignerDecider({"ca_cert": str(tmp_path / "ca.pem"), "ca_key": str(tmp_path / "ca.key"), "create_ca": True})
    with pytest.raises(NodeFailure, match=r"needs the CSR of node1\.example\.net"):
        asyncio.run(signer.decide("node1.example.net", {}, None))


def test_the_settings_choose_the_decider(tmp_path):
    base = {"brokers": ["nats://127.0.0.1:1"]}
    assert decider_for(ProvisionSettings(**base)) is None
    assert isinstance(decider_for(ProvisionSettings(helper="/bin/true", **base)), HelperDecider)
    signer = {"ca_cert": str(tmp_path / "ca.pem"), "ca_key": str(tmp_path / "ca.key"), "create_ca": True}
    assert decider_for(ProvisionSettings(signer=signer, check_mode=True, **base)) is None
    assert not (tmp_path / "ca.pem").exists()  # check mode never makes a CA
    assert isinstance(decider_for(ProvisionSettings(signer=signer, **base)), SignerDecider)
