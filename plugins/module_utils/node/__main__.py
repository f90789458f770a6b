# Copyright: zeroinit.bootstrap contributors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)
"""``python3 -m <package>.node``: the node agent (see ``agent.py``)."""

from __future__ import annotations

from .agent import main

if __name__ == "__main__":
    raise SystemExit(main())
