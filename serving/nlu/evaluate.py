"""`nlu eval`: quality and speed of fp32 and int8 side by side, on labelled data."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from tqdm import tqdm

from .data import OOS_LABEL, Example
from .metrics import (
    accuracy,
    expected_calibration_error,
    macro_f1,
    oos_scores,
    percentiles_ms,
    softmax,
    top_confusions,
)
from .runtime import IntentClassifier, Quantization, Runtime

BATCH_SIZE = 64
Variant = tuple[str, Quantization, Runtime]
FP32: Variant = ("fp32", "none", "torch")
INT8: Variant = ("int8", "int8", "onnxruntime")
INT8_TORCH: Variant = ("int8-torch", "int8", "torch")
"""PyTorch dynamic int8: not served, measured by benchmarks/nlu.py to justify ONNX Runtime."""


def single_query_latency(
    clf: IntentClassifier, texts: Sequence[str], queries: int, warmup: int = 20
) -> dict[str, float]:
    """p50/p95 of `predict([text])` end to end (tokenize, infer, calibrate, slots)."""
    sample = [texts[i % len(texts)] for i in range(queries + warmup)]
    for text in sample[:warmup]:
        clf.predict([text])
    timings = []
    for text in sample[warmup:]:
        start = time.perf_counter()
        clf.predict([text])
        timings.append(time.perf_counter() - start)
    return percentiles_ms(timings)


def quality(
    clf: IntentClassifier, probs: npt.NDArray[np.float64], gold: Sequence[str]
) -> dict[str, Any]:
    labels = clf.labels
    top = probs.argmax(axis=1)
    pred = [labels[i] for i in top]
    confidence = probs.max(axis=1)
    flagged = (confidence < clf.threshold) | np.array([p == OOS_LABEL for p in pred])
    gold_oos = np.array([g == OOS_LABEL for g in gold])
    in_scope = ~gold_oos
    return {
        "accuracy": round(accuracy(gold, pred), 4),
        "macro_f1": round(macro_f1(gold, pred), 4),
        "ece": round(expected_calibration_error(confidence, np.array(pred) == np.array(gold)), 4),
        "top_confusions": top_confusions(gold, pred, 10),
        "oos": {
            "threshold": clf.threshold,
            # In-scope queries the threshold would hand off: the cost of OOS detection.
            "in_scope_flagged": round(
                float(flagged[in_scope].mean()) if in_scope.any() else 0.0, 4
            ),
            **(
                {k: round(v, 4) for k, v in oos_scores(gold_oos, flagged).items()}
                if gold_oos.any()
                else {"precision": None, "recall": None, "f1": None}
            ),
        },
    }


def evaluate(
    model: str | Path,
    examples: Sequence[Example],
    *,
    threads: int = 1,
    latency_queries: int = 200,
    variants: Sequence[Variant] = (FP32, INT8),
    progress: bool = True,
) -> dict[str, Any]:
    """Every figure of `nlu eval` for the artifact at `model` on `examples`: one entry per
    variant (fp32 must come first: agreement is measured against it)."""
    texts = [ex.text for ex in examples]
    gold = [ex.label for ex in examples]
    report: dict[str, Any] = {"model": str(model), "rows": len(examples), "threads": threads}
    if variants[0] != FP32:
        raise ValueError("the first variant must be fp32")
    fp32_top: npt.NDArray[np.int64] | None = None
    results: dict[str, Any] = {}
    bar = tqdm(
        total=len(variants) * (len(texts) + latency_queries),
        desc="eval",
        unit="q",
        disable=not progress,
        file=sys.stderr,
    )
    for name, quantization, runtime in variants:
        clf = IntentClassifier.load(model, quantization, runtime=runtime, num_threads=threads)
        unknown = sorted({g for g in gold if g not in clf.labels and g != OOS_LABEL})
        report["unknown_labels"] = unknown
        logits = np.zeros((len(texts), len(clf.labels)), dtype=np.float32)
        start = time.perf_counter()
        # Batches in data order, as a serving batcher would form them (no length sorting).
        for i in range(0, len(texts), BATCH_SIZE):
            logits[i : i + BATCH_SIZE] = clf.logits(texts[i : i + BATCH_SIZE], BATCH_SIZE)
            bar.update(len(texts[i : i + BATCH_SIZE]))
        seconds = time.perf_counter() - start
        probs = softmax(logits, clf.temperature)
        top = probs.argmax(axis=1)
        fp32_top = top if fp32_top is None else fp32_top
        latency = single_query_latency(clf, texts, latency_queries)
        bar.update(latency_queries)
        results[name] = {
            "runtime": runtime,
            **quality(clf, probs, gold),
            "agreement_with_fp32": round(float((top == fp32_top).mean()), 4),
            "latency_ms": latency,
            f"batch{BATCH_SIZE}_per_second": round(len(texts) / seconds, 1),
        }
        del clf
    bar.close()
    report["variants"] = results
    if "int8" in results:
        report["int8_agreement_with_fp32"] = results["int8"]["agreement_with_fp32"]
        report["int8_speedup_p50"] = round(
            results["fp32"]["latency_ms"]["p50"] / results["int8"]["latency_ms"]["p50"], 2
        )
    return report


def format_report(report: dict[str, Any]) -> str:
    """The human-readable form of `evaluate`'s report."""
    v = report["variants"]
    names = list(v)
    rows: list[tuple[str, Callable[[dict[str, Any]], str]]] = [
        ("accuracy", lambda x: f"{x['accuracy']:.4f}"),
        ("macro-F1", lambda x: f"{x['macro_f1']:.4f}"),
        ("ECE", lambda x: f"{x['ece']:.4f}"),
        ("OOS precision", lambda x: _opt(x["oos"]["precision"])),
        ("OOS recall", lambda x: _opt(x["oos"]["recall"])),
        ("in-scope flagged OOS", lambda x: f"{x['oos']['in_scope_flagged']:.4f}"),
        ("p50 ms (1 query)", lambda x: f"{x['latency_ms']['p50']:.2f}"),
        ("p95 ms (1 query)", lambda x: f"{x['latency_ms']['p95']:.2f}"),
        (f"batch-{BATCH_SIZE} queries/s", lambda x: f"{x[f'batch{BATCH_SIZE}_per_second']:.0f}"),
    ]
    width = max(len(r[0]) for r in rows)
    lines = [
        f"{report['model']}: {report['rows']} rows, {report['threads']} thread(s)",
        f"{'':<{width}}  " + "  ".join(f"{n + ' (' + v[n]['runtime'] + ')':>20}" for n in names),
    ]
    lines += [
        f"{label:<{width}}  " + "  ".join(f"{fmt(v[n]):>20}" for n in names) for label, fmt in rows
    ]
    lines.append(f"int8/fp32 agreement: {report['int8_agreement_with_fp32']:.4f}")
    lines.append(f"int8 speed-up (p50): {report['int8_speedup_p50']:.2f}x")
    if report.get("unknown_labels"):
        lines.append(f"labels the model does not know: {', '.join(report['unknown_labels'])}")
    confusions = v[names[-1]]["top_confusions"]
    if confusions:
        lines.append(f"top confusions ({names[-1]}):")
        lines += [f"  {c['count']:>4}  {c['gold']} -> {c['predicted']}" for c in confusions]
    return "\n".join(lines)


def _opt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"
