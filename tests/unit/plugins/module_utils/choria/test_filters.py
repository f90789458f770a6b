"""Request filters: identities OR-ed; agents, facts and classes AND-ed."""

import pytest

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


@pytest.mark.parametrize(
    "pattern",
    [
        r"^web\d+\.example\.net$",
        r"^(web|db|mq|lb)-\d+-\d+\.example\.net$",  # distinct first letters; '-' ends each \d+
        r"web.*prod",
        r"(?i)^WEB",
        r"(?P<role>web)?\d*",
        r"(a|b){20}",
        r"[a-z]*?x",
        r"(?:ab){5}c*",
        "literal-name",
    ],
)
def test_the_safe_subset_takes_the_patterns_people_write(pattern):
    assert p.regex_problem(pattern) is None


@pytest.mark.parametrize(
    "pattern, reason",
    [
        (r"(a|a|aa)+$", "repeats a group that itself repeats or alternates"),
        (r"(x+x+)+y", "repeats a group that itself repeats or alternates"),
        (r"^(([a-z])+.)+[A-Z]([a-z])+$", "repeats a group that itself repeats or alternates"),
        (r".*.*x", "may backtrack 65536 ways per character"),
        (r"\w+\S+$", "may backtrack 65536 ways per character"),
        ("(a|a)" * 12 + "b", "may backtrack 4096 ways per character"),
        ("a?" * 12 + "b", "may backtrack 4096 ways per character"),
        (r"(a)\1", "backreference"),
        (r"(?P<x>a)(?P=x)", "backreference"),
        (r"a(?=b)", "lookaround"),
        (r"(?<!a)b", "lookaround"),
        (r"(a)?(?(1)b|c)", "conditional"),
        (r"(?x)(a +) +", "verbose mode"),
        (r"a**", "repeats nothing or repeats a repetition"),
        (r"(ab", "unbalanced parenthesis"),
        (r"[ab", "unterminated character class"),
        ("a" * 250 + "(b", "unbalanced parenthesis"),
    ],
)
def test_patterns_outside_the_safe_subset_are_refused_with_the_reason(pattern, reason):
    assert reason in p.regex_problem(pattern)
    flt = p.identity_filter([f"/{pattern}/"])
    with pytest.raises(p.FilterError, match="identity: regular expression"):
        p.compile_filter(flt)
    assert not p.filter_matches(flt, "aaaa", [], {})


def test_patterns_are_at_most_256_characters():
    assert "longer than 256 characters" in p.regex_problem("a" * 257)


@pytest.mark.parametrize(
    "flt, words",
    [
        ([], "filter must be an object"),
        ({"identity": "n1"}, "filter 'identity' must be a list, got str"),
        ({"agent": [["rpcutil"]]}, "filter 'agent' entries must be strings, got list"),
        ({"cf_class": [None]}, "entries must be strings, got NoneType"),
        ({"fact": {"fact": "a"}}, "filter 'fact' must be a list, got dict"),
        ({"fact": ["os=linux"]}, "filter 'fact' entries must be objects"),
        ({"fact": [{"fact": "a", "operator": "==", "value": 1}]}, "field 'value' must be a string"),
        ({"fact": [{"fact": "a", "operator": "~~", "value": "1"}]}, "operator '~~' is not one of"),
        ({"fact": [{"fact": "a", "operator": "=~", "value": "/(a+)+/"}]}, "fact 'a': regular expression"),
        ({"compound": {"expr": "1"}}, "filter 'compound' must be a list, got dict"),
        ({"identity": [f"n{i}" for i in range(p.MAX_FILTER_ENTRIES + 1)]}, "1025 entries, more than 1024"),
        ({"identity": ["x" * 257]}, "longer than 256 characters"),
        ({"identity": [f"/n{i}/" for i in range(p.MAX_FILTER_PATTERNS + 1)]}, "17 regular expressions"),
    ],
)
def test_a_filter_outside_the_schema_or_the_bounds_is_not_evaluated(flt, words):
    with pytest.raises(p.FilterError, match=words):
        p.compile_filter(flt)
    assert not p.filter_matches(flt, "n1", ["rpcutil"], {"a": "1"})


def test_a_compiled_filter_matches_like_the_schema_says():
    flt = p.compile_filter(
        {
            "identity": ["n9", "/^n[12]$/"],
            "agent": ["rpcutil"],
            "fact": [
                {"fact": "os.family", "operator": "=~", "value": "/^deb/"},
                {"fact": "cores", "operator": ">", "value": "2"},
                {"fact": "virtual", "operator": "==", "value": "TRUE"},
            ],
            "cf_class": [],
            "compound": [],
        }
    )
    facts = {"os": {"family": "debian"}, "cores": 4, "virtual": True}
    assert flt.wants_facts
    assert flt.matches("n1", ["rpcutil"], facts) and flt.matches("n9", ["rpcutil"], facts)
    assert not flt.matches("n3", ["rpcutil"], facts)
    assert not flt.matches("n1", ["rpcutil"], dict(facts, cores=2))
    assert not flt.matches("n1", ["rpcutil"], dict(facts, os={"family": "x" * 300}))  # longer than matched text
    assert not flt.matches("n1", ["rpcutil"], dict(facts, os={"family": ["debian"]}))  # lists compare to nothing
    assert not p.compile_filter({"compound": [[{"expr": "true"}]]}).matches("n1", [], {})
    assert p.compile_filter(None).matches("n1", [], {})


def test_the_budget_is_a_base_and_a_little_per_node():
    budget = p.FilterBudget(1000)
    assert budget.limit == pytest.approx(p.FILTER_BUDGET_SECONDS + 1000 * p.FILTER_BUDGET_PER_NODE)
    budget.charge(budget.limit)
    assert not budget.spent()
    budget.charge(0.001)
    assert budget.spent()
