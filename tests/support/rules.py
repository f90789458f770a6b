"""The tables of the rules that node and controller must read alike, shared by the tests of every caller.

Each rule has one home in plugins/module_utils/choria/ and a table here; the rule's own test and the tests of
its callers on both sides (node agent, provisioner, discovery, CA, inventory plugin) run the same rows.
"""

from __future__ import annotations

MISSING = object()

# plugin.choria.server.provision value -> provisioning stays on. Off only for an explicit false word.
LOOP_GUARD = [
    ("true", True),
    ("false", False),
    ("yes", True),
    ("no", False),
    ("1", True),
    ("0", False),
    ("on", True),
    ("off", False),
    ("", True),
    (MISSING, True),
    (" No ", False),
    ("FALSE", False),
    ("n", False),
    ("f", False),
    ("   ", True),
    ("maybe", True),
    ("disabled", True),
]


def loop_guard_config(value, **extra) -> dict:
    """A configuration with ``plugin.choria.server.provision`` set to ``value`` (left out for MISSING)."""
    config = dict(extra)
    if value is not MISSING:
        config["plugin.choria.server.provision"] = value
    return config
