"""`switchboard feedback export`: an agent's feedback log, read from a real `redis-server` and
from the local JSON Lines file, written in time order as `switchboard nlu train --feedback`
reads it.

The logs are written by the data plane's own session stores (`RedisSessionStore`,
`MemorySessionStore` with a feedback file), so the key and file the exporter reads are the ones
the orchestrator appends to. The command runs in-process (`switchboard.operator.cli.main`);
tests/test_retrain_loop.py runs it as a subprocess in the whole retraining loop.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import redis

from support.redis_server import RedisServer
from switchboard.operator import feedback
from switchboard.operator.cli import main
from switchboard.operator.render.serve_config import REDIS_URL_ENV
from switchboard.serving.nlu.data import read_feedback
from switchboard.serving.workflow.sessions import MemorySessionStore, RedisSessionStore

TTL_S = 3600


def record(
    text: str,
    timestamp: str,
    corrected: str | None,
    *,
    agent: str = "acme",
    namespace: str = "support",
    n: int = 0,
) -> dict[str, Any]:
    """A feedback record as the data plane writes it (docs/handoffs.md, "Feedback")."""
    return {
        "text": text,
        "corrected_intent": corrected,
        "predicted_intent": "order_status",
        "confidence": 0.42,
        "trace_id": f"{n:032x}",
        "timestamp": timestamp,
        "model_revision": "4b296527",
        "agent": agent,
        "namespace": namespace,
        "source": "correction" if corrected else "escalation",
        "session_id": f"s-{n}",
        "handoff_id": f"h-{n}",
        "by": "alice" if corrected else None,
    }


# Appended out of time order (two orchestrator replicas, one a little late), one escalation
# nobody labelled, one timestamp with an offset and fractions of a second.
RECORDS = [
    record("where is my parcel, it said delivered", "2025-05-04T10:21:07Z", "track_package", n=1),
    record("can I speak to a person about a charge", "2025-05-04T10:22:13Z", None, n=2),
    record("how much is left on my gift card", "2025-05-04T09:59:00Z", "oos", n=3),
    record("cancel it, I changed my mind", "2025-05-04T12:30:00.250+02:00", "cancel_order", n=4),
    record("the box came open", "2025-05-05T08:00:00Z", "damaged_item", n=5),
]
# RECORDS in time order (12:30+02:00 is 10:30Z).
IN_ORDER = [RECORDS[i] for i in (2, 0, 1, 3, 4)]


def append_to_redis(url: str, namespace: str, agent: str, records: list[dict[str, Any]]) -> None:
    """Through the orchestrator's store: the key is the one the data plane appends to."""

    async def append() -> None:
        store = RedisSessionStore(url, f"{namespace}:{agent}", TTL_S)
        try:
            for r in records:
                await store.add_feedback(r)
        finally:
            await store.close()

    asyncio.run(append())


def append_to_file(path: Path, records: list[dict[str, Any]]) -> None:
    """Through the memory store with a feedback file, as `switchboard serve` runs it."""

    async def append() -> None:
        store = MemorySessionStore(TTL_S, str(path))
        for r in records:
            await store.add_feedback(r)

    asyncio.run(append())


def export(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["feedback", "export", *args])
    out, err = capsys.readouterr()
    return code, out, err


def lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines()]


@pytest.fixture
def namespace() -> str:
    """A namespace of its own per test: the session's redis-server is shared."""
    return f"fb-{uuid.uuid4().hex[:8]}"


# --------------------------------------------------------------------------------------------
# Redis


def test_export_from_redis_in_time_order(
    redis_server: RedisServer, namespace: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    append_to_redis(redis_server.url, namespace, "acme", RECORDS)
    # Another agent's log in the same namespace is not read.
    append_to_redis(
        redis_server.url, namespace, "other", [record("x", "2025-05-04T10:00:00Z", "oos")]
    )
    client = redis.Redis.from_url(redis_server.url)
    assert client.llen(f"switchboard:{namespace}:acme:feedback") == len(RECORDS)
    client.close()

    code, out, err = export(
        capsys, "--agent", "acme", "-n", namespace, "--redis-url", redis_server.url
    )
    assert code == 0, err
    assert lines(out) == IN_ORDER
    key = f"switchboard:{namespace}:acme:feedback"
    assert f"exported 5 of 5 records (4 corrections) from redis key {key}" in err
    # Each line as the data plane wrote it: keys sorted, non-ASCII kept.
    assert out.splitlines()[0] == json.dumps(IN_ORDER[0], ensure_ascii=False, sort_keys=True)

    # What `switchboard nlu train --feedback` reads: 4 corrections, 1 skipped escalation.
    out_file = tmp_path / "export.jsonl"
    code, out, err = export(
        capsys, "--agent", "acme", "-n", namespace, "--redis-url", redis_server.url,
        "--out", str(out_file),
    )  # fmt: skip
    assert code == 0 and out == "", err
    corrections, skipped = read_feedback(out_file)
    labels = [c.label for c in corrections]
    assert labels == ["oos", "track_package", "cancel_order", "damaged_item"]
    assert skipped == 1
    assert not list(tmp_path.glob(".*.partial"))


def test_export_from_redis_filters(
    redis_server: RedisServer, namespace: str, capsys: pytest.CaptureFixture[str]
) -> None:
    append_to_redis(redis_server.url, namespace, "acme", RECORDS)
    url = ("--redis-url", redis_server.url)
    code, out, err = export(
        capsys, "--agent", "acme", "-n", namespace, *url, "--since", "2025-05-04T10:22:13Z"
    )
    assert code == 0, err
    assert lines(out) == IN_ORDER[2:]  # `since` itself included
    code, out, err = export(capsys, "--agent", "acme", "-n", namespace, *url, "--corrected-only")
    assert code == 0, err
    assert lines(out) == [r for r in IN_ORDER if r["corrected_intent"]]
    # Both; an offset in --since (12:25+02:00 is 10:25Z), an offset-less one is UTC.
    code, out, err = export(
        capsys, "--agent", "acme", "-n", namespace, *url, "--corrected-only",
        "--since", "2025-05-04T12:25:00+02:00",
    )  # fmt: skip
    assert code == 0, err
    assert lines(out) == IN_ORDER[3:]
    code, out, _ = export(
        capsys, "--agent", "acme", "-n", namespace, *url, "--since", "2025-05-05T08:00:00"
    )
    assert lines(out) == IN_ORDER[4:]


def test_export_reads_the_redis_url_from_the_environment(
    redis_server: RedisServer,
    namespace: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    append_to_redis(redis_server.url, namespace, "acme", RECORDS[:2])
    monkeypatch.setenv(REDIS_URL_ENV, redis_server.url)
    code, out, err = export(capsys, "--agent", "acme", "-n", namespace)
    assert code == 0, err
    assert lines(out) == RECORDS[:2]


def test_export_pages_through_a_long_list(
    redis_server: RedisServer,
    namespace: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(feedback, "REDIS_PAGE", 3)
    many = [
        record(f"message {i}", f"2025-05-04T10:{i:02d}:00Z", "order_status", n=i) for i in range(10)
    ]
    append_to_redis(redis_server.url, namespace, "acme", many)
    code, out, err = export(
        capsys, "--agent", "acme", "-n", namespace, "--redis-url", redis_server.url
    )
    assert code == 0, err
    assert lines(out) == many


def test_export_of_an_agent_without_feedback_is_empty(
    redis_server: RedisServer, namespace: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = export(
        capsys, "--agent", "acme", "-n", namespace, "--redis-url", redis_server.url
    )
    assert code == 0, err
    assert out == ""
    assert "exported 0 of 0 records" in err


def test_export_refuses_a_broken_redis_log(
    redis_server: RedisServer, namespace: str, capsys: pytest.CaptureFixture[str]
) -> None:
    key = feedback.feedback_key(namespace, "acme")
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    try:
        client.rpush(key, json.dumps(RECORDS[0]), "{not json", json.dumps(["a", "list"]))
        client.rpush(key, json.dumps({**RECORDS[1], "timestamp": "yesterday"}))
        code, out, err = export(
            capsys, "--agent", "acme", "-n", namespace, "--redis-url", redis_server.url
        )
        assert code == 1
        assert out == ""
        assert f"redis key {key}: line 2: invalid JSON" in err
        assert "line 3: expected a JSON object" in err
        assert "line 4: not an RFC 3339 timestamp: 'yesterday'" in err

        other = feedback.feedback_key(namespace, "hashed")
        client.hset(other, "a", "b")
        code, _, err = export(
            capsys, "--agent", "hashed", "-n", namespace, "--redis-url", redis_server.url
        )
        assert code == 1
        assert f"Redis key {other} is a hash, not the feedback list" in err
    finally:
        client.close()


def test_export_reports_an_unreachable_redis(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    # A free loopback port: nothing listens on it.
    from support.ports import pick_ports

    [port] = pick_ports(1)
    code, _, err = export(
        capsys, "--agent", "acme", "--redis-url", f"redis://127.0.0.1:{port}/0",
        "--out", str(tmp_path / "export.jsonl"),
    )  # fmt: skip
    assert code == 1
    assert "cannot read Redis key switchboard:default:acme:feedback" in err
    assert not (tmp_path / "export.jsonl").exists()


# --------------------------------------------------------------------------------------------
# The local file of `switchboard serve`


def test_export_from_the_default_local_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(REDIS_URL_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    # Where `switchboard serve` (operator/localrun.py) points the memory store's feedback log.
    path = tmp_path / ".switchboard" / "feedback" / "support-acme.jsonl"
    assert feedback.default_feedback_path("support", "acme") == Path(
        ".switchboard/feedback/support-acme.jsonl"
    )
    append_to_file(path, RECORDS)
    code, out, err = export(capsys, "--agent", "acme", "-n", "support")
    assert code == 0, err
    assert lines(out) == IN_ORDER
    assert "from .switchboard/feedback/support-acme.jsonl" in err

    # --state-dir, --file, and the filters, on a file.
    state = tmp_path / "state"
    append_to_file(state / "feedback" / "default-acme.jsonl", RECORDS[:2])
    code, out, _ = export(capsys, "--agent", "acme", "--state-dir", str(state))
    assert lines(out) == RECORDS[:2]
    code, out, _ = export(
        capsys, "--agent", "ignored", "--file", str(path), "--corrected-only",
        "--since", "2025-05-04T10:00:00Z",
    )  # fmt: skip
    assert code == 0
    assert lines(out) == [IN_ORDER[1], IN_ORDER[3], IN_ORDER[4]]


def test_export_file_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(REDIS_URL_ENV, raising=False)
    code, out, err = export(capsys, "--agent", "acme", "--file", str(tmp_path / "none.jsonl"))
    assert (code, out) == (1, "")
    assert f"no feedback log at {tmp_path / 'none.jsonl'}" in err

    broken = tmp_path / "broken.jsonl"
    broken.write_text(
        json.dumps(RECORDS[0]) + "\n\n" + json.dumps({"text": "no time"}) + "\n", encoding="utf-8"
    )
    code, out, err = export(capsys, "--agent", "acme", "--file", str(broken))
    assert (code, out) == (1, "")
    assert "line 3: 'timestamp' must be an RFC 3339 string" in err

    code, _, err = export(capsys, "--agent", "acme", "--file", str(broken), "--since", "monday")
    assert code == 2
    assert "--since: not an RFC 3339 timestamp: 'monday'" in err

    with pytest.raises(SystemExit) as exited:  # one source or the other
        main(["feedback", "export", "--agent", "a", "--file", "f", "--redis-url", "redis://x"])
    assert exited.value.code == 2
    capsys.readouterr()


# --------------------------------------------------------------------------------------------
# The functions


def test_select_keeps_log_order_for_equal_times() -> None:
    same = "2025-05-04T10:00:00Z"
    parsed = feedback.parse_records(
        [json.dumps(record(f"m{i}", same, "oos", n=i)) for i in range(3)], "test"
    )
    assert [r.data["text"] for r in feedback.select(parsed)] == ["m0", "m1", "m2"]
    assert feedback.parse_timestamp("2025-05-04T10:00:00") == datetime(2025, 5, 4, 10, tzinfo=UTC)
    corrected = [r.corrected for r in feedback.parse_records(
        [json.dumps(record("a", same, None)), json.dumps(record("b", same, " ")),
         json.dumps(record("c", same, "oos"))], "test",
    )]  # fmt: skip
    assert corrected == [False, False, True]
