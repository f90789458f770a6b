"""The broker and TLS options are documented once (modules and inventory plugin) and specified once (modules)."""

from ansible_collections.zeroinit.bootstrap.plugins.module_utils.provisioning.settings import broker_argument_spec
from tests.support.doc_spec import differences, documented, load_plugin

ModuleDocFragment = load_plugin("doc_fragments/brokers.py").ModuleDocFragment


def test_options_match_the_argument_spec():
    assert differences(documented(ModuleDocFragment.DOCUMENTATION), broker_argument_spec()) == []


def test_the_module_uses_the_spec():
    choria_provision = load_plugin("modules/choria_provision.py")
    for name, option in broker_argument_spec().items():
        assert choria_provision.ARGUMENT_SPEC[name] == option
