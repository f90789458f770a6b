"""The pure parts of the claims: when to look again at a claim held elsewhere, keys, values, bucket names."""

import pytest

from ansible_collections.zeroinit.bootstrap.plugins.module_utils.provisioning.service import claims as cl


@pytest.mark.parametrize(
    ("age", "ttl", "expected"),
    [
        (0.0, 30.0, 20.0),  # just renewed: look when the next renewal is due (2/3 ttl)
        (5.0, 30.0, 15.0),
        (19.9, 30.0, 0.2),  # never sooner than MIN_RECHECK
        (20.0, 30.0, 10.3),  # the renewal is overdue: look when the value expires, plus the margin
        (29.0, 30.0, 1.3),
        (30.5, 30.0, 0.2),  # not yet expired on the server: poll briefly
        (0.0, 3.0, 2.0),
        (2.5, 3.0, 0.8),
    ],
)
def test_recheck_delay(age, ttl, expected):
    assert cl.recheck_delay(age, ttl) == pytest.approx(expected)


def test_a_claim_seen_at_any_age_is_looked_at_again_no_later_than_it_expires():
    ttl = 30.0
    for tenth in range(0, 400):
        age = tenth / 10.0
        delay = cl.recheck_delay(age, ttl)
        assert delay >= cl.MIN_RECHECK
        assert age + delay <= max(ttl + cl.EXPIRY_MARGIN, age + cl.MIN_RECHECK) + 1e-9


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b'{"instance": "prov-a", "state": "working", "time": 1}', ("prov-a", "working")),
        (b'{"instance": "prov-a", "state": "done"}', ("prov-a", "done")),
        (b'{"instance": "prov-a", "state": "weird"}', ("prov-a", "working")),
        (b'{"instance": 5}', ("?", "working")),
        (b"[1, 2]", ("?", "working")),
        (b"\xff\xfe", ("?", "working")),
        (b"", ("?", "working")),
        (None, ("?", "working")),
        (b'{"instance": "' + b"a" * 5000 + b'"}', ("?", "working")),
    ],
)
def test_claim_values_from_anyone_never_raise(data, expected):
    assert cl.parse_claim_value(data) == expected


def test_claim_keys_follow_jetstream_key_rules():
    assert cl.claim_key("web-01.example.net") == "node.web-01.example.net"
    for bad in ("a b", "a*", "a>", "trailing.", "", "ü"):
        with pytest.raises(ValueError, match="cannot be a claim key"):
            cl.claim_key(bad)


def test_each_site_has_its_own_bucket():
    assert cl.claims_bucket_name("dc1") != cl.claims_bucket_name("dc2")
    assert cl.claims_bucket_name("dc1") == "zeroinit_claims_dc1"
