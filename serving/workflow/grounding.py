"""Grounded or honest: which retrieved passages may answer a question, and how the relevance
threshold is chosen for an agent's own documents.

A retriever always returns its nearest passages, however far they are; quoting the nearest one
regardless is how an agent answers "my payment failed" with the password-reset article. The
gate keeps passages at or above `min_relevance` (cosine similarity); when none is left the agent
says it has no answer instead of citing something else.

`calibrate` picks the threshold from questions whose right document is known (or known to be
absent from the knowledge base): every candidate threshold is scored by how many questions it
handles right — answered from the expected document, or declined when none fits — and the
middle of the best range wins, so the threshold sits as far from both kinds of mistake as the
data allows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

import yaml


class Scored(Protocol):
    @property
    def id(self) -> str: ...
    @property
    def score(self) -> float: ...


P = TypeVar("P", bound=Scored)


def relevant(passages: Sequence[P], min_relevance: float) -> list[P]:
    """The passages that may ground an answer, best first."""
    return [p for p in passages if p.score >= min_relevance]


def document_of(passage_id: str) -> str:
    """`shipping.md#2` → `shipping.md`: questions are labelled with documents, not passages."""
    return passage_id.split("#", 1)[0]


@dataclass(frozen=True)
class LabelledQuestion:
    text: str
    document: str | None
    """The document that answers it, or None when the knowledge base has no answer."""


def load_questions(path: str | Path) -> list[LabelledQuestion]:
    """`questions: [{text, document}]` from a YAML file (`document: null`: not answerable)."""
    data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    items = data.get("questions") if isinstance(data, dict) else None
    if not isinstance(items, list) or not items:
        raise ValueError(f"{path}: expected a non-empty `questions:` list")
    questions = []
    for n, item in enumerate(items):
        if not isinstance(item, dict) or not isinstance(item.get("text"), str):
            raise ValueError(f"{path}: questions[{n}] needs a `text` string")
        document = item.get("document")
        if document is not None and not isinstance(document, str):
            raise ValueError(f"{path}: questions[{n}].document must be a file name or null")
        questions.append(LabelledQuestion(item["text"], document))
    return questions


@dataclass(frozen=True)
class Retrieved:
    question: LabelledQuestion
    top_document: str | None
    top_score: float


@dataclass(frozen=True)
class Calibration:
    min_relevance: float
    correct: int
    total: int
    wrong_answers: int
    """Answerable or not, questions answered from a document other than the expected one."""
    missed: int
    """Answerable questions declined at this threshold."""
    best_range: tuple[float, float]
    """Thresholds in [low, high) all score as well as the chosen one."""

    def as_dict(self) -> dict[str, Any]:
        return {
            "min_relevance": self.min_relevance,
            "accuracy": round(self.correct / self.total, 4) if self.total else None,
            "correct": self.correct,
            "total": self.total,
            "wrong_answers": self.wrong_answers,
            "missed": self.missed,
            "best_range": [round(x, 4) for x in self.best_range],
        }


def _outcome(r: Retrieved, threshold: float) -> str:
    answers = r.top_document is not None and r.top_score >= threshold
    if not answers:
        return "missed" if r.question.document else "correct"
    return "correct" if r.top_document == r.question.document else "wrong"


def calibrate(results: Sequence[Retrieved]) -> Calibration:
    """The threshold that handles the most questions right (ties: fewer wrong answers), in the
    middle of the range of thresholds that do as well."""
    if not results:
        raise ValueError("calibration needs at least one labelled question")
    # A threshold t in (s[i-1], s[i]] behaves exactly like s[i]: try each observed score, and
    # one above them all (decline everything).
    scores = sorted({r.top_score for r in results})
    candidates = [*scores, scores[-1] + 1e-3]

    def score(threshold: float) -> tuple[int, int, int]:
        outcomes = [_outcome(r, threshold) for r in results]
        return outcomes.count("correct"), -outcomes.count("wrong"), -outcomes.count("missed")

    verdicts = [score(t) for t in candidates]
    best = max(verdicts)
    first = verdicts.index(best)
    last = first
    while last + 1 < len(candidates) and verdicts[last + 1] == best:
        last += 1
    low = candidates[first - 1] if first > 0 else 0.0
    high = candidates[last]
    chosen = round((low + high) / 2, 3)
    if not low < chosen <= high:  # a range narrower than the rounding
        chosen = high
    correct, wrong, missed = best
    return Calibration(chosen, correct, len(results), -wrong, -missed, (low, high))
