# Copyright: zeroinit.bootstrap contributors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)
"""How a module run ends from an outcome dict built by plain Python (``warnings``, optional ``failed``)."""

from __future__ import annotations

from typing import Any


def exit_with_outcome(module: Any, outcome: dict) -> None:
    """Show the outcome's warnings, then ``fail_json`` when it failed and ``exit_json`` otherwise."""
    for warning in outcome.pop("warnings", ()):
        module.warn(warning)
    if outcome.pop("failed", False):
        module.fail_json(**outcome)
    module.exit_json(**outcome)
