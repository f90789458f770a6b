#!/usr/bin/python
# Copyright: zeroinit.bootstrap contributors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)

from __future__ import annotations

DOCUMENTATION = r"""
module: node_certificates
short_description: Renew configured nodes' certificates and set the CA bundle they trust
description:
  - The certificate lifecycle of configured nodes (nodes that left provisioning mode), over their members' network.
  - "O(action=serve): answer the nodes' renewal requests for O(wait) seconds (or until O(expect) nodes renewed), for
    sites without the provisioner service. A configured node renews on its own at about 2/3 of its certificate's life
    (C(plugin.zeroinit.renewal.*) in its configuration): it makes a new key, signs its request with its current
    certificate and key, and installs what comes back atomically."
  - "O(action=renew): ask every node to renew now (C(choria_provision#renew)) and answer their requests meanwhile.
    A node counts as renewed once its C(renewed) lifecycle event names the certificate this run issued."
  - "O(action=trust): set every node's CA bundle to O(ca_bundle) (C(choria_provision#trust)). A node refuses a bundle
    that does not hold the CA of its own certificate, and moves to a new connection that uses the new bundle."
  - "A configured node is locked to its site: O(action=trust) and O(action=renew) need O(signing_cert), a provisioner
    certificate of that site; the token alone is refused. A node that accepts O(action=trust) moves its lock to the
    CAs of O(ca_bundle): after the migration narrows the bundle, provisioners of the dropped CA are refused."
  - Each renewal request is verified before anything is signed. It must chain to O(site_ca), name the node's identity,
    and carry a valid signature. Its CSR must be for a new key and pass O(signer)'s policy, as at provisioning.
  - The nodes are O(identities), or every node that answers a discovery in O(collective). One that cannot be reached
    or refuses is reported in RV(failed_nodes) with the reason; the others go on.
  - The CA migration playbook (C(zeroinit.bootstrap.migrate_ca)) runs these actions in order. It widens the trust
    (old and new CA), renews against the permanent CA, switches the brokers, and narrows the trust to the new CA.
author:
  - zeroinit.bootstrap contributors (!UNKNOWN)
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - zeroinit.bootstrap.brokers
  - zeroinit.bootstrap.signer.as_suboptions
  - zeroinit.bootstrap.request_signing
attributes:
  check_mode:
    support: full
    details: O(action=trust) asks each node whether its bundle would change and changes nothing; O(action=renew)
      only pings the nodes; O(action=serve) answers nothing.
  diff_mode:
    support: none
  platform:
    platforms: posix
  idempotent:
    description: O(action=trust) reports no change for nodes that already hold the bundle.
    support: partial
    details: O(action=renew) issues new certificates on every run.
options:
  action:
    description: What to do; see the description.
    type: str
    required: true
    choices: [serve, renew, trust]
  collective:
    description:
      - The collective the configured nodes are members of (their C(main_collective)); requests, replies and the
        renewal requests travel in it. C(mcollective) is Choria's default.
    default: mcollective
  identities:
    description: The nodes to act on; by default every node that answers a discovery in O(collective).
    type: list
    elements: str
  token:
    description: The provisioning token the nodes check in C(choria_provision) requests.
    type: str
    default: ""
  callerid:
    description: Caller id of the requests (Choria's C(choria=<name>) form is added).
    type: str
    default: zeroinit-provisioner
  ca_bundle:
    description:
      - With O(action=trust), the CA certificates (PEM text, for example C("{{ lookup('file', 'ca.pem') }}")) every
        node is to trust from now on.
    type: str
  site_ca:
    description:
      - With O(action=serve) or O(action=renew), the CA certificates (PEM text) a renewal request's certificate must
        chain to. During a CA migration, the old and the new CA. By default the signer's CA chain.
    type: str
  signer:
    description:
      - With O(action=serve) or O(action=renew), who signs the renewed certificates and under which policy. The
        built-in signer or a CFSSL server, the same options as M(zeroinit.bootstrap.pki_sign).
  wait:
    description:
      - With O(action=serve), how long to answer requests, in seconds. With O(action=renew), how long to wait for the
        nodes' renewals after asking them.
    type: float
    default: 60
  expect:
    description: With O(action=serve), stop once this many nodes renewed.
    type: int
  timeout:
    description: Seconds to wait for each node's answer.
    type: float
    default: 10
  retries:
    description: Extra attempts for a node that does not answer.
    type: int
    default: 2
  workers:
    description: Nodes asked at once.
    type: int
    default: 100
  discovery_timeout:
    description: Seconds the discovery of O(collective) listens for answers when O(identities) is not given.
    type: float
    default: 2
seealso:
  - module: zeroinit.bootstrap.pki_sign
  - module: zeroinit.bootstrap.choria_provision
notes:
  - Private keys never travel. Each node makes its new key itself; the requests carry CSRs and certificates.
requirements:
  - nats-py
  - cryptography >= 42.0
"""

EXAMPLES = r"""
- name: Answer the members' renewal requests for ten minutes with the built-in signer
  zeroinit.bootstrap.node_certificates:
    action: serve
    brokers: [tls://broker.prod.example.net:4222]
    collective: prod
    tls_ca: /etc/zeroinit/ca.pem
    tls_cert: /etc/zeroinit/provisioner.pem
    tls_key: /etc/zeroinit/provisioner-key.pem
    wait: 600
    signer:
      ca_cert: /etc/zeroinit/ca/ca.pem
      ca_key: /etc/zeroinit/ca/ca-key.pem
      valid_days: 30
      max_valid_days: 30

- name: Every node trusts the temporary and the permanent CA
  zeroinit.bootstrap.node_certificates:
    action: trust
    brokers: [tls://broker.prod.example.net:4222]
    collective: prod
    token: "{{ vault_provisioning_token }}"
    signing_cert: /etc/zeroinit/provisioner/provisioner.pem
    signing_key: /etc/zeroinit/provisioner/provisioner.key
    ca_bundle: "{{ lookup('file', '/etc/zeroinit/ca/ca.pem') }}\n{{ lookup('file', '/etc/zeroinit/cfssl/ca.pem') }}"
    tls_ca: /etc/zeroinit/ca.pem
    tls_cert: /etc/zeroinit/provisioner.pem
    tls_key: /etc/zeroinit/provisioner-key.pem
  register: widened

- name: Every node gets a new key and a certificate from the permanent CA (CFSSL)
  zeroinit.bootstrap.node_certificates:
    action: renew
    identities: "{{ widened.trusted + widened.unchanged }}"
    brokers: [tls://broker.prod.example.net:4222]
    collective: prod
    token: "{{ vault_provisioning_token }}"
    signing_cert: /etc/zeroinit/provisioner/provisioner.pem
    signing_key: /etc/zeroinit/provisioner/provisioner.key
    site_ca: "{{ lookup('file', '/etc/zeroinit/ca/ca.pem') }}\n{{ lookup('file', '/etc/zeroinit/cfssl/ca.pem') }}"
    tls_ca: /etc/zeroinit/ca.pem
    tls_cert: /etc/zeroinit/provisioner.pem
    tls_key: /etc/zeroinit/provisioner-key.pem
    signer:
      backend: cfssl
      cfssl_url: https://ca.prod.example.net:8888
      cfssl_auth_key: "{{ vault_cfssl_auth_key }}"
      cfssl_profile: node
      cfssl_ca_bundle: /etc/zeroinit/cfssl/tls-ca.pem
      cfssl_ca_cert: /etc/zeroinit/cfssl/ca.pem
      valid_days: 30
      max_valid_days: 30
"""

RETURN = r"""
renewed:
  description: With O(action=serve) or O(action=renew), the nodes renewed, each with its new certificate's serial (hex).
  returned: success
  type: dict
  sample: {"node1.example.net": "6041c89782c9e08cc83b9eedb4eded4"}
refused:
  description: With O(action=serve), the last refusal per node whose request was refused.
  returned: success
  type: dict
trusted:
  description: With O(action=trust), the nodes whose CA bundle was replaced.
  returned: success
  type: list
  elements: str
unchanged:
  description: With O(action=trust), the nodes that already held the bundle.
  returned: success
  type: list
  elements: str
nodes:
  description: In check mode, the nodes that would be changed.
  returned: check mode
  type: list
  elements: str
failed_nodes:
  description: Nodes that were not brought where the action asks, each with the reason (unreachable, refused, no
    renewal request, the node's own renewal_failed reason).
  returned: always
  type: dict
  sample: {"node7.example.net": "choria_provision#renew: no reply from node7.example.net within 10.0s (3 attempts)"}
counts:
  description: How many nodes there were and how each one ended. With O(action=serve), the responder's answers by
    kind.
  returned: success
  type: dict
elapsed_s:
  description: Seconds the task took.
  returned: success
  type: float
"""

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

from ansible_collections.zeroinit.bootstrap.plugins.module_utils.common.deps import (
    CRYPTOGRAPHY_IMPORT_ERROR,
    HAS_CRYPTOGRAPHY,
    HAS_NATS,
    NATS_IMPORT_ERROR,
)
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.pki.issuance import (
    SIGNER_REQUIRED_IF,
    signer_argument_spec,
)
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.provisioning.certificates import (
    CertificateTaskError,
    run_certificate_task,
)
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.provisioning.settings import (
    broker_argument_spec,
    request_signing_argument_spec,
)

ARGUMENT_SPEC = dict(
    broker_argument_spec(),
    action=dict(type="str", required=True, choices=["serve", "renew", "trust"]),
    collective=dict(type="str", default="mcollective"),
    identities=dict(type="list", elements="str"),
    token=dict(type="str", default="", no_log=True),
    callerid=dict(type="str", default="zeroinit-provisioner"),
    **request_signing_argument_spec(),
    ca_bundle=dict(type="str"),
    site_ca=dict(type="str"),
    signer=dict(type="dict", options=signer_argument_spec(), required_if=SIGNER_REQUIRED_IF),
    wait=dict(type="float", default=60),
    expect=dict(type="int"),
    timeout=dict(type="float", default=10),
    retries=dict(type="int", default=2),
    workers=dict(type="int", default=100),
    discovery_timeout=dict(type="float", default=2),
)


def main():
    module = AnsibleModule(
        argument_spec=ARGUMENT_SPEC,
        required_if=[
            ("action", "trust", ("ca_bundle",)),
            ("action", "serve", ("signer",)),
            ("action", "renew", ("signer",)),
        ],
        required_together=[("signing_cert", "signing_key")],
        supports_check_mode=True,
    )
    for missing, name, error in (
        (not HAS_NATS, "nats-py", NATS_IMPORT_ERROR),
        (not HAS_CRYPTOGRAPHY, "cryptography", CRYPTOGRAPHY_IMPORT_ERROR),
    ):
        if missing:
            module.fail_json(msg=missing_required_lib(name), exception=error)
    try:
        result = run_certificate_task(module.params, module.check_mode)
    except CertificateTaskError as exc:
        module.fail_json(msg=str(exc))
    module.exit_json(**result)


if __name__ == "__main__":
    main()
