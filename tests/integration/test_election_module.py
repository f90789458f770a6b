"""zeroconf_elect input checking through Ansible: bad input fails before anything is sent, naming the field."""

from __future__ import annotations

import pytest

from tests.support.ansible_run import run_module


@pytest.mark.parametrize(
    "params, field",
    [
        ({"expect": 0}, "expect must be at least 1"),
        ({"expect": 2, "timeout": 0}, "timeout must be positive"),
        ({"expect": 2, "election_id": -1}, "election_id must not be negative"),
        ({"expect": 2, "cluster": "not a name", "interface": "lo"}, "cluster 'not a name'"),
        ({"expect": 2, "interface": "no-such-if0"}, "interface: interface no-such-if0 has no IPv4 address"),
    ],
)
def test_bad_input_fails_naming_the_field(params, field):
    result = run_module("zeroinit.bootstrap.zeroconf_elect", params)
    assert result.get("failed"), result
    assert field in result["msg"]
    assert result.get("changed") is False or "changed" not in result


def test_secret_is_never_shown():
    result = run_module("zeroinit.bootstrap.zeroconf_elect", {"expect": 0, "secret": "hunter2-election-secret"})
    assert result.get("failed")
    assert "hunter2-election-secret" not in repr(result)
