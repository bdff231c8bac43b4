"""Waiting for something another process does (an operator, a server, a controller)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


def wait_for(what: str, probe: Callable[[], T | None], timeout: float = 30.0) -> T:
    """Poll until ``probe`` returns something truthy and return it; on timeout raise
    ``TimeoutError`` naming ``what`` and the last value seen (a failed test, with its line)."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(0.2)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}; last: {last!r}")
