"""ModelTraining: retrain an agent's NLU model from its base data and the corrections its
humans made, on a schedule or by hand, as a KubeRay RayJob; a held-out evaluation gates whether a
ModelRollout of the candidate is opened. See docs/retraining.md."""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import Field

from .base import ApiModel, BaseStatus, CelRule, ObjectName, ResourceRequirements, Toleration
from .modelrollout import RolloutStrategy
from .supportagent import ModelStorageSpec

S3_URI_PATTERN = r"^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/.*)?$"
S3Uri = Annotated[str, Field(pattern=S3_URI_PATTERN, max_length=1024)]
# Five cron fields (minute hour day month weekday) or a macro; the operator parses it fully
# (an expression this pattern lets through but cron does not is an InvalidSpec condition).
CRON_PATTERN = r"^(@(yearly|annually|monthly|weekly|daily|midnight|hourly)|(\S+\s+){4}\S+)$"
RUN_NOW_ANNOTATION = "switchboard.dev/run-requested"
"""Set (to any new value, e.g. a timestamp) to start one run now: `switchboard train NAME`."""


class TrainingData(ApiModel):
    """The labelled data a run trains and evaluates on (CSV with a header row)."""

    base_uri: str = Field(pattern=S3_URI_PATTERN, max_length=1024)
    """The base training set, e.g. the data the current model was trained on."""
    heldout_uri: str = Field(pattern=S3_URI_PATTERN, max_length=1024)
    """The held-out set both models are evaluated on; its texts are never trained on."""
    text_column: str = Field(default="text", min_length=1, max_length=128)
    """Column holding the customer's text."""
    label_column: str = Field(default="category", min_length=1, max_length=128)
    """Column holding the intent."""


class FeedbackSource(ApiModel):
    """The corrections humans made in the agent console (`switchboard feedback export` format)."""

    uris: list[S3Uri] = Field(default_factory=list, max_length=20)
    """JSON Lines exports: an object, or a prefix ending in `/` (every `*.jsonl` under it)."""
    from_agent: bool = False
    """Also read the agent's live feedback log from its Redis session store (the agent must
    use `sessions.store: redis`; the job reads the URL from the same Secret)."""


class GateSpec(ApiModel):
    """What a candidate must show on the held-out set before a ModelRollout is opened. Both
    models are evaluated in the same run on the same rows (int8, as served)."""

    metric: Literal["accuracy", "macroF1"] = "accuracy"
    """The headline figure `minGain` is measured on."""
    min_gain: float = Field(default=0.0, ge=-1, le=1)
    """Least improvement of `metric` over the current model (0: at least as good)."""
    max_intent_regression: float = Field(default=0.05, ge=0, le=1)
    """Largest drop of any intent's recall allowed (intents with at least `minIntentSupport`
    held-out rows)."""
    min_intent_support: int = Field(default=3, ge=1, le=100000)
    """Held-out rows an intent needs before its recall is judged (fewer: too noisy)."""
    min_heldout_rows: int = Field(default=50, ge=1, le=10000000)
    """A smaller held-out set fails the run as bad data: its figures would prove nothing."""


class TrainingParameters(ApiModel):
    """Fine-tuning settings (`switchboard nlu train`'s)."""

    epochs: int | None = Field(default=None, ge=1, le=100)
    """Passes over the data (default 4)."""
    seed: int = Field(default=0, ge=0, le=2**31 - 1)
    """Random seed: the same data and seed give the same model."""
    per_class: int | None = Field(default=None, ge=2, le=1000000)
    """Use at most this many rows per intent (quick runs)."""
    batch_size: int | None = Field(default=None, ge=1, le=4096)
    """Training batch size (default 32)."""


class JobWorkers(ApiModel):
    """The Ray worker the training runs on (the head only coordinates)."""

    resources: ResourceRequirements = Field(
        default_factory=lambda: ResourceRequirements(
            requests={"cpu": "2", "memory": "6Gi"}, limits={"memory": "6Gi"}
        )
    )
    """Resources of the worker container besides GPUs."""
    gpus: int = Field(default=0, ge=0, le=16)
    """`nvidia.com/gpu` per worker; with GPUs training runs on CUDA."""
    node_selector: dict[str, str] = Field(default_factory=dict)
    """Node labels the worker must run on."""
    tolerations: list[Toleration] = Field(default_factory=list, max_length=20)
    """Extra tolerations (GPU workers tolerate `nvidia.com/gpu` already)."""


class JobSpec(ApiModel):
    """The RayJob of each run."""

    image: str | None = Field(default=None, min_length=1, max_length=1024)
    """Runtime image with `switchboard[serving]`; unset uses the agent's `spec.ray.image`."""
    workers: JobWorkers = Field(default_factory=JobWorkers)
    """The training worker."""
    active_deadline_seconds: int = Field(default=7200, ge=60, le=7 * 86400)
    """A run still going after this is stopped and recorded as failed."""
    ttl_seconds_after_finished: int = Field(default=600, ge=0, le=7 * 86400)
    """How long KubeRay keeps a finished run's Ray cluster for a look at its logs."""


class ModelTrainingSpec(ApiModel):
    """Desired state of a ModelTraining."""

    cel_rules = (
        CelRule(
            rule="has(self.storage.credentialsSecretRef)",
            message="storage.credentialsSecretRef is required: the runs write with it and the "
            "operator reads each run's report with it",
        ),
    )

    agent_ref: ObjectName
    """Name of the SupportAgent in the same namespace; its current model is the baseline."""
    component: Literal["nlu"] = "nlu"
    """Which model is retrained (the intent classifier)."""
    schedule: str | None = Field(default=None, pattern=CRON_PATTERN, max_length=256)
    """Cron schedule (`0 3 * * 1`, `@weekly`); unset runs only when triggered by hand."""
    time_zone: str = Field(default="UTC", pattern=r"^[A-Za-z0-9_+/-]+$", max_length=64)
    """IANA time zone the schedule is read in."""
    starting_deadline_seconds: int = Field(default=3600, ge=10, le=7 * 86400)
    """A scheduled run missed by more than this (operator down) is skipped, not started late."""
    suspend: bool = False
    """No scheduled runs while true (a run by hand still starts)."""
    data: TrainingData
    """Base and held-out data."""
    feedback: FeedbackSource = Field(default_factory=FeedbackSource)
    """Corrections merged into the base data (a corrected label wins)."""
    output_prefix: str = Field(pattern=S3_URI_PATTERN, max_length=900)
    """Each run writes `<prefix>/<run>/model/` (the candidate) and `<prefix>/<run>/report.json`."""
    storage: ModelStorageSpec = Field(default_factory=ModelStorageSpec)
    """The S3-compatible storage every URI here lives in, and the Secret with its keys."""
    gate: GateSpec = Field(default_factory=GateSpec)
    """What a candidate must show before it is rolled out."""
    training: TrainingParameters = Field(default_factory=TrainingParameters)
    """Fine-tuning settings."""
    job: JobSpec = Field(default_factory=JobSpec)
    """The RayJob of each run."""
    rollout: RolloutStrategy
    """The ModelRollout opened when a candidate passes the gate, less what the run fills in
    (agent, component, candidate): its weight or steps, testers, `paused` to hold it for a
    human who reads the report first."""
    history_limit: int = Field(default=10, ge=1, le=100)
    """Runs kept in status (and their RayJobs in the cluster)."""


class RunRecord(ApiModel):
    """One finished (or running) run."""

    name: str
    """Run name: also the RayJob's and the output folder's."""
    trigger: Literal["schedule", "manual"]
    """What started it."""
    started_at: str
    """When the RayJob was created (RFC 3339)."""
    finished_at: str | None = None
    """When the operator saw it finish (RFC 3339)."""
    duration_seconds: int | None = None
    """From creation to the report (or failure)."""
    result: Literal["Running", "Passed", "Refused", "Failed", "BadData"] = "Running"
    """`Passed` the gate (a ModelRollout was opened), `Refused` by it, `Failed` (job or
    storage), `BadData` (the input data; a retry cannot help)."""
    message: str | None = None
    """Why, naming the criterion or the object at fault."""
    candidate_uri: str | None = None
    """The candidate artifact."""
    report_uri: str | None = None
    """The run's report."""
    current_accuracy: float | None = None
    """The current model's held-out accuracy (int8)."""
    candidate_accuracy: float | None = None
    """The candidate's held-out accuracy (int8)."""
    current_macro_f1: float | None = None
    """The current model's held-out macro-F1."""
    candidate_macro_f1: float | None = None
    """The candidate's held-out macro-F1."""
    rollout: str | None = None
    """The ModelRollout opened for it."""


class ModelTrainingStatus(BaseStatus):
    """Observed state of a ModelTraining."""

    active: RunRecord | None = None
    """The run in progress (never more than one)."""
    last_run: RunRecord | None = None
    """The last finished run."""
    history: list[RunRecord] = Field(default_factory=list)
    """Finished runs, newest first, at most `historyLimit`."""
    last_schedule_time: str | None = None
    """The last scheduled time a run was started for (or skipped at)."""
    next_schedule_time: str | None = None
    """When the schedule starts the next run."""
    last_trigger: str | None = None
    """The last `switchboard.dev/run-requested` value acted on."""
    skipped_runs: int = 0
    """Scheduled runs skipped because a run was still going (runs never overlap)."""


class ModelTraining(ApiModel):
    """Scheduled retraining of an agent's NLU model, gated by a held-out evaluation."""

    kind: ClassVar[str] = "ModelTraining"
    plural: ClassVar[str] = "modeltrainings"
    short_names: ClassVar[tuple[str, ...]] = ("mtrain",)

    spec: ModelTrainingSpec
    status: ModelTrainingStatus | None = None
