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


# Broker items -> the URLs they mean, or a phrase of the error naming the bad item.
BROKER_URLS = [
    (["nats://a:4222", " b:5222 ", "tls://c"], ["nats://a:4222", "nats://b:5222", "tls://c:4222"]),
    ("nats://a:1,nats://b:2", ["nats://a:1", "nats://b:2"]),
    ("nats1:4222, tls://nats2:4443,", ["nats://nats1:4222", "tls://nats2:4443"]),
    ("h1", ["nats://h1:4222"]),
    (["nats://h1", "nats://h1:4222", "h1"], ["nats://h1:4222"]),
    ("ws://web, wss://Secure.Example", ["ws://web:80", "wss://secure.example:443"]),
    ("[::1], nats://[fe80::1]:4333", ["nats://[::1]:4222", "nats://[fe80::1]:4333"]),
    ("10.0.0.1", ["nats://10.0.0.1:4222"]),
    ("TLS://Broker.Example:4443/", ["tls://broker.example:4443"]),
    (["http://x:80"], "http://x:80"),
    (["nats://h:port"], "nats://h:port"),
    ("h:70000", "h:70000"),
    ("::1", "::1"),
    ("nats://[zz]:1", "nats://[zz]:1"),
    ("a b", "a b"),
    ([], "brokers is empty"),
    ("", "brokers is empty"),
]

# Identities -> usable (a NATS subject token, an Ansible host name and a certificate CN alike).
IDENTITIES = [
    ("web1.example.net", True),
    ("node_7", True),
    ("a-b.c", True),
    ("UPPER.Example.NET", True),
    ("10.0.0.7", True),
    ("x" * 63 + ".example.net", True),
    ("x" * 64 + ".example.net", False),
    (".".join(["abcdefghi"] * 25) + ".abc", True),  # 253 characters
    (".".join(["abcdefghi"] * 25) + ".abcd", False),  # 254
    ("*", False),
    (">", False),
    ("web.*", False),
    ("*.example.net", False),
    ("a b", False),
    ("bad name!", False),
    ("a..b", False),
    ("trailing.", False),
    (".lead", False),
    ("-leading.example.net", False),
    ("trailing-.example.net", False),
    ("host:22", False),
    ("node1\n", False),
    ("", False),
    (None, False),
    (7, False),
    ("x" * 300, False),
]
