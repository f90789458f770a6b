"""1,200 mutated CSRs (tests/support/hostile.py) into the collection's signer under the reference policy: each one
is refused with the project's own error naming the rule its case is labelled with, or signed when the policy
allows it; and no certificate ever says CA:TRUE, names more than the allow-list permits, or carries anything the
policy did not put there (the provisioner usage, a requested extension, another subject attribute)."""

from __future__ import annotations

import collections
import ipaddress
import re
import time

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, ExtensionOID, NameOID

from ansible_collections.zeroinit.bootstrap.plugins.module_utils.pki.issuance import signer_from_params
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.pki.x509 import PkiError
from tests.support.certificates import PROVISIONER_USAGE
from tests.support.hostile import CSR_CLASS_NAMES, CSR_POLICY, hostile_csrs

CASES = 1_200
ISSUED_EXTENSIONS = {
    ExtensionOID.BASIC_CONSTRAINTS,
    ExtensionOID.KEY_USAGE,
    ExtensionOID.EXTENDED_KEY_USAGE,
    ExtensionOID.SUBJECT_ALTERNATIVE_NAME,
    ExtensionOID.SUBJECT_KEY_IDENTIFIER,
    ExtensionOID.AUTHORITY_KEY_IDENTIFIER,
}


def allowed(name: str, identity: str) -> bool:
    patterns = [p.replace("{identity}", re.escape(identity)) for p in CSR_POLICY["allowed_sans"]]
    return any(re.fullmatch(p, name.lower()) for p in patterns)


def check_issued(pem: str, identity: str, ca_cert: x509.Certificate) -> None:
    cert = x509.load_pem_x509_certificate(pem.encode("ascii"))
    cert.verify_directly_issued_by(ca_cert)
    constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical and constraints.value.ca is False
    assert {e.oid for e in cert.extensions} <= ISSUED_EXTENSIONS
    assert [(a.oid, a.value) for a in cert.subject] == [(NameOID.COMMON_NAME, identity)]
    usages = list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
    assert PROVISIONER_USAGE not in usages
    assert set(usages) <= {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    dns = sans.get_values_for_type(x509.DNSName)
    assert dns[0] == identity and all(allowed(name, identity) for name in dns)
    assert all(allowed(str(address), identity) for address in sans.get_values_for_type(x509.IPAddress))
    assert all(not ipaddress.ip_address(a).is_loopback for a in sans.get_values_for_type(x509.IPAddress))


@pytest.mark.timeout(180)
@pytest.mark.filterwarnings("ignore:Attribute's length must be:UserWarning")  # the 10 kB names are the point
def test_mutated_csrs_are_refused_by_their_rule_or_signed_within_the_policy(tmp_path, figures):
    params = dict(CSR_POLICY, ca_cert=str(tmp_path / "ca.pem"), ca_key=str(tmp_path / "ca.key"), create_ca=True)
    signer, created = signer_from_params(params)
    assert created
    ca_cert = x509.load_pem_x509_certificate((tmp_path / "ca.pem").read_bytes())
    refused: collections.Counter = collections.Counter()
    signed: collections.Counter = collections.Counter()
    classes: collections.Counter = collections.Counter()
    started = time.monotonic()
    for case in hostile_csrs(CASES, seed=21):
        classes[case.class_name] += 1
        try:
            issued = signer.sign(case.csr, case.identity, CSR_POLICY["valid_days"])
        except PkiError as error:
            assert not case.may_sign, f"{case.class_name}: refused but the policy allows it: {error}"
            assert error.field == case.rule, (
                f"{case.class_name}: refused by {error.field!r}, not {case.rule!r}: {error}"
            )
            assert str(error) and "\n" not in str(error)
            refused[error.field] += 1
            continue
        assert case.may_sign, f"{case.class_name}: signed although rule {case.rule!r} should refuse it"
        check_issued(issued.certificate, case.identity, ca_cert)
        signed[case.class_name] += 1
    elapsed = time.monotonic() - started
    assert sum(classes.values()) == CASES and set(classes) == set(CSR_CLASS_NAMES)
    assert sum(refused.values()) >= 700 and sum(signed.values()) >= 200
    figures.send("mutated CSRs", CASES)
    figures.refuse("signer, rule", refused)
    figures.line(
        f"CSRs: {CASES} in {len(classes)} classes in {elapsed:.1f}s; signed {sum(signed.values())} "
        f"({', '.join(f'{k} {v}' for k, v in sorted(signed.items()))}); refused {sum(refused.values())} by rule: "
        + ", ".join(f"{rule} {count}" for rule, count in refused.most_common())
    )
