# Copyright: zeroinit.bootstrap contributors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)
"""The provisioning broker and its TLS client options, written once for zeroinit.bootstrap.choria_provision and the
zeroinit.bootstrap.provisioning inventory plugin.

The modules' argument spec is ``broker_argument_spec()`` in ``plugins/module_utils/provisioning/settings.py``; a
unit test checks that both name the same options with the same types and defaults.
"""

from __future__ import annotations


class ModuleDocFragment:
    DOCUMENTATION = r"""
options:
  brokers:
    description:
      - Broker URLs of the provisioning network, for example C(nats://10.0.0.1:4222); the first one that accepts
        the connection is used.
      - Each is C(host), C(host:port) or C(scheme://host[:port]) with the scheme C(nats) (the default), C(tls),
        C(ws) or C(wss), an IPv6 address in brackets; the port defaults to 4222 (80 for C(ws), 443 for C(wss)).
        A URL that does not fit is an error naming it.
    type: list
    elements: str
    required: true
  collective:
    description: The collective the nodes wait in and requests are sent in; Choria's provisioning mode uses C(provisioning).
    type: str
    default: provisioning
  tls_ca:
    description: CA certificate (PEM) to verify the broker's TLS certificate against.
    type: path
  tls_cert:
    description: Client certificate (PEM) to present when the broker requires one.
    type: path
  tls_key:
    description: Private key of O(tls_cert). Read on the controller only.
    type: path
"""
