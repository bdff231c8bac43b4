"""YAML output for humans and diffs: block style, key order kept, no anchors or aliases."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import yaml


class _NoAliasDumper(yaml.SafeDumper):
    """Writes repeated sub-objects in full: anchors make manifests hard to read and review."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def dump(document: Any) -> str:
    return yaml.dump(
        document, Dumper=_NoAliasDumper, sort_keys=False, width=100, allow_unicode=True
    )


def dump_all(documents: Iterable[Any]) -> str:
    return yaml.dump_all(
        documents, Dumper=_NoAliasDumper, sort_keys=False, width=100, allow_unicode=True
    )
