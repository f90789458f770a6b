"""Fakes for the provisioning unit tests: an RPC client that answers like nodes, and a decider without a CA.

Only pure logic is tested with them; tests/integration drives real agents over a real nats-server.
"""

from __future__ import annotations

from ansible_collections.zeroinit.bootstrap.plugins.module_utils.choria.protocol import Reply, rpc_reply_body
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.provisioning.helper import HelperDecision, NodeFailure
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.provisioning.rpc import RpcTimeout
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.provisioning.settings import ProvisionSettings

CERT = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"


def scripted_settings(**options) -> ProvisionSettings:
    """Settings for runs against a ScriptedClient: short timeouts, no retries."""
    base = dict(brokers=["nats://127.0.0.1:1"], token="tok", timeout=0.1, retries=0, discovery_timeout=0.1)
    base.update(options)
    return ProvisionSettings(**base)


CSR = "-----BEGIN CERTIFICATE REQUEST-----\nMIIB\n-----END CERTIFICATE REQUEST-----\n"


class ScriptedClient:
    """Answers like nodes in provisioning mode; ``silent`` nodes never answer, ``refuse`` maps action->msg."""

    def __init__(self, nodes, silent=(), refuse=None, jwts=None):
        self.nodes = list(nodes)
        self.jwts = jwts or {}  # identity -> the provisioning JWT its jwt action returns
        self.silent = set(silent)
        self.refuse = refuse or {}
        self.sent = []

    async def connect(self):
        return None

    async def close(self):
        return None

    async def discover(self, timeout=2.0, expect=None, flt=None):
        found = self.nodes
        if flt and flt.get("identity"):
            found = [n for n in found if n in flt["identity"]]
        return sorted(found)

    async def call(self, identity, agent, action, data=None, timeout=10.0, retries=0, step=""):
        self.sent.append((identity, action, dict(data or {})))
        if identity in self.silent:
            raise RpcTimeout(f"{step}: no reply from {identity} within {timeout:.1f}s ({retries + 1} attempts)")
        if (identity, action) in self.refuse:
            return Reply("r", identity, agent, rpc_reply_body(action, 1, self.refuse[(identity, action)]))
        data_out = {
            "inventory": {"facts": {"host": identity}, "version": "1"},
            "gencsr": {"csr": CSR, "public_key": "PUB", "ssldir": "/ssl/" + identity},
            "ping": {"pong": 1},
            "jwt": {"jwt": self.jwts.get(identity, ""), "ecdh_public": ""},
        }.get(action, {"message": "ok"})
        return Reply("r", identity, agent, rpc_reply_body(action, 0, "OK", data_out))


class StaticDecider:
    """Decides like the built-in signer without a CA: a fixed certificate; ``refuse`` nodes fail; ``answer`` overrides."""

    def __init__(self, refuse=(), configuration=None, **answer):
        self.refuse = set(refuse)
        self.configuration = configuration
        self.answer = answer
        self.csrs = []  # what each decision was given (None without PKI)
        self.jwts = {}  # identity -> the jwt claims the flow passed

    def turn(self):
        return _NoTurn()

    async def finish(self):
        """Nothing lives in the event loop."""

    async def decide(self, identity, inventory, csr, jwt=None):
        self.jwts[identity] = jwt
        if identity in self.refuse:
            raise NodeFailure(f"signer refused the CSR of {identity}: CN mismatch")
        configuration = (
            self.configuration
            if self.configuration is not None
            else {"identity": identity, "plugin.choria.server.provision": "false"}
        )
        self.csrs.append(csr)
        fields = dict(configuration=dict(configuration))
        if csr is not None:  # without PKI a Choria helper returns the configuration alone
            fields.update(certificate=CERT, ca=CERT, ssldir=csr["ssldir"])
        fields.update(self.answer)
        return HelperDecision(**fields)

    def warnings(self):
        return []


class _NoTurn:
    async def __aenter__(self):
        return None

    async def __aexit__(self, *exc):
        return None
