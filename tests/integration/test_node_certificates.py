"""zeroinit.bootstrap.node_certificates through ansible-playbook against a real fleet of configured nodes on a TLS
broker: trust check/real/check/real signed by a provisioner of the nodes' site (the token alone refused), serve until
the nodes renewed on their own schedule, renew now, secrets never in the output, and a node that is not there reported
by name."""

from __future__ import annotations

import json

import pytest

from tests.support.ansible_run import run_module, run_playbook
from tests.support.fleet import TestCA
from tests.support.members import COLLECTIVE, MemberFleet, MemberSite, certificate_of, fleet_identities, node_files

MODULE = "zeroinit.bootstrap.node_certificates"
TOKEN = "s3cret"


@pytest.fixture(scope="module")
def members(tmp_path_factory):
    """Five configured nodes with 30-second certificates, renewed at about 30 % of their life."""
    tmp = tmp_path_factory.mktemp("members")
    site = MemberSite(tmp / "site", valid_seconds=30)
    identities = fleet_identities(5)
    config = {
        "plugin.zeroinit.renewal.fraction": "0.3",
        "plugin.zeroinit.renewal.jitter": "0.05",
        "plugin.zeroinit.renewal.retry_min": "1",
        "plugin.zeroinit.renewal.retry_max": "2",
    }
    with site.broker() as broker:
        site.seed(tmp / "fleet", identities, broker.url, config)
        with MemberFleet(broker.url, identities, tmp / "fleet", site) as fleet:
            controller = site.issue("controller")
            provisioner = site.provisioner()  # the nodes are locked to the site: trust is signed by its provisioner
            yield {
                "site": site,
                "identities": identities,
                "fleet": fleet,
                "state": tmp / "fleet",
                "base": dict(
                    brokers=[broker.url],
                    collective=COLLECTIVE,
                    token=TOKEN,
                    tls_ca=str(site.trust_path),
                    tls_cert=controller["cert"],
                    tls_key=controller["key"],
                    signing_cert=provisioner["cert"],
                    signing_key=provisioner["key"],
                    timeout=3,
                    retries=0,
                ),
            }


def test_trust_check_real_check_real(members):
    site, identities = members["site"], members["identities"]
    bundle = site.trust_pem + TestCA("permanent CA").pem
    params = dict(members["base"], action="trust", ca_bundle=bundle)
    results = [run_module(MODULE, params, check=check) for check in (True, False, True, False)]
    assert [r["changed"] for r in results] == [True, True, False, False], results[0].get("msg")
    assert results[0]["nodes"] == identities and results[2]["nodes"] == []
    assert results[1]["trusted"] == identities and results[3]["unchanged"] == identities
    for identity in identities:
        assert node_files(members["state"], identity)["ca"].read_text() == bundle
    assert all(r["failed_nodes"] == {} for r in results)


def test_the_token_alone_is_refused_by_the_locked_nodes_and_changes_nothing(members):
    site, identities, state = members["site"], members["identities"], members["state"]
    before = {identity: node_files(state, identity)["ca"].read_text() for identity in identities}
    unsigned = {name: value for name, value in members["base"].items() if not name.startswith("signing_")}
    result = run_module(MODULE, dict(unsigned, action="trust", ca_bundle=site.trust_pem))
    assert not result["changed"] and sorted(result["failed_nodes"]) == identities
    assert all("the token alone is refused" in reason for reason in result["failed_nodes"].values())
    assert {identity: node_files(state, identity)["ca"].read_text() for identity in identities} == before


def test_serve_answers_the_nodes_own_renewals_and_renew_asks_for_more(members):
    site, identities = members["site"], members["identities"]
    signer = {"ca_cert": str(site.ca_cert_path), "ca_key": str(site.ca_key_path), "valid_seconds": 30}
    served = run_module(MODULE, dict(members["base"], action="serve", signer=signer, wait=40, expect=5))
    assert not served.get("failed"), served.get("msg")
    assert sorted(served["renewed"]) == identities and served["counts"]["renewed"] >= 5
    renewed = run_module(MODULE, dict(members["base"], action="renew", signer=signer, identities=identities, wait=20))
    assert not renewed.get("failed"), renewed.get("msg")
    assert sorted(renewed["renewed"]) == identities and renewed["changed"]
    for identity in identities:
        assert f"{certificate_of(members['state'], identity).serial_number:x}" == renewed["renewed"][identity]


def test_a_missing_node_is_reported_by_name_and_secrets_never_show(members):
    site = members["site"]
    absent = "node99.fleet.example.net"
    params = dict(members["base"], action="trust", ca_bundle=site.trust_pem, identities=[absent])
    result = run_module(MODULE, params)
    assert not result.get("failed") and not result["changed"]
    assert f"no reply from {absent} within 3.0s" in result["failed_nodes"][absent]
    play = run_playbook(
        "- hosts: localhost\n  gather_facts: false\n  tasks:\n    - name: trust\n"
        f"      {MODULE}: {json.dumps(dict(params, token='tok-SECRET'))}\n",
        args=["-vvv"],
    )
    assert play.rc == 0 and "tok-SECRET" not in play.stdout + play.stderr
    refused = run_module(MODULE, dict(members["base"], action="serve"))
    assert refused["failed"] and "signer" in refused["msg"]
