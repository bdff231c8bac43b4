"""NLU benchmark on Banking77: baselines against the project's classifier, fp32 and int8.

    .venv/bin/python benchmarks/nlu.py [--model DIR | --out DIR] [--json-out FILE]

Prints one JSON document to stdout (progress to stderr). Trains on ``train.csv`` only and
reports on ``test.csv`` of ``../shared/data/banking77`` (or ``$SWITCHBOARD_SHARED_DIR/data/
banking77``, or ``--data-dir``; SOURCE.md there says where a user downloads the same files).
In one run:

1. TF-IDF (word 1-2 grams) + logistic regression (scikit-learn).
2. Frozen all-MiniLM-L6-v2 (mean pooling, L2-normalised) + logistic regression (C=10).
3. The project's model (`switchboard nlu train` defaults: fine-tuned encoder + linear head),
   trained here into ``--out`` or reused from ``--model`` (its training time then comes from the
   artifact's metrics.json), evaluated as served: fp32 in PyTorch and int8 in ONNX Runtime; and
   PyTorch dynamic int8 (per-channel) of the same weights, the alternative that was not picked.

For every row: accuracy, macro-F1, training time (all cores), single-query latency p50/p95 (one
thread, one query at a time, tokenization included) and batch-64 throughput (one thread, batches in
data order). Targets from the issue are reported with pass/fail; a miss does not change the exit
status.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

# The helpers the test suite uses (tests/support): tests/ goes on the path, never the repository
# root, whose operator/ would shadow the stdlib module (hence `python -P` too).
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from support.report import machine_facts
from switchboard.serving.nlu.data import Example, read_csv
from switchboard.serving.nlu.evaluate import FP32, INT8, INT8_TORCH, evaluate
from switchboard.serving.nlu.metrics import accuracy, macro_f1, percentiles_ms

REPO = Path(__file__).resolve().parents[1]
BATCH = 64
TARGETS = {
    "int8_accuracy_min": 0.935,
    "int8_vs_fp32_max_drop_points": 0.5,
    "int8_p50_ms_max": 3.0,
    "int8_speedup_vs_fp32_torch_min": 2.0,
    "train_minutes_max": 20.0,
}


def log(message: str) -> None:
    print(f"[nlu-bench] {message}", file=sys.stderr, flush=True)


def default_data_dir() -> Path:
    shared = os.environ.get("SWITCHBOARD_SHARED_DIR")
    return (Path(shared) if shared else REPO.parent / "shared") / "data" / "banking77"


def machine_info() -> dict[str, Any]:
    import onnxruntime
    import sklearn
    import torch

    return machine_facts(
        torch=torch.__version__,
        onnxruntime=onnxruntime.__version__,
        scikit_learn=sklearn.__version__,
    )


def speed(
    predict: Callable[[list[str]], Sequence[str]], texts: list[str], queries: int
) -> dict[str, Any]:
    """Single-query p50/p95 and batch-64 throughput of a `texts -> labels` function."""
    for text in texts[:20]:
        predict([text])
    timings = []
    for i in range(queries):
        start = time.perf_counter()
        predict([texts[i % len(texts)]])
        timings.append(time.perf_counter() - start)
    start = time.perf_counter()
    for i in range(0, len(texts), BATCH):
        predict(texts[i : i + BATCH])
    return {
        "latency_ms": percentiles_ms(timings),
        f"batch{BATCH}_per_second": round(len(texts) / (time.perf_counter() - start), 1),
    }


def scores(gold: Sequence[str], pred: Sequence[str]) -> dict[str, float]:
    return {"accuracy": round(accuracy(gold, pred), 4), "macro_f1": round(macro_f1(gold, pred), 4)}


def tfidf_baseline(
    train: list[Example], test: list[Example], queries: int, threads: int
) -> dict[str, Any]:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from threadpoolctl import threadpool_limits

    pipeline = make_pipeline(
        TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True),
        LogisticRegression(C=10.0, max_iter=3000),
    )
    start = time.perf_counter()
    with threadpool_limits(threads):
        pipeline.fit([ex.text for ex in train], [ex.label for ex in train])
    train_seconds = time.perf_counter() - start
    texts = [ex.text for ex in test]
    with threadpool_limits(1):
        pred = list(pipeline.predict(texts))
        timing = speed(lambda batch: list(pipeline.predict(batch)), texts, queries)
    return {
        **scores([ex.label for ex in test], pred),
        "train_seconds": round(train_seconds, 1),
        **timing,
    }


def frozen_minilm_baseline(
    train: list[Example], test: list[Example], queries: int, threads: int
) -> dict[str, Any]:
    import torch
    from sklearn.linear_model import LogisticRegression
    from threadpoolctl import threadpool_limits

    from switchboard.serving.nlu.model import base_encoder_dir, from_base
    from switchboard.serving.nlu.tokenizer import Tokenizer

    tokenizer = Tokenizer(base_encoder_dir() / "tokenizer.json", 64)
    encoder = from_base(2).eval()  # the head is unused: embeddings only

    def embed(texts: Sequence[str]) -> np.ndarray[Any, Any]:
        out = []
        with torch.inference_mode():
            for i in range(0, len(texts), BATCH):
                ids, mask = tokenizer(texts[i : i + BATCH])
                vectors = encoder.embed(torch.from_numpy(ids), torch.from_numpy(mask))
                out.append(torch.nn.functional.normalize(vectors, dim=-1).numpy())
        return np.concatenate(out)

    torch.set_num_threads(threads)
    start = time.perf_counter()
    # Sorted by length to cut padding: this is training, not a serving measurement.
    order = sorted(range(len(train)), key=lambda i: len(train[i].text))
    vectors = embed([train[i].text for i in order])
    classifier = LogisticRegression(C=10.0, max_iter=3000)
    with threadpool_limits(threads):
        classifier.fit(vectors, [train[i].label for i in order])
    train_seconds = time.perf_counter() - start

    torch.set_num_threads(1)
    texts = [ex.text for ex in test]

    def predict(batch: list[str]) -> list[str]:
        return list(classifier.predict(embed(batch)))

    with threadpool_limits(1):
        pred = predict(texts)
        timing = speed(predict, texts, queries)
    return {
        **scores([ex.label for ex in test], pred),
        "train_seconds": round(train_seconds, 1),
        **timing,
    }


def project_model(
    args: argparse.Namespace, train: list[Example], test: list[Example]
) -> tuple[dict[str, Any], Path]:
    if args.model:
        path = Path(args.model)
        trained_here = False
    else:
        from switchboard.serving.nlu.data import check_classes
        from switchboard.serving.nlu.train import TrainConfig, train_artifact

        check_classes(train, str(args.data_dir / "train.csv"))
        path = Path(args.out or tempfile.mkdtemp(prefix="nlu-bench-")) / "banking77"
        config = TrainConfig()
        if args.epochs:
            config.epochs = args.epochs
        log(f"training the project's model into {path} ({config.epochs} epochs)")
        train_artifact(train, path, config, sources=["banking77/train.csv"], progress=True)
        trained_here = True
    metrics = json.loads((path / "metrics.json").read_text(encoding="utf-8"))
    log("evaluating fp32 (PyTorch), int8 (ONNX Runtime), int8 (PyTorch dynamic)")
    report = evaluate(
        path,
        test,
        threads=1,
        latency_queries=args.latency_queries,
        variants=(FP32, INT8, INT8_TORCH),
        progress=True,
    )
    training = metrics["training"]
    info = {
        "artifact": str(path),
        "trained_in_this_run": trained_here,
        "train_seconds": training["seconds"],
        "train_cpu_seconds": training.get("cpu_seconds"),
        "train_threads": training["threads"],
        "export_and_quantize_seconds": training.get("export_and_quantize_seconds"),
        "epochs": training["epochs"],
        "train_rows": metrics["data"]["train_rows"],
        "validation_rows": metrics["data"]["validation_rows"],
        "calibration": metrics["calibration"],
    }
    variants = {
        name: {
            key: v[key]
            for key in (
                "runtime",
                "accuracy",
                "macro_f1",
                "ece",
                "agreement_with_fp32",
                "latency_ms",
                f"batch{BATCH}_per_second",
            )
        }
        | {"in_scope_flagged_oos": v["oos"]["in_scope_flagged"]}
        for name, v in report["variants"].items()
    }
    return {"model": info, "variants": variants}, path


def check_targets(result: dict[str, Any]) -> dict[str, Any]:
    variants = result["project"]["variants"]
    fp32, int8 = variants["fp32"], variants["int8"]
    drop = round((fp32["accuracy"] - int8["accuracy"]) * 100, 2)
    speedup = round(fp32["latency_ms"]["p50"] / int8["latency_ms"]["p50"], 2)
    minutes = round(result["project"]["model"]["train_seconds"] / 60, 1)
    return {
        "int8_accuracy": {
            "value": int8["accuracy"],
            "target": f">= {TARGETS['int8_accuracy_min']}",
            "pass": int8["accuracy"] >= TARGETS["int8_accuracy_min"],
        },
        "int8_vs_fp32_drop_points": {
            "value": drop,
            "target": f"<= {TARGETS['int8_vs_fp32_max_drop_points']}",
            "pass": drop <= TARGETS["int8_vs_fp32_max_drop_points"],
        },
        "int8_p50_ms": {
            "value": int8["latency_ms"]["p50"],
            "target": f"<= {TARGETS['int8_p50_ms_max']}",
            "pass": int8["latency_ms"]["p50"] <= TARGETS["int8_p50_ms_max"],
        },
        "int8_speedup_vs_fp32_torch": {
            "value": speedup,
            "target": f">= {TARGETS['int8_speedup_vs_fp32_torch_min']}",
            "pass": speedup >= TARGETS["int8_speedup_vs_fp32_torch_min"],
        },
        "train_minutes": {
            "value": minutes,
            "target": f"<= {TARGETS['train_minutes_max']}",
            "pass": minutes <= TARGETS["train_minutes_max"],
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=default_data_dir())
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--model", help="evaluate this artifact instead of training one")
    source.add_argument("--out", help="folder for the artifact trained here (default: a temp dir)")
    parser.add_argument("--epochs", type=int, help="override `nlu train`'s default")
    parser.add_argument("--latency-queries", type=int, default=300)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="for training")
    parser.add_argument("--skip-baselines", action="store_true")
    parser.add_argument("--json-out", type=Path, help="also write the JSON document here")
    args = parser.parse_args(argv)

    train_csv, test_csv = args.data_dir / "train.csv", args.data_dir / "test.csv"
    for path in (train_csv, test_csv):
        if not path.is_file():
            parser.error(f"{path} is missing (see SOURCE.md beside it, or --data-dir)")
    train, test = read_csv(train_csv), read_csv(test_csv)
    result: dict[str, Any] = {
        "benchmark": "nlu",
        "command": " ".join(["benchmarks/nlu.py", *(argv if argv is not None else sys.argv[1:])]),
        "machine": machine_info(),
        "data": {"train": str(train_csv), "test": str(test_csv), "train_rows": len(train),
                 "test_rows": len(test), "intents": len({ex.label for ex in train})},
    }  # fmt: skip

    started = time.perf_counter()
    result["project"], _ = project_model(args, train, test)
    if not args.skip_baselines:
        log("TF-IDF + logistic regression")
        tfidf = tfidf_baseline(train, test, args.latency_queries, args.threads)
        log("frozen MiniLM + logistic regression")
        frozen = frozen_minilm_baseline(train, test, args.latency_queries, args.threads)
        result["baselines"] = {"tfidf_logreg": tfidf, "frozen_minilm_logreg": frozen}
    result["targets"] = check_targets(result)
    result["machine"]["load_avg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    result["wall_seconds"] = round(time.perf_counter() - started, 1)
    document = json.dumps(result, indent=2)
    if args.json_out:
        args.json_out.write_text(document + "\n", encoding="utf-8")
    print(document)
    return 0


if __name__ == "__main__":
    sys.exit(main())
