"""YAML manifests as the tests and benchmarks read them: every document, in path order."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from .paths import EXAMPLES, QUICKSTART


def yaml_files(path: Path) -> list[Path]:
    """``path`` itself, or a folder's ``*.yaml`` files below it in path order."""
    return sorted(path.rglob("*.yaml")) if path.is_dir() else [path]


def load_documents(*paths: Path) -> list[dict[str, Any]]:
    """Every non-empty YAML document of the files and folders (recursively), in path order,
    as ``switchboard render`` reads them. A fresh copy on every call: callers may edit it."""
    return [
        doc
        for path in paths
        for file in yaml_files(path)
        for doc in yaml.safe_load_all(file.read_text(encoding="utf-8"))
        if doc
    ]


def example_documents(*folders: str) -> list[dict[str, Any]]:
    """Every document of the ``examples/`` folders named, one folder after the other."""
    return load_documents(*(EXAMPLES / folder for folder in folders))


def quickstart_documents() -> list[dict[str, Any]]:
    """``examples/quickstart``: the Secrets, two ToolAdapters, a knowledge base ConfigMap and
    the SupportAgent ``acme``."""
    return load_documents(QUICKSTART)
