"""Slot (entity) extraction for support queries from regular expressions declared in config.

A pattern set is a list of `{"name", "pattern", "flags"?}` objects (JSON, or YAML with the same
shape). The artifact stores the set it was trained with (`slots.json`); `IntentClassifier.load`
takes another to override it. Patterns run in their declared order and a later pattern never
claims characters an earlier one matched, so put the most specific patterns first (an order id
before a phone number). A pattern with groups named `value...` reports the first of them that
matched; otherwise the whole match.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_FLAGS = {"i": re.IGNORECASE, "m": re.MULTILINE, "s": re.DOTALL, "x": re.VERBOSE}


class SlotConfigError(ValueError):
    """A slot pattern set that cannot be used."""


@dataclass(frozen=True)
class SlotPattern:
    name: str
    pattern: str
    flags: str = ""
    """Letters of `i` (ignore case), `m`, `s`, `x`."""

    def to_dict(self) -> dict[str, str]:
        out = {"name": self.name, "pattern": self.pattern}
        if self.flags:
            out["flags"] = self.flags
        return out


@dataclass(frozen=True)
class Slot:
    name: str
    value: str
    start: int
    end: int
    """Character offsets of `value` in the query."""


DEFAULT_SLOT_PATTERNS: tuple[SlotPattern, ...] = (
    SlotPattern("email", r"(?<![\w.+-])[\w.+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b"),
    # "order #A1234567", "order number 123456", "#123456", or a prefixed id like ORD-2024-88812.
    SlotPattern(
        "order_id",
        r"(?:\border\s*(?:id|number|no\.?|num)?\s*[:#]?\s*#?|(?<!\w)#)"
        r"(?P<value>(?=[A-Z0-9-]{3})[A-Z0-9]*\d[A-Z0-9]*(?:-[A-Z0-9]+)*)\b"
        r"|\b(?P<value2>(?:ORD|ORDER|SO|PO)-?\d[\d-]{3,})\b",
        "i",
    ),
    # "$25", "€ 1,299.99", "25.50 USD", "40 dollars".
    SlotPattern(
        "amount",
        r"(?:[$€£¥]\s?\d{1,3}(?:,\d{3})*(?:\.\d{1,2})?|[$€£¥]\s?\d+(?:\.\d{1,2})?)"
        r"|\b\d+(?:[.,]\d{1,2})?\s?(?:usd|eur|gbp|dollars?|euros?|pounds?|bucks)\b",
        "i",
    ),
    # International or national numbers: 7-15 digits with optional +, spaces, dots, dashes, ().
    SlotPattern(
        "phone",
        r"(?<![\w+])(?:\+\d{1,3}[\s.-]?)?(?:\(\d{1,4}\)[\s.-]?)?\d{2,4}(?:[\s.-]?\d{2,4}){2,4}(?!\w)",
    ),
)


def _compile(pattern: SlotPattern) -> re.Pattern[str]:
    flags = 0
    for letter in pattern.flags:
        if letter not in _FLAGS:
            raise SlotConfigError(
                f"slot {pattern.name!r}: unknown flag {letter!r} (use some of {''.join(_FLAGS)})"
            )
        flags |= _FLAGS[letter]
    try:
        return re.compile(pattern.pattern, flags)
    except re.error as exc:
        raise SlotConfigError(f"slot {pattern.name!r}: invalid pattern: {exc}") from None


def parse_patterns(raw: Any, source: str = "slot config") -> tuple[SlotPattern, ...]:
    """Validate a pattern set read from JSON/YAML (a list of objects, or `{"slots": [...]}`)."""
    if isinstance(raw, Mapping) and "slots" in raw:
        raw = raw["slots"]
    if not isinstance(raw, list):
        raise SlotConfigError(f"{source}: expected a list of {{name, pattern, flags}} objects")
    patterns: list[SlotPattern] = []
    for i, item in enumerate(raw):
        if not isinstance(item, Mapping):
            raise SlotConfigError(f"{source}: item {i}: expected an object")
        unknown = set(item) - {"name", "pattern", "flags"}
        if unknown:
            raise SlotConfigError(f"{source}: item {i}: unknown key(s) {sorted(unknown)}")
        name, pattern, flags = item.get("name"), item.get("pattern"), item.get("flags", "")
        if not isinstance(name, str) or not name:
            raise SlotConfigError(f"{source}: item {i}: 'name' must be a non-empty string")
        if not isinstance(pattern, str) or not pattern:
            raise SlotConfigError(f"{source}: slot {name!r}: 'pattern' must be a non-empty string")
        if not isinstance(flags, str):
            raise SlotConfigError(f"{source}: slot {name!r}: 'flags' must be a string")
        patterns.append(SlotPattern(name, pattern, flags))
    SlotExtractor(patterns)  # compile now: a bad pattern fails at load, not on the first query
    return tuple(patterns)


def load_patterns(path: str | Path) -> tuple[SlotPattern, ...]:
    """A pattern set from a `.json`, `.yaml` or `.yml` file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SlotConfigError(f"{path}: cannot read: {exc}") from None
    try:
        if path.suffix in (".yaml", ".yml"):
            import yaml

            raw = yaml.safe_load(text)
        else:
            raw = json.loads(text)
    except Exception as exc:  # json and yaml raise unrelated error types
        raise SlotConfigError(f"{path}: cannot parse: {exc}") from None
    return parse_patterns(raw, str(path))


class SlotExtractor:
    """Runs a pattern set over a query; see the module docstring for the rules."""

    def __init__(self, patterns: Iterable[SlotPattern] = DEFAULT_SLOT_PATTERNS) -> None:
        self.patterns = tuple(patterns)
        names = [p.name for p in self.patterns]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise SlotConfigError(f"slot name(s) declared twice: {duplicates}")
        self._compiled = [(p.name, _compile(p)) for p in self.patterns]

    def extract(self, text: str) -> list[Slot]:
        taken: list[tuple[int, int]] = []
        slots: list[Slot] = []
        for name, regex in self._compiled:
            for match in regex.finditer(text):
                start, end = _value_span(match)
                if start == end or any(start < e and s < end for s, e in taken):
                    continue
                taken.append((match.start(), match.end()))
                slots.append(Slot(name, text[start:end], start, end))
        return sorted(slots, key=lambda s: s.start)


def _value_span(match: re.Match[str]) -> tuple[int, int]:
    # The first `value*` group that took part in the match, or the whole match.
    for group, value in match.groupdict().items():
        if group.startswith("value") and value is not None:
            return match.span(group)
    return match.span()


def patterns_to_json(patterns: Sequence[SlotPattern]) -> list[dict[str, str]]:
    return [p.to_dict() for p in patterns]
