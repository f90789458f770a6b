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
