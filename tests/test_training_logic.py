"""ModelTraining's pure parts, table by table: when a run is due (schedule, by hand, no
overlap, missed times), what the gate decides from a report, the conditions a status shows, and
the RayJob and ModelRollout a run renders (validated offline against KubeRay's RayJob CRD from
the shared folder and our own ModelRollout CRD)."""

from __future__ import annotations

import shlex
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from support.manifests import load_documents
from support.paths import EXAMPLES
from switchboard.operator.api.modeltraining import ModelTrainingSpec, RunRecord
from switchboard.operator.api.supportagent import SupportAgentSpec
from switchboard.operator.api.validation import SpecError, validate_spec
from switchboard.operator.render import render_manifests
from switchboard.operator.render.names import Parent, manual_run_name, scheduled_run_name
from switchboard.operator.render.training import render_rayjob, render_training_rollout
from switchboard.operator.resources.modeltraining import training_checks
from switchboard.operator.resources.training_gate import judge
from switchboard.operator.resources.training_schedule import (
    Due,
    ScheduleError,
    check_schedule,
    plan,
)
from switchboard.serving.training_report import TrainingReport

T0 = datetime(2026, 11, 30, 2, 0, tzinfo=UTC)  # a Monday
CREATED = T0 - timedelta(days=1)


def spec(**changes: Any) -> ModelTrainingSpec:
    base: dict[str, Any] = {
        "agentRef": "shop",
        "schedule": "0 3 * * 1",
        "data": {"baseUri": "s3://models/data/base.csv", "heldoutUri": "s3://models/data/ho.csv"},
        "outputPrefix": "s3://models/runs",
        "storage": {"credentialsSecretRef": {"name": "st"}},
        "rollout": {"weight": 0},
    }
    base.update(changes)
    return validate_spec(ModelTrainingSpec, base)


def at(hours: float) -> datetime:
    return T0 + timedelta(hours=hours)


# --- when a run is due ------------------------------------------------------------------------

RUN_AT_3 = scheduled_run_name("weekly", at(1))


@pytest.mark.parametrize(
    ("case", "changes", "now", "last", "running", "asked", "last_asked", "want"),
    [
        ("before the first time", {}, at(0.5), None, False, None, None, None),
        ("at the scheduled time", {}, at(1), None, False, None, None,
         Due(RUN_AT_3, "schedule")),
        ("a minute late", {}, at(1.02), None, False, None, None, Due(RUN_AT_3, "schedule")),
        ("already run for that time", {}, at(1.5), at(1), False, None, None, None),
        ("noticed after the starting deadline", {}, at(2.5), None, False, None, None, None),
        ("a longer deadline", {"startingDeadlineSeconds": 86400}, at(2.5), None, False, None,
         None, Due(RUN_AT_3, "schedule")),
        ("suspended", {"suspend": True}, at(1), None, False, None, None, None),
        ("a run is going: skipped", {}, at(1), None, True, None, None, None),
        ("by hand", {}, at(0.5), None, False, "r1", None, Due(manual_run_name("weekly", "r1"),
                                                                "manual", "r1")),
        ("by hand, already answered", {}, at(0.5), None, False, "r1", "r1", None),
        ("by hand while running: waits", {}, at(0.5), None, True, "r2", "r1", None),
        ("by hand while suspended", {"suspend": True}, at(0.5), None, False, "r2", "r1",
         Due(manual_run_name("weekly", "r2"), "manual", "r2")),
        ("by hand only", {"schedule": None}, at(1), None, False, None, None, None),
        ("macro", {"schedule": "@daily"}, at(-1.9), None, False, None, None,
         Due(scheduled_run_name("weekly", at(-2)), "schedule")),
        ("time zone", {"schedule": "0 3 * * 1", "timeZone": "Europe/Berlin"}, at(0.01), None,
         False, None, None, Due(scheduled_run_name("weekly", at(0)), "schedule")),
    ],
)  # fmt: skip
def test_plan(
    case: str,
    changes: dict[str, Any],
    now: datetime,
    last: datetime | None,
    running: bool,
    asked: str | None,
    last_asked: str | None,
    want: Due | None,
) -> None:
    got = plan(
        "weekly", spec(**changes), now=now, created=CREATED, last_schedule_time=last,
        running=running, request=asked, last_request=last_asked,
    )  # fmt: skip
    assert got.due == want, case


def test_plan_counts_skipped_and_missed_times_and_names_the_next() -> None:
    weekly = spec()
    going = plan(
        "weekly", weekly, now=at(1), created=CREATED, last_schedule_time=None, running=True,
        request=None, last_request=None,
    )  # fmt: skip
    assert (going.skipped, going.missed, going.last_schedule_time) == (1, 0, at(1))
    assert going.next_schedule_time == at(1 + 7 * 24)
    # Down for three weeks: the two older times are missed, the latest runs (within deadline).
    back = plan(
        "weekly", weekly, now=at(1 + 14 * 24 + 0.5), created=CREATED, last_schedule_time=at(1),
        running=False, request=None, last_request=None,
    )  # fmt: skip
    assert back.due == Due(scheduled_run_name("weekly", at(1 + 14 * 24)), "schedule")
    assert (back.missed, back.skipped) == (1, 0)


def test_a_long_outage_is_counted_once_and_the_schedule_starts_again_from_now() -> None:
    minutely = spec(schedule="* * * * *")
    back = plan(
        "m", minutely, now=at(48), created=CREATED, last_schedule_time=at(0), running=False,
        request=None, last_request=None,
    )  # fmt: skip
    assert back.due is None and back.missed >= 1000
    assert back.last_schedule_time == at(48)
    assert back.next_schedule_time == at(48) + timedelta(minutes=1)


def test_run_names_are_deterministic_and_short() -> None:
    long = "a-very-long-training-name-for-the-support-agent-nlu"
    assert scheduled_run_name(long, at(1)) == scheduled_run_name(long, at(1))
    assert len(scheduled_run_name(long, at(1))) <= 48
    assert manual_run_name("x", "r1") != manual_run_name("x", "r2")
    assert len(manual_run_name(long, "2026-11-30T10:00:00Z")) <= 48


@pytest.mark.parametrize(
    ("changes", "error"),
    [
        ({"schedule": "61 * * * *"}, "spec.schedule"),
        ({"timeZone": "Mars/Olympus"}, "spec.timeZone"),
    ],
)
def test_schedules_cron_cannot_read_are_named(changes: dict[str, Any], error: str) -> None:
    with pytest.raises(ScheduleError, match=error):
        check_schedule(spec(**changes))


@pytest.mark.parametrize(
    ("changes", "error"),
    [
        ({"schedule": "every monday"}, "schedule"),
        ({"rollout": {}}, "exactly one of weight"),
        ({"rollout": {"weight": 10, "progressive": {"steps": [10, 100]}}}, "exactly one of"),
        ({"outputPrefix": "file:///tmp"}, "outputPrefix"),
        ({"gate": {"maxIntentRegression": 2}}, "maxIntentRegression"),
    ],
)
def test_invalid_specs_are_refused_with_the_field(changes: dict[str, Any], error: str) -> None:
    with pytest.raises(SpecError, match=error):
        spec(**changes)


# --- the gate -----------------------------------------------------------------------------


def report(
    current: float = 0.90,
    candidate: float = 0.92,
    rows: int = 80,
    intents: tuple[tuple[str, int, float, float], ...] = (("order_status", 10, 1.0, 1.0),),
) -> TrainingReport:
    def figures(uri: str, accuracy: float) -> dict[str, Any]:
        return {
            "uri": uri, "accuracy": accuracy, "macro_f1": accuracy - 0.01, "ece": 0.02,
            "oos": {"threshold": 0.5, "in_scope_flagged": 0.01},
        }  # fmt: skip

    return TrainingReport.model_validate(
        {
            "run": "r",
            "candidate_uri": "s3://models/runs/r/model",
            "current": figures("s3://models/nlu/v1", current),
            "candidate": figures("s3://models/runs/r/model", candidate),
            "intents": [
                {
                    "intent": name,
                    "support": support,
                    "current_recall": before,
                    "candidate_recall": after,
                    "current_f1": before,
                    "candidate_f1": after,
                }
                for name, support, before, after in intents
            ],
            "data": {
                "base_uri": "s3://models/data/base.csv",
                "base_rows": 900,
                "base_sha256": "0" * 64,
            },
            "heldout": {"uri": "s3://models/data/ho.csv", "rows": rows, "sha256": "1" * 64},
            "checksums": {"model.onnx": "2" * 64},
            "device": "cpu",
            "train_seconds": 40.0,
            "total_seconds": 55.0,
            "started_at": "2026-11-30T03:00:00Z",
            "finished_at": "2026-11-30T03:01:00Z",
        }
    )


@pytest.mark.parametrize(
    ("case", "gate", "figures", "passed", "failing", "says"),
    [
        ("better", {}, {}, True, set(), "accuracy 0.9000 -> 0.9200 (+0.0200"),
        ("equal passes minGain 0", {}, {"candidate": 0.90}, True, set(), "+0.0000"),
        ("worse", {}, {"candidate": 0.88}, False, {"minGain"}, "(-0.0200, minGain +0.0000)"),
        ("not better by enough", {"minGain": 0.05}, {}, False, {"minGain"}, "minGain +0.0500"),
        ("macro-F1", {"metric": "macroF1"}, {}, True, set(), "macroF1 0.8900 -> 0.9100"),
        ("held-out too small", {"minHeldoutRows": 100}, {}, False, {"minHeldoutRows"},
         "held-out set of 80 rows (minHeldoutRows 100)"),
        ("one intent lost", {}, {"intents": (("order_status", 10, 1.0, 0.8),
                                             ("refund_request", 8, 0.75, 1.0))},
         False, {"maxIntentRegression"}, "intent order_status recall 1.0000 -> 0.8000 (-0.2000)"),
        ("a small loss allowed", {"maxIntentRegression": 0.25},
         {"intents": (("order_status", 10, 1.0, 0.8),)}, True, set(), "order_status"),
        ("too few rows to judge", {"minIntentSupport": 20},
         {"intents": (("order_status", 10, 1.0, 0.0),)}, True, set(), "accuracy"),
        ("everything wrong", {"minGain": 0.1, "minHeldoutRows": 100},
         {"candidate": 0.5, "intents": (("order_status", 10, 1.0, 0.0),)}, False,
         {"minGain", "minHeldoutRows", "maxIntentRegression"}, "held-out set of 80 rows"),
    ],
)  # fmt: skip
def test_gate(
    case: str,
    gate: dict[str, Any],
    figures: dict[str, Any],
    passed: bool,
    failing: set[str],
    says: str,
) -> None:
    verdict = judge(spec(gate=gate).gate, report(**figures))
    assert verdict.passed is passed, (case, verdict)
    assert {c.name for c in verdict.failed} == failing, case
    assert says in verdict.message, (case, verdict.message)


# --- status ---------------------------------------------------------------------------------


def run(result: str, message: str = "why") -> RunRecord:
    return RunRecord.model_validate(
        {"name": "r", "trigger": "manual", "startedAt": "2026-11-30T03:00:00Z",
         "result": result, "message": message}
    )  # fmt: skip


@pytest.mark.parametrize(
    ("active", "last", "phase", "ready", "gate"),
    [
        (None, None, "Idle", ("True", "Waiting"), None),
        (run("Running"), None, "Running", ("True", "Running"), None),
        (None, run("Passed"), "Passed", ("True", "GatePassed"), "True"),
        (None, run("Refused"), "Refused", ("True", "GateRefused"), "False"),
        (None, run("Failed"), "Failed", ("False", "RunFailed"), None),
        (None, run("BadData"), "Failed", ("False", "BadData"), None),
        (run("Running"), run("Refused"), "Running", ("True", "Running"), "False"),
    ],
)
def test_conditions(
    active: RunRecord | None,
    last: RunRecord | None,
    phase: str,
    ready: tuple[str, str],
    gate: str | None,
) -> None:
    checks, got_phase = training_checks(active, last, at(1))
    by_type = {c.type: c for c in checks}
    assert got_phase == phase
    assert (by_type["Ready"].status, by_type["Ready"].reason) == ready
    assert by_type["Running"].status == ("True" if active else "False")
    assert (by_type["GatePassed"].status if "GatePassed" in by_type else None) == gate


# --- rendering --------------------------------------------------------------------------------

AGENT = validate_spec(
    SupportAgentSpec,
    {
        "nlu": {"modelUri": "s3://models/nlu/shop-v1"},
        "modelStorage": {"endpoint": "http://minio:9000", "credentialsSecretRef": {"name": "st"}},
        "sessions": {"store": "redis", "redis": {"urlSecretRef": {"name": "redis", "key": "url"}}},
        "orchestrator": {"autoscaling": {"maxReplicas": 2}},
    },
)


def test_rayjob_runs_the_retrain_command_on_the_worker(schemas: Any) -> None:
    training = spec(
        feedback={"uris": ["s3://models/feedback/"], "fromAgent": True},
        storage={"endpoint": "http://minio:9000", "credentialsSecretRef": {"name": "st"}},
        training={"epochs": 2},
    )
    parent = Parent("ModelTraining", "weekly", "shop", "uid-1")
    job = render_rayjob(parent, training, "weekly-s20261130-0300", "s3://models/nlu/v1", AGENT)
    assert schemas.errors(job) == []
    command = shlex.split(job["spec"]["entrypoint"])
    assert command[:3] == ["switchboard", "nlu", "retrain"]
    args = dict(zip(command[3::2], command[4::2], strict=False))
    assert args["--current-model"] == "s3://models/nlu/v1"
    assert args["--output"] == "s3://models/runs/weekly-s20261130-0300"
    assert args["--feedback"] == "s3://models/feedback/"
    assert args["--agent"] == "shop/shop"
    assert args["--epochs"] == "2" and args["--device"] == "cpu"
    cluster = job["spec"]["rayClusterSpec"]
    # The head coordinates only; the entrypoint's CPU request puts the run on the worker.
    assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    assert job["spec"]["entrypointNumCpus"] == 1 and "entrypointNumGpus" not in job["spec"]
    env = {e["name"]: e for e in cluster["workerGroupSpecs"][0]["template"]["spec"]["containers"][
        0]["env"]}  # fmt: skip
    assert env["AWS_ENDPOINT_URL"]["value"] == "http://minio:9000"
    assert env["AWS_ACCESS_KEY_ID"]["valueFrom"]["secretKeyRef"] == {
        "name": "st", "key": "accessKeyId"
    }  # fmt: skip
    assert env["SWITCHBOARD_REDIS_URL"]["valueFrom"]["secretKeyRef"]["name"] == "redis"
    assert job["metadata"]["ownerReferences"][0]["kind"] == "ModelTraining"
    for group in (cluster["headGroupSpec"], cluster["workerGroupSpecs"][0]):
        assert group["template"]["spec"]["automountServiceAccountToken"] is False


def test_gpu_workers_train_on_cuda(schemas: Any) -> None:
    training = spec(job={"workers": {"gpus": 1, "nodeSelector": {"gpu": "h100"}}})
    assert training.storage.credentials_secret_ref
    job = render_rayjob(Parent("ModelTraining", "w", "ns"), training, "w-m1", "s3://m/v1", AGENT)
    assert schemas.errors(job) == []
    assert job["spec"]["entrypointNumGpus"] == 1
    assert "--device cuda" in job["spec"]["entrypoint"]
    worker = job["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"]
    assert worker["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert worker["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert worker["nodeSelector"] == {"gpu": "h100"}


def test_a_passing_run_opens_the_templated_rollout(schemas: Any) -> None:
    training = spec(
        rollout={"progressive": {"steps": [10, 100]}, "testers": [{"name": "x-t", "exact": "1"}]}
    )
    rollout = render_training_rollout(Parent("ModelTraining", "w", "ns", "u"), training, "w-m1")
    assert schemas.errors(rollout) == []
    assert rollout["metadata"]["name"] == "w-m1"
    assert rollout["spec"]["candidate"] == {"modelUri": "s3://models/runs/w-m1/model"}
    assert rollout["spec"]["agentRef"] == "shop"
    assert rollout["spec"]["progressive"]["steps"] == [10, 100]


def test_render_of_the_example_prints_a_valid_rayjob(schemas: Any) -> None:
    objects = render_manifests(load_documents(EXAMPLES / "retraining"))
    jobs = [o for o in objects if o["kind"] == "RayJob"]
    assert len(jobs) == 1
    assert schemas.errors(jobs[0]) == []
    assert jobs[0]["metadata"]["name"] == "shop-nlu-preview"
    assert "--current-model s3://models/nlu/shop-v1" in jobs[0]["spec"]["entrypoint"]
