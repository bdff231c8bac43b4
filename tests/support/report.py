"""What every benchmark's JSON document starts with and how it leaves: the commit and machine
it was measured on, the statistics it reports, printed to stdout and kept in `--json-out`."""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import platform
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .paths import REPO_ROOT


def run_facts() -> dict[str, str]:
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    return {
        "commit": commit or "unknown",
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
    }


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def machine_facts(**versions: str) -> dict[str, Any]:
    """The machine a benchmark ran on, its load when it started, and the `versions` of what
    it measured (Ray, torch...)."""
    mem_gb = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_gb = round(int(line.split()[1]) / 1024 / 1024, 1)
    return {
        "nproc": os.cpu_count(),
        "cpu_model": cpu_model(),
        "mem_total_gb": mem_gb,
        "python": platform.python_version(),
        **versions,
        "platform": platform.platform(),
        "load_avg_at_start": [round(x, 2) for x in os.getloadavg()],
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def concurrent_pytest() -> bool:
    """Whether a pytest run is going on beside us (the figures are then noisier)."""
    found = subprocess.run(
        ["pgrep", "-f", "pytest"], capture_output=True, text=True, check=False
    ).stdout.split()
    return any(int(pid) != os.getpid() for pid in found)


def percentile(values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default); NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def summary_ms(seconds: list[float]) -> dict[str, float | int]:
    """Durations given in seconds, summarised in ms: p50, p95, mean, min and max."""
    if not seconds:
        return {"n": 0}
    ms = [s * 1000 for s in seconds]
    return {
        "n": len(ms),
        "p50_ms": round(percentile(ms, 50), 3),
        "p95_ms": round(percentile(ms, 95), 3),
        "mean_ms": round(sum(ms) / len(ms), 3),
        "min_ms": round(min(ms), 3),
        "max_ms": round(max(ms), 3),
    }


def time_calls(fn: Callable[[], object], iterations: int, warmup: int = 5) -> list[float]:
    """Seconds per call of `fn`, after `warmup` calls that are not counted."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(iterations):
        started = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - started)
    return samples


def emit(document: dict[str, Any], json_out: Path | None) -> None:
    text = json.dumps(document, indent=2)
    print(text)
    if json_out:
        json_out.write_text(text + "\n", encoding="utf-8")
