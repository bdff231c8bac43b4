"""ModelRollout: canary a new NLU or LLM model inside the agent's own Ray cluster."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from .base import ApiModel, BaseStatus, CelRule, ObjectName, list_map
from .supportagent import MODEL_URI_PATTERN


class CandidateModel(ApiModel):
    """The new model version to canary."""

    model_uri: str = Field(pattern=MODEL_URI_PATTERN, max_length=1024)
    """Model or artifact directory: `file:///path`, `pvc://claim/path` or `s3://bucket/prefix`
    (read with the agent's `spec.modelStorage`)."""
    quantization: Literal["int8", "bf16", "none"] | None = None
    """Precision of the candidate; unset keeps the agent's current setting."""


class ThresholdRange(ApiModel):
    """Bounds a metric's value must stay within; either bound may be left open."""

    cel_rules = (
        CelRule(
            rule="has(self.min) || has(self.max)",
            message="thresholdRange needs min, max or both",
        ),
        CelRule(
            rule="!has(self.min) || !has(self.max) || self.min <= self.max",
            message="thresholdRange min must be less than or equal to max",
        ),
    )

    min: float | None = None
    """Lowest acceptable value."""
    max: float | None = None
    """Highest acceptable value."""


class AnalysisMetric(ApiModel):
    """A check run against Prometheus at every step."""

    cel_rules = (
        CelRule(
            rule="has(self.builtin) != has(self.query)",
            message="set exactly one of builtin and query",
        ),
    )

    name: str = Field(pattern=r"^[a-zA-Z][a-zA-Z0-9_-]{0,62}$")
    """Name shown in status and events."""
    builtin: (
        Literal["errorRate", "latencyP95", "escalationRate", "nluConfidence", "toolErrorRate"]
        | None
    ) = None
    """A metric the operator knows how to query for the candidate revision."""
    query: str | None = Field(default=None, max_length=4096)
    """PromQL template; `{{agent}}`, `{{namespace}}`, `{{revision}}`, `{{application}}` and
    `{{window}}` are substituted. An empty result holds the step (no data); a counter of
    failures has no series before the first failure, so write `(sum(rate(x[{{window}}])) or
    vector(0))` for such a numerator."""
    threshold_range: ThresholdRange
    """Values inside the range pass; outside they count as a failure."""


class AnalysisSpec(ApiModel):
    """Metric analysis that gates every step of a progressive rollout."""

    metrics: list[AnalysisMetric] = Field(
        default_factory=list, max_length=20, json_schema_extra=list_map("name")
    )
    """Checks evaluated before each step; all must pass to advance."""
    failure_limit: int = Field(default=2, ge=0, le=100)
    """Failed checks tolerated before the rollout is rolled back."""
    min_requests: int = Field(default=20, ge=0, le=1_000_000)
    """Requests the candidate must have served during a step before its metrics are judged;
    fewer holds the step (reason NotEnoughTraffic) until the deadline. 0 turns the check off."""
    prometheus_url: str | None = Field(default=None, pattern=r"^https?://", max_length=2048)
    """Prometheus to query; unset uses the operator's `--prometheus-url`."""


class ProgressiveSpec(ApiModel):
    """Automatic stepping of the candidate's weight while the analysis passes."""

    cel_rules = (
        CelRule(
            rule="has(self.steps) != has(self.stepWeight)",
            message="set either steps or stepWeight (with maxWeight), not both",
        ),
        CelRule(
            rule="!has(self.steps) || self.steps.all(w, w >= 0 && w <= 100)",
            message="step weights must be between 0 and 100",
        ),
        CelRule(
            rule="!has(self.steps) || (self.steps.isSorted() && "
            "self.steps.all(w, size(self.steps.filter(v, v == w)) == 1))",
            message="step weights must be strictly ascending",
        ),
        CelRule(
            rule="!has(self.stepWeight) || self.stepWeight <= self.maxWeight",
            message="stepWeight must be less than or equal to maxWeight",
        ),
    )

    steps: list[int] | None = Field(default=None, min_length=1, max_length=20)
    """Explicit weights, strictly ascending, e.g. `[5, 25, 50, 100]`."""
    step_weight: int | None = Field(default=None, ge=1, le=100)
    """Weight added per step (with `maxWeight`)."""
    max_weight: int = Field(default=100, ge=1, le=100)
    """Last weight reached by `stepWeight` stepping."""
    interval_seconds: int = Field(default=300, ge=1, le=86400)
    """Time at each step before the analysis decides (also the metrics' rate window)."""
    analysis: AnalysisSpec = Field(default_factory=AnalysisSpec)
    """Metric checks gating the steps."""
    progress_deadline_seconds: int = Field(default=3600, ge=1, le=604800)
    """The rollout fails and rolls back if it has not finished within this time (paused time
    included)."""


class HeaderMatch(ApiModel):
    """A request header that sends beta testers to the candidate."""

    cel_rules = (
        CelRule(
            rule="has(self.exact) != has(self.regex)",
            message="set exactly one of exact and regex",
        ),
    )

    name: str = Field(pattern=r"^[a-z0-9-]+$", max_length=128)
    """Header name, lower case (e.g. `x-switchboard-canary`, `user-agent`)."""
    exact: str | None = Field(default=None, max_length=1024)
    """Value that must match exactly."""
    regex: str | None = Field(default=None, max_length=1024)
    """RE2 regular expression the value must match."""


class RolloutStrategy(ApiModel):
    """How a candidate takes traffic: a manual weight or progressive steps, and its testers.
    A ModelTraining opens its rollouts with one (`spec.rollout`)."""

    cel_rules = (
        CelRule(
            rule="has(self.weight) != has(self.progressive)",
            message="set exactly one of weight (manual) and progressive",
        ),
    )

    weight: int | None = Field(default=None, ge=0, le=100)
    """Manual mode: percent of traffic sent to the candidate."""
    progressive: ProgressiveSpec | None = None
    """Progressive mode: automatic steps gated by analysis."""
    testers: list[HeaderMatch] = Field(default_factory=list, max_length=10)
    """Requests matching any of these headers always reach the candidate."""
    traffic_provider: Literal["istio", "none"] = "istio"
    """`istio` splits in the VirtualService; `none` lets the agent's Serve router split."""
    paused: bool = False
    """Hold the current weight; set false to resume."""


class ModelRolloutSpec(RolloutStrategy):
    """Desired state of a ModelRollout."""

    agent_ref: ObjectName
    """Name of the SupportAgent in the same namespace."""
    component: Literal["nlu", "llm"]
    """Which model of the agent the candidate replaces."""
    candidate: CandidateModel
    """The new model."""


class MetricResult(ApiModel):
    """The last evaluation of one analysis metric."""

    name: str
    """Metric name."""
    value: float | None = None
    """Last value read from Prometheus."""
    verdict: Literal["Pass", "Fail", "NoData"]
    """Outcome of the last check."""
    failures: int = 0
    """Failed checks so far."""


class ModelRolloutStatus(BaseStatus):
    """Observed state of a ModelRollout."""

    current_weight: int | None = None
    """Percent of traffic the candidate receives now."""
    step_index: int | None = None
    """Index of the current progressive step."""
    candidate_revision: str | None = None
    """Model revision of the candidate."""
    step_started_at: str | None = None
    """When the current step began (RFC 3339); unset while paused."""
    failures: int | None = None
    """Failed analyses so far."""
    stable_revision: str | None = None
    """Model revision of the agent's stable models."""
    started_at: str | None = None
    """When the rollout began (RFC 3339)."""
    metrics: list[MetricResult] = Field(default_factory=list)
    """Last analysis results."""


class ModelRollout(ApiModel):
    """A canary of a new NLU or LLM model with Istio weights and metric analysis."""

    kind: ClassVar[str] = "ModelRollout"
    plural: ClassVar[str] = "modelrollouts"
    short_names: ClassVar[tuple[str, ...]] = ("mrollout",)

    spec: ModelRolloutSpec
    status: ModelRolloutStatus | None = None
