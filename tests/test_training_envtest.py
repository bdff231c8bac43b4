"""ModelTraining against a real kube-apiserver, with the operator under its shipped RBAC, a real
S3-compatible server (rclone, tests/support/s3.py) holding the data, the models and the reports,
and the retraining entrypoint run for real.

KubeRay's controller cannot run here (no kubelet to start a Ray cluster), so
`support.rayjob_player` plays it: it runs each RayJob's entrypoint — `switchboard nlu retrain`
with the RayJob's own environment and Secrets — and reports the outcome in the RayJob's status
as KubeRay does. The operator sees nothing but the RayJob's status and what the run wrote to
storage.

The data is the demo's: the current model is the session's demo model (trained on
examples/nlu/ecommerce-intents.csv), a run trains on the same CSV plus exported corrections and
both are scored on examples/nlu/ecommerce-heldout.csv (76 paraphrases in neither). A user gets
the same files from the repository's examples/nlu folder.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from support.cluster import Cluster, condition_of
from support.corrections import corrections_jsonl, feedback_jsonl, feedback_record
from support.paths import EXAMPLES
from support.rayjob_player import RayJobPlayer
from support.s3 import S3Server
from switchboard.operator.api.modeltraining import RUN_NOW_ANNOTATION
from switchboard.operator.render.names import manual_run_name
from switchboard.serving.training_report import TrainingReport

pytestmark = pytest.mark.envtest

API = "switchboard.dev/v1alpha1"
BUCKET = "models"
NLU = EXAMPLES / "nlu"
RUN_TIMEOUT_S = 900


def poisoned_feedback() -> str:
    """Someone labelled every parcel-tracking question of the base data as a cancellation: a
    candidate trained on it forgets what tracking is."""
    with (NLU / "ecommerce-intents.csv").open(encoding="utf-8", newline="") as rows:
        texts = [r["text"] for r in csv.DictReader(rows) if r["category"] == "track_package"]
    return feedback_jsonl(
        [feedback_record(t, "track_package", "cancel_order", n) for n, t in enumerate(texts)]
    )


@pytest.fixture(scope="module")
def operator(run_operator: Any) -> Iterator[dict[str, Any]]:
    with run_operator() as running:
        yield running


@pytest.fixture(scope="module")
def storage(s3_server: S3Server, demo_nlu_model: Path) -> S3Server:
    """The bucket as a platform team fills it: data, held-out set, the current model, feedback
    exports."""
    storage = s3_server
    storage.put("data/ecommerce-intents.csv", (NLU / "ecommerce-intents.csv").read_bytes())
    heldout = (NLU / "ecommerce-heldout.csv").read_text(encoding="utf-8")
    storage.put("data/ecommerce-heldout.csv", heldout)
    storage.put("data/heldout-small.csv", "\n".join(heldout.splitlines()[:11]) + "\n")
    storage.put("feedback/shop/2026-11-29.jsonl", corrections_jsonl())
    storage.put("poisoned/feedback.jsonl", poisoned_feedback())
    storage.push_model(demo_nlu_model, "s3://models/nlu/shop-v1")
    return storage


@pytest.fixture(scope="module")
def namespace(cluster: Cluster, operator: dict[str, Any], storage: S3Server) -> str:
    ns = cluster.namespace("training")
    cluster.create(
        {
            "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "model-storage"},
            "stringData": {
                "accessKeyId": storage.access_key, "secretAccessKey": storage.secret_key
            },
        },
        ns,
    )  # fmt: skip
    cluster.create(
        {
            "apiVersion": API, "kind": "SupportAgent", "metadata": {"name": "shop"},
            "spec": {
                "nlu": {"modelUri": "s3://models/nlu/shop-v1"},
                "modelStorage": {"endpoint": storage.endpoint,
                                 "credentialsSecretRef": {"name": "model-storage"}},
            },
        },
        ns,
    )  # fmt: skip
    return ns


def training(name: str, storage: S3Server, **changes: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "agentRef": "shop",
        "data": {
            "baseUri": "s3://models/data/ecommerce-intents.csv",
            "heldoutUri": "s3://models/data/ecommerce-heldout.csv",
        },
        "feedback": {"uris": ["s3://models/feedback/shop/"]},
        "outputPrefix": "s3://models/runs",
        "storage": {
            "endpoint": storage.endpoint,
            "credentialsSecretRef": {"name": "model-storage"},
        },
        "gate": {"minHeldoutRows": 60},
        "rollout": {"weight": 0, "testers": [{"name": "x-switchboard-canary", "exact": "true"}]},
    }
    spec.update(changes)
    return {"apiVersion": API, "kind": "ModelTraining", "metadata": {"name": name}, "spec": spec}


def run_now(cluster: Cluster, namespace: str, name: str, request: str) -> None:
    cluster.patch(API, "ModelTraining", namespace, name,
                  {"metadata": {"annotations": {RUN_NOW_ANNOTATION: request}}})  # fmt: skip


def status_of(cluster: Cluster, namespace: str, name: str) -> dict[str, Any]:
    found = cluster.get(API, "ModelTraining", namespace, name) or {}
    return dict(found.get("status") or {})


def last_result(cluster: Cluster, namespace: str, name: str, timeout: float = RUN_TIMEOUT_S) -> Any:
    def probe() -> dict[str, Any] | None:
        status = status_of(cluster, namespace, name)
        last = status.get("lastRun")
        return status if last and not status.get("active") else None

    return cluster.wait_for(f"ModelTraining {name}: a finished run", probe, timeout=timeout)


def report_of(storage: S3Server, uri: str) -> TrainingReport:
    key = uri.removeprefix(f"s3://{BUCKET}/")
    text = storage.object_path(BUCKET, key).read_text(encoding="utf-8")
    return TrainingReport.model_validate_json(text)


def test_a_candidate_better_on_the_heldout_set_opens_its_rollout(
    cluster: Cluster, namespace: str, storage: S3Server, operator: dict[str, Any]
) -> None:
    # The demo's held-out set has about 4 rows per intent: the candidate gets one more
    # return_item row wrong (recall 1.00 -> 0.75) while fixing two others. The gate must allow
    # one row's worth per intent here, or it refuses every candidate of this data.
    gate = {"minHeldoutRows": 60, "maxIntentRegression": 0.3}
    cluster.create(training("shop-better", storage, gate=gate), namespace)
    cluster.wait_for_reason("ModelTraining", namespace, "shop-better", "Waiting")
    with RayJobPlayer(cluster, namespace) as player:
        run_now(cluster, namespace, "shop-better", "first")
        status = last_result(cluster, namespace, "shop-better")
    run = status["lastRun"]
    name = manual_run_name("shop-better", "first")
    played = player.played[name]
    assert played.returncode == 0, played.output[-3000:]
    assert run["result"] == "Passed", run
    report = report_of(storage, run["reportUri"])
    # The figures, for whoever reads the log (kopf's runner holds sys.stdout while it runs).
    print(
        f"\nheld-out ({report.heldout.rows} rows): current {report.current.accuracy:.4f} acc / "
        f"{report.current.macro_f1:.4f} macro-F1, candidate {report.candidate.accuracy:.4f} / "
        f"{report.candidate.macro_f1:.4f}; {report.data.corrections} corrections; "
        f"train {report.train_seconds:.0f}s, run {report.total_seconds:.0f}s; largest recall "
        f"drop {min((i.recall_delta, i.intent) for i in report.intents)}",
        file=sys.__stderr__,
    )
    assert report.candidate.accuracy >= report.current.accuracy
    assert (run["currentAccuracy"], run["candidateAccuracy"]) == (
        report.current.accuracy, report.candidate.accuracy
    )  # fmt: skip
    assert run["candidateUri"] == f"s3://models/runs/{name}/model"
    assert storage.object_path(BUCKET, f"runs/{name}/model/manifest.json").is_file()
    # The rollout, from the template, owned by the training.
    rollout = cluster.get(API, "ModelRollout", namespace, run["rollout"])
    assert rollout is not None
    assert rollout["spec"]["candidate"]["modelUri"] == run["candidateUri"]
    assert rollout["spec"]["agentRef"] == "shop" and rollout["spec"]["weight"] == 0
    assert rollout["spec"]["testers"] == [{"name": "x-switchboard-canary", "exact": "true"}]
    assert rollout["metadata"]["ownerReferences"][0]["name"] == "shop-better"
    ready = condition_of({"status": status})
    assert ready and (ready["status"], ready["reason"]) == ("True", "GatePassed")
    assert status["phase"] == "Passed" and status["lastTrigger"] == "first"
    assert ("Normal", "GatePassed") in cluster.events(namespace, "shop-better")
    # The run's RayJob: the upstream shape KubeRay reads, with the run's entrypoint.
    job = cluster.get("ray.io/v1", "RayJob", namespace, name)
    assert job and job["metadata"]["ownerReferences"][0]["kind"] == "ModelTraining"
    metrics = urllib.request.urlopen(
        f"http://127.0.0.1:{operator['metrics_port']}/metrics", timeout=10
    ).read().decode()  # fmt: skip
    assert (
        f'switchboard_training_runs_total{{namespace="{namespace}",result="Passed",'
        f'training="shop-better"}} 1.0'
    ) in metrics
    assert 'switchboard_training_heldout_accuracy{model="candidate"' in metrics


def test_a_candidate_worse_on_the_heldout_set_is_refused_with_the_criterion(
    cluster: Cluster, namespace: str, storage: S3Server
) -> None:
    cluster.create(
        training("shop-poisoned", storage, feedback={"uris": ["s3://models/poisoned/"]}), namespace
    )
    with RayJobPlayer(cluster, namespace) as player:
        run_now(cluster, namespace, "shop-poisoned", "1")
        status = last_result(cluster, namespace, "shop-poisoned")
    run = status["lastRun"]
    played = player.played[manual_run_name("shop-poisoned", "1")]
    assert played.returncode == 0, played.output[-3000:]
    assert run["result"] == "Refused", run
    print(f"\nrefused: {run['message']}", file=sys.__stderr__)
    # The criterion and its figures: the tracking intent's recall collapsed.
    assert "intent track_package recall" in run["message"], run["message"]
    assert "maxIntentRegression 0.0500" in run["message"]
    assert run["candidateAccuracy"] < run["currentAccuracy"]
    assert "rollout" not in run
    assert cluster.list(API, "ModelRollout", namespace) == [] or all(
        r["metadata"]["ownerReferences"][0]["name"] != "shop-poisoned"
        for r in cluster.list(API, "ModelRollout", namespace)
    )
    gate = condition_of({"status": status}, "GatePassed")
    assert gate and (gate["status"], gate["reason"]) == ("False", "GateRefused")
    assert status["phase"] == "Refused"


def test_bad_data_fails_the_run_and_names_the_problem(
    cluster: Cluster, namespace: str, storage: S3Server, envtest: Any
) -> None:
    data = {
        "baseUri": "s3://models/data/ecommerce-intents.csv",
        "heldoutUri": "s3://models/data/heldout-small.csv",
    }
    cluster.create(training("shop-small-heldout", storage, data=data), namespace)
    with RayJobPlayer(cluster, namespace) as player:
        # Asked for as a user would: `switchboard train` with their kubeconfig.
        asked = subprocess.run(
            [sys.executable, "-P", "-m", "switchboard.operator.cli", "train",
             "shop-small-heldout", "-n", namespace],
            env={**os.environ, "KUBECONFIG": str(envtest.kubeconfig)}, capture_output=True,
            text=True, timeout=60, check=False,
        )  # fmt: skip
        assert asked.returncode == 0, asked.stderr
        assert "run requested" in asked.stdout
        status = last_result(cluster, namespace, "shop-small-heldout", timeout=300)
    request = status["lastTrigger"]
    played = player.played[manual_run_name("shop-small-heldout", request)]
    assert played.returncode == 2, played.output[-3000:]
    run = status["lastRun"]
    assert run["result"] == "BadData", run
    assert "heldout-small.csv" in run["message"] and "10" in run["message"], run["message"]
    ready = condition_of({"status": status})
    assert ready and (ready["status"], ready["reason"]) == ("False", "BadData")
    assert status["phase"] == "Failed"
    assert ("Warning", "BadData") in cluster.events(namespace, "shop-small-heldout")
    # Nothing of a candidate was written.
    assert not storage.object_path(BUCKET, f"runs/{run['name']}/model").exists()


def test_schedule_never_overlaps_and_a_run_by_hand_waits_its_turn(
    cluster: Cluster, namespace: str, storage: S3Server
) -> None:
    """Every minute, with each run held Running by the player: the next minute's run is skipped
    (counted, an Event), a run asked for by hand waits for the running one, and runs past the
    history limit lose their RayJob."""
    name = "shop-minutely"
    with RayJobPlayer(cluster, namespace, hold=True) as player:
        cluster.create(training(name, storage, schedule="* * * * *", historyLimit=1), namespace)

        def active() -> str | None:
            return (status_of(cluster, namespace, name).get("active") or {}).get("name")

        first = cluster.wait_for("the first scheduled run", active, timeout=75)
        assert "-s" in first
        assert status_of(cluster, namespace, name)["active"]["trigger"] == "schedule"
        cluster.wait_for(
            "the next minute's run skipped",
            lambda: status_of(cluster, namespace, name).get("skippedRuns"),
            timeout=75,
        )
        assert ("Warning", "RunSkipped") in cluster.events(namespace, name)
        run_now(cluster, namespace, name, "asap")
        time.sleep(3)
        jobs = [j["metadata"]["name"] for j in cluster.list("ray.io/v1", "RayJob", namespace)]
        assert [j for j in jobs if j.startswith(name)] == [first]
        # Stop the schedule, then end the held run as KubeRay would report a crash.
        cluster.patch(API, "ModelTraining", namespace, name, {"spec": {"suspend": True}})
        player.release(first, succeeded=False)
        manual = manual_run_name(name, "asap")
        cluster.wait_for("the run by hand after it", lambda: active() == manual, timeout=30)
        status = status_of(cluster, namespace, name)
        assert status["lastRun"]["result"] == "Failed"
        assert "AppFailed" in status["lastRun"]["message"]
        # A run that says it succeeded but wrote no report opens nothing.
        player.release(manual, succeeded=True)
        status = last_result(cluster, namespace, name, timeout=30)
    assert status["lastRun"]["name"] == manual
    assert status["lastRun"]["result"] == "Failed"
    assert "without a report" in status["lastRun"]["message"]
    assert [h["name"] for h in status["history"]] == [manual]
    cluster.wait_for(
        "the RayJob past historyLimit deleted",
        lambda: cluster.get("ray.io/v1", "RayJob", namespace, first) is None,
    )
    assert cluster.get("ray.io/v1", "RayJob", namespace, manual) is not None


def test_missing_references_are_conditions_not_crashes(
    cluster: Cluster, namespace: str, storage: S3Server, envtest: Any
) -> None:
    asked = subprocess.run(
        [sys.executable, "-P", "-m", "switchboard.operator.cli", "train", "nope", "-n", namespace],
        env={**os.environ, "KUBECONFIG": str(envtest.kubeconfig)}, capture_output=True,
        text=True, timeout=60, check=False,
    )  # fmt: skip
    assert asked.returncode == 1 and f"ModelTraining {namespace}/nope" in asked.stderr
    doc = training("shop-orphan", storage, agentRef="nobody")
    cluster.create(doc, namespace)
    ready = cluster.wait_for_reason("ModelTraining", namespace, "shop-orphan", "AgentNotFound")
    assert "SupportAgent training/nobody" in ready["message"]
    cluster.patch(
        API, "ModelTraining", namespace, "shop-orphan",
        {"spec": {"agentRef": "shop", "storage": {"credentialsSecretRef": {"name": "gone"}}}},
    )  # fmt: skip
    ready = cluster.wait_for_reason("ModelTraining", namespace, "shop-orphan", "SecretNotFound")
    assert "Secret training/gone (spec.storage.credentialsSecretRef)" in ready["message"]
    assert ("Warning", "SecretNotFound") in cluster.events(namespace, "shop-orphan")
    # A run asked for meanwhile starts once the Secret is there.
    run_now(cluster, namespace, "shop-orphan", "x")
    time.sleep(2)
    assert (
        cluster.get("ray.io/v1", "RayJob", namespace, manual_run_name("shop-orphan", "x")) is None
    )
    cluster.patch(
        API, "ModelTraining", namespace, "shop-orphan",
        {"spec": {"storage": {"credentialsSecretRef": {"name": "model-storage"}}}},
    )  # fmt: skip
    cluster.wait_for_reason("ModelTraining", namespace, "shop-orphan", "Running")
