# Copyright: zeroinit.bootstrap contributors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)
"""Request filters: which nodes act on a broadcast request (identities OR-ed; agents, facts, classes AND-ed).

Every node evaluates the filter of every broadcast it receives, so matching is linear in the filter's size and
a regular expression that does not compile simply does not match.
"""

from __future__ import annotations

import re
from typing import Any


def empty_filter() -> dict:
    return {"fact": [], "cf_class": [], "agent": [], "identity": [], "compound": []}


def identity_filter(identities) -> dict:
    flt = empty_filter()
    flt["identity"] = list(identities)
    return flt


def _fact_lookup(facts: dict, dotted: str):
    value: Any = facts
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def _compare(left: Any, operator: str, right: str) -> bool:
    if left is None:
        return False
    if operator == "=~":
        pattern = right[1:-1] if len(right) > 1 and right.startswith("/") and right.endswith("/") else right
        try:
            return re.search(pattern, str(left)) is not None
        except re.error:
            return False
    if operator in ("==", "!="):
        equal = str(left).lower() == right.lower() if isinstance(left, bool) else str(left) == right
        return equal if operator == "==" else not equal
    try:
        lnum, rnum = float(left), float(right)
    except (TypeError, ValueError):
        lnum, rnum = str(left), right  # type: ignore[assignment]
    return {"<": lnum < rnum, ">": lnum > rnum, "<=": lnum <= rnum, ">=": lnum >= rnum}.get(operator, False)


def _identity_matches(pattern: str, identity: str) -> bool:
    if len(pattern) > 1 and pattern.startswith("/") and pattern.endswith("/"):
        try:
            return re.search(pattern[1:-1], identity) is not None
        except re.error:
            return False
    return pattern == identity


def filter_matches(flt: Any, identity: str, agents, facts: dict, classes=()) -> bool:
    """Whether a node matches a request filter: identities OR-ed; agents, facts and classes AND-ed.

    Compound filters (Choria's expression language) are not evaluated; a request carrying one matches
    nothing rather than everything, so a node never acts on a request it cannot judge.
    """
    if not flt:
        return True
    if not isinstance(flt, dict):
        return False
    identities = flt.get("identity") or []
    if identities and not any(_identity_matches(p, identity) for p in identities):
        return False
    if any(a not in agents for a in flt.get("agent") or []):
        return False
    if any(c not in classes for c in flt.get("cf_class") or []):
        return False
    for fact in flt.get("fact") or []:
        if not isinstance(fact, dict):
            return False
        if not _compare(
            _fact_lookup(facts, str(fact.get("fact", ""))), str(fact.get("operator", "")), str(fact.get("value", ""))
        ):
            return False
    return not flt.get("compound")
