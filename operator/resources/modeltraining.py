"""ModelTraining reconciler: resolve the agent and Secrets → follow the active run's RayJob to its
report → judge it (training_gate) → open the ModelRollout or say why not → start the next run
when the schedule or a request by hand says so (training_schedule). One run at a time.

What a run produced is read from object storage (operator/training_reports.py), never from the
RayJob: the report is the only evidence a rollout is opened on.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from switchboard.serving.training_report import ERROR_NAME, RunError, TrainingReport

from .. import metrics
from ..api.modeltraining import RUN_NOW_ANNOTATION, ModelTrainingSpec, RunRecord
from ..api.supportagent import SupportAgentSpec
from ..api.validation import SpecError, validate_spec
from ..indexes import Lookup
from ..kube import Kube
from ..render.names import Parent
from ..render.training import (
    RAYJOB_API_VERSION,
    candidate_uri,
    render_rayjob,
    render_training_rollout,
    report_uri,
    run_prefix,
)
from ..training_reports import Credentials, ReportError, ReportReader
from .common import (
    Desired,
    EventRecorder,
    Outcome,
    build_status,
    invalid_spec_status,
    reconcile_object,
)
from .conditions import READY, Check, Status, failed_spec
from .training_gate import judge
from .training_schedule import ScheduleError, check_schedule, plan

KIND = "ModelTraining"
RUNNING = "Running"
GATE = "GatePassed"
# KubeRay's RayJob status: the deployment is over in these, and the Ray job's own verdict.
FINISHED_DEPLOYMENTS = frozenset({"Complete", "Failed", "ValidationFailed"})
FINISHED_JOBS = frozenset({"SUCCEEDED", "FAILED", "STOPPED"})
# Phase and Ready of a configured training by the last run's result.
PHASES = {"Passed": "Passed", "Refused": "Refused", "Failed": "Failed", "BadData": "Failed"}
READY_REASONS: dict[str, tuple[Status, str]] = {
    "Passed": ("True", "GatePassed"),
    "Refused": ("True", "GateRefused"),
    "Failed": ("False", "RunFailed"),
    "BadData": ("False", "BadData"),
}

Reader = Callable[[ModelTrainingSpec, Credentials | None], ReportReader]


@dataclass(frozen=True)
class TrainingContext:
    """What a reconcile needs besides the API: the clock, and how storage is read."""

    clock: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))
    reader: Reader = ReportReader


def reconcile(
    kube: Kube,
    body: dict[str, Any],
    record: EventRecorder,
    lookup: Lookup,
    context: TrainingContext | None = None,
) -> Outcome:
    context = context or TrainingContext()

    def desired(kube: Kube, body: dict[str, Any]) -> Desired:
        return _desired(kube, body, record, lookup, context)

    # Fresh: a run must never start twice from a status that our own last write replaced.
    return reconcile_object(KIND, desired, kube, body, record, fresh=True)


def _time(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value.replace("Z", "+00:00")) if value else None


def _rfc3339(value: datetime) -> str:
    return value.astimezone(UTC).replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")


def _record(raw: Any) -> RunRecord | None:
    try:
        return RunRecord.model_validate(raw) if raw else None
    except ValidationError:  # written by another version: not worth failing over
        return None


def _references(
    kube: Kube, lookup: Lookup, namespace: str, spec: ModelTrainingSpec
) -> SupportAgentSpec | tuple[str, str]:
    """The agent's spec, or (reason, message) naming what is missing."""
    agent = lookup.agent(namespace, spec.agent_ref)
    where = f"SupportAgent {namespace}/{spec.agent_ref}"
    if agent is None:
        return "AgentNotFound", f"{where} (spec.agentRef) does not exist"
    try:
        agent_spec = validate_spec(SupportAgentSpec, agent.spec)
    except SpecError:
        return "AgentInvalid", f"{where} is invalid"
    if not agent_spec.nlu.model_uri.startswith("s3://"):
        return (
            "CurrentModelNotInStorage",
            f"{where} serves {agent_spec.nlu.model_uri}: a run compares against the current "
            "model, which must be an s3:// URI in spec.storage",
        )
    if spec.feedback.from_agent and agent_spec.sessions.redis is None:
        return (
            "FeedbackUnavailable",
            f"spec.feedback.fromAgent: {where} keeps no feedback log in Redis "
            "(spec.sessions.store is not redis)",
        )
    secrets = []
    if spec.storage.credentials_secret_ref:
        secrets.append(
            ("spec.storage.credentialsSecretRef", spec.storage.credentials_secret_ref.name)
        )
    if spec.feedback.from_agent and agent_spec.sessions.redis:
        secrets.append(
            (
                f"{where} spec.sessions.redis.urlSecretRef",
                agent_spec.sessions.redis.url_secret_ref.name,
            )
        )
    for field_name, secret in secrets:
        if not kube.exists("v1", "Secret", namespace, secret):
            return "SecretNotFound", f"Secret {namespace}/{secret} ({field_name}) does not exist"
    return agent_spec


def _reader(
    kube: Kube, namespace: str, spec: ModelTrainingSpec, context: TrainingContext
) -> ReportReader:
    ref = spec.storage.credentials_secret_ref
    credentials = None
    if ref:
        secret = kube.get("v1", "Secret", namespace, ref.name)
        if secret is None:
            raise ReportError(
                f"Secret {namespace}/{ref.name} (spec.storage.credentialsSecretRef) does not exist"
            )
        credentials = Credentials.from_secret(
            secret, ref.access_key_id_key, ref.secret_access_key_key
        )
    return context.reader(spec, credentials)


def _job_state(job: dict[str, Any] | None) -> tuple[bool, bool, str]:
    """(finished, succeeded, what KubeRay says) of a run's RayJob."""
    if job is None:
        return True, False, "its RayJob is gone"
    status = job.get("status") or {}
    deployment, ray_job = status.get("jobDeploymentStatus"), status.get("jobStatus")
    finished = deployment in FINISHED_DEPLOYMENTS or ray_job in FINISHED_JOBS
    said = ": ".join(
        str(s) for s in (status.get("reason") or deployment, status.get("message")) if s
    )
    return finished, ray_job == "SUCCEEDED", said or "no status"


def _with_figures(run: RunRecord, report: TrainingReport) -> RunRecord:
    return run.model_copy(
        update={
            "candidate_uri": report.candidate_uri,
            "current_accuracy": report.current.accuracy,
            "candidate_accuracy": report.candidate.accuracy,
            "current_macro_f1": report.current.macro_f1,
            "candidate_macro_f1": report.candidate.macro_f1,
        }
    )


def _conclude(
    kube: Kube,
    parent: Parent,
    spec: ModelTrainingSpec,
    run: RunRecord,
    job: dict[str, Any] | None,
    open_storage: Callable[[], ReportReader],
    now: datetime,
) -> RunRecord | None:
    """The finished record of `run`, or None while it is still going (storage is opened, and
    its Secret read, only for a finished run). A passing candidate's
    ModelRollout is applied before the record is written, so a crash in between re-applies
    the same (deterministically named) rollout instead of losing it."""
    finished, succeeded, said = _job_state(job)
    if not finished:
        return None
    reader = open_storage()
    started = _time(run.started_at) or now
    done = run.model_copy(
        update={
            "finished_at": _rfc3339(now),
            "duration_seconds": max(int((now - started).total_seconds()), 0),
            "report_uri": report_uri(spec, run.name),
        }
    )
    where = f"run {parent.namespace}/{run.name}"
    if not succeeded:
        error = reader.json(f"{run_prefix(spec, run.name)}/{ERROR_NAME}")
        try:
            problem = RunError.model_validate(error) if error else None
        except ValidationError:
            problem = None
        if problem is not None:
            return done.model_copy(
                update={"result": problem.reason, "message": f"{where}: {problem.message}"}
            )
        return done.model_copy(update={"result": "Failed", "message": f"{where}: {said}"})
    report = reader.report(done.report_uri or "")
    if report is None:
        return done.model_copy(
            update={
                "result": "Failed",
                "message": f"{where} finished without a report at {done.report_uri}: "
                "nothing is rolled out without one",
            }
        )
    done = _with_figures(done, report)
    if report.candidate_uri != candidate_uri(spec, run.name):
        return done.model_copy(
            update={
                "result": "Failed",
                "message": f"{where}: the report names candidate {report.candidate_uri}, "
                f"not {candidate_uri(spec, run.name)}",
            }
        )
    verdict = judge(spec.gate, report)
    if not verdict.passed:
        return done.model_copy(
            update={"result": "Refused", "message": f"refused: {verdict.message}"}
        )
    rollout = render_training_rollout(parent, spec, run.name)
    kube.apply(rollout)
    opened = rollout["metadata"]["name"]
    return done.model_copy(
        update={
            "result": "Passed",
            "rollout": opened,
            "message": f"passed: {verdict.message}; ModelRollout {opened} opened",
        }
    )


def _count(parent: Parent, run: RunRecord) -> None:
    labels = (parent.namespace, parent.name)
    metrics.TRAINING_RUNS.labels(*labels, run.result).inc()
    if run.duration_seconds is not None:
        metrics.TRAINING_RUN_SECONDS.labels(*labels).observe(run.duration_seconds)
    for model, value in (("current", run.current_accuracy), ("candidate", run.candidate_accuracy)):
        if value is not None:
            metrics.TRAINING_ACCURACY.labels(*labels, model).set(value)


def training_checks(
    active: RunRecord | None, last_run: RunRecord | None, next_time: datetime | None
) -> tuple[list[Check], str]:
    """Ready, Running and (after a judged run) GatePassed, and the phase. Ready says whether
    the training works, not whether the last candidate was good: a refusal is the gate doing
    its job (Ready, phase Refused); a failed run or bad data needs a human (not Ready)."""
    if active is not None:
        ready = Check(READY, "True", RUNNING, f"run {active.name} ({active.trigger}) is running")
        phase = RUNNING
    elif last_run is not None:
        status, reason = READY_REASONS[last_run.result]
        ready = Check(READY, status, reason, last_run.message or reason)
        phase = PHASES[last_run.result]
    else:
        when = f"next at {_rfc3339(next_time)}" if next_time else "runs only when asked to"
        ready = Check(READY, "True", "Waiting", f"no run yet ({when})")
        phase = "Idle"
    running = (
        Check(RUNNING, "True", RUNNING, ready.message)
        if active
        else Check(RUNNING, "False", "Idle", "no run is going")
    )
    checks = [ready, running]
    if last_run is not None and last_run.result in ("Passed", "Refused"):
        passed = last_run.result == "Passed"
        checks.append(
            Check(
                GATE,
                "True" if passed else "False",
                READY_REASONS[last_run.result][1],
                last_run.message or "",
            )
        )
    return checks, phase


def _desired(
    kube: Kube,
    body: dict[str, Any],
    record: EventRecorder,
    lookup: Lookup,
    context: TrainingContext,
) -> Desired:
    meta = body["metadata"]
    namespace, name = meta["namespace"], meta["name"]
    old = body.get("status") or {}
    try:
        spec = validate_spec(ModelTrainingSpec, body.get("spec"))
        check_schedule(spec)
    except (SpecError, ScheduleError) as exc:
        return Desired(invalid_spec_status(KIND, body, exc))
    # What a status always carries on, whatever this reconcile finds.
    kept: dict[str, Any] = {
        key: old.get(key)
        for key in (
            "active", "lastRun", "history", "lastScheduleTime", "nextScheduleTime",
            "lastTrigger", "skippedRuns",
        )
    }  # fmt: skip
    found = _references(kube, lookup, namespace, spec)
    if isinstance(found, tuple):
        # A run in progress goes on; it is followed again once the reference is back.
        checks, phase = failed_spec(*found)
        return Desired(build_status(body, checks, phase, kept))
    agent_spec = found
    parent = Parent(KIND, name, namespace, meta.get("uid"))
    now = context.clock()
    active = _record(old.get("active"))
    history = [r for r in (_record(h) for h in old.get("history") or []) if r is not None]
    last_run = _record(old.get("lastRun"))
    storage_problem: str | None = None
    if active is not None:
        job = kube.get(RAYJOB_API_VERSION, "RayJob", namespace, active.name)
        try:
            done = _conclude(
                kube, parent, spec, active, job,
                lambda: _reader(kube, namespace, spec, context), now,
            )  # fmt: skip
        except ReportError as exc:
            done, storage_problem = None, str(exc)
        if done is not None:
            _count(parent, done)
            active, last_run = None, done
            history = [done, *history]
            for dropped in history[spec.history_limit :]:
                kube.delete(RAYJOB_API_VERSION, "RayJob", namespace, dropped.name)
            history = history[: spec.history_limit]

    created = _time(meta.get("creationTimestamp")) or now
    schedule = plan(
        name,
        spec,
        now=now,
        created=created,
        last_schedule_time=_time(old.get("lastScheduleTime")),
        running=active is not None,
        request=(meta.get("annotations") or {}).get(RUN_NOW_ANNOTATION),
        last_request=old.get("lastTrigger"),
    )
    if schedule.skipped:
        record(
            body, type="Warning", reason="RunSkipped",
            message=f"Scheduled run skipped: run {active.name if active else ''} is still going",
        )  # fmt: skip
    if schedule.missed:
        record(
            body, type="Warning", reason="MissedSchedule",
            message=f"{schedule.missed} scheduled run(s) skipped: noticed more than "
            f"{spec.starting_deadline_seconds}s late, or spec.suspend",
        )  # fmt: skip
    last_trigger = old.get("lastTrigger")
    if schedule.due is not None:
        due = schedule.due
        kube.apply(render_rayjob(parent, spec, due.run, agent_spec.nlu.model_uri, agent_spec))
        active = RunRecord(name=due.run, trigger=due.trigger, started_at=_rfc3339(now))
        if due.request is not None:
            last_trigger = due.request

    checks, phase = training_checks(active, last_run, schedule.next_schedule_time)
    if storage_problem:
        checks[0] = Check(READY, "False", "ReportUnreadable", storage_problem)
        phase = "Degraded"
    status = build_status(
        body,
        checks,
        phase,
        {
            "active": active.to_wire() if active else None,
            "lastRun": last_run.to_wire() if last_run else None,
            "history": [h.to_wire() for h in history] or None,
            "lastScheduleTime": _rfc3339(schedule.last_schedule_time)
            if schedule.last_schedule_time
            else None,
            "nextScheduleTime": _rfc3339(schedule.next_schedule_time)
            if schedule.next_schedule_time
            else None,
            "lastTrigger": last_trigger,
            "skippedRuns": int(old.get("skippedRuns") or 0) + schedule.skipped or None,
        },
    )
    requeue = None
    if schedule.next_schedule_time is not None:
        requeue = (schedule.next_schedule_time - now).total_seconds() + 1
    return Desired(status, requeue_after=requeue)
