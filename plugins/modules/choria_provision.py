#!/usr/bin/python
# Copyright: zeroinit.bootstrap contributors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)


from __future__ import annotations

DOCUMENTATION = r"""
---
module: choria_provision
short_description: Provision nodes over a Choria provisioning network (one action, or many nodes at once)
description:
  - Talks Choria protocol v1 (insecure provisioning mode) to node agents in the C(provisioning) collective.
  - O(action=provision) runs, for every discovered node, C(rpcutil#inventory), C(gencsr) (the private key is
    made on the node and never leaves it), a decision by a O(helper) program (Choria's helper contract) or by
    the built-in O(signer), then C(configure) and C(restart). Nodes are processed concurrently; one node's
    failure never stops the others.
  - The other actions send one request to one node (O(identity)) and return the agent's reply data.
  - A provisioned node leaves provisioning mode, so a second run finds nothing to do and reports no change.
author:
  - zeroinit.bootstrap contributors (!UNKNOWN)
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - zeroinit.bootstrap.brokers
  - zeroinit.bootstrap.signer.as_suboptions
attributes:
  check_mode:
    support: full
    details:
      - Only read-only requests are sent (discovery, C(rpcutil#inventory), C(rpcutil#ping)); nodes that
        would be provisioned are listed under RV(would_provision). No C(gencsr) is sent, as it writes a key.
  diff_mode:
    support: none
  platform:
    platforms: posix
  idempotent:
    description: Running the task again over the same fleet changes nothing.
    support: full
    details:
      - Configured nodes no longer answer in the provisioning collective, so a second run changes nothing.
options:
  action:
    description:
      - V(provision) provisions many nodes; the others act on the single node O(identity).
      - V(reprovision) must be sent in the node's configured collective on its configured broker
        (set O(brokers) and O(collective) accordingly).
      - V(discover) lists the nodes that answer a broadcast discovery in O(collective) (RV(identities)); it changes
        nothing, and asks in check mode too. O(discovery_timeout) and O(expect) bound the wait.
      - V(destroy) wipes the node's state (its keys, certificates, configuration and site lock) in either mode, then
        brings it back in provisioning mode or stops it (O(after)); RV(data.certificates) are the certificates it
        held, for M(zeroinit.bootstrap.pki_revoke). Not in go-choria's DDL; C(destroy.yaml) uses it.
    type: str
    default: provision
    choices: [provision, discover, inventory, gencsr, configure, restart, reprovision, shutdown, destroy]
  identity:
    description: The node for single-node actions.
    type: str
  identities:
    description:
      - Only these nodes (O(action=provision)). Default is every node that answers discovery.
      - Listed nodes that do not answer are returned under RV(absent) (already provisioned, or down).
    type: list
    elements: str
  token:
    description: The provisioning token the nodes were given.
    type: str
    default: ""
  callerid:
    description: The caller id; a node locks itself to one caller during a provisioning round.
    type: str
    default: zeroinit-provisioner
  timeout:
    description: Seconds to wait for each reply.
    type: float
    default: 10
  retries:
    description: How often a request without a reply is sent again (with backoff) before the node is failed.
    type: int
    default: 2
  workers:
    description: Nodes provisioned concurrently.
    type: int
    default: 500
  discovery_timeout:
    description: Seconds to collect discovery replies (ends early once O(expect) or all O(identities) answered).
    type: float
    default: 2
  wait:
    description:
      - Keep listening this many seconds for nodes that announce themselves (startup lifecycle events,
        registration data) and rediscover periodically; new nodes are provisioned as they appear.
    type: float
    default: 0
  expect:
    description: Stop taking new nodes once this many are provisioned.
    type: int
  splay:
    description: Seconds over which nodes spread their restart.
    type: int
    default: 0
  helper:
    description:
      - A program deciding per node, with Choria's contract; a path with arguments as a list or a string.
      - It reads C({"identity","csr","ed25519_pubkey","inventory","jwt"}) on stdin and prints
        C({"defer","shutdown","msg","certificate","ca","ssldir","configuration"}).
      - A helper that exits non-zero, prints nothing or invalid JSON, runs past O(helper_timeout), or returns
        a configuration that does not set C(plugin.choria.server.provision=false) fails that node.
      - Mutually exclusive with O(signer).
    type: raw
  helper_timeout:
    description: Seconds a helper may run for one node before it is killed.
    type: float
    default: 10
  helper_concurrency:
    description: Helpers running at once (default four per CPU, at most O(workers)).
    type: int
    default: 0
  signer:
    description:
      - The built-in policy signer (the same CA and policy options as M(zeroinit.bootstrap.pki_sign)).
      - The CSR's CN must equal the node's identity and pass the policy before anything is signed.
      - The configuration sent is O(configuration) with C(identity) set and C(plugin.choria.server.provision=false).
      - Not loaded in check mode (O(signer.create_ca) would write a CA).
    type: dict
  configuration:
    description:
      - Base configuration (Choria C(key=value) settings) merged under what the helper or signer returns.
      - For O(action=configure) it is the configuration sent; it must set C(plugin.choria.server.provision=false).
    type: dict
    default: {}
  certificate:
    description: PEM certificate for O(action=configure).
    type: str
  ca:
    description: PEM CA bundle for O(action=configure).
    type: str
  ssldir:
    description: Directory on the node for O(action=configure) (default the node's own ssldir).
    type: str
  csr_subject:
    description: Subject fields for C(gencsr) (C(C), C(L), C(O), C(OU), C(ST)); the CN is the identity.
    type: dict
    default: {}
  key_type:
    description: Key the node makes for its CSR.
    type: str
    default: ec
    choices: [ec, rsa]
  after:
    description: What a node does after O(action=destroy) wiped its state.
    type: str
    choices: [reprovision, shutdown]
    default: reprovision
  fail_on_node_error:
    description: Fail the task when any node failed (O(action=provision)); the per-node outcome is returned either way.
    type: bool
    default: false
requirements:
  - nats-py
  - cryptography (for O(signer))
seealso:
  - module: zeroinit.bootstrap.pki_sign
"""

EXAMPLES = r"""
- name: Provision every node in provisioning mode with the built-in signer
  zeroinit.bootstrap.choria_provision:
    brokers: ["nats://10.0.0.1:4222"]
    token: "{{ provisioning_token }}"
    signer:
      ca_cert: /etc/zeroinit/ca/ca.pem
      ca_key: /etc/zeroinit/ca/ca.key
    configuration:
      plugin.choria.middleware_hosts: "nats://10.0.0.1:4223"
      collectives: production
      main_collective: production
    wait: 30
    expect: 100
  register: run

- name: Provision with a Choria helper program
  zeroinit.bootstrap.choria_provision:
    brokers: ["nats://10.0.0.1:4222"]
    token: "{{ provisioning_token }}"
    helper: [/usr/local/bin/provision-helper, --site, lab]

- name: Ask one node for its inventory
  zeroinit.bootstrap.choria_provision:
    action: inventory
    identity: node1.example.net
    brokers: ["nats://10.0.0.1:4222"]
"""

RETURN = r"""
provisioned:
  description: Nodes configured and restarted.
  returned: action=provision
  type: list
  elements: str
deferred:
  description: Nodes the helper deferred (left in provisioning mode), with its message.
  returned: action=provision
  type: dict
failed_nodes:
  description:
    - Nodes that failed, with the step and reason (C(failed) itself is Ansible's task status, so this key is
      not called that).
  returned: action=provision
  type: dict
  sample: {"node3.example.net": "gencsr: no reply from node3.example.net within 10.0s (3 attempts)"}
shutdown:
  description: Nodes the helper asked to shut down, with its message.
  returned: action=provision
  type: dict
absent:
  description: Listed O(identities) that did not answer discovery.
  returned: action=provision
  type: list
  elements: str
would_provision:
  description: Nodes a real run would provision.
  returned: check mode, action=provision
  type: list
  elements: str
counts:
  description: Numbers of nodes discovered, provisioned, deferred, failed and shut down.
  returned: action=provision
  type: dict
  sample: {"discovered": 3, "provisioned": 3, "deferred": 0, "failed": 0, "shutdown": 0}
timings:
  description: Per step p50/p99 in ms, per node p50/p99, discovery and total seconds, nodes per second.
  returned: action=provision
  type: dict
identities:
  description: The nodes that answered discovery, sorted.
  returned: action=discover
  type: list
  elements: str
identity:
  description: The node a single-node action went to.
  returned: single-node actions
  type: str
data:
  description:
    - The agent's reply data (inventory facts; gencsr csr, public_key, ssldir; otherwise message).
    - For V(destroy), also C(certificates) (PEM, the certificates the node held), C(removed) and C(after).
  returned: single-node actions
  type: dict
"""

import traceback

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

from ansible_collections.zeroinit.bootstrap.plugins.module_utils.common.deps import (
    CRYPTOGRAPHY_IMPORT_ERROR,
    HAS_CRYPTOGRAPHY,
    HAS_NATS,
    NATS_IMPORT_ERROR,
)
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.pki.issuance import signer_argument_spec
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.provisioning.actions import SINGLE_ACTIONS
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.provisioning.settings import broker_argument_spec
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.provisioning.task import TaskFailure, run_task

ARGUMENT_SPEC = dict(
    broker_argument_spec(),
    action=dict(type="str", default="provision", choices=["provision", "discover", *SINGLE_ACTIONS]),
    identity=dict(type="str"),
    identities=dict(type="list", elements="str"),
    token=dict(type="str", default="", no_log=True),
    callerid=dict(type="str", default="zeroinit-provisioner"),
    timeout=dict(type="float", default=10),
    retries=dict(type="int", default=2),
    workers=dict(type="int", default=500),
    discovery_timeout=dict(type="float", default=2),
    wait=dict(type="float", default=0),
    expect=dict(type="int"),
    splay=dict(type="int", default=0),
    helper=dict(type="raw"),
    helper_timeout=dict(type="float", default=10),
    helper_concurrency=dict(type="int", default=0),
    signer=dict(type="dict", options=signer_argument_spec()),
    configuration=dict(type="dict", default={}),
    certificate=dict(type="str"),
    ca=dict(type="str"),
    ssldir=dict(type="str"),
    csr_subject=dict(type="dict", default={}),
    key_type=dict(type="str", default="ec", choices=["ec", "rsa"]),
    after=dict(type="str", default="reprovision", choices=["reprovision", "shutdown"]),
    fail_on_node_error=dict(type="bool", default=False),
)


def main():
    module = AnsibleModule(
        argument_spec=ARGUMENT_SPEC,
        mutually_exclusive=[("helper", "signer")],
        required_if=[
            ("action", "inventory", ("identity",)),
            ("action", "gencsr", ("identity",)),
            ("action", "configure", ("identity", "certificate", "ca")),
            ("action", "restart", ("identity",)),
            ("action", "reprovision", ("identity",)),
            ("action", "shutdown", ("identity",)),
            ("action", "destroy", ("identity",)),
            ("action", "provision", ("helper", "signer"), True),
        ],
        supports_check_mode=True,
    )
    if not HAS_NATS:
        module.fail_json(msg=missing_required_lib("nats-py"), exception=NATS_IMPORT_ERROR)
    if module.params["signer"] and not HAS_CRYPTOGRAPHY:
        module.fail_json(msg=missing_required_lib("cryptography"), exception=CRYPTOGRAPHY_IMPORT_ERROR)
    try:
        result, warnings = run_task(module.params, module.check_mode)
    except TaskFailure as exc:
        for warning in exc.result.pop("warnings", []):
            module.warn(warning)
        module.fail_json(msg=exc.msg, **exc.result)
    except Exception as exc:  # pylint: disable=broad-except
        module.fail_json(msg=f"choria_provision failed: {exc}", exception=traceback.format_exc())
    for warning in warnings:
        module.warn(warning)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
