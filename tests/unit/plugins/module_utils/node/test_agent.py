"""The daemon without a network: fleet identities and directories, the identity rule, a bad start exits 2."""

import pytest

from ansible_collections.zeroinit.bootstrap.plugins.module_utils.choria.config import ConfigError
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.node.agent import NodeAgent, main
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.node.settings import parse_args, settings_from
from tests.support.rules import IDENTITIES


def test_fleet_identities_and_node_directories(tmp_path):
    s = settings_from(
        parse_args(
            ["--fleet", "3", "--identity", "w", "--domain", "lab.example", "--state-dir", str(tmp_path), "--token", "t"]
        )
    )
    daemon = NodeAgent(s, {"rack": "r1"})
    try:
        daemon.build_nodes()
        assert sorted(daemon.nodes) == ["w1.lab.example", "w2.lab.example", "w3.lab.example"]
        node = daemon.nodes["w2.lab.example"]
        assert node.node_dir == str(tmp_path / "w2.lab.example")
        assert (tmp_path / "w2.lab.example" / "ssl").is_dir()
        assert node.facts == {"rack": "r1", "identity": "w2.lab.example"}
        assert node.durable is False  # simulated nodes share one disk
    finally:
        daemon.executor.shutdown()


@pytest.mark.parametrize("identity,valid", [row for row in IDENTITIES if isinstance(row[0], str) and row[0]])
def test_the_agent_serves_only_valid_identities(tmp_path, identity, valid):
    daemon = NodeAgent(settings_from(parse_args([f"--identity={identity}", "--state-dir", str(tmp_path)])))
    try:
        if valid:
            daemon.build_nodes()
            assert list(daemon.nodes) == [identity]
        else:
            with pytest.raises(ConfigError, match="invalid identity"):
                daemon.build_nodes()
    finally:
        daemon.executor.shutdown()


def test_missing_config_file_exits_2_without_a_traceback(tmp_path, capsys):
    assert main(["--config", str(tmp_path / "absent.conf")]) == 2
    assert "zeroinit-agent:" in capsys.readouterr().err


def test_the_provisioning_ca_is_loaded_once_for_the_fleet_and_a_bad_one_stops_the_start(tmp_path, caplog):
    from tests.support.certificates import Authority

    ca = tmp_path / "provisioning-ca.pem"
    ca.write_text(Authority("provisioning CA").pem)
    s = settings_from(parse_args(["--fleet", "2", "--state-dir", str(tmp_path / "s"), "--provisioning-ca", str(ca)]))
    daemon = NodeAgent(s)
    try:
        daemon.build_nodes()
        trusts = {id(node.trust) for node in daemon.nodes.values()}
        assert len(trusts) == 1 and next(iter(daemon.nodes.values())).trust.verifier is not None
        assert "running unauthenticated" not in caplog.text
    finally:
        daemon.executor.shutdown()
    ca.write_text("not a certificate")
    daemon = NodeAgent(s)
    try:
        with pytest.raises(
            ConfigError, match=r"--provisioning-ca / plugin\.zeroinit\.agent\.provisioning_ca: .*not PEM"
        ):
            daemon.build_nodes()
    finally:
        daemon.executor.shutdown()


def test_without_a_provisioning_ca_the_agent_says_once_that_it_runs_unauthenticated(tmp_path, caplog):
    daemon = NodeAgent(settings_from(parse_args(["--fleet", "3", "--state-dir", str(tmp_path)])))
    try:
        daemon.build_nodes()
    finally:
        daemon.executor.shutdown()
    assert caplog.text.count("running unauthenticated") == 1
