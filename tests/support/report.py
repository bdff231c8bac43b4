"""What every benchmark's JSON document starts with and how it leaves: the commit and machine
it was measured on, printed to stdout and kept in `--json-out` when given."""

from __future__ import annotations

import json
import os
import platform
import subprocess
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


def emit(document: dict[str, Any], json_out: Path | None) -> None:
    text = json.dumps(document, indent=2)
    print(text)
    if json_out:
        json_out.write_text(text + "\n", encoding="utf-8")
