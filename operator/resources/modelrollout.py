"""ModelRollout reconciler: a canary of a new NLU or LLM model inside the agent's own RayService.

The rollout's whole progress lives in its status (weight, step, when the step began, failures),
so an operator restarted mid-rollout resumes exactly where it was: a step advances only when its
interval has passed *and* the new step index is written. The SupportAgent reconciler reads the
status weight and renders the candidate application and the routes from it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from ..api.modelrollout import AnalysisMetric, ModelRolloutSpec
from ..api.supportagent import SupportAgentSpec
from ..api.validation import SpecError, validate_spec
from ..indexes import Lookup
from ..kube import Kube
from ..render import Canary, UnresolvedReference
from ..render.names import revision_app_name
from ..render.rollout import canary_of, steps_of
from ..render.serve_config import agent_revision, candidate_spec
from .common import Desired, EventRecorder, Outcome, build_status, reconcile_object
from .conditions import READY, Check, Status, condition, failed_spec

KIND = "ModelRollout"
# Failures that a created or fixed object clears (unlike a rollback, which is final for the
# generation): a rollout synced by Argo CD before its SupportAgent starts once the agent exists.
REFERENCE_PROBLEMS = frozenset({"AgentNotFound", "AgentInvalid", "ComponentNotFound"})
# Phases in which the candidate serves traffic (the SupportAgent renders it).
ACTIVE_PHASES = ("Progressing", "Holding", "Paused", "Succeeded")

# PromQL of the built-in analyses, over the candidate revision's Serve application. Ray's
# metrics agent prefixes application metrics with `ray_` and tags them with the application.
_SELECTOR = 'namespace="{{namespace}}",application="{{application}}"'


def _rate(series: str, matchers: str = "") -> str:
    return f"sum(rate({series}{{{_SELECTOR}{matchers}}}[{{{{window}}}}]))"


# Every built-in is a number for a candidate with traffic, and empty (no data) without:
# - a counter of failures has no series until the first failure, so its numerator is
#   `(... or vector(0))`: a healthy candidate's error rate is 0, not an empty vector;
# - a denominator is filtered with `> 0`, so no series or no traffic in the window leaves the
#   result empty, never 0 and never NaN from 0/0 (`evaluate` holds on NaN all the same).
_REQUESTS = _rate("ray_agent_request_total")
_ERROR, _FAILURE = ',status="error"', ',outcome="failure"'
BUILTIN_QUERIES = {
    "errorRate": f"({_rate('ray_agent_request_total', _ERROR)} or vector(0)) / ({_REQUESTS} > 0)",
    # No traffic: every bucket's rate is 0 and the quantile NaN, which is no data.
    "latencyP95": (
        "histogram_quantile(0.95, sum by (le) "
        f"(rate(ray_agent_response_latency_seconds_bucket{{{_SELECTOR}}}[{{{{window}}}}])))"
    ),
    "escalationRate": (
        f"({_rate('ray_escalation_to_human_total')} or vector(0)) / ({_REQUESTS} > 0)"
    ),
    "nluConfidence": (
        f"{_rate('ray_agent_nlu_confidence_sum')} / ({_rate('ray_agent_nlu_confidence_count')} > 0)"
    ),
    # A candidate that served requests without calling a tool had no tool call fail: 0.
    "toolErrorRate": (
        f"({_rate('ray_agent_tool_calls_total', _FAILURE)} or vector(0))"
        f" / ({_rate('ray_agent_tool_calls_total')} > 0)"
        f" or ({_REQUESTS} > 0) * 0"
    ),
}
# The traffic guard: requests the candidate served during the step (`analysis.minRequests`).
REQUESTS_QUERY = f"sum(increase(ray_agent_request_total{{{_SELECTOR}}}[{{{{window}}}}]))"
TRAFFIC = AnalysisMetric.model_validate(
    {"name": "requests", "query": REQUESTS_QUERY, "thresholdRange": {"min": 0}}
)
"""Asked of the injected analysis like any metric, so `advance` stays pure."""


def metric_query(metric: AnalysisMetric, variables: dict[str, str]) -> str:
    template = metric.query if metric.query is not None else BUILTIN_QUERIES[metric.builtin or ""]
    for name, value in variables.items():
        template = template.replace("{{" + name + "}}", value)
    return template


def _parse_time(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value.replace("Z", "+00:00")) if value else None


def _format_time(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class RolloutState:
    """What the status records of a rollout's progress."""

    phase: str = "Initializing"
    weight: int = 0
    step_index: int | None = None
    step_started_at: str | None = None
    started_at: str | None = None
    failures: int = 0
    metrics: tuple[dict[str, Any], ...] = ()
    reason: str = "Initializing"
    message: str = "Waiting to start"
    events: tuple[tuple[str, str, str], ...] = field(default=(), compare=False)
    """(type, reason, message) to post for this transition."""

    @classmethod
    def from_status(cls, status: dict[str, Any]) -> RolloutState:
        ready = condition(status.get("conditions"), READY) or {}
        return cls(
            reason=ready.get("reason") or "Initializing",
            message=ready.get("message") or "Waiting to start",
            phase=status.get("phase") or "Initializing",
            weight=int(status.get("currentWeight") or 0),
            step_index=status.get("stepIndex"),
            step_started_at=status.get("stepStartedAt"),
            started_at=status.get("startedAt"),
            failures=int(status.get("failures") or 0),
            metrics=tuple(status.get("metrics") or ()),
        )


Analysis = Callable[[AnalysisMetric], float | None]


def _finite(value: float | None) -> float | None:
    """None for no data, NaN (0/0 in a custom query) and infinities: none of them may pass."""
    return value if value is not None and math.isfinite(value) else None


def evaluate(metrics: list[AnalysisMetric], analysis: Analysis) -> list[dict[str, Any]]:
    results = []
    for metric in metrics:
        value = _finite(analysis(metric))
        bounds = metric.threshold_range
        if value is None:
            verdict = "NoData"
        elif (bounds.min is not None and value < bounds.min) or (
            bounds.max is not None and value > bounds.max
        ):
            verdict = "Fail"
        else:
            verdict = "Pass"
        results.append({"name": metric.name, "value": value, "verdict": verdict})
    return results


def advance(
    spec: ModelRolloutSpec, state: RolloutState, now: datetime, analysis: Analysis
) -> RolloutState:
    """The next state of a progressive or manual rollout. Pure: the caller supplies the clock
    and the metric lookups."""
    if spec.weight is not None:  # manual mode: the platform team sets the weight
        # A split below 100% is a resting state, not progress: it holds until the spec changes.
        phase = "Paused" if spec.paused else ("Succeeded" if spec.weight == 100 else "Holding")
        events: tuple[tuple[str, str, str], ...] = ()
        if spec.weight != state.weight:
            events = (("Normal", "WeightSet", f"Candidate weight set to {spec.weight}%"),)
        return replace(
            state, phase=phase, weight=spec.weight, reason="ManualWeight",
            message=f"Candidate receives {spec.weight}% of traffic", events=events,
        )  # fmt: skip
    if state.phase in ("Succeeded", "Failed"):
        return replace(state, events=())
    steps = steps_of(spec)
    progressive = spec.progressive
    assert progressive is not None
    started = _parse_time(state.started_at) or now
    state = replace(state, started_at=state.started_at or _format_time(now), events=())
    deadline = progressive.progress_deadline_seconds
    if (now - started).total_seconds() > deadline:
        return _rolled_back(state, "ProgressDeadlineExceeded", f"not finished within {deadline}s")
    if spec.paused:
        return replace(
            state, phase="Paused", step_started_at=None, reason="Paused",
            message=f"Holding at {state.weight}%",
            events=(("Normal", "Paused", f"Rollout paused at {state.weight}%"),)
            if state.phase != "Paused" else (),
        )  # fmt: skip
    if state.step_index is None:
        weight = steps[0]
        return replace(
            state, phase="Progressing", weight=weight, step_index=0,
            step_started_at=_format_time(now), reason="StepStarted",
            message=f"Step 1/{len(steps)}: {weight}%",
            events=(("Normal", "StepStarted", f"Step 1/{len(steps)}: {weight}%"),),
        )  # fmt: skip
    step_started = _parse_time(state.step_started_at)
    if step_started is None:  # resumed after a pause: the step's interval starts again
        return replace(
            state, phase="Progressing", step_started_at=_format_time(now), reason="Resumed",
            message=f"Resumed at {state.weight}%",
            events=(("Normal", "Resumed", f"Rollout resumed at {state.weight}%"),),
        )  # fmt: skip
    if (now - step_started).total_seconds() < progressive.interval_seconds:
        return replace(state, phase="Progressing")
    metrics = list(progressive.analysis.metrics)
    quiet = _too_quiet(progressive.analysis.min_requests, metrics, analysis)
    if quiet is not None:  # too little traffic to judge: neither a pass nor a failure
        # increase() extrapolates: 19.6 is reported as 19, not as the 20 it falls short of.
        served = f"{int(quiet)} request(s) in the last {progressive.interval_seconds}s"
        minimum = progressive.analysis.min_requests
        return replace(
            state, step_started_at=_format_time(now), reason="NotEnoughTraffic",
            metrics=tuple({"name": m.name, "value": None, "verdict": "NoData"} for m in metrics),
            message=f"Holding at {state.weight}%: the candidate served {served}, "
            f"fewer than minRequests ({minimum})",
            events=(("Warning", "NotEnoughTraffic", f"Analysis on hold: the candidate served "
                     f"{served}, fewer than minRequests ({minimum})"),)
            if state.reason != "NotEnoughTraffic" else (),
        )  # fmt: skip
    results = evaluate(metrics, analysis)
    failed = [r for r in results if r["verdict"] == "Fail"]
    waiting = [r for r in results if r["verdict"] == "NoData"]
    state = replace(state, metrics=tuple(results))
    if failed:
        failures = state.failures + 1
        names = ", ".join(f"{r['name']}={r['value']:.4g}" for r in failed)
        if failures > progressive.analysis.failure_limit:
            return _rolled_back(
                replace(state, failures=failures), "AnalysisFailed",
                f"analysis failed {failures} time(s), over the limit of "
                f"{progressive.analysis.failure_limit}: {names}",
            )  # fmt: skip
        return replace(
            state, failures=failures, step_started_at=_format_time(now), reason="AnalysisFailed",
            message=f"Holding at {state.weight}%: {names} out of range "
            f"({failures}/{progressive.analysis.failure_limit} failures allowed)",
            events=(("Warning", "AnalysisFailed", f"Analysis failed: {names}"),),
        )  # fmt: skip
    if waiting:  # enough traffic, yet a query came back empty: hold; the deadline bounds it
        names = ", ".join(r["name"] for r in waiting)
        return replace(
            state, step_started_at=_format_time(now), reason="WaitingForData",
            message=f"Holding at {state.weight}%: no data for {names}",
            events=(("Warning", "WaitingForData", f"Analysis on hold: no data for {names}"),)
            if state.reason != "WaitingForData" else (),
        )  # fmt: skip
    index = (state.step_index or 0) + 1
    if index >= len(steps):
        return replace(
            state, phase="Succeeded", weight=100, reason="Succeeded",
            message="Every step passed; the candidate serves all traffic",
            events=(("Normal", "Succeeded", "Rollout succeeded: candidate promoted to 100%"),),
        )  # fmt: skip
    weight = steps[index]
    return replace(
        state, phase="Progressing", weight=weight, step_index=index,
        step_started_at=_format_time(now), reason="StepStarted",
        message=f"Step {index + 1}/{len(steps)}: {weight}%",
        events=(("Normal", "StepStarted", f"Step {index + 1}/{len(steps)}: {weight}%"),),
    )  # fmt: skip


def _too_quiet(minimum: int, metrics: list[AnalysisMetric], analysis: Analysis) -> float | None:
    """The requests the candidate served during the step when fewer than `minimum`; None when
    enough, or when there is nothing to judge (no metrics: the steps go by time alone)."""
    if minimum <= 0 or not metrics:
        return None
    served = _finite(analysis(TRAFFIC)) or 0.0  # no series at all: the candidate served none
    return served if served < minimum else None


def _rolled_back(state: RolloutState, reason: str, message: str) -> RolloutState:
    return replace(
        state, phase="Failed", weight=0, step_started_at=None, reason=reason,
        message=f"Rolled back: {message}",
        events=(("Warning", "RolledBack", f"Rolled back to stable: {message}"),),
    )  # fmt: skip


# --- the reconciler -------------------------------------------------------------------------


@dataclass(frozen=True)
class RolloutContext:
    prometheus_url: str | None
    clock: Callable[[], datetime] = lambda: datetime.now(UTC)


def reconcile(
    kube: Kube,
    body: dict[str, Any],
    record: EventRecorder,
    lookup: Lookup,
    context: RolloutContext,
) -> Outcome:
    def desired(kube: Kube, body: dict[str, Any]) -> Desired:
        return Desired(_desired_status(body, record, lookup, context))

    # The step function posts an Event per step, promotion and rollback itself.
    return reconcile_object(KIND, desired, kube, body, record, fresh=True, transition_events=False)


def _desired_status(
    body: dict[str, Any], record: EventRecorder, lookup: Lookup, context: RolloutContext
) -> dict[str, Any]:
    meta = body["metadata"]
    namespace = meta["namespace"]
    previous = body.get("status") or {}
    state = recorded = RolloutState.from_status(previous)

    def failed(checks: list[Check], phase: str) -> dict[str, Any]:
        # The step function's Events cover steps; a spec or reference problem gets its own,
        # once per reason (against the recorded status: `state` may have been reset since).
        ready = checks[0]
        if (recorded.phase, recorded.reason) != (phase, ready.reason):
            record(body, type="Warning", reason=ready.reason, message=ready.message)
        return build_status(body, checks, phase, {"currentWeight": 0})

    try:
        spec = validate_spec(ModelRolloutSpec, body.get("spec"))
    except SpecError as exc:
        return failed(*failed_spec("InvalidSpec", f"{KIND} {namespace}/{meta['name']}: {exc}"))
    if state.phase == "Failed" and (
        previous.get("observedGeneration") not in (None, meta.get("generation"))
        or state.reason in REFERENCE_PROBLEMS
    ):
        state = RolloutState()  # a changed spec after a rollback, or a fixed reference, starts over

    agent = lookup.agent(namespace, spec.agent_ref)
    problem = None
    if agent is None or agent.deleting:
        problem = ("AgentNotFound", f"SupportAgent {namespace}/{spec.agent_ref} does not exist")
    else:
        try:
            agent_spec = validate_spec(SupportAgentSpec, agent.spec)
            stable = agent_revision(agent_spec)
            candidate = agent_revision(candidate_spec(agent_spec, canary_of(spec, 0)))
        except SpecError:
            problem = ("AgentInvalid", f"SupportAgent {namespace}/{spec.agent_ref} is invalid")
        except UnresolvedReference as exc:
            problem = (exc.reason, f"SupportAgent {namespace}/{spec.agent_ref}: {exc.message}")
    if problem is not None:
        return failed(*failed_spec(*problem))

    if candidate == stable:
        # The user committed the candidate into the SupportAgent: nothing left to canary.
        message = (
            f"SupportAgent {namespace}/{spec.agent_ref} now runs revision {candidate}; "
            "delete this ModelRollout"
        )
        events = () if state.reason == "Promoted" else (("Normal", "Promoted", message),)
        state = replace(
            state, phase="Succeeded", weight=100, reason="Promoted", message=message, events=events
        )
    else:
        variables = {
            "agent": spec.agent_ref,
            "namespace": namespace,
            "revision": candidate,
            "application": revision_app_name(spec.agent_ref, candidate),
            "window": f"{spec.progressive.interval_seconds if spec.progressive else 300}s",
        }
        url = context.prometheus_url
        if spec.progressive and spec.progressive.analysis.prometheus_url:
            url = spec.progressive.analysis.prometheus_url

        def analysis(metric: AnalysisMetric) -> float | None:
            from ..prometheus import PrometheusError, query

            if url is None:
                raise AnalysisUnavailable(
                    "no Prometheus URL: set --prometheus-url or prometheusUrl"
                )
            try:
                return query(url, metric_query(metric, variables))
            except PrometheusError as exc:
                raise AnalysisUnavailable(str(exc)) from None

        try:
            state = advance(spec, state, context.clock(), analysis)
        except AnalysisUnavailable as exc:
            # The rollout holds its current weight (no step without evidence) and says why.
            first = state.reason != "PrometheusUnavailable"
            state = replace(
                state,
                reason="PrometheusUnavailable",
                message=str(exc),
                events=(("Warning", "PrometheusUnavailable", f"Analysis on hold: {exc}"),)
                if first
                else (),
            )
    for event_type, reason, message in state.events:
        record(body, type=event_type, reason=reason, message=message)

    def holds(phase: str) -> Status:
        return "True" if state.phase == phase else "False"

    checks = [
        Check(READY, holds("Succeeded"), state.reason, state.message),
        Check("Progressing", holds("Progressing"), state.reason, state.message),
        Check("Degraded", holds("Failed"), state.reason, state.message),
    ]
    return build_status(
        body,
        checks,
        state.phase,
        {
            "currentWeight": state.weight,
            "stepIndex": state.step_index,
            "stepStartedAt": state.step_started_at,
            "startedAt": state.started_at,
            "failures": state.failures,
            "candidateRevision": candidate,
            "stableRevision": stable,
            "metrics": list(state.metrics) or None,
        },
    )


class AnalysisUnavailable(Exception):
    """Metrics cannot be read at all (no Prometheus configured, unreachable, or erroring)."""


def active_canary(lookup: Lookup, namespace: str, agent: str) -> tuple[Canary | None, str | None]:
    """The canary the agent serves now — from its oldest live ModelRollout's status — and
    that rollout's name. A failed, deleted or not yet started rollout serves nothing."""
    for rollout in lookup.rollouts(namespace, agent):
        if rollout.deleting or rollout.phase not in ACTIVE_PHASES:
            continue
        try:
            spec = validate_spec(ModelRolloutSpec, rollout.spec)
        except SpecError:
            continue
        return canary_of(spec, rollout.weight), rollout.name
    return None, None
