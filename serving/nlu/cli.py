"""`switchboard nlu train|eval|predict|push|retrain` (dispatched from switchboard.operator.cli).

Exit status: 0 success, 1 bad data or artifact (message, no traceback), 2 usage error; `retrain`
has its own (serving.training_report: 2 bad data, 1 other failures).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .artifact import ArtifactError, check_writable
from .data import (
    DataError,
    Example,
    check_classes,
    merge_feedback,
    read_csv,
    read_feedback,
    sample_per_class,
)
from .slots import DEFAULT_SLOT_PATTERNS, SlotConfigError, load_patterns

PROG = "switchboard nlu"


def _positive_int(raw: str) -> int:
    value = int(raw)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _fraction(raw: str) -> float:
    value = float(raw)
    if not 0.0 < value < 0.5:
        raise argparse.ArgumentTypeError(f"must be between 0 and 0.5, got {value}")
    return value


def _probability(raw: str) -> float:
    value = float(raw)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="Train, evaluate and try the intent classifier (offline)."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser(
        "train",
        help="fine-tune on a CSV and write an artifact directory",
        description="Fine-tune MiniLM + a linear head on a headed CSV, calibrate it on a "
        "validation split, quantize it to int8, and write a versioned artifact directory.",
    )
    train.add_argument("--data", required=True, help="CSV with a header row")
    train.add_argument("--out", required=True, help="artifact directory to write")
    train.add_argument("--text-col", default="text", help="text column (default: text)")
    train.add_argument("--label-col", default="category", help="label column (default: category)")
    train.add_argument(
        "--val-split", type=_fraction, default=0.1, help="validation fraction (default: 0.1)"
    )
    train.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    train.add_argument("--epochs", type=_positive_int, default=None, help="default: 4")
    train.add_argument("--batch-size", type=_positive_int, default=None, help="default: 32")
    train.add_argument("--lr", type=float, default=None, help="encoder learning rate (1e-4)")
    train.add_argument(
        "--feedback",
        action="append",
        default=[],
        metavar="JSONL",
        help="feedback export to merge (corrected labels win; repeatable; see docs/nlu.md)",
    )
    train.add_argument("--slots", help="slot patterns (.json/.yaml) instead of the defaults")
    train.add_argument(
        "--oos-threshold",
        type=_probability,
        help="calibrated confidence below which a query is out of scope "
        "(default: tuned on validation when the data has an 'oos' class, else 0.5)",
    )
    train.add_argument(
        "--per-class",
        type=_positive_int,
        help="use at most N rows per class (quick runs)",
    )
    train.add_argument("--threads", type=_positive_int, help="training threads (default: all)")
    train.add_argument("-q", "--quiet", action="store_true", help="no progress bars")

    ev = sub.add_parser(
        "eval",
        help="accuracy, calibration, OOS and speed of fp32 and int8 on labelled data",
    )
    ev.add_argument("--model", required=True, help="artifact directory or s3://bucket/prefix")
    ev.add_argument("--endpoint", help=ENDPOINT_HELP)
    ev.add_argument("--data", required=True, help="CSV with a header row")
    ev.add_argument("--text-col", default="text")
    ev.add_argument("--label-col", default="category")
    ev.add_argument("--json", action="store_true", help="print the report as JSON")
    ev.add_argument(
        "--threads", type=_positive_int, default=1, help="inference threads (default: 1)"
    )
    ev.add_argument(
        "--latency-queries",
        type=_positive_int,
        default=200,
        help="single queries timed per variant (default: 200)",
    )
    ev.add_argument("-q", "--quiet", action="store_true", help="no progress bars")

    pr = sub.add_parser("predict", help="classify one or more texts")
    pr.add_argument("--model", required=True, help="artifact directory or s3://bucket/prefix")
    pr.add_argument("--endpoint", help=ENDPOINT_HELP)
    pr.add_argument("text", nargs="+", help="query text(s)")
    pr.add_argument("--quantization", choices=["int8", "none"], default="int8")
    pr.add_argument("--top-k", type=_positive_int, default=3)
    pr.add_argument("--json", action="store_true", help="one JSON object per text")

    push = sub.add_parser(
        "push",
        help="upload an artifact directory to S3-compatible storage",
        description="Verify an artifact directory and upload every file to s3://bucket/prefix, "
        "manifest last (a reader never sees a manifest before its files). Credentials come from "
        "the standard AWS environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_PROFILE, "
        "...).",
    )
    push.add_argument("dir", help="artifact directory from `switchboard nlu train`")
    push.add_argument("uri", help="s3://bucket/prefix")
    push.add_argument("--endpoint", help=ENDPOINT_HELP)

    _add_retrain(sub)
    return parser


def _agent_ref(raw: str) -> str:
    namespace, _, name = raw.partition("/")
    if not namespace or not name or "/" in name:
        raise argparse.ArgumentTypeError(f"expected NAMESPACE/NAME, got {raw!r}")
    return raw


def _add_retrain(sub: Any) -> None:
    from .retrain import DEVICES

    rt = sub.add_parser(
        "retrain",
        help="one retraining run: train a candidate, score it beside the current model, and "
        "write both to object storage (a ModelTraining's RayJob)",
        description="Merge feedback into the base data, train + calibrate + quantize a candidate "
        "as `train` does, evaluate candidate and current model (int8) on the same held-out rows, "
        "push the candidate to OUTPUT/model and then write OUTPUT/report.json. Inputs are "
        "s3://bucket/key objects or local paths. Exit status: 0 report written, 2 bad data (a "
        "retry cannot help), 1 any other failure (storage, Redis, device).",
    )
    rt.add_argument("--run", required=True, help="run name (recorded in the report)")
    rt.add_argument("--base-data", required=True, metavar="URI", help="base training CSV")
    rt.add_argument(
        "--feedback",
        action="append",
        default=[],
        metavar="URI",
        help="feedback JSONL: an object, a prefix ending in / (every *.jsonl under it, in key "
        "order) or a file; repeatable, later sources win",
    )
    rt.add_argument(
        "--feedback-redis-url-env",
        metavar="VAR",
        help="also read --agent's feedback log from its Redis session store (URL in $VAR)",
    )
    rt.add_argument("--agent", type=_agent_ref, metavar="NS/NAME", help="the agent of that log")
    rt.add_argument("--heldout", required=True, metavar="URI", help="held-out CSV")
    rt.add_argument(
        "--current-model", required=True, metavar="URI", help="the model agents serve now"
    )
    rt.add_argument(
        "--output", required=True, metavar="URI", help="s3://bucket/prefix/RUN (or a directory)"
    )
    rt.add_argument(
        "--min-heldout",
        type=_positive_int,
        default=20,
        help="fewer held-out rows are bad data (default: 20)",
    )
    rt.add_argument("--text-col", default="text", help="text column (default: text)")
    rt.add_argument("--label-col", default="category", help="label column (default: category)")
    rt.add_argument("--epochs", type=_positive_int, default=None, help="default: 4")
    rt.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    rt.add_argument("--per-class", type=_positive_int, help="use at most N rows per class")
    rt.add_argument("--batch-size", type=_positive_int, default=None, help="default: 32")
    rt.add_argument("--lr", type=float, default=None, help="encoder learning rate (1e-4)")
    rt.add_argument("--threads", type=_positive_int, help="training threads (default: all)")
    rt.add_argument(
        "--device",
        choices=DEVICES,
        default="auto",
        help="training device (default: auto, cuda when torch sees one)",
    )
    rt.add_argument("--endpoint", help=ENDPOINT_HELP)


ENDPOINT_HELP = (
    "S3-compatible endpoint URL for s3:// models, e.g. http://minio:9000 "
    "(default: $AWS_ENDPOINT_URL, else AWS S3)"
)


def _local_model(args: argparse.Namespace) -> str:
    """The artifact directory of --model: itself, or the verified local cache of an s3:// URI."""
    from ..config import is_remote
    from ..model_store import fetch

    if not is_remote(args.model):
        return str(args.model)
    return str(fetch(args.model, endpoint=args.endpoint))


def _load_training_data(args: argparse.Namespace) -> tuple[list[Example], dict[str, Any] | None]:
    examples = read_csv(args.data, text_col=args.text_col, label_col=args.label_col)
    summary: dict[str, Any] | None = None
    if args.feedback:
        corrections: list[Example] = []
        skipped = 0
        for path in args.feedback:
            got, n = read_feedback(path)
            corrections += got
            skipped += n
        examples, merged = merge_feedback(examples, corrections, skipped)
        summary = {"files": list(args.feedback), **merged.__dict__}
    if args.per_class:
        examples = sample_per_class(examples, args.per_class, args.seed)
    check_classes(examples, str(Path(args.data)))  # feedback rows name their own file
    return examples, summary


def cmd_train(args: argparse.Namespace) -> int:
    check_writable(Path(args.out))  # before minutes of training, not after
    examples, feedback = _load_training_data(args)
    patterns = load_patterns(args.slots) if args.slots else DEFAULT_SLOT_PATTERNS
    if feedback:
        print(
            f"feedback: {feedback['used']} corrections ({feedback['relabelled']} relabelled, "
            f"{feedback['added']} new), {feedback['skipped']} uncorrected records skipped",
            file=sys.stderr,
        )
    from .train import TrainConfig, train_artifact

    config = TrainConfig(val_split=args.val_split, seed=args.seed, threads=args.threads).tuned(
        args.epochs, args.batch_size, args.lr
    )
    config.oos_threshold = args.oos_threshold
    n_labels = len({ex.label for ex in examples})
    print(f"training on {len(examples)} rows, {n_labels} intents", file=sys.stderr)
    result = train_artifact(
        examples,
        args.out,
        config,
        sources=[args.data, *args.feedback],
        slot_patterns=patterns,
        feedback=feedback,
        progress=not args.quiet,
    )
    val = result.metrics["validation"]
    print(
        f"wrote {result.path}: validation accuracy fp32 {val['fp32']['accuracy']:.4f}, "
        f"int8 {val['int8']['accuracy']:.4f} "
        f"({result.metrics['training']['seconds']:.0f} s training)"
    )
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from .artifact import read_manifest

    model = _local_model(args)
    read_manifest(model)  # a bad artifact fails before reading a large CSV
    examples = read_csv(args.data, text_col=args.text_col, label_col=args.label_col)
    from .evaluate import evaluate, format_report

    report = evaluate(
        model,
        examples,
        threads=args.threads,
        latency_queries=args.latency_queries,
        progress=not args.quiet,
    )
    report["data"] = args.data
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from .runtime import IntentClassifier

    clf = IntentClassifier.load(_local_model(args), args.quantization)
    for prediction in clf.predict(args.text, top_k=args.top_k):
        if args.json:
            print(json.dumps(prediction.to_dict(), ensure_ascii=False))
            continue
        flag = " (out of scope)" if prediction.is_oos else ""
        print(f"{prediction.intent}{flag}  confidence {prediction.confidence:.3f}")
        for score in prediction.top_k:
            print(f"  {score.probability:.3f}  {score.intent}")
        for slot in prediction.slots:
            print(f"  slot {slot.name} = {slot.value!r}")
    return 0


def cmd_push(args: argparse.Namespace) -> int:
    from ..model_store import push

    count = push(args.dir, args.uri, endpoint=args.endpoint)
    print(f"pushed {args.dir} to {args.uri} ({count} files, manifest last)")
    return 0


def cmd_retrain(args: argparse.Namespace) -> int:
    if bool(args.feedback_redis_url_env) != bool(args.agent):
        print(f"{PROG} retrain: --feedback-redis-url-env and --agent go together", file=sys.stderr)
        return 2
    from .retrain import run

    return run(args)  # maps its own errors to the exit codes the operator reads


COMMANDS = {
    "train": cmd_train,
    "eval": cmd_eval,
    "predict": cmd_predict,
    "push": cmd_push,
    "retrain": cmd_retrain,
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    except SystemExit as exc:  # argparse has printed usage; return its status instead of exiting
        return int(exc.code) if isinstance(exc.code, int) else 2
    try:
        return COMMANDS[args.command](args)
    except (DataError, ArtifactError, SlotConfigError) as exc:
        print(f"{PROG} {args.command}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{PROG} {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head`: not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
