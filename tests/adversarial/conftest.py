"""The adversarial suite's figures: each test records what it sent, what was refused and why, the crashes it saw
(tracebacks, unexpected errors, an agent's non-zero exit) and free-form lines; pytest's summary prints them with
each test's time, so ``make test`` shows them without ``-s``."""

from __future__ import annotations

import collections
import time

import pytest

FIGURES = pytest.StashKey["SuiteFigures"]()


class SuiteFigures:
    def __init__(self):
        self.sent: collections.Counter = collections.Counter()  # what was sent, by kind
        self.refusals: collections.Counter = collections.Counter()  # "<who>: <reason>"
        self.crashes: collections.Counter = collections.Counter()  # by test
        self.lines: list[str] = []
        self.times: dict[str, float] = {}

    def send(self, kind: str, count: int) -> None:
        self.sent[kind] += count

    def refuse(self, who: str, reasons: collections.Counter) -> None:
        for reason, count in reasons.items():
            self.refusals[f"{who}: {reason}"] += count

    def crash(self, test: str, count: int) -> None:
        self.crashes[test] += count

    def line(self, text: str) -> None:
        self.lines.append(text.strip("\n"))


def suite_figures(config) -> SuiteFigures:
    if FIGURES not in config.stash:
        config.stash[FIGURES] = SuiteFigures()
    return config.stash[FIGURES]


@pytest.fixture
def figures(request) -> SuiteFigures:
    return suite_figures(request.config)


@pytest.fixture(autouse=True)
def _timed(request):
    started = time.monotonic()
    yield
    suite_figures(request.config).times[request.node.name] = time.monotonic() - started


def pytest_terminal_summary(terminalreporter, config) -> None:
    figures = config.stash.get(FIGURES, None)
    if figures is None:
        return
    write = terminalreporter.write_line
    terminalreporter.section("adversarial suite figures")
    write("sent: " + "; ".join(f"{count:,} {kind}" for kind, count in figures.sent.items()))
    write(f"crashes: {sum(figures.crashes.values())} (tracebacks, unexpected errors, non-zero agent exits)")
    write(f"time: {sum(figures.times.values()):.0f} s in all")
    for name, seconds in figures.times.items():
        write(f"  {seconds:6.1f} s  {name}")
    write(f"refusals by reason ({sum(figures.refusals.values()):,}):")
    for reason, count in figures.refusals.most_common():
        write(f"  {count:7,}  {reason}")
    for text in figures.lines:
        write(text)
