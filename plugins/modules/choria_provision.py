#!/usr/bin/python
# Copyright: zeroinit.bootstrap contributors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)


from __future__ import annotations

DOCUMENTATION = r"""
---
module: choria_provision
short_description: Provision nodes over a Choria provisioning network; pause, resume or ask a provisioner service
description:
  - Talks Choria protocol v1 to node agents in the C(provisioning) collective; with O(signing_cert) every request
    is a signed secure request (go-choria's x509 security), else an insecure one authenticated by O(token) alone.
  - O(action=provision) runs, for every discovered node, C(choria_provision#jwt) verified with O(jwt_verify_key)
    (when set), C(rpcutil#inventory), C(gencsr) (the private key is made on the node and never leaves it), a
    decision by a O(helper) program (Choria's helper contract) or by the built-in O(signer), then C(configure)
    and C(restart). Nodes are processed concurrently; one node's failure never stops the others.
  - A node that was configured is locked to its site (the CA it was configured with, and the provisioning CA
    it pins). C(gencsr), C(configure) and C(reprovision) reach it again only signed with a provisioner certificate
    of that site (O(signing_cert)); the token alone is refused.
  - O(action=provision) with O(identity) runs that one node's pipeline without a discovery (the node is known, for
    example from the C(zeroinit.bootstrap.provisioning) inventory; C(provision.yaml) runs one such task per host). The
    result has the same keys for that node, plus RV(status) and RV(msg); a node that does not answer fails.
  - The other actions send one request to one node (O(identity)) and return the agent's reply data.
  - On the controller (C(connection=local), no C(become), no C(async), no task C(environment), and the controller's
    own Python or no C(ansible_python_interpreter)) the action plugin does the module's work in Ansible's worker
    process instead of starting the module (no new Python importing nats-py and cryptography per task); the
    arguments, checks, results and errors are the same. Elsewhere the module runs as usual.
  - O(action=pause), O(action=resume) and O(action=status) drive a running C(zeroinit-provisioner) service (the role
    C(zeroinit.bootstrap.provisioner) installs it). The request goes to every live
    instance of O(site) over the brokers, authenticated with the site's control key (derived from O(token) and
    O(site), or O(control_key)), and the answers gathered for O(gather) seconds are returned under RV(instances).
  - A provisioned node leaves provisioning mode, so a second run finds nothing to do and reports no change.
author:
  - zeroinit.bootstrap contributors (!UNKNOWN)
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - zeroinit.bootstrap.brokers
  - zeroinit.bootstrap.signer.as_suboptions
  - zeroinit.bootstrap.request_signing
  - zeroinit.bootstrap.request_signing.jwt
attributes:
  check_mode:
    support: full
    details:
      - Only read-only requests are sent (discovery, C(rpcutil#inventory), C(rpcutil#ping)); nodes that
        would be provisioned are listed under RV(would_provision). No C(gencsr) is sent, as it writes a key.
      - O(action=pause) and O(action=resume) ask the instances for their status only and list under
        RV(changed_instances) those whose paused state would change.
  diff_mode:
    support: partial
    details:
      - O(action=provision) with O(identity) shows the node's state before (C(provisioning)) and after (its RV(status)).
  platform:
    platforms: posix
  idempotent:
    description: Running the task again over the same fleet changes nothing.
    support: full
    details:
      - Configured nodes no longer answer in the provisioning collective, so a second run changes nothing.
      - A pause of a paused site (or a resume of a running one) reports no change.
options:
  action:
    description:
      - V(provision) provisions many nodes; the others act on the single node O(identity).
      - V(reprovision) must be sent in the node's configured collective on its configured broker
        (set O(brokers) and O(collective) accordingly).
      - V(discover) lists the nodes that answer a broadcast discovery in O(collective) (RV(identities)); it changes
        nothing, and asks in check mode too. O(discovery_timeout) and O(expect) bound the wait.
      - V(destroy) wipes the node's state (its keys, certificates, configuration and site lock) in either mode, then
        brings it back in provisioning mode or stops it (O(after)); C(certificates) in RV(data) are the certificates it
        held, for M(zeroinit.bootstrap.pki_revoke). Not in go-choria's DDL; C(destroy.yaml) uses it.
      - V(pause) stops every instance of the provisioner service of O(site) from starting new nodes within a
        second (nodes in flight finish); V(resume) lets them go on from their queues; V(status) returns each
        instance's state. The task changes something only when an instance's paused state changes.
    type: str
    default: provision
    choices: [provision, discover, inventory, gencsr, configure, restart, reprovision, shutdown, destroy, pause, resume,
      status]
  site:
    description:
      - The provisioner service's site (its configuration's C(site)) for O(action=pause), O(action=resume) and
        O(action=status).
    type: str
  control_key:
    description:
      - The service's C(control_key), when its configuration sets one; by default the control messages are
        keyed from O(token) and O(site), as the service derives them.
    type: str
  gather:
    description: Seconds to collect the answers of the service's instances (O(action=pause), V(resume), V(status)).
    type: float
    default: 1
  identity:
    description:
      - The node for single-node actions.
      - With O(action=provision), provision only this node, without a discovery.
    type: str
  identities:
    description:
      - Only these nodes (O(action=provision)). Default is every node that answers discovery.
      - Listed nodes that do not answer are returned under RV(absent) (already provisioned, or down).
    type: list
    elements: str
  token:
    description:
      - The provisioning token the nodes were given.
      - For O(action=pause), V(resume) and V(status), the service's C(token) (unless O(control_key) is given).
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
    description:
      - Helpers running at once (default four per CPU for O(helper_mode=oneshot), two per CPU for
        O(helper_mode=persistent), at most O(workers)).
      - With O(helper_mode=persistent) it is the number of long-lived helper processes.
    type: int
    default: 0
  helper_mode:
    description:
      - V(oneshot) runs the helper once per node (Choria's contract).
      - V(persistent) keeps O(helper_concurrency) helper processes running (the same program and arguments) and
        writes each one a JSON request per line, Choria's helper input plus an C(id); it answers one JSON line,
        Choria's helper output plus the same C(id).
      - A persistent helper that does not answer within O(helper_timeout), exits, or prints a line that is not
        a JSON object with the request's C(id) is killed and started again; only the node it was answering fails.
    type: str
    choices: [oneshot, persistent]
    default: oneshot
  pki:
    description:
      - Whether each node makes a key and a CSR (C(gencsr)) and gets a certificate; Choria's C(features.pki).
      - With V(false) no node is asked for a CSR. The O(helper) decides from the node's inventory alone and
        returns its configuration, with no certificate (Choria helpers written for C(features.pki=false) run
        unchanged). The node keeps no key and no certificate of this run.
      - V(false) needs O(helper); O(signer) signs CSRs, so it cannot be used without them.
    type: bool
    default: true
  signer:
    description:
      - The policy signer, built in or a CFSSL server (the same backend, CA and policy options as
        M(zeroinit.bootstrap.pki_sign)).
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
  - cryptography (for O(signer), O(signing_cert) and O(jwt_verify_key))
  - PyJWT (for O(jwt_verify_key))
seealso:
  - module: zeroinit.bootstrap.pki_sign
notes:
  - When the task runs on the controller, C(ansible_python_interpreter) set to another Python than the one running
    Ansible makes the module run in that Python instead of in Ansible's worker.
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

- name: Pause every instance of the provisioner service of site lab (nodes in flight finish)
  zeroinit.bootstrap.choria_provision:
    action: pause
    site: lab
    brokers: ["nats://10.0.0.1:4222"]
    token: "{{ provisioning_token }}"

- name: Ask the service's instances how they are doing
  zeroinit.bootstrap.choria_provision:
    action: status
    site: lab
    brokers: ["nats://10.0.0.1:4222"]
    token: "{{ provisioning_token }}"
  register: service

- name: Provision with signed requests, verifying each node's provisioning JWT first
  zeroinit.bootstrap.choria_provision:
    brokers: ["tls://10.0.0.1:4222"]
    tls_ca: /etc/zeroinit/ca/ca.pem
    token: "{{ provisioning_token }}"
    signing_cert: /etc/zeroinit/provisioner/provisioner.pem
    signing_key: /etc/zeroinit/provisioner/provisioner.key
    signing_key_passphrase: "{{ provisioner_key_passphrase }}"
    jwt_verify_key: /etc/zeroinit/provisioning-jwt-issuer.pub
    signer:
      ca_cert: /etc/zeroinit/ca/ca.pem
      ca_key: /etc/zeroinit/ca/ca.key
    configuration:
      plugin.choria.middleware_hosts: "tls://10.0.0.1:4223"

- name: Provision one node the inventory plugin found (one task per host; provision.yaml)
  zeroinit.bootstrap.choria_provision:
    action: provision
    identity: "{{ inventory_hostname }}"
    brokers: ["nats://10.0.0.1:4222"]
    token: "{{ provisioning_token }}"
    signer:
      ca_cert: /etc/zeroinit/ca/ca.pem
      ca_key: /etc/zeroinit/ca/ca.key
    fail_on_node_error: true
  connection: local

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
      not called that). A node refused for its provisioning JWT fails at step C(jwt).
  returned: action=provision
  type: dict
  sample:
    node3.example.net: "gencsr: no reply from node3.example.net within 10.0s (3 attempts)"
    node4.example.net: "jwt: the provisioning JWT of node4.example.net is refused: JWT expired at 2025-01-01T00:00:00Z"
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
  returned: single-node actions, action=provision with identity
  type: str
status:
  description: How the node's run ended (provisioned, would_provision, deferred, failed, shutdown).
  returned: action=provision with identity
  type: str
  sample: provisioned
msg:
  description: What happened to the node, with the helper's message or the failure.
  returned: action=provision with identity
  type: str
  sample: "node1.example.net deferred: waiting for the asset database"
data:
  description:
    - The agent's reply data (inventory facts; gencsr csr, public_key, ssldir; otherwise message).
    - For V(destroy), also C(certificates) (PEM, the certificates the node held), C(removed) and C(after).
  returned: single-node actions
  type: dict
site:
  description: The service's site.
  returned: action=pause, action=resume, action=status
  type: str
instances:
  description:
    - One status document per live instance of the site, sorted by instance name (after the operation for
      V(pause) and V(resume); before it in check mode).
    - Each has at least C(instance), C(paused), C(busy_workers), C(queue), C(provisioned) and C(claims); an
      instance that could not give its status has C(instance) and C(error).
  returned: action=pause, action=resume, action=status
  type: list
  elements: dict
  sample: [{"instance": "prov1-4242", "paused": true, "busy_workers": 0, "queue": 12, "provisioned": 840, "claims": 0}]
changed_instances:
  description: Instances whose paused state changed (would change, in check mode).
  returned: action=pause, action=resume
  type: list
  elements: str
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.zeroinit.bootstrap.plugins.module_utils.common.outcome import exit_with_outcome
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.pki.issuance import (
    SIGNER_REQUIRED_IF,
    signer_argument_spec,
)
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.provisioning.actions import SINGLE_ACTIONS
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.provisioning.service import SITE_OPERATIONS
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.provisioning.settings import (
    broker_argument_spec,
    jwt_verification_argument_spec,
    request_signing_argument_spec,
)
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.provisioning.task import task_outcome

ARGUMENT_SPEC = dict(
    broker_argument_spec(),
    **request_signing_argument_spec(),
    **jwt_verification_argument_spec(),
    action=dict(type="str", default="provision", choices=["provision", "discover", *SINGLE_ACTIONS, *SITE_OPERATIONS]),
    site=dict(type="str"),
    control_key=dict(type="str", no_log=True),
    gather=dict(type="float", default=1),
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
    helper_mode=dict(type="str", default="oneshot", choices=["oneshot", "persistent"]),
    pki=dict(type="bool", default=True),
    signer=dict(type="dict", options=signer_argument_spec(), required_if=SIGNER_REQUIRED_IF),
    configuration=dict(type="dict", default={}),
    certificate=dict(type="str"),
    ca=dict(type="str"),
    ssldir=dict(type="str"),
    csr_subject=dict(type="dict", default={}),
    key_type=dict(type="str", default="ec", choices=["ec", "rsa"]),
    after=dict(type="str", default="reprovision", choices=["reprovision", "shutdown"]),
    fail_on_node_error=dict(type="bool", default=False),
)


# The argument spec and its constraints, shared with the action plugin (plugins/action/choria_provision.py).
MODULE_OPTIONS = dict(
    argument_spec=ARGUMENT_SPEC,
    mutually_exclusive=[("helper", "signer")],
    required_together=[("signing_cert", "signing_key")],
    required_if=[
        ("action", "inventory", ("identity",)),
        ("action", "gencsr", ("identity",)),
        ("action", "configure", ("identity", "certificate", "ca")),
        ("action", "restart", ("identity",)),
        ("action", "reprovision", ("identity",)),
        ("action", "shutdown", ("identity",)),
        ("action", "destroy", ("identity",)),
        ("action", "provision", ("helper", "signer"), True),
        ("action", "pause", ("site",)),
        ("action", "resume", ("site",)),
        ("action", "status", ("site",)),
    ],
)


def main():
    module = AnsibleModule(supports_check_mode=True, **MODULE_OPTIONS)
    outcome = task_outcome(module.params, module.check_mode, module._diff)
    exit_with_outcome(module, outcome)


if __name__ == "__main__":
    main()
