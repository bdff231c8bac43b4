"""`switchboard nlu retrain`, the entrypoint of a ModelTraining's RayJob, against a real S3 server
(rclone, tests/support/s3.py) and a real Redis, as a subprocess.

Two real trainings (module fixtures, about a minute each on 2 cores): the demo data with the
corrections of tests/test_retrain_loop.py (read from an S3 prefix, a second export and the
agent's Redis log), and the demo data poisoned with 40 corrections that relabel most
track_package and order_status rows as cancel_order. Every bad-data case fails before training.
"""

from __future__ import annotations

import asyncio
import csv
import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from support.corrections import CORRECTIONS, ESCALATION, feedback_record
from support.nlu import DEMO_INTENTS
from support.paths import EXAMPLES
from support.redis_server import RedisServer
from support.s3 import S3Server
from switchboard.serving.nlu.retrain import PROG
from switchboard.serving.training_report import (
    ERROR_NAME,
    EXIT_BAD_DATA,
    EXIT_FAILED,
    MODEL_DIR,
    REPORT_NAME,
    RunError,
    TrainingReport,
)

HELDOUT = EXAMPLES / "nlu" / "ecommerce-heldout.csv"
TIMEOUT_S = 900
AGENT = ("default", "acme")
REDIS_ENV = "FEEDBACK_REDIS_URL"
POISON_TARGET = "cancel_order"
POISONED = {"track_package": 19, "order_status": 21}
"""Rows of each intent relabelled as POISON_TARGET (of 21 and 25 in the base data)."""


@dataclass
class Run:
    done: subprocess.CompletedProcess[str]
    seconds: float
    output_key: str


def put(s3: S3Server, key: str, body: bytes | str) -> str:
    return s3.put(key, body)


def jsonl(records: list[dict[str, Any]]) -> str:
    return "".join(json.dumps(r) + "\n" for r in records)


def rows(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def retrain(
    s3: S3Server, run: str, *args: str, env: dict[str, str] | None = None, cache: Path
) -> Run:
    key = f"retrain/{run}"
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-P", "-m", "switchboard.operator.cli", "nlu", "retrain", "--run", run,
         "--output", f"s3://{s3.bucket}/{key}", *args],
        env={**os.environ, **s3.env(), "SWITCHBOARD_MODEL_CACHE": str(cache), **(env or {})},
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=TIMEOUT_S, check=False,
    )  # fmt: skip
    return Run(done, time.monotonic() - started, key)


@pytest.fixture(scope="module")
def data(s3_server: S3Server) -> dict[str, str]:
    """Base data and held-out set in the bucket, and where the current model goes."""
    return {
        "base": put(s3_server, "data/ecommerce-intents.csv", DEMO_INTENTS.read_bytes()),
        "heldout": put(s3_server, "data/ecommerce-heldout.csv", HELDOUT.read_bytes()),
        "current": f"s3://{s3_server.bucket}/current/v1",
    }


@pytest.fixture(scope="module")
def inputs(s3_server: S3Server, data: dict[str, str], demo_nlu_model: Path) -> dict[str, str]:
    """`data`, with the current (demo) model in the bucket."""
    s3_server.push_model(demo_nlu_model, data["current"])
    return data


def common(inputs: dict[str, str]) -> list[str]:
    return ["--base-data", inputs["base"], "--heldout", inputs["heldout"],
            "--current-model", inputs["current"]]  # fmt: skip


@pytest.fixture(scope="module")
def corrected_run(
    s3_server: S3Server,
    redis_server: RedisServer,
    inputs: dict[str, str],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Run]:
    """A run with the retraining loop's corrections from three sources: two exports under a
    prefix (one also corrects a held-out text, to be dropped), and the agent's Redis log."""
    from switchboard.serving.workflow.sessions import RedisSessionStore

    records = [
        feedback_record(text, predicted, corrected, n)
        for n, (text, (predicted, corrected)) in enumerate(CORRECTIONS.items())
    ]
    heldout_row = rows(HELDOUT)[0]
    leak = feedback_record(heldout_row["text"], "oos", heldout_row["category"], 40)
    escalation = feedback_record(ESCALATION, "payment_failed", None, 30)
    put(s3_server, "feedback/acme/2025-05-01.jsonl", jsonl([records[0], escalation, records[1]]))
    put(s3_server, "feedback/acme/2025-05-08.jsonl", jsonl([records[2], leak]))
    put(s3_server, "feedback/acme/README.txt", "not feedback")

    async def append() -> None:  # what the agent's orchestrator does on a console correction
        store = RedisSessionStore(redis_server.url, ":".join(AGENT), 3600)
        await store.add_feedback(records[3])
        await store.close()

    asyncio.run(append())
    run = retrain(
        s3_server, "run-1", *common(inputs),
        "--feedback", f"s3://{s3_server.bucket}/feedback/acme/",
        "--feedback-redis-url-env", REDIS_ENV, "--agent", "/".join(AGENT),
        env={REDIS_ENV: redis_server.url}, cache=tmp_path_factory.mktemp("cache"),
    )  # fmt: skip
    yield run


@pytest.fixture(scope="module")
def poisoned_run(
    s3_server: S3Server,
    inputs: dict[str, str],
    demo_nlu_model: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Run:
    """40 corrections that relabel track_package and order_status rows as cancel_order (one
    export object; the current model given as a local directory)."""
    poison: list[dict[str, Any]] = []
    for intent, count in POISONED.items():
        texts = [r["text"] for r in rows(DEMO_INTENTS) if r["category"] == intent][:count]
        poison += [
            feedback_record(t, intent, POISON_TARGET, n) for n, t in enumerate(texts, len(poison))
        ]
    uri = put(s3_server, "feedback/poison.jsonl", jsonl(poison))
    return retrain(
        s3_server, "run-poisoned", *common(inputs)[:4], "--current-model", str(demo_nlu_model),
        "--feedback", uri, cache=tmp_path_factory.mktemp("cache"),
    )  # fmt: skip


def report_of(s3: S3Server, run: Run) -> TrainingReport:
    assert run.done.returncode == 0, run.done.stderr[-3000:]
    assert "Traceback" not in run.done.stderr
    path = s3.object_path(s3.bucket, f"{run.output_key}/{REPORT_NAME}")
    return TrainingReport.model_validate_json(path.read_text(encoding="utf-8"))


def test_a_run_pushes_the_candidate_then_the_report(
    s3_server: S3Server, corrected_run: Run, inputs: dict[str, str]
) -> None:
    report = report_of(s3_server, corrected_run)
    model = s3_server.object_path(s3_server.bucket, f"{corrected_run.output_key}/{MODEL_DIR}")
    output = f"s3://{s3_server.bucket}/{corrected_run.output_key}"
    assert report.run == "run-1"
    assert report.candidate_uri == f"{output}/{MODEL_DIR}"

    # The candidate is a complete artifact whose manifest the report's checksums repeat, and
    # the report was written after its manifest (the operator acts on the report).
    manifest = json.loads((model / "manifest.json").read_text(encoding="utf-8"))
    assert report.checksums == manifest["files"]
    for name, digest in report.checksums.items():
        assert hashlib.sha256((model / name).read_bytes()).hexdigest() == digest, name
    report_path = model.parent / REPORT_NAME
    assert report_path.stat().st_mtime_ns >= (model / "manifest.json").stat().st_mtime_ns
    assert report.device == "cpu"

    # The data: three sources in order (the prefix's *.jsonl in key order, Redis last); the
    # correction of a held-out text was dropped from training.
    data = report.data
    assert data.base_uri == inputs["base"] and data.base_rows == 407
    assert data.base_sha256 == hashlib.sha256(DEMO_INTENTS.read_bytes()).hexdigest()
    assert data.feedback_uris == [
        f"s3://{s3_server.bucket}/feedback/acme/2025-05-01.jsonl",
        f"s3://{s3_server.bucket}/feedback/acme/2025-05-08.jsonl",
        "redis key switchboard:default:acme:feedback",
    ]
    assert (data.feedback_records, data.corrections, data.relabelled, data.added) == (6, 5, 0, 5)
    assert report.heldout.rows == 76 and report.heldout.overlap_with_training == 1
    assert data.training_rows == 407 + 5 - 1
    assert data.new_labels == []

    # Both models on the same 76 held-out rows, per intent too.
    assert report.current.uri == inputs["current"]
    assert sum(i.support for i in report.intents) == 76
    assert {i.intent for i in report.intents} == {r["category"] for r in rows(HELDOUT)}
    for figures in (report.current, report.candidate):
        assert 0.8 < figures.accuracy <= 1.0 and 0.8 < figures.macro_f1 <= 1.0
        assert figures.unknown_labels == []
    assert report.candidate.accuracy >= report.current.accuracy, report.model_dump()

    headline = json.loads(corrected_run.done.stdout.splitlines()[-1])
    assert headline == {
        "run": "run-1",
        "current_accuracy": report.current.accuracy,
        "candidate_accuracy": report.candidate.accuracy,
        "current_macro_f1": report.current.macro_f1,
        "candidate_macro_f1": report.candidate.macro_f1,
        "candidate_uri": report.candidate_uri,
    }
    print(
        f"\nretrain run-1 ({corrected_run.seconds:.0f} s, training {report.train_seconds:.0f} s): "
        f"accuracy {report.current.accuracy:.4f} -> {report.candidate.accuracy:.4f}, "
        f"macro-F1 {report.current.macro_f1:.4f} -> {report.candidate.macro_f1:.4f}"
    )


def test_poisoned_feedback_shows_as_a_regression_of_the_intents_it_hit(
    s3_server: S3Server, poisoned_run: Run
) -> None:
    report = report_of(s3_server, poisoned_run)
    assert report.data.corrections == 40 and report.data.relabelled == 40
    by_intent = {i.intent: i for i in report.intents}
    for intent in POISONED:
        figures = by_intent[intent]
        assert figures.support == 4
        # The gate's criterion: the largest recall drop of an intent (default limit 0.05).
        assert figures.recall_delta <= -0.5, figures
        assert figures.candidate_f1 < figures.current_f1, figures
    assert by_intent[POISON_TARGET].candidate_f1 < by_intent[POISON_TARGET].current_f1
    assert report.candidate.accuracy < report.current.accuracy
    print(
        f"\nretrain run-poisoned ({poisoned_run.seconds:.0f} s): accuracy "
        f"{report.current.accuracy:.4f} -> {report.candidate.accuracy:.4f}; "
        + ", ".join(
            f"{i} recall {by_intent[i].current_recall:.2f} -> {by_intent[i].candidate_recall:.2f}"
            for i in POISONED
        )
    )


# --- failures before training: nothing is written ------------------------------------------


def bad_inputs(s3: S3Server, inputs: dict[str, str]) -> dict[str, tuple[list[str], int, str]]:
    """Case → (arguments, exit status, what stderr must say)."""
    bucket = s3.bucket
    bad_feedback = put(
        s3, "bad/feedback.jsonl",
        jsonl([feedback_record("where is my parcel", "oos", "track_package", 1)])
        + '{"text": "unterminated\n',
    )  # fmt: skip
    typo = put(
        s3, "bad/typo.jsonl",
        jsonl([feedback_record("where is my parcel", "oos", "track_pakage", 1)]),
    )  # fmt: skip
    foreign = put(s3, "bad/heldout.csv", "text,category\n" + "hello,greeting\n" * 25)
    put(s3, "retrain/done/report.json", "{}")
    base, heldout, current = inputs["base"], inputs["heldout"], inputs["current"]
    return {
        "heldout-too-small": (
            ["--base-data", base, "--heldout", heldout, "--current-model", current,
             "--min-heldout", "100"],
            EXIT_BAD_DATA, f"bad data: {heldout}: 76 row(s), fewer than --min-heldout 100",
        ),
        "missing-column": (
            ["--base-data", base, "--heldout", heldout, "--current-model", current,
             "--label-col", "intent"],
            EXIT_BAD_DATA, f"bad data: {base}:1: header has no column 'intent'",
        ),
        "unparseable-feedback": (
            [*common(inputs), "--feedback", bad_feedback],
            EXIT_BAD_DATA, f"bad data: {bad_feedback}:2: invalid JSON",
        ),
        "unknown-label": (
            [*common(inputs), "--feedback", typo],
            EXIT_BAD_DATA, f"{typo}:1: corrected_intent 'track_pakage' is not an intent of the",
        ),
        "foreign-heldout": (
            ["--base-data", base, "--heldout", foreign, "--current-model", current],
            EXIT_BAD_DATA, f"bad data: {foreign}: none of its labels (greeting)",
        ),
        "output-already-written": (
            [*common(inputs)],
            EXIT_BAD_DATA, "already holds report.json",
        ),
        "missing-object": (
            ["--base-data", f"s3://{bucket}/data/nope.csv", "--heldout", heldout,
             "--current-model", current],
            EXIT_FAILED,
            f"s3://{bucket}/data/nope.csv (endpoint {s3.endpoint}): cannot read the object: "
            "NoSuchKey",
        ),
        "missing-model": (
            ["--base-data", base, "--heldout", heldout, "--current-model",
             f"s3://{bucket}/current/none"],
            EXIT_FAILED,
            f"s3://{bucket}/current/none (endpoint {s3.endpoint}): no objects under this prefix",
        ),
        "no-cuda": (
            [*common(inputs), "--device", "cuda"],
            EXIT_FAILED, "--device cuda: torch sees no CUDA device",
        ),
    }  # fmt: skip


CASES = [
    "heldout-too-small",
    "missing-column",
    "unparseable-feedback",
    "unknown-label",
    "foreign-heldout",
    "output-already-written",
    "missing-object",
    "missing-model",
    "no-cuda",
]


@pytest.mark.parametrize("case", CASES)
def test_bad_input_fails_before_training_and_writes_nothing(
    case: str, s3_server: S3Server, data: dict[str, str], tmp_path: Path
) -> None:
    # The current model need not exist: every case fails before it is fetched.
    args, status, message = bad_inputs(s3_server, data)[case]
    # Every GPU hidden, so that `--device cuda` fails the same on a machine that has one.
    no_gpu = {"CUDA_VISIBLE_DEVICES": ""} if case == "no-cuda" else None
    run_name = "done" if case == "output-already-written" else f"bad-{case}"
    run = retrain(s3_server, run_name, *args, env=no_gpu, cache=tmp_path)
    assert run.done.returncode == status, run.done.stderr
    assert message in run.done.stderr
    assert "Traceback" not in run.done.stderr
    assert run.done.stdout == ""
    assert "training on" not in run.done.stderr, "failed after training started"
    written = s3_server.object_path(s3_server.bucket, run.output_key)
    if case == "output-already-written":
        assert [p.name for p in written.iterdir()] == [REPORT_NAME]
        return
    # Only why it failed, for the operator's status: no candidate, no report.
    assert [p.name for p in written.iterdir()] == [ERROR_NAME]
    error = RunError.model_validate_json((written / ERROR_NAME).read_text(encoding="utf-8"))
    assert error.reason == ("BadData" if status == EXIT_BAD_DATA else "Failed")
    assert message in f"{PROG}: {error.message}" or message in error.message
