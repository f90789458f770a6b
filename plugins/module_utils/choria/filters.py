# Copyright: zeroinit.bootstrap contributors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)
"""Request filters: which nodes act on a broadcast request (identities OR-ed; agents, facts, classes AND-ed).

Every node of a fleet process evaluates the filter of every broadcast it receives, and the filter is the sender's,
so its cost is bounded three ways:

* **Compiled once per request**, not per node: :func:`compile_filter` checks the filter's shape (go-choria's
  request schema: lists of strings, facts as ``{fact, operator, value}``), its size (:data:`MAX_FILTER_ENTRIES`
  entries of each kind, :data:`MAX_FILTER_TEXT` characters each) and every regular expression, then
  :meth:`RequestFilter.matches` runs per node. A filter outside these bounds is a :class:`FilterError`: no node
  acts on a request it cannot judge.
* **A safe subset of regular expressions** (``/.../`` in identity filters and the ``=~`` fact operator). Python's
  ``re`` backtracks, and a pattern's cost on a name of n characters grows as n to the power of its repetitions
  (exponentially with nested ones), so a pattern is refused when it has a backreference, a lookaround or a
  conditional; a repeated group that itself repeats or alternates (``(a+)+``, ``(a|aa)*``); or more than
  :data:`MAX_REPETITIONS` variable repetitions (``*``, ``+``, ``?``, ``{m,n}``), of which at most one unbounded or
  ranged (``?`` is the other kind). One such repetition over a 253-character identity costs about a millisecond
  at worst; two unbounded ones cost hundreds. Regular expressions are matched against at most
  :data:`MAX_MATCHED_TEXT` characters (identities are at most 253); a longer fact value does not match.
* **A CPU-time budget per request** (:class:`FilterBudget`): once matching one request has taken longer than a base
  plus a small allowance per node, the remaining nodes do not act on it.

Compound filters (Choria's expression language) are not evaluated: a request carrying one matches nothing rather
than everything, so a node never acts on a request it cannot judge.
"""

from __future__ import annotations

import re
from typing import Any

from ..common.text import printable

MAX_FILTER_ENTRIES = 1024  # entries of each kind (identity, agent, cf_class, fact)
MAX_FILTER_PATTERNS = 16  # regular expressions in one filter
MAX_FILTER_TEXT = 256  # characters of one entry, pattern or fact value
MAX_MATCHED_TEXT = 256  # characters a regular expression is matched against
# How many ways a pattern may match per character of the text, as :func:`regex_problem` counts them: an unbounded
# or ranged repetition counts as a whole name's length, an optional part twice, a group as many as its branches.
RANGED_FACTOR = 256
BACKTRACKING_LIMIT = 4 * RANGED_FACTOR
FILTER_BUDGET_SECONDS = 0.05
FILTER_BUDGET_PER_NODE = 0.00002

FACT_OPERATORS = (">=", "<=", "<", ">", "!=", "==", "=~")
_FILTER_KEYS = ("fact", "cf_class", "agent", "identity", "compound")
_SCALAR = (str, int, float, bool)


class FilterError(ValueError):
    """A request filter this node will not evaluate; the text says which entry and why."""


def empty_filter() -> dict:
    return {"fact": [], "cf_class": [], "agent": [], "identity": [], "compound": []}


def identity_filter(identities) -> dict:
    flt = empty_filter()
    flt["identity"] = list(identities)
    return flt


# --------------------------------------------------------------------------------------------- regular expressions


def _slashed(text: str) -> str | None:
    """The pattern of a ``/regex/`` entry, None for a literal."""
    return text[1:-1] if len(text) > 1 and text.startswith("/") and text.endswith("/") else None


_BRACES = re.compile(r"\{(\d*)(,?)(\d*)\}")
# (?flags) for the whole pattern; (?:, (?P<name>, (?flags-flags: and (?> open a group. No "x" (verbose) flag: it
# changes what the characters mean, and the reading below would misjudge the pattern.
_GLOBAL_FLAGS = re.compile(r"\(\?([aiLmsu]+)\)")
_GROUP_HEADER = re.compile(r"\((?:\?(?::|>|P<[A-Za-z_][A-Za-z0-9_]*>|[aiLmsu]*(?:-[imsu]+)?:))?")
_ZERO_WIDTH = frozenset("^$") | frozenset(("\\A", "\\Z", "\\b", "\\B"))


class _RegexRefused(Exception):
    pass


class _Element:
    """One part of a pattern: an atom (its source text) or a group (its branches), and how it repeats."""

    __slots__ = ("branches", "count", "literal", "repeat", "source")

    def __init__(self, source: str = "", literal: str = "", branches=None):
        self.source = source  # an atom's text, e.g. "a", "\\d", "[a-z]", "."
        self.literal = literal  # the one character a literal atom matches
        self.branches = branches  # a group's branches, each a list of elements
        self.repeat = ""  # "", "exact", "optional" or "ranged"
        self.count = 1


class _PatternReader:
    """Reads a pattern into elements, refusing what the safe subset leaves out."""

    def __init__(self, pattern: str):
        self.pattern = pattern
        self.index = 0
        self.ignore_case = False

    def branches(self, depth: int = 0) -> list:
        branches, sequence = [], []
        pattern = self.pattern
        while self.index < len(pattern):
            char = pattern[self.index]
            if char == "|":
                branches.append(sequence)
                sequence = []
                self.index += 1
            elif char == ")":
                if depth == 0:
                    raise _RegexRefused("has an unbalanced parenthesis")
                self.index += 1
                branches.append(sequence)
                return branches
            elif char in "*+?" or (char == "{" and self._braces()):
                self._quantify(sequence)
            else:
                element = self._element(depth)
                if element is not None:
                    sequence.append(element)
        if depth:
            raise _RegexRefused("has an unbalanced parenthesis")
        branches.append(sequence)
        return branches

    def _braces(self):
        braces = _BRACES.match(self.pattern, self.index)
        return braces if braces is not None and (braces.group(1) or braces.group(3)) else None

    def _quantify(self, sequence: list) -> None:
        pattern, start = self.pattern, self.index
        if pattern[start] == "{":
            braces = self._braces()
            low, comma, high = braces.groups()
            self.index = braces.end()
            if not comma or high == low:
                kind, count = "exact", int(low)
            else:
                kind, count = ("optional" if (low or "0") == "0" and high == "1" else "ranged"), 1
        else:
            kind, count = ("optional" if pattern[start] == "?" else "ranged"), 1
            self.index += 1
        if self.index < len(pattern) and pattern[self.index] in "?+":
            self.index += 1  # the lazy or possessive form
        if not sequence or sequence[-1].repeat or sequence[-1].source in _ZERO_WIDTH:
            raise _RegexRefused("repeats nothing or repeats a repetition")
        sequence[-1].repeat, sequence[-1].count = kind, count

    def _element(self, depth: int):
        pattern, index = self.pattern, self.index
        char = pattern[index]
        if char == "\\":
            following = pattern[index + 1 : index + 2]
            if following.isdigit() and following != "0":
                raise _RegexRefused("uses a backreference")
            self.index = index + 2
            literal = following if following and not following.isalnum() else ""
            return _Element(pattern[index : index + 2], literal)
        if char == "[":
            end = _class_end(pattern, index)
            if end < 0:
                raise _RegexRefused("has an unterminated character class")
            self.index = end
            return _Element(pattern[index:end])
        if char == "(":
            if pattern.startswith("(?#", index):
                self.index = pattern.find(")", index) + 1 or len(pattern)
                return None
            flags = _GLOBAL_FLAGS.match(pattern, index)
            if flags:
                self.ignore_case = self.ignore_case or "i" in flags.group(1)
                self.index = flags.end()
                return None
            header = _GROUP_HEADER.match(pattern, index)
            if pattern.startswith("(?", index) and header.end() == index + 1:
                raise _RegexRefused(_group_extension(pattern, index))
            if "i" in header.group(0):
                self.ignore_case = True
            self.index = header.end()
            return _Element(branches=self.branches(depth + 1))
        self.index = index + 1
        return _Element(char, "" if char in "^$." else char)

    def cost(self, branches: list) -> int:
        """How many ways the branches may match per character of the text (see RANGED_FACTOR)."""
        firsts = [self._first_literal(sequence) for sequence in branches]
        costs = [self._sequence_cost(sequence) for sequence in branches]
        if len(branches) > 1 and all(firsts) and len(set(firsts)) == len(firsts):
            return max(costs)  # branches that differ in their first character: at most one goes on
        return sum(costs)

    def _first_literal(self, sequence: list) -> str:
        first = sequence[0] if sequence else None
        if first is None or not first.literal or first.repeat in ("optional", "ranged") or first.count < 1:
            return ""
        return first.literal.lower() if self.ignore_case else first.literal

    def _sequence_cost(self, sequence: list) -> int:
        total, open_ranged = 1, ""
        for element in sequence:
            inner = 1 if element.branches is None else self.cost(element.branches)
            if element.repeat == "ranged":
                if inner > 1:
                    raise _RegexRefused("repeats a group that itself repeats or alternates (catastrophic backtracking)")
                factor = RANGED_FACTOR
            elif element.repeat == "optional":
                factor = 2 * inner
            elif element.repeat == "exact":
                factor = inner ** min(element.count, 64)
            else:
                factor = inner
            if (
                open_ranged
                and element.literal
                and element.repeat in ("", "exact")
                and element.count >= 1
                and not self._matches(open_ranged, element.literal)
            ):
                # A character the open repetition cannot match ends it: it has only one way to stop.
                total //= RANGED_FACTOR
                open_ranged = ""
            if element.repeat == "ranged":
                open_ranged = element.source if element.branches is None else ""
            elif element.branches is not None or not element.literal:
                open_ranged = open_ranged if element.source in _ZERO_WIDTH else ""
            total *= factor
            if total > BACKTRACKING_LIMIT * RANGED_FACTOR:
                break
        return total

    def _matches(self, atom: str, char: str) -> bool:
        try:
            return re.fullmatch(atom, char, re.IGNORECASE if self.ignore_case else 0) is not None
        except re.error:
            return True


def regex_problem(pattern: str) -> str | None:
    """Why ``pattern`` is outside the safe subset (None when it is inside); see the module docstring."""
    if len(pattern) > MAX_FILTER_TEXT:
        return f"is longer than {MAX_FILTER_TEXT} characters"
    reader = _PatternReader(pattern)
    try:
        cost = reader.cost(reader.branches())
    except _RegexRefused as refused:
        return str(refused)
    if cost > BACKTRACKING_LIMIT:
        return (
            f"may backtrack {cost if cost < 10**6 else 'millions of'} ways per character (at most "
            f"{BACKTRACKING_LIMIT}: one unbounded repetition and a few alternatives or optional parts)"
        )
    return None


def _class_end(pattern: str, start: int) -> int:
    """The index just after the character class opening at ``start``; -1 when it never closes."""
    index = start + 1
    if pattern.startswith("^", index):
        index += 1
    if pattern.startswith("]", index):
        index += 1
    while index < len(pattern):
        if pattern[index] == "\\":
            index += 2
            continue
        if pattern[index] == "]":
            return index + 1
        index += 1
    return -1


def _group_extension(pattern: str, index: int) -> str:
    """Why a ``(?...)`` form is outside the subset."""
    rest = pattern[index + 2 : index + 4]
    if rest.startswith("P="):
        return "uses a backreference"
    if rest.startswith(("=", "!", "<=", "<!")):
        return "uses a lookaround"
    if rest.startswith("("):
        return "uses a conditional"
    return "uses a group form or flag outside the subset (verbose mode, for one)"


def _compile_pattern(pattern: str, where: str):
    problem = regex_problem(pattern)
    if problem:
        raise FilterError(f"{where}: regular expression {_shown(pattern)} {problem}")
    try:
        return re.compile(pattern)
    except (re.error, OverflowError, RecursionError) as exc:
        raise FilterError(f"{where}: regular expression {_shown(pattern)} does not compile ({exc})") from None


def _shown(pattern: str) -> str:
    return f"/{printable(pattern, 60)}/"


# --------------------------------------------------------------------------------------------- the filter


def _strings(flt: dict, key: str) -> list:
    values = flt.get(key)
    if values is None:
        return []
    if not isinstance(values, list):
        raise FilterError(f"filter {key!r} must be a list, got {type(values).__name__}")
    if len(values) > MAX_FILTER_ENTRIES:
        raise FilterError(f"filter {key!r} has {len(values)} entries, more than {MAX_FILTER_ENTRIES}")
    for value in values:
        if not isinstance(value, str):
            raise FilterError(f"filter {key!r} entries must be strings, got {type(value).__name__}")
        if len(value) > MAX_FILTER_TEXT:
            raise FilterError(f"filter {key!r} has an entry longer than {MAX_FILTER_TEXT} characters")
    return values


class _FactTest:
    __slots__ = ("fact", "number", "operator", "path", "regex", "value")

    def __init__(self, entry: Any, patterns: list):
        if not isinstance(entry, dict):
            raise FilterError(f"filter 'fact' entries must be objects, got {type(entry).__name__}")
        for name in ("fact", "operator", "value"):
            if not isinstance(entry.get(name), str):
                raise FilterError(f"filter 'fact' entry field {name!r} must be a string")
            if len(entry[name]) > MAX_FILTER_TEXT:
                raise FilterError(f"filter 'fact' entry field {name!r} is longer than {MAX_FILTER_TEXT} characters")
        self.fact, self.operator, self.value = entry["fact"], entry["operator"], entry["value"]
        if self.operator not in FACT_OPERATORS:
            raise FilterError(f"filter 'fact' operator {self.operator[:8]!r} is not one of {', '.join(FACT_OPERATORS)}")
        self.path = self.fact.split(".")
        self.regex = None
        if self.operator == "=~":
            patterns.append(self)
            self.regex = _compile_pattern(_slashed(self.value) or self.value, f"fact {self.fact[:60]!r}")
        try:
            self.number = float(self.value)
        except ValueError:
            self.number = None

    def matches(self, facts: dict) -> bool:
        value: Any = facts
        for part in self.path:
            if not isinstance(value, dict) or part not in value:
                return False
            value = value[part]
        if not isinstance(value, _SCALAR):
            return False  # objects and lists are compared by no operator
        if self.regex is not None:
            text = str(value)
            return len(text) <= MAX_MATCHED_TEXT and self.regex.search(text) is not None
        if self.operator in ("==", "!="):
            equal = str(value).lower() == self.value.lower() if isinstance(value, bool) else str(value) == self.value
            return equal if self.operator == "==" else not equal
        left: Any
        right: Any
        if self.number is not None and not isinstance(value, bool):
            try:
                left, right = float(value), self.number
            except (TypeError, ValueError):
                left, right = str(value), self.value
        else:
            left, right = str(value), self.value
        if self.operator == "<":
            return left < right
        if self.operator == ">":
            return left > right
        if self.operator == "<=":
            return left <= right
        return left >= right


class RequestFilter:
    """A request's filter, checked and compiled once; :meth:`matches` per node."""

    __slots__ = ("agents", "classes", "compound", "facts", "identities", "identity_patterns", "wants_facts")

    def __init__(self, flt: Any):
        if flt is None:
            flt = {}
        if not isinstance(flt, dict):
            raise FilterError(f"filter must be an object, got {type(flt).__name__}")
        identities = _strings(flt, "identity")
        self.agents = tuple(_strings(flt, "agent"))
        self.classes = tuple(_strings(flt, "cf_class"))
        compound = flt.get("compound")
        if compound is not None and not isinstance(compound, list):
            raise FilterError(f"filter 'compound' must be a list, got {type(compound).__name__}")
        self.compound = bool(compound)
        facts = flt.get("fact")
        if facts is not None and not isinstance(facts, list):
            raise FilterError(f"filter 'fact' must be a list, got {type(facts).__name__}")
        facts = facts or []
        if len(facts) > MAX_FILTER_ENTRIES:
            raise FilterError(f"filter 'fact' has {len(facts)} entries, more than {MAX_FILTER_ENTRIES}")
        regexes: list = []
        self.facts = tuple(_FactTest(entry, regexes) for entry in facts)
        self.wants_facts = bool(self.facts)
        literal = [i for i in identities if _slashed(i) is None]
        patterns = [_slashed(i) for i in identities if _slashed(i) is not None]
        if len(patterns) + len(regexes) > MAX_FILTER_PATTERNS:
            raise FilterError(
                f"filter has {len(patterns) + len(regexes)} regular expressions, more than {MAX_FILTER_PATTERNS}"
            )
        self.identities = frozenset(literal) if identities else None
        self.identity_patterns = tuple(_compile_pattern(p, "identity") for p in patterns)

    def matches(self, identity: str, agents, facts: dict, classes=()) -> bool:
        if self.compound:
            return False
        if self.identities is not None and identity not in self.identities and not self._identity_pattern(identity):
            return False
        if any(agent not in agents for agent in self.agents):
            return False
        if any(klass not in classes for klass in self.classes):
            return False
        return all(fact.matches(facts) for fact in self.facts)

    def _identity_pattern(self, identity: str) -> bool:
        return len(identity) <= MAX_MATCHED_TEXT and any(p.search(identity) for p in self.identity_patterns)


def compile_filter(flt: Any) -> RequestFilter:
    """The request's filter checked and compiled; FilterError naming the entry when this node will not judge it."""
    return RequestFilter(flt)


def filter_matches(flt: Any, identity: str, agents, facts: dict, classes=()) -> bool:
    """Whether one node matches a request filter (compiles it: for many nodes, compile once and call ``matches``)."""
    try:
        return RequestFilter(flt).matches(identity, agents, facts, classes)
    except FilterError:
        return False


class FilterBudget:
    """The CPU time one request's filter may take across the nodes of a process: a base plus a little per node."""

    __slots__ = ("limit", "used")

    def __init__(self, nodes: int, base: float = FILTER_BUDGET_SECONDS, per_node: float = FILTER_BUDGET_PER_NODE):
        self.limit = base + per_node * nodes
        self.used = 0.0

    def charge(self, seconds: float) -> None:
        self.used += seconds

    def spent(self) -> bool:
        return self.used > self.limit
