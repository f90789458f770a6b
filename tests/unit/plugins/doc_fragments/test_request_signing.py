"""The signing and JWT options are documented once (module, inventory plugin) and specified once (settings)."""

from ansible_collections.zeroinit.bootstrap.plugins.module_utils.provisioning.settings import (
    jwt_verification_argument_spec,
    request_signing_argument_spec,
)
from tests.support.doc_spec import differences, documented, load_plugin

ModuleDocFragment = load_plugin("doc_fragments/request_signing.py").ModuleDocFragment


def test_options_match_the_argument_specs():
    assert differences(documented(ModuleDocFragment.DOCUMENTATION), request_signing_argument_spec()) == []
    assert differences(documented(ModuleDocFragment.JWT), jwt_verification_argument_spec()) == []


def test_the_passphrase_is_never_logged():
    assert request_signing_argument_spec()["signing_key_passphrase"]["no_log"] is True


def test_the_modules_use_the_specs():
    choria_provision = load_plugin("modules/choria_provision.py")
    for name, option in {**request_signing_argument_spec(), **jwt_verification_argument_spec()}.items():
        assert choria_provision.ARGUMENT_SPEC[name] == option
    node_certificates = load_plugin("modules/node_certificates.py")
    for name, option in request_signing_argument_spec().items():
        assert node_certificates.ARGUMENT_SPEC[name] == option
    assert "zeroinit.bootstrap.request_signing" in node_certificates.DOCUMENTATION
