"""The broker role over SSH on a namespace host: a provisioning broker, a members' broker that takes only site
certificates and asks the OCSP responder beside it about each one, and a revocation that shuts a member out."""

from __future__ import annotations

import asyncio

import pytest

from ansible_collections.zeroinit.bootstrap.plugins.module_utils.pki.ca import CertificateAuthority
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.provisioning.rpc import RpcClient
from tests.support.site import BROKER_PLAY, member_certificate, members_connect, site_ca

pytestmark = pytest.mark.netns

REVOKE = """
- name: Revoke a member and publish the CRL
  hosts: brokers
  gather_facts: false
  vars:
    site_secrets_dir: "{{ site_dir }}"
  tasks:
    - name: Unlock the site CA
      ansible.builtin.include_role:
        name: zeroinit.bootstrap.site_secrets
        tasks_from: unlock
        apply: {delegate_to: localhost, run_once: true}
    - name: Revoke
      zeroinit.bootstrap.pki_revoke:
        ca_cert: "{{ site_dir }}/ca.pem"
        ca_key: "{{ site_secrets_unlocked.ca }}"
        records: "{{ site_dir }}/revocations.json"
        crl: "{{ site_dir }}/crl.pem"
        certificates: ["{{ revoked }}"]
      delegate_to: localhost
      run_once: true
    - name: Publish
      ansible.builtin.include_role:
        name: zeroinit.bootstrap.broker
        tasks_from: crl
      vars:
        broker_site_dir: "{{ site_dir }}"
    - name: Lock
      ansible.builtin.include_role:
        name: zeroinit.bootstrap.site_secrets
        tasks_from: lock
        apply: {delegate_to: localhost, run_once: true}
"""


def test_the_broker_role_runs_both_brokers_and_a_revoked_member_is_refused(site_broker, tmp_path):
    host, first = site_broker.host, site_broker.first
    assert first.rc == 0, site_broker.explain(first)
    assert first.changed(host.name) > 0

    async def provisioning_answers() -> list:
        async with RpcClient([site_broker.provisioning_url]) as client:
            return await client.discover(timeout=0.5)

    assert asyncio.run(provisioning_answers()) == []  # reachable, and nobody waits on it yet

    ca = site_ca(site_broker.site)
    member = member_certificate(ca, "member1.example.net", tmp_path / "member1")
    other = member_certificate(ca, "member2.example.net", tmp_path / "member2")
    url = site_broker.members_url
    assert members_connect(url, member["ca"], member["cert"], member["key"]) == "connected", site_broker.explain(first)
    stranger = member_certificate(CertificateAuthority.create("stranger CA"), "member9.example.net", tmp_path / "s")
    assert members_connect(url, member["ca"], stranger["cert"], stranger["key"]).startswith("refused")

    second = site_broker.play(BROKER_PLAY)
    assert second.rc == 0 and second.changed(host.name) == 0, site_broker.explain(second)

    revoked = site_broker.play(REVOKE, revoked=member["pem"])
    assert revoked.rc == 0, site_broker.explain(revoked)
    assert members_connect(url, member["ca"], member["cert"], member["key"]).startswith("refused")
    assert members_connect(url, other["ca"], other["cert"], other["key"]) == "connected"
    assert "not OCSP valid" in site_broker.logs()
