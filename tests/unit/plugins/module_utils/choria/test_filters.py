"""Request filters: identities OR-ed; agents, facts and classes AND-ed."""

from ansible_collections.zeroinit.bootstrap.plugins.module_utils.choria import filters as p


def test_filters():
    facts = {"os": {"family": "Debian"}, "cores": 4}
    assert p.filter_matches(p.empty_filter(), "n1", ["rpcutil"], facts)
    assert p.filter_matches(p.identity_filter(["n2", "/^n1$/"]), "n1", [], facts)
    assert not p.filter_matches(p.identity_filter(["n2"]), "n1", [], facts)
    flt = p.empty_filter()
    flt["fact"] = [
        {"fact": "os.family", "operator": "==", "value": "Debian"},
        {"fact": "cores", "operator": ">=", "value": "2"},
    ]
    flt["agent"] = ["rpcutil"]
    assert p.filter_matches(flt, "n1", ["rpcutil"], facts)
    assert not p.filter_matches(flt, "n1", ["discovery"], facts)
    flt["fact"][1]["value"] = "8"
    assert not p.filter_matches(flt, "n1", ["rpcutil"], facts)
