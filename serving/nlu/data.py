"""Training data: a CSV with a header, optionally merged with a feedback JSONL export.

Everything here is standard library: reading and validating data must not need torch. Problems are
collected with their line numbers and raised together as one `DataError`, before any training.
"""

from __future__ import annotations

import csv
import io
import random
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..config import OOS_INTENT
from ..jsonlines import json_objects

OOS_LABEL = OOS_INTENT
"""The label of off-topic queries, when the data has them."""

MAX_PROBLEMS = 20
"""Problems listed in one error; a file with more is broken wholesale, not row by row."""


class DataError(ValueError):
    """Training or evaluation data that cannot be used, with every problem found (line numbers)."""

    def __init__(self, source: str, problems: Sequence[str]) -> None:
        self.source = source
        self.problems = list(problems)
        shown = self.problems[:MAX_PROBLEMS]
        more = len(self.problems) - len(shown)
        lines = [f"{source}: {len(self.problems)} problem(s):", *(f"  {p}" for p in shown)]
        if more:
            lines.append(f"  ... and {more} more")
        super().__init__("\n".join(lines))


@dataclass(frozen=True)
class Example:
    text: str
    label: str
    source: str
    """Where the example came from, `file:line`, for error messages."""


def decode_utf8(raw: bytes, source: str) -> str:
    """UTF-8 text (a BOM dropped); `DataError` naming the line of the first bad byte."""
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        bad = raw[exc.start : exc.start + 4]
        raise DataError(
            source,
            [
                f"line {line}: not UTF-8 (byte {bad[:1]!r} at offset {exc.start}); "
                "re-save the file as UTF-8"
            ],
        ) from None


def read_csv(
    path: str | Path, *, text_col: str = "text", label_col: str = "category"
) -> list[Example]:
    """Rows of a headed CSV as examples. Quoted fields may span lines (the csv module parses them).

    Raises `DataError` naming every bad row: missing columns, empty text or label, unparseable
    rows, bytes that are not UTF-8. Class sizes are checked by `check_classes`, after any merge.
    """
    path = Path(path)
    source = str(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(source, [f"cannot read: {exc.strerror or exc}"]) from None
    return parse_csv(raw, source, text_col=text_col, label_col=label_col)


def parse_csv(
    raw: bytes, source: str, *, text_col: str = "text", label_col: str = "category"
) -> list[Example]:
    """`read_csv` on bytes read elsewhere (an object in S3); `source` names them in errors."""
    text = decode_utf8(raw, source)
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader)
    except StopIteration:
        raise DataError(source, ["empty file: expected a header line"]) from None
    except csv.Error as exc:
        raise DataError(source, [f"line 1: {exc}"]) from None
    names = [h.strip() for h in header]
    missing = [c for c in (text_col, label_col) if c not in names]
    if missing:
        found = ", ".join(repr(n) for n in names) or "nothing"
        wanted = " and ".join(repr(c) for c in missing)
        raise DataError(
            source,
            [
                f"line 1: header has no column {wanted} (found {found}); "
                "name the columns with --text-col/--label-col"
            ],
        )
    ti, li = names.index(text_col), names.index(label_col)
    examples: list[Example] = []
    problems: list[str] = []
    start = reader.line_num + 1
    while True:
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            problems.append(f"line {start}: {exc}")
            break  # the reader cannot resynchronise after a broken quote or a NUL byte
        line, start = start, reader.line_num + 1
        if not row or all(not cell.strip() for cell in row):
            continue  # blank lines are not rows
        if len(row) != len(names):
            problems.append(f"line {line}: {len(row)} field(s), the header has {len(names)}")
            continue
        value, label = row[ti].strip(), row[li].strip()
        if not value:
            problems.append(f"line {line}: empty {text_col!r}")
        if not label:
            problems.append(f"line {line}: empty {label_col!r}")
        if value and label:
            examples.append(Example(value, label, f"{source}:{line}"))
    if problems:
        raise DataError(source, problems)
    if not examples:
        raise DataError(source, ["no rows after the header"])
    return examples


def check_classes(examples: Sequence[Example], source: str, *, min_examples: int = 2) -> None:
    """Every class needs `min_examples` (one to train on and one to validate with)."""
    by_label: dict[str, list[Example]] = defaultdict(list)
    for ex in examples:
        by_label[ex.label].append(ex)
    problems = [
        f"{_where(group[0].source, source)}: class {label!r} has {len(group)} example(s) "
        f"({', '.join(e.source for e in group)}); every class needs at least {min_examples}"
        for label, group in sorted(by_label.items())
        if len(group) < min_examples
    ]
    if len(by_label) < 2:
        problems.append(f"{len(by_label)} class(es): a classifier needs at least 2")
    if problems:
        raise DataError(source, problems)


def _where(example_source: str, source: str) -> str:
    """`line N` for a row of the file the error is about, else `file:N` (a feedback record)."""
    path, _, line = example_source.rpartition(":")
    return f"line {line}" if path == source else example_source


# --- feedback ------------------------------------------------------------------------------

FEEDBACK_FIELDS = (
    "text",
    "corrected_intent",
    "predicted_intent",
    "confidence",
    "trace_id",
    "timestamp",
    "model_revision",
    "agent",
)
"""Fields of one feedback record (docs/nlu.md); only `text` and `corrected_intent` are used."""


@dataclass(frozen=True)
class FeedbackSummary:
    used: int
    """Records with a correction, after deduplication."""
    skipped: int
    """Records without a correction (escalated, not yet labelled)."""
    relabelled: int
    """Training rows whose label the feedback replaced."""
    added: int
    """Feedback texts that were not in the training data."""


def read_feedback(path: str | Path) -> tuple[list[Example], int]:
    """Corrected examples of a feedback JSONL file, and how many records had no correction.

    Later records win over earlier ones with the same text (an export is in time order).
    """
    path = Path(path)
    source = str(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(source, [f"cannot read: {exc.strerror or exc}"]) from None
    return parse_feedback(decode_utf8(raw, source).splitlines(), source)


def parse_feedback(lines: Iterable[str], source: str) -> tuple[list[Example], int]:
    """`read_feedback` on lines read elsewhere (an object in S3, a Redis list); `source` names
    them in errors and in each example's `source:line`."""
    problems: list[str] = []
    latest: dict[str, Example] = {}
    skipped = 0
    for number, record in json_objects(lines, problems):
        value, label = record.get("text"), record.get("corrected_intent")
        if not isinstance(value, str) or not value.strip():
            problems.append(f"line {number}: 'text' must be a non-empty string")
            continue
        if label is None or label == "":
            skipped += 1
            continue
        if not isinstance(label, str):
            problems.append(f"line {number}: 'corrected_intent' must be a string or null")
            continue
        latest[normalize_text(value)] = Example(value.strip(), label.strip(), f"{source}:{number}")
    if problems:
        raise DataError(source, problems)
    return list(latest.values()), skipped


def normalize_text(text: str) -> str:
    """The key under which two texts count as duplicates: case and spacing do not matter."""
    return re.sub(r"\s+", " ", text).strip().casefold()


def merge_feedback(
    examples: Sequence[Example], feedback: Sequence[Example], skipped: int = 0
) -> tuple[list[Example], FeedbackSummary]:
    """Training rows with the feedback applied: a corrected label replaces the label of every row
    with the same (normalized) text, and new texts are appended. Duplicates collapse to one row."""
    corrections = {normalize_text(fb.text): fb for fb in feedback}
    merged: list[Example] = []
    seen: set[str] = set()
    relabelled = 0
    for ex in examples:
        key = normalize_text(ex.text)
        fb = corrections.get(key)
        if fb is not None:
            if key in seen:
                continue
            if fb.label != ex.label:
                relabelled += 1
            merged.append(Example(ex.text, fb.label, fb.source))
            seen.add(key)
        else:
            merged.append(ex)
    added = [fb for key, fb in corrections.items() if key not in seen]
    merged += added
    summary = FeedbackSummary(
        used=len(corrections), skipped=skipped, relabelled=relabelled, added=len(added)
    )
    return merged, summary


# --- splits --------------------------------------------------------------------------------


def stratified_split(
    examples: Sequence[Example], fraction: float, seed: int
) -> tuple[list[Example], list[Example]]:
    """(train, validation): about `fraction` of every class to validation, at least one, and
    never the last one (every class keeps a training example)."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"validation fraction must be between 0 and 1, got {fraction}")
    rng = random.Random(seed)
    by_label: dict[str, list[Example]] = defaultdict(list)
    for ex in examples:
        by_label[ex.label].append(ex)
    train: list[Example] = []
    val: list[Example] = []
    for label in sorted(by_label):
        group = list(by_label[label])
        rng.shuffle(group)
        n_val = min(len(group) - 1, max(1, round(len(group) * fraction)))
        val += group[:n_val]
        train += group[n_val:]
    rng.shuffle(train)
    return train, val


def sample_per_class(
    examples: Sequence[Example], per_class: int, seed: int, labels: Iterable[str] | None = None
) -> list[Example]:
    """At most `per_class` examples of each class (of `labels`, if given), for quick runs."""
    rng = random.Random(seed)
    wanted = set(labels) if labels is not None else None
    by_label: dict[str, list[Example]] = defaultdict(list)
    for ex in examples:
        if wanted is None or ex.label in wanted:
            by_label[ex.label].append(ex)
    picked: list[Example] = []
    for label in sorted(by_label):
        group = by_label[label]
        picked += rng.sample(group, min(per_class, len(group)))
    return picked


def label_counts(examples: Iterable[Example]) -> dict[str, int]:
    return dict(sorted(Counter(ex.label for ex in examples).items()))
