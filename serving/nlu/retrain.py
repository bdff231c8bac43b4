"""`switchboard nlu retrain`: one run of a ModelTraining (docs/retraining.md), the entrypoint of
its RayJob.

Reads the base data, the feedback (JSONL exports in S3 or on disk, and/or the agent's live log in
Redis), the held-out set and the current model; trains a candidate exactly as `nlu train` does;
scores candidate and current model (int8, as served) on the same held-out rows in this process;
pushes the candidate to `<output>/model` and then, last, `<output>/report.json`, which the
operator polls for and judges.

Exit status: 0 once the report is written, whatever its figures (judging is the operator's job);
`EXIT_BAD_DATA` (2) when the input cannot make a fair run (a retry cannot help); `EXIT_FAILED`
(1) for everything else that may pass on another attempt (storage, Redis, device). Every input is
read and checked before training, so bad data fails in seconds and writes nothing.

A corrected label that the base data does not have is accepted as a new intent only when at least
2 training rows carry it after the merge: one alone is far more likely a typo than a new intent,
and a class of one cannot be both trained and validated on. New intents are listed in the report.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from ..config import is_remote
from ..training_report import (
    ERROR_NAME,
    EXIT_BAD_DATA,
    EXIT_FAILED,
    MODEL_DIR,
    REPORT_NAME,
    Confusion,
    DataFigures,
    HeldoutFigures,
    IntentFigures,
    ModelFigures,
    OosFigures,
    RunError,
    TrainingReport,
)
from .artifact import ArtifactError
from .data import (
    OOS_LABEL,
    DataError,
    Example,
    check_classes,
    decode_utf8,
    merge_feedback,
    normalize_text,
    parse_csv,
    parse_feedback,
    sample_per_class,
)

PROG = "switchboard nlu retrain"
DEVICES = ("auto", "cpu", "cuda")


class RetrainError(Exception):
    """A failure that is not the data's (storage, Redis, device): `EXIT_FAILED`."""


def log(message: str) -> None:
    print(f"{PROG}: {message}", file=sys.stderr, flush=True)


def _now() -> str:
    return datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def _join(prefix: str, name: str) -> str:
    return f"{prefix.rstrip('/')}/{name}"


# --- inputs ---------------------------------------------------------------------------------


def read_input(uri: str, endpoint: str | None) -> bytes:
    """The bytes of an `s3://bucket/key` object or a local file (a missing one: EXIT_FAILED, as
    the storage's fault or the job's configuration, not the data's content)."""
    if is_remote(uri):
        from ..model_store import read_object

        return read_object(uri, endpoint=endpoint)
    try:
        return Path(uri).read_bytes()
    except OSError as exc:
        raise RetrainError(f"{uri}: cannot read: {exc.strerror or exc}") from None


def expand_feedback(uris: Sequence[str], endpoint: str | None) -> list[str]:
    """Each `--feedback` as object URIs or paths: a prefix ending in `/` becomes every `*.jsonl`
    under it, in key order (exports named by date sort in time order, and later ones win)."""
    expanded: list[str] = []
    for uri in uris:
        if is_remote(uri) and uri.endswith("/"):
            from ..model_store import list_objects

            found = list_objects(uri, endpoint=endpoint, suffix=".jsonl")
            if not found:
                log(f"{uri}: no *.jsonl objects under this prefix: no feedback from it")
            expanded += found
        else:
            expanded.append(uri)
    return expanded


@dataclass
class Feedback:
    sources: list[str] = field(default_factory=list)
    corrections: list[Example] = field(default_factory=list)
    """Corrected examples in source order (a later correction of the same text wins)."""
    records: int = 0
    skipped: int = 0
    """Records without a correction (escalations nobody labelled)."""

    def add(self, lines: list[str], source: str) -> None:
        got, skipped = parse_feedback(lines, source)
        self.sources.append(source)
        self.corrections += got
        self.records += sum(1 for line in lines if line.strip())
        self.skipped += skipped


def redis_feedback(url_env: str, agent: str) -> tuple[str, list[str]]:
    """(source name, one JSON line per record) of the agent's feedback log in its Redis session
    store, read through the data plane's own store so the key layout cannot drift."""
    url = os.environ.get(url_env)
    if not url:
        raise RetrainError(f"--feedback-redis-url-env: environment variable {url_env} is not set")
    namespace, _, name = agent.partition("/")
    try:
        import redis
    except ImportError as exc:
        raise RetrainError(f"reading feedback from Redis needs `redis` (pip): {exc}") from None
    from ..workflow.sessions import RedisSessionStore

    async def read() -> tuple[str, list[dict[str, Any]]]:
        # The store's namespace is `<namespace>:<agent>`, as the agent's router opens it.
        store = RedisSessionStore(url, f"{namespace}:{name}", ttl_seconds=1)
        key = store.feedback_key
        try:
            return key, await store.feedback()
        except json.JSONDecodeError as exc:
            raise DataError(f"redis key {key}", [f"a record is not JSON ({exc.msg})"]) from None
        finally:
            await store.close()

    try:
        key, records = asyncio.run(read())
    except DataError:
        raise
    except (redis.RedisError, OSError, ValueError) as exc:  # ValueError: a malformed URL
        raise RetrainError(
            f"cannot read agent {agent}'s feedback log from Redis (URL in ${url_env}): {exc}"
        ) from None
    # Back to lines, so that a bad record is reported with its position like a file's.
    return f"redis key {key}", [json.dumps(r, ensure_ascii=False) for r in records]


def read_feedback_sources(args: argparse.Namespace) -> Feedback:
    feedback = Feedback()
    for uri in expand_feedback(args.feedback, args.endpoint):
        raw = read_input(uri, args.endpoint)
        feedback.add(decode_utf8(raw, uri).splitlines(), uri)
    if args.agent:
        source, lines = redis_feedback(args.feedback_redis_url_env, args.agent)
        feedback.add(lines, source)  # last: the live log is newer than any export
    return feedback


def check_new_labels(
    base_labels: set[str], corrections: Sequence[Example], merged: Sequence[Example]
) -> list[str]:
    """Corrected labels the base data lacks; each must have 2 training rows to count as a new
    intent rather than a typo."""
    rows = Counter(ex.label for ex in merged)
    new = sorted({fb.label for fb in corrections} - base_labels)
    problems = [
        f"{', '.join(fb.source for fb in corrections if fb.label == label)}: corrected_intent "
        f"{label!r} is not an intent of the base data and {rows[label]} training row(s) have it; "
        "a new intent needs at least 2 (a typo?)"
        for label in new
        if rows[label] < 2
    ]
    if problems:
        raise DataError("feedback", problems)
    return new


@dataclass
class Inputs:
    training: list[Example]
    heldout: list[Example]
    data: DataFigures
    heldout_figures: HeldoutFigures
    feedback_summary: dict[str, Any] | None
    """What `nlu train` records of merged feedback in the artifact's metrics.json."""


def read_data(args: argparse.Namespace) -> Inputs:
    """Base data + feedback (merged, held-out texts dropped) and the held-out set, checked."""
    cols = {"text_col": args.text_col, "label_col": args.label_col}
    base_raw = read_input(args.base_data, args.endpoint)
    base = parse_csv(base_raw, args.base_data, **cols)
    log(f"base data {args.base_data}: {len(base)} rows, {len({e.label for e in base})} intents")
    heldout_raw = read_input(args.heldout, args.endpoint)
    heldout = parse_csv(heldout_raw, args.heldout, **cols)
    if len(heldout) < args.min_heldout:
        raise DataError(
            args.heldout,
            [
                f"{len(heldout)} row(s), fewer than --min-heldout {args.min_heldout}: figures on "
                "so few rows would prove nothing"
            ],
        )
    feedback = read_feedback_sources(args)
    merged, summary = merge_feedback(base, feedback.corrections, feedback.skipped)
    if feedback.sources:
        log(
            f"feedback: {feedback.records} records from {len(feedback.sources)} source(s): "
            f"{summary.used} corrections ({summary.relabelled} relabelled, {summary.added} new), "
            f"{summary.skipped} uncorrected records skipped"
        )
    new_labels = check_new_labels({e.label for e in base}, feedback.corrections, merged)
    # A held-out text in training would reward memorising the test, for the candidate only.
    held = {normalize_text(e.text) for e in heldout}
    training = [e for e in merged if normalize_text(e.text) not in held]
    overlap = len(merged) - len(training)
    if overlap:
        log(f"dropped {overlap} training row(s) whose text is in the held-out set")
    if args.per_class:
        training = sample_per_class(training, args.per_class, args.seed)
    check_classes(training, args.base_data)
    known = {e.label for e in training} | {OOS_LABEL}
    if not {e.label for e in heldout} & known:
        raise DataError(
            args.heldout,
            [
                f"none of its labels ({', '.join(sorted({e.label for e in heldout}))}) is an "
                f"intent of the training data ({', '.join(sorted(known - {OOS_LABEL}))}): "
                "the wrong file or --label-col?"
            ],
        )
    data = DataFigures(
        base_uri=args.base_data,
        base_rows=len(base),
        base_sha256=hashlib.sha256(base_raw).hexdigest(),
        feedback_uris=feedback.sources,
        feedback_records=feedback.records,
        corrections=summary.used,
        relabelled=summary.relabelled,
        added=summary.added,
        training_rows=len(training),
        new_labels=new_labels,
    )
    heldout_figures = HeldoutFigures(
        uri=args.heldout,
        rows=len(heldout),
        sha256=hashlib.sha256(heldout_raw).hexdigest(),
        overlap_with_training=overlap,
    )
    summary_json = {"files": feedback.sources, **asdict(summary)} if feedback.sources else None
    return Inputs(training, heldout, data, heldout_figures, summary_json)


def local_model(uri: str, endpoint: str | None) -> Path:
    """The current model's directory, verified (an s3:// one fetched into the model cache)."""
    from .artifact import read_manifest

    if is_remote(uri):
        from ..model_store import fetch

        path = fetch(uri, endpoint=endpoint)
    else:
        path = Path(uri)
    read_manifest(path)
    return path


def check_output(output: str, endpoint: str | None) -> None:
    """A run's output is written once: a report there means this run already finished (and its
    candidate may be rolled out), so it is never replaced."""
    report = _join(output, REPORT_NAME)
    if is_remote(output):
        from ..model_store import object_exists

        exists = object_exists(report, endpoint=endpoint)
    else:
        exists = Path(report).exists()
    if exists:
        raise OutputExists(
            output, [f"already holds {REPORT_NAME}: a run's output is written once; use a new run"]
        )


class OutputExists(DataError):
    """The output holds a finished run's report: nothing may be written beside it."""


# --- training and evaluation ----------------------------------------------------------------


def resolve_device(requested: str) -> str:
    import torch

    available = torch.cuda.is_available()
    if requested == "auto":
        return "cuda" if available else "cpu"
    if requested == "cuda" and not available:
        raise RetrainError(
            f"--device cuda: torch sees no CUDA device (torch {torch.__version__}, "
            f"built for CUDA {torch.version.cuda or 'none'})"
        )
    return requested


@dataclass
class Scored:
    figures: ModelFigures
    predicted: list[str]


def score(model: Path, uri: str, heldout: Sequence[Example], threads: int) -> Scored:
    """Figures of the int8 ONNX Runtime variant (the one agents serve) on the held-out rows,
    batched in data order as `nlu eval` does."""
    from .evaluate import BATCH_SIZE, quality
    from .runtime import IntentClassifier

    clf = IntentClassifier.load(model, "int8", runtime="onnxruntime", num_threads=threads)
    gold = [e.label for e in heldout]
    probs = clf.probabilities([e.text for e in heldout], BATCH_SIZE)
    figures = quality(clf, probs, gold)
    predicted = [clf.labels[i] for i in probs.argmax(axis=1)]
    return Scored(
        ModelFigures(
            uri=uri,
            accuracy=figures["accuracy"],
            macro_f1=figures["macro_f1"],
            ece=figures["ece"],
            oos=OosFigures(**figures["oos"]),
            unknown_labels=sorted({g for g in gold if g not in clf.labels and g != OOS_LABEL}),
            labels=list(clf.labels),
            top_confusions=[Confusion(**c) for c in figures["top_confusions"]],
        ),
        predicted,
    )


def per_intent(
    gold: Sequence[str], current: Sequence[str], candidate: Sequence[str]
) -> list[IntentFigures]:
    """Recall and F1 of every held-out intent for both models (an intent a model does not know
    scores 0)."""

    def recall_f1(label: str, predicted: Sequence[str]) -> tuple[float, float]:
        hits = sum(g == p == label for g, p in zip(gold, predicted, strict=True))
        support = sum(g == label for g in gold)
        claimed = sum(p == label for p in predicted)
        return round(hits / support, 4), round(2 * hits / (support + claimed), 4)

    figures = []
    for label in sorted(set(gold)):
        current_recall, current_f1 = recall_f1(label, current)
        candidate_recall, candidate_f1 = recall_f1(label, candidate)
        figures.append(
            IntentFigures(
                intent=label,
                support=sum(g == label for g in gold),
                current_recall=current_recall,
                candidate_recall=candidate_recall,
                current_f1=current_f1,
                candidate_f1=candidate_f1,
            )
        )
    return figures


# --- output ---------------------------------------------------------------------------------


def push_candidate(artifact_dir: Path, output: str, endpoint: str | None) -> str:
    """The candidate under `<output>/model` (an s3 push writes its manifest last)."""
    candidate = _join(output, MODEL_DIR)
    if is_remote(output):
        from ..model_store import push

        push(artifact_dir, candidate, endpoint=endpoint)
    else:
        target = Path(output) / MODEL_DIR
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(artifact_dir, target)
    log(f"pushed the candidate to {candidate}")
    return candidate


def write_report(report: TrainingReport, output: str, endpoint: str | None) -> None:
    """The report, after the candidate: the operator acts on it, so when it exists the artifact
    it names is complete."""
    uri = _join(output, REPORT_NAME)
    body = (report.model_dump_json(indent=2) + "\n").encode()
    if is_remote(output):
        from ..model_store import write_object

        write_object(uri, body, endpoint=endpoint)
    else:
        partial = Path(output) / f".{REPORT_NAME}.partial"
        partial.write_bytes(body)
        partial.replace(Path(uri))
    log(f"wrote {uri}")


def retrain(args: argparse.Namespace) -> TrainingReport:
    started_at, started = _now(), time.perf_counter()
    device = resolve_device(args.device)
    check_output(args.output, args.endpoint)
    inputs = read_data(args)
    current_dir = local_model(args.current_model, args.endpoint)
    log(f"current model {args.current_model}: verified")

    from .artifact import read_manifest
    from .train import TrainConfig, train_artifact

    config = TrainConfig(seed=args.seed, threads=args.threads, device=device).tuned(
        args.epochs, args.batch_size, args.lr
    )
    threads = args.threads or os.cpu_count() or 1
    intents = len({e.label for e in inputs.training})
    log(f"training on {len(inputs.training)} rows, {intents} intents, device {device}")
    with tempfile.TemporaryDirectory(prefix="switchboard-retrain-") as tmp:
        out = Path(tmp) / MODEL_DIR
        train_started = time.perf_counter()
        train_artifact(
            inputs.training,
            out,
            config,
            sources=[args.base_data, *inputs.data.feedback_uris],
            feedback=inputs.feedback_summary,
            progress=False,
        )
        train_seconds = time.perf_counter() - train_started
        log(f"trained, calibrated and quantized in {train_seconds:.0f} s")
        current = score(current_dir, args.current_model, inputs.heldout, threads)
        candidate_uri = _join(args.output, MODEL_DIR)
        candidate = score(out, candidate_uri, inputs.heldout, threads)
        log(
            f"held-out ({len(inputs.heldout)} rows, int8): accuracy current "
            f"{current.figures.accuracy:.4f}, candidate {candidate.figures.accuracy:.4f}; "
            f"macro-F1 current {current.figures.macro_f1:.4f}, "
            f"candidate {candidate.figures.macro_f1:.4f}"
        )
        checksums = dict(read_manifest(out)["files"])
        push_candidate(out, args.output, args.endpoint)
    gold = [e.label for e in inputs.heldout]
    report = TrainingReport(
        run=args.run,
        candidate_uri=candidate_uri,
        current=current.figures,
        candidate=candidate.figures,
        intents=per_intent(gold, current.predicted, candidate.predicted),
        data=inputs.data,
        heldout=inputs.heldout_figures,
        checksums=checksums,
        device=device,
        train_seconds=round(train_seconds, 1),
        total_seconds=round(time.perf_counter() - started, 1),
        started_at=started_at,
        finished_at=_now(),
    )
    write_report(report, args.output, args.endpoint)
    return report


def headline(report: TrainingReport) -> dict[str, Any]:
    return {
        "run": report.run,
        "current_accuracy": report.current.accuracy,
        "candidate_accuracy": report.candidate.accuracy,
        "current_macro_f1": report.current.macro_f1,
        "candidate_macro_f1": report.candidate.macro_f1,
        "candidate_uri": report.candidate_uri,
    }


def one_line(exc: DataError, shown: int = 5) -> str:
    """A `DataError` as one line naming the object and, where there is one, the line (`uri:N:`),
    so that the operator can put it in a status message as is."""
    parts = [
        re.sub(r"^line (\d+): ", rf"{exc.source}:\1: ", p) if p.startswith("line ") else p
        for p in exc.problems[:shown]
    ]
    parts = [p if p.startswith(exc.source) else f"{exc.source}: {p}" for p in parts]
    more = len(exc.problems) - shown
    return "; ".join(parts) + (f" (and {more} more)" if more > 0 else "")


def write_error(
    args: argparse.Namespace, reason: Literal["BadData", "Failed"], message: str
) -> None:
    """`error.json` in place of the report, so the operator can say why the run failed without
    anyone reading the job's logs. Best effort: the storage may be what failed."""
    uri = _join(args.output, ERROR_NAME)
    body = (
        RunError(reason=reason, message=message, run=args.run).model_dump_json() + "\n"
    ).encode()
    try:
        if is_remote(args.output):
            from ..model_store import write_object

            write_object(uri, body, endpoint=args.endpoint)
        else:
            Path(args.output).mkdir(parents=True, exist_ok=True)
            Path(uri).write_bytes(body)
    except (ArtifactError, OSError) as exc:
        log(f"could not write {uri}: {exc}")


def run(args: argparse.Namespace) -> int:
    """`retrain` with its exit status; expected failures are one message on stderr (and in
    `error.json` beside where the report would be)."""
    try:
        report = retrain(args)
    except OutputExists as exc:  # a finished run's output: write nothing beside its report
        print(f"{PROG}: bad data: {one_line(exc)}", file=sys.stderr)
        return EXIT_BAD_DATA
    except DataError as exc:
        message = f"bad data: {one_line(exc)}"
        print(f"{PROG}: {message}", file=sys.stderr)
        write_error(args, "BadData", message)
        return EXIT_BAD_DATA
    except (RetrainError, ArtifactError) as exc:  # ModelStoreError is an ArtifactError
        print(f"{PROG}: {exc}", file=sys.stderr)
        write_error(args, "Failed", str(exc))
        return EXIT_FAILED
    print(json.dumps(headline(report)), flush=True)
    return 0
