"""The report of one retraining run: what `switchboard nlu retrain` writes next to the candidate
artifact in object storage, and what the operator reads to judge the run (ModelTraining's gate).

Pydantic only (the operator imports it, and installs neither torch nor ray). Figures are of
the int8 variant, the one the agents serve, with candidate and current model evaluated on the
same held-out rows in the same run, so their difference is the model's and not the data's.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from .config import Contract

REPORT_NAME = "report.json"
"""The report's key under a run's output prefix; the artifact lies under `MODEL_DIR`."""
MODEL_DIR = "model"
# Exit codes of `switchboard nlu retrain`: the operator says "bad data" (fix the input, a
# retry cannot help) apart from a failure that another attempt may not have.
EXIT_BAD_DATA = 2
EXIT_FAILED = 1


class OosFigures(Contract):
    """Out-of-scope detection on the held-out set (None where it has no `oos` rows)."""

    threshold: float
    in_scope_flagged: float
    """Share of in-scope queries handed off as out of scope: the cost of OOS detection."""
    precision: float | None = None
    recall: float | None = None
    f1: float | None = None


class IntentFigures(Contract):
    intent: str
    support: int
    """Held-out rows of this intent."""
    current_recall: float
    candidate_recall: float
    current_f1: float
    candidate_f1: float

    @property
    def recall_delta(self) -> float:
        return round(self.candidate_recall - self.current_recall, 4)


class Confusion(Contract):
    gold: str
    predicted: str
    count: int


class ModelFigures(Contract):
    uri: str
    accuracy: float
    macro_f1: float
    ece: float
    oos: OosFigures
    unknown_labels: list[str] = Field(default_factory=list)
    """Held-out labels the model does not know (they count as errors)."""
    labels: list[str] = Field(default_factory=list)
    """The intents the model predicts (its labels.json)."""
    top_confusions: list[Confusion] = Field(default_factory=list)
    """The most frequent (gold, predicted) mistakes on the held-out set, most frequent first."""


class DataFigures(Contract):
    """What the candidate was trained on."""

    base_uri: str
    base_rows: int
    base_sha256: str
    feedback_uris: list[str] = Field(default_factory=list)
    feedback_records: int = 0
    corrections: int = 0
    """Feedback records with a corrected label (the rest are escalations without one)."""
    relabelled: int = 0
    """Base rows whose label a correction replaced."""
    added: int = 0
    """Corrected texts that were not in the base data."""
    training_rows: int = 0
    new_labels: list[str] = Field(default_factory=list)
    """Corrected labels that the base data does not have: new intents (each needs at least 2
    training rows, else the run fails as bad data)."""


class HeldoutFigures(Contract):
    uri: str
    rows: int
    sha256: str
    overlap_with_training: int = 0
    """Held-out texts also in the training data (dropped from training: the figures must not
    reward memorising the test)."""


class TrainingReport(Contract):
    version: Literal[1] = 1
    run: str
    candidate_uri: str
    """Where the candidate artifact was pushed (`<output>/model`)."""
    current: ModelFigures
    candidate: ModelFigures
    intents: list[IntentFigures]
    data: DataFigures
    heldout: HeldoutFigures
    checksums: dict[str, str]
    """The candidate artifact's files → sha256 (its manifest's)."""
    device: str
    """`cpu` or `cuda` (the device training ran on)."""
    train_seconds: float
    total_seconds: float
    started_at: str
    finished_at: str


ERROR_NAME = "error.json"
"""Written instead of the report when a run fails, so the operator can say why in status."""


class RunError(Contract):
    """Why a run wrote no report."""

    reason: Literal["BadData", "Failed"]
    """`BadData`: fix the input, a retry cannot help; `Failed`: anything else (storage, ...)."""
    message: str
    run: str | None = None
