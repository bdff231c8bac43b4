"""Classification metrics and calibration (numpy only, so evaluation code stays light)."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]

MIN_TEMPERATURE = 0.05
MAX_TEMPERATURE = 20.0


def softmax(logits: npt.NDArray[Any], temperature: float = 1.0) -> FloatArray:
    z = np.asarray(logits, dtype=np.float64) / temperature
    z -= z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    out: FloatArray = e / e.sum(axis=-1, keepdims=True)
    return out


def nll(logits: npt.NDArray[Any], gold: npt.NDArray[np.int64], temperature: float) -> float:
    probs = softmax(logits, temperature)
    picked = probs[np.arange(len(gold)), gold]
    return float(-np.log(np.clip(picked, 1e-12, 1.0)).mean())


def fit_temperature(logits: npt.NDArray[Any], gold: npt.NDArray[np.int64]) -> float:
    """The softmax temperature that minimises validation NLL (Guo et al. 2017).

    NLL is unimodal in log T, so a golden-section search over [0.05, 20] finds it; the bounds keep
    a tiny validation split that the model gets all right from sending T to zero.
    """
    if len(gold) == 0:
        return 1.0
    lo, hi = math.log(MIN_TEMPERATURE), math.log(MAX_TEMPERATURE)
    ratio = (math.sqrt(5) - 1) / 2
    a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    fa, fb = nll(logits, gold, math.exp(a)), nll(logits, gold, math.exp(b))
    for _ in range(60):
        if fa < fb:
            hi, b, fb = b, a, fa
            a = hi - ratio * (hi - lo)
            fa = nll(logits, gold, math.exp(a))
        else:
            lo, a, fa = a, b, fb
            b = lo + ratio * (hi - lo)
            fb = nll(logits, gold, math.exp(b))
    return round(math.exp((lo + hi) / 2), 4)


def accuracy(gold: Sequence[str], pred: Sequence[str]) -> float:
    if not gold:
        return 0.0
    return sum(g == p for g, p in zip(gold, pred, strict=True)) / len(gold)


def macro_f1(gold: Sequence[str], pred: Sequence[str]) -> float:
    """Unweighted mean F1 over every label seen in gold or predictions (scikit-learn's default)."""
    labels = sorted(set(gold) | set(pred))
    if not labels:
        return 0.0
    tp: Counter[str] = Counter()
    n_pred: Counter[str] = Counter(pred)
    n_gold: Counter[str] = Counter(gold)
    for g, p in zip(gold, pred, strict=True):
        if g == p:
            tp[g] += 1
    scores = []
    for label in labels:
        denom = n_pred[label] + n_gold[label]
        scores.append(2 * tp[label] / denom if denom else 0.0)
    return sum(scores) / len(labels)


def top_confusions(gold: Sequence[str], pred: Sequence[str], k: int = 10) -> list[dict[str, Any]]:
    """The k most frequent (gold, predicted) mistakes."""
    pairs = Counter((g, p) for g, p in zip(gold, pred, strict=True) if g != p)
    ranked = sorted(pairs.items(), key=lambda item: (-item[1], item[0]))[:k]
    return [{"gold": g, "predicted": p, "count": n} for (g, p), n in ranked]


def expected_calibration_error(
    confidence: npt.NDArray[Any], correct: npt.NDArray[Any], bins: int = 15
) -> float:
    """ECE over equal-width confidence bins: mean |accuracy - confidence| weighted by bin size."""
    confidence = np.asarray(confidence, dtype=np.float64)
    correct = np.asarray(correct, dtype=np.float64)
    if len(confidence) == 0:
        return 0.0
    edges = np.linspace(0.0, 1.0, bins + 1)
    index = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    total = 0.0
    for b in range(bins):
        mask = index == b
        if mask.any():
            total += mask.mean() * abs(correct[mask].mean() - confidence[mask].mean())
    return float(total)


def oos_scores(gold_oos: npt.NDArray[Any], pred_oos: npt.NDArray[Any]) -> dict[str, float]:
    """Precision, recall and F1 of flagging out-of-scope queries."""
    gold_oos = np.asarray(gold_oos, dtype=bool)
    pred_oos = np.asarray(pred_oos, dtype=bool)
    tp = float((gold_oos & pred_oos).sum())
    precision = tp / pred_oos.sum() if pred_oos.any() else 0.0
    recall = tp / gold_oos.sum() if gold_oos.any() else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": float(precision), "recall": float(recall), "f1": float(f1)}


def best_oos_threshold(
    confidence: npt.NDArray[Any],
    top_is_oos: npt.NDArray[Any],
    gold_oos: npt.NDArray[Any],
    prefer: float = 0.5,
) -> float:
    """The confidence threshold that maximises OOS F1 (a query is OOS when its top intent is the
    oos label or its confidence is below the threshold).

    F1 is flat between observed confidences, and on a small validation split the flat top is
    wide; among equally good thresholds this takes the one closest to `prefer`, so thin evidence
    leaves the default alone instead of pushing the threshold to an extreme.
    """
    confidence = np.asarray(confidence, dtype=np.float64)
    top_is_oos = np.asarray(top_is_oos, dtype=bool)
    gold_oos = np.asarray(gold_oos, dtype=bool)
    # t rejects confidences below t: each observed c bounds a flat stretch from both sides.
    candidates = np.unique(np.concatenate([[0.0, prefer], confidence, confidence + 1e-9]))
    scores = np.array(
        [oos_scores(gold_oos, top_is_oos | (confidence < t))["f1"] for t in candidates]
    )
    best = candidates[scores >= scores.max() - 1e-12]
    # Not rounded: a threshold 1e-9 above an observed confidence must stay above it.
    return float(best[np.argmin(np.abs(best - prefer))])


def percentiles_ms(seconds: Sequence[float]) -> dict[str, float]:
    ms = np.asarray(seconds, dtype=np.float64) * 1000.0
    return {
        "p50": round(float(np.percentile(ms, 50)), 3),
        "p95": round(float(np.percentile(ms, 95)), 3),
    }
