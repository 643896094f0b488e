"""Benchmark results kept as one JSON list per file, to which each run adds its rows."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any


def append_results(path: Path, rows: Iterable[Any]) -> None:
    """Add `rows` to the JSON list in `path` (a new list if the file is missing; its folder is made).

    Earlier runs stay in the file, so one file can compare configurations measured on different days.
    """
    existing = json.loads(path.read_text()) if path.exists() else []
    existing.extend(rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(existing, indent=1))
