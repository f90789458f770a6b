"""The CA and signer the pki tests share (one CA per test module: making keys is the slow part)."""

import pytest

from ansible_collections.zeroinit.bootstrap.plugins.module_utils.pki.ca import CertificateAuthority
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.pki.policy import CsrPolicy
from ansible_collections.zeroinit.bootstrap.plugins.module_utils.pki.signer import Signer


@pytest.fixture(scope="module")
def ca():
    return CertificateAuthority.create("test CA")


@pytest.fixture(scope="module")
def signer(ca):
    return Signer(ca, CsrPolicy())
