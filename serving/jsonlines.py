"""JSON Lines where each line is one object (the feedback log, training feedback): shared by
the data plane's readers and the operator's `switchboard feedback export`, standard library
only."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import Any


def json_objects(lines: Iterable[str], problems: list[str]) -> Iterator[tuple[int, dict[str, Any]]]:
    """Each object with its line number (1-based), blank lines skipped; a line that is not a
    JSON object is reported in `problems` (`line N: ...`) and skipped, so that every problem of
    a file can be told at once."""
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            data: Any = json.loads(line)
        except json.JSONDecodeError as exc:
            problems.append(f"line {number}: invalid JSON ({exc.msg})")
            continue
        if not isinstance(data, dict):
            problems.append(f"line {number}: expected a JSON object")
            continue
        yield number, data
