"""The gate between a retraining run and a rollout: does the candidate beat the current model
on the held-out set by enough, without losing any intent? Pure, tested as a table in
tests/test_training_logic.py; both models' figures come from the same run's report."""

from __future__ import annotations

from dataclasses import dataclass

from switchboard.serving.training_report import ModelFigures, TrainingReport

from ..api.modeltraining import GateSpec

# Figures are rounded to 4 places in the report: equal means equal, not 1e-17 apart.
EPSILON = 1e-9


@dataclass(frozen=True)
class Criterion:
    name: str
    """The GateSpec field that decided it (`minGain`, `maxIntentRegression`, ...)."""
    passed: bool
    message: str


@dataclass(frozen=True)
class Verdict:
    passed: bool
    criteria: tuple[Criterion, ...]

    @property
    def failed(self) -> tuple[Criterion, ...]:
        return tuple(c for c in self.criteria if not c.passed)

    @property
    def message(self) -> str:
        """Every failed criterion with its figures, or the passing figures."""
        chosen = self.failed or self.criteria
        return "; ".join(c.message for c in chosen)


def _metric(figures: ModelFigures, metric: str) -> float:
    return figures.accuracy if metric == "accuracy" else figures.macro_f1


def judge(gate: GateSpec, report: TrainingReport) -> Verdict:
    criteria: list[Criterion] = []
    rows = report.heldout.rows
    criteria.append(
        Criterion(
            "minHeldoutRows",
            rows >= gate.min_heldout_rows,
            f"held-out set of {rows} rows (minHeldoutRows {gate.min_heldout_rows})",
        )
    )
    current, candidate = (
        _metric(report.current, gate.metric),
        _metric(report.candidate, gate.metric),
    )
    gain = candidate - current
    criteria.append(
        Criterion(
            "minGain",
            gain >= gate.min_gain - EPSILON,
            f"{gate.metric} {current:.4f} -> {candidate:.4f} ({gain:+.4f}, minGain "
            f"{gate.min_gain:+.4f})",
        )
    )
    judged = [i for i in report.intents if i.support >= gate.min_intent_support]
    worst = max(judged, key=lambda i: i.current_recall - i.candidate_recall, default=None)
    if worst is not None:
        regressions = [
            i
            for i in judged
            if i.current_recall - i.candidate_recall > gate.max_intent_regression + EPSILON
        ]
        shown = regressions or [worst]
        criteria.append(
            Criterion(
                "maxIntentRegression",
                not regressions,
                ", ".join(
                    f"intent {i.intent} recall {i.current_recall:.4f} -> "
                    f"{i.candidate_recall:.4f} ({i.recall_delta:+.4f})"
                    for i in shown[:5]
                )
                + (f" and {len(shown) - 5} more" if len(shown) > 5 else "")
                + f" (maxIntentRegression {gate.max_intent_regression:.4f})",
            )
        )
    return Verdict(all(c.passed for c in criteria), tuple(criteria))
