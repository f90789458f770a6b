# Copyright: zeroinit.bootstrap contributors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)
"""Text from the network or from a certificate, made safe to show in one line of a log or a reply."""

from __future__ import annotations

import time
from typing import Any


def printable(text: Any, limit: int = 200) -> str:
    """``text`` with control characters and lone surrogates escaped, capped at ``limit`` characters (``...`` marks
    the cut). Anything not a string is shown as its ``repr``."""
    value = text if isinstance(text, str) else repr(text)
    shown = "".join(c if c.isprintable() else repr(c)[1:-1] for c in value[:limit])
    return shown + ("..." if len(value) > limit else "")


def iso_utc(stamp: float) -> str:
    """A POSIX time as UTC ISO 8601 (``2026-11-28T05:40:00Z``); one no calendar can show (a hostile or corrupt
    ``exp`` far in the future) as its number."""
    try:
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(stamp))
    except (OverflowError, ValueError, OSError):
        return str(stamp)
