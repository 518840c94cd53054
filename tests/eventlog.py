"""Reading the gate's JSON event log in tests: one reader for every helper.

A test may read while gates still write: each event is one write(), so what follows the
last newline is a line still being written and is left for the next read, never parsed
half copied.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def read_events(path: Path, name: str | None = None) -> list[dict[str, Any]]:
    """The complete event lines of ``path`` (none if it does not exist), those named ``name`` if given."""
    data = path.read_bytes() if path.exists() else b""
    records = [json.loads(line) for line in data.split(b"\n")[:-1] if line.strip()]
    return [r for r in records if name is None or r.get("event") == name]
