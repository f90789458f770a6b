"""The member's interface: the default route's interface and an interface's address."""

from __future__ import annotations

import pytest

from ansible_collections.zeroinit.bootstrap.plugins.module_utils.election.network import (
    interface_address,
    parse_route_table,
)
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.election.outcome import (
    ElectionError,
)

ROUTES = """Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT
wlan0\t00000000\t0101A8C0\t0003\t0\t0\t600\t00000000\t0\t0\t0
eth0\t00000000\t0100000A\t0003\t0\t0\t100\t00000000\t0\t0\t0
eth0\t0000000A\t00000000\t0001\t0\t0\t100\t00FFFFFF\t0\t0\t0
"""


def test_default_interface_is_lowest_metric_default_route():
    assert parse_route_table(ROUTES) == "eth0"
    assert parse_route_table(ROUTES.splitlines()[0] + "\n" + ROUTES.splitlines()[3]) is None


def test_default_interface_address_of_loopback():
    assert interface_address("lo") == "127.0.0.1"
    with pytest.raises(ElectionError, match="no-such-if0"):
        interface_address("no-such-if0")
