"""The signer's options are documented once and specified once: both name the same options, types and defaults."""

from ansible_collections.zeroinit.bootstrap.plugins.module_utils.pki.issuance import signer_argument_spec
from tests.support.doc_spec import differences, documented, load_plugin

ModuleDocFragment = load_plugin("doc_fragments/signer.py").ModuleDocFragment


def test_pki_sign_options_match_the_argument_spec():
    assert differences(documented(ModuleDocFragment.DOCUMENTATION), signer_argument_spec()) == []
    assert len(signer_argument_spec()) == 26


def test_choria_provision_signer_suboptions_are_the_same_text():
    options = documented(ModuleDocFragment.DOCUMENTATION)
    signer = documented(ModuleDocFragment.AS_SUBOPTIONS)["signer"]
    assert signer["type"] == "dict"
    assert differences(signer["suboptions"], signer_argument_spec()) == []
    for name, option in options.items():
        described = " ".join(
            option["description"] if isinstance(option["description"], list) else [option["description"]]
        )
        inside = " ".join(
            signer["suboptions"][name]["description"]
            if isinstance(signer["suboptions"][name]["description"], list)
            else [signer["suboptions"][name]["description"]]
        )
        assert inside == described.replace("O(", "O(signer."), name


def test_the_module_composes_the_same_spec():
    choria_provision, pki_sign = load_plugin("modules/choria_provision.py"), load_plugin("modules/pki_sign.py")
    assert choria_provision.ARGUMENT_SPEC["signer"]["options"] == signer_argument_spec()
    spec = pki_sign.argument_spec()
    assert {name: spec[name] for name in signer_argument_spec()} == signer_argument_spec()
