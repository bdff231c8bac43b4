"""`switchboard feedback export`: an agent's feedback log as the JSON Lines that
`switchboard nlu train --feedback` reads (docs/nlu.md, "Feedback loop").

The data plane appends one JSON object per correction or escalation (docs/handoffs.md,
"Feedback"): to the Redis list `switchboard:<namespace>:<agent>:feedback` on clusters
(`sessions.store: redis`), to the file `.switchboard/feedback/<namespace>-<agent>.jsonl` under
`switchboard serve`. This module reads either, keeps the records asked for and writes them in
time order. The Redis client (the serving extra's `redis`) is imported only when a Redis log is
read.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from switchboard.serving.jsonlines import json_objects

DEFAULT_STATE_DIR = ".switchboard"
# LRANGE page: a long log is read in slices, never as one reply.
REDIS_PAGE = 1000


class FeedbackError(Exception):
    """A feedback log that cannot be read or holds a malformed record (exit status 1)."""


@dataclass(frozen=True)
class FeedbackRecord:
    """One record of the log: its JSON object as written, and its parsed timestamp."""

    data: dict[str, Any]
    timestamp: datetime
    position: int
    """Where it was in the log (0-based): ties in time keep the log's order."""

    @property
    def corrected(self) -> bool:
        label = self.data.get("corrected_intent")
        return isinstance(label, str) and bool(label.strip())


def feedback_key(namespace: str, agent: str) -> str:
    """The Redis list the data plane appends an agent's feedback to."""
    return f"switchboard:{namespace}:{agent}:feedback"


def default_feedback_path(
    namespace: str, agent: str, state_dir: str | Path = DEFAULT_STATE_DIR
) -> Path:
    """The JSON Lines file `switchboard serve --state-dir` appends an agent's feedback to."""
    return Path(state_dir) / "feedback" / f"{namespace}-{agent}.jsonl"


def parse_timestamp(value: str) -> datetime:
    """An RFC 3339 timestamp (`2025-05-04T10:21:07Z`, `...+02:00`, fractions of a second), as an
    aware datetime; one without an offset is read as UTC."""
    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError:
        raise ValueError(f"not an RFC 3339 timestamp: {value!r}") from None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def parse_records(lines: Iterable[str], source: str) -> list[FeedbackRecord]:
    """The records of a log, one JSON object per line (blank lines skipped). Every problem is
    reported at once, with its line (1-based) in `source`."""
    records: list[FeedbackRecord] = []
    problems: list[str] = []
    for number, data in json_objects(lines, problems):
        stamp = data.get("timestamp")
        if not isinstance(stamp, str):
            problems.append(f"line {number}: 'timestamp' must be an RFC 3339 string")
            continue
        try:
            timestamp = parse_timestamp(stamp)
        except ValueError as exc:
            problems.append(f"line {number}: {exc}")
            continue
        records.append(FeedbackRecord(data, timestamp, number - 1))
    if problems:
        shown = "; ".join(problems[:10])
        more = f" (and {len(problems) - 10} more)" if len(problems) > 10 else ""
        raise FeedbackError(f"{source}: {shown}{more}")
    return records


def read_file(path: str | Path) -> list[FeedbackRecord]:
    """The records of a local feedback log (`switchboard serve`)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FeedbackError(f"no feedback log at {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise FeedbackError(f"cannot read {path}: {exc}") from None
    return parse_records(text.splitlines(), str(path))


def _redis_lines(client: Any, key: str) -> Iterator[str]:
    start = 0
    while True:
        page: list[str | bytes] = client.lrange(key, start, start + REDIS_PAGE - 1)
        for item in page:
            yield item.decode("utf-8") if isinstance(item, bytes) else item
        if len(page) < REDIS_PAGE:
            return
        start += REDIS_PAGE


def read_redis(url: str, namespace: str, agent: str) -> list[FeedbackRecord]:
    """The records of an agent's feedback list in Redis (an absent key: none yet)."""
    try:
        import redis
    except ImportError as exc:
        raise FeedbackError(
            "reading feedback from Redis needs the `redis` package "
            f"(pip install 'switchboard[serving]' or pip install redis): {exc}"
        ) from None
    key = feedback_key(namespace, agent)
    try:
        client: Any = redis.Redis.from_url(url, decode_responses=True)
    except ValueError as exc:
        raise FeedbackError(f"invalid Redis URL: {exc}") from None
    try:
        kind = client.type(key)
        if kind not in ("list", "none"):
            raise FeedbackError(f"Redis key {key} is a {kind}, not the feedback list")
        return parse_records(_redis_lines(client, key), f"redis key {key}")
    except redis.RedisError as exc:
        raise FeedbackError(f"cannot read Redis key {key}: {exc}") from None
    finally:
        client.close()


def select(
    records: Iterable[FeedbackRecord],
    since: datetime | None = None,
    corrected_only: bool = False,
) -> list[FeedbackRecord]:
    """The records at or after `since` (corrections only, if asked), oldest first; records of
    the same instant keep the log's order."""
    kept = [
        r
        for r in records
        if (since is None or r.timestamp >= since) and (r.corrected or not corrected_only)
    ]
    return sorted(kept, key=lambda r: (r.timestamp, r.position))


def write_jsonl(records: Iterable[FeedbackRecord], out: TextIO) -> int:
    """Each record's object on one line, as the data plane wrote it (keys sorted); the count."""
    count = 0
    for record in records:
        out.write(json.dumps(record.data, ensure_ascii=False, sort_keys=True) + "\n")
        count += 1
    return count


def write_jsonl_file(records: Iterable[FeedbackRecord], path: str | Path) -> int:
    """`write_jsonl` into a file, replaced whole: a failed export leaves no half-written file."""
    path = Path(path)
    partial = path.with_name(f".{path.name}.partial")
    try:
        with partial.open("w", encoding="utf-8") as out:
            count = write_jsonl(records, out)
        os.replace(partial, path)
    except OSError as exc:
        partial.unlink(missing_ok=True)
        raise FeedbackError(f"cannot write {path}: {exc}") from None
    return count
