"""What a test can read about another process from /proc."""

from __future__ import annotations


def rss_bytes(pid: int) -> int:
    """The resident set size of ``pid`` (VmRSS), in bytes."""
    with open(f"/proc/{pid}/status", encoding="ascii") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for process {pid}")
