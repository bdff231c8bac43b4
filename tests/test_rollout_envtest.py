"""ModelRollout against a real kube-apiserver, with the operator under its shipped RBAC and a
Prometheus stand-in: a real HTTP server on 127.0.0.1 answering `/api/v1/query` from a script
the test sets (the edge we do not own)."""

from __future__ import annotations

import contextlib
import copy
import json
import threading
import time
import urllib.parse
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes.client.rest import ApiException

pytestmark = pytest.mark.envtest

REPO = Path(__file__).resolve().parents[1]
GROUP, VERSION = "switchboard.dev", "v1alpha1"
API = f"{GROUP}/{VERSION}"
# A distinctive piece of each built-in query → the metric it measures.
MARKERS = {
    'status="error"': "errorRate",
    "histogram_quantile": "latencyP95",
    "ray_escalation_to_human_total": "escalationRate",
    "ray_agent_nlu_confidence_sum": "nluConfidence",
    "ray_agent_tool_calls_total": "toolErrorRate",
}


class Prometheus:
    """Answers instant queries with the value scripted for the metric the query measures."""

    def __init__(self) -> None:
        self.values: dict[str, float | None] = {}
        self.queries: list[str] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                query = urllib.parse.parse_qs(urllib.parse.urlparse(self.path).query)["query"][0]
                owner.queries.append(query)
                metric = next((m for marker, m in MARKERS.items() if marker in query), None)
                value = owner.values.get(metric or "")
                result = (
                    [] if value is None else [{"metric": {}, "value": [time.time(), str(value)]}]
                )
                body = json.dumps(
                    {"status": "success", "data": {"resultType": "vector", "result": result}}
                ).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def healthy(self) -> None:
        self.values = {
            "errorRate": 0.001,
            "escalationRate": 0.05,
            "nluConfidence": 0.93,
            "latencyP95": 0.08,
        }

    def close(self) -> None:
        self.server.shutdown()


@pytest.fixture(scope="module")
def prometheus() -> Iterator[Prometheus]:
    server = Prometheus()
    server.healthy()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="module")
def operator(run_operator: Any, prometheus: Prometheus) -> Iterator[dict[str, Any]]:
    with run_operator(env={"SWITCHBOARD_PROMETHEUS_URL": prometheus.url}) as running:
        yield running


def quickstart(cluster: Any, namespace: str) -> None:
    cluster.namespace(namespace)
    cluster.apply_dir(REPO / "examples" / "quickstart", namespace)
    cluster.wait_for(
        "RayService", lambda: cluster.get("ray.io/v1", "RayService", namespace, "acme")
    )


def rollout(name: str, **spec: Any) -> dict[str, Any]:
    base = yaml.safe_load((REPO / "examples" / "rollout" / "10-modelrollout.yaml").read_text())
    body = copy.deepcopy(base)
    body["metadata"] = {"name": name}
    body["spec"].pop("progressive")
    body["spec"].update(spec)
    return body


def progressive(steps: list[int], interval: int = 1, **analysis: Any) -> dict[str, Any]:
    metrics = [
        {"name": "errors", "builtin": "errorRate", "thresholdRange": {"max": 0.02}},
        {"name": "confidence", "builtin": "nluConfidence", "thresholdRange": {"min": 0.7}},
    ]
    return {
        "steps": steps,
        "intervalSeconds": interval,
        "progressDeadlineSeconds": analysis.pop("deadline", 600),
        "analysis": {"failureLimit": analysis.pop("failure_limit", 0), "metrics": metrics},
    }


def serve_apps(cluster: Any, ns: str) -> dict[str, Any]:
    rs = cluster.get("ray.io/v1", "RayService", ns, "acme")
    config = yaml.safe_load(rs["spec"]["serveConfigV2"])
    return {app["name"]: app for app in config["applications"]}


def routes(cluster: Any, ns: str) -> list[dict[str, Any]]:
    vs = cluster.get("networking.istio.io/v1", "VirtualService", ns, "acme")
    return list(vs["spec"]["http"])


def weights(cluster: Any, ns: str) -> list[tuple[str, int]]:
    main = routes(cluster, ns)[-1]["route"]
    return [(d["headers"]["request"]["set"]["x-switchboard-revision"], d["weight"]) for d in main]


def rollout_status(cluster: Any, ns: str, name: str) -> dict[str, Any]:
    body = cluster.get(API, "ModelRollout", ns, name) or {}
    return dict(body.get("status") or {})


def ready_reason(cluster: Any, ns: str, name: str) -> str | None:
    ready = [
        c for c in rollout_status(cluster, ns, name).get("conditions", []) if c["type"] == "Ready"
    ]
    return str(ready[0]["reason"]) if ready else None


def phase_is(cluster: Any, ns: str, name: str, phase: str) -> Any:
    return lambda: rollout_status(cluster, ns, name).get("phase") == phase


# ------------------------------------------------------------------------------------------


def test_manual_weight_reaches_routes_and_serve_config(cluster: Any, operator: Any) -> None:
    ns = "rollout-manual"
    quickstart(cluster, ns)
    cluster.create(rollout("manual", weight=30), ns)
    cluster.wait_for(
        "30% on the candidate",
        lambda: len(weights(cluster, ns)) == 2 and weights(cluster, ns)[1][1] == 30,
    )
    status = rollout_status(cluster, ns, "manual")
    assert status["currentWeight"] == 30 and status["phase"] == "Progressing"
    stable, candidate = status["stableRevision"], status["candidateRevision"]
    assert weights(cluster, ns) == [(stable, 70), (candidate, 30)]
    http = routes(cluster, ns)
    assert http[0]["name"] == "testers"  # tester route first, so testers always get the candidate
    assert http[0]["match"] == [{"headers": {"x-switchboard-canary": {"exact": "true"}}}]
    assert http[0]["route"][0]["headers"]["request"]["set"]["x-switchboard-revision"] == candidate
    apps = serve_apps(cluster, ns)
    assert {f"acme-{stable}", f"acme-{candidate}"} <= set(apps)
    router = apps["acme"]["args"]
    assert [(r["revision"], r["weight"]) for r in router["revisions"]] == [
        (stable, 70),
        (candidate, 30),
    ]
    assert apps[f"acme-{candidate}"]["args"]["nlu"]["model_path"] == "/models/nlu/acme-v2"
    agent = cluster.agent(ns, "acme")
    assert agent["status"]["traffic"] == [
        {"revision": stable, "percent": 70, "tag": "stable"},
        {"revision": candidate, "percent": 30, "tag": "candidate"},
    ]
    cluster.wait_for(
        "WeightSet event", lambda: ("Normal", "WeightSet") in cluster.events(ns, "manual")
    )


def test_good_metrics_step_up_to_100_and_succeed(
    cluster: Any, operator: Any, prometheus: Prometheus
) -> None:
    ns = "rollout-good"
    quickstart(cluster, ns)
    prometheus.healthy()
    cluster.create(rollout("good", progressive=progressive([20, 60])), ns)
    seen: set[int] = set()

    def done() -> bool:
        seen.add(int(rollout_status(cluster, ns, "good").get("currentWeight") or 0))
        return rollout_status(cluster, ns, "good").get("phase") == "Succeeded"

    cluster.wait_for("Succeeded", done, timeout=60)
    assert {20, 60, 100} <= seen
    status = rollout_status(cluster, ns, "good")
    assert status["currentWeight"] == 100
    assert {m["name"]: m["verdict"] for m in status["metrics"]} == {
        "errors": "Pass",
        "confidence": "Pass",
    }
    candidate = status["candidateRevision"]
    cluster.wait_for(
        "all traffic on the candidate", lambda: weights(cluster, ns)[-1] == (candidate, 100)
    )
    assert any(
        f'application="acme-{candidate}"' in q and f'namespace="{ns}"' in q
        for q in prometheus.queries
    )
    events = cluster.events(ns, "good")
    assert ("Normal", "StepStarted") in events and ("Normal", "Succeeded") in events


def test_bad_metrics_roll_back_and_remove_the_candidate(
    cluster: Any, operator: Any, prometheus: Prometheus
) -> None:
    ns = "rollout-bad"
    quickstart(cluster, ns)
    prometheus.healthy()
    cluster.create(rollout("bad", progressive=progressive([20, 50, 100], interval=2)), ns)
    cluster.wait_for(
        "first step", lambda: rollout_status(cluster, ns, "bad").get("currentWeight") == 20
    )
    candidate = rollout_status(cluster, ns, "bad")["candidateRevision"]
    cluster.wait_for("candidate app", lambda: f"acme-{candidate}" in serve_apps(cluster, ns))
    prometheus.values["errorRate"] = 0.3
    try:
        cluster.wait_for("Failed", phase_is(cluster, ns, "bad", "Failed"), timeout=30)
    finally:
        prometheus.healthy()
    status = rollout_status(cluster, ns, "bad")
    assert status["currentWeight"] == 0
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert ready["reason"] == "AnalysisFailed" and "errors=0.3" in ready["message"]
    cluster.wait_for(
        "candidate removed", lambda: f"acme-{candidate}" not in serve_apps(cluster, ns)
    )
    assert len(routes(cluster, ns)) == 1 and weights(cluster, ns)[0][1] == 100
    cluster.wait_for(
        "RolledBack event", lambda: ("Warning", "RolledBack") in cluster.events(ns, "bad")
    )


def test_progress_deadline_fails_the_rollout(
    cluster: Any, operator: Any, prometheus: Prometheus
) -> None:
    ns = "rollout-deadline"
    quickstart(cluster, ns)
    prometheus.values = {}  # no data at all: the rollout can only wait, until its deadline
    try:
        cluster.create(
            rollout("slow", progressive=progressive([50, 100], interval=1, deadline=4)), ns
        )
        cluster.wait_for("Failed", phase_is(cluster, ns, "slow", "Failed"), timeout=45)
    finally:
        prometheus.healthy()
    ready = next(
        c for c in rollout_status(cluster, ns, "slow")["conditions"] if c["type"] == "Ready"
    )
    assert ready["reason"] == "ProgressDeadlineExceeded"
    assert rollout_status(cluster, ns, "slow")["currentWeight"] == 0


def test_pause_holds_the_weight_and_resume_continues(
    cluster: Any, operator: Any, prometheus: Prometheus
) -> None:
    ns = "rollout-pause"
    quickstart(cluster, ns)
    prometheus.healthy()
    cluster.create(
        rollout("paused", paused=True, progressive=progressive([30, 60, 100], interval=1)), ns
    )
    cluster.wait_for("Paused", phase_is(cluster, ns, "paused", "Paused"))
    time.sleep(4)  # several intervals: a paused rollout does not advance
    assert rollout_status(cluster, ns, "paused")["phase"] == "Paused"
    weight = rollout_status(cluster, ns, "paused")["currentWeight"]
    assert weight in (0, 30)
    cluster.patch(API, "ModelRollout", ns, "paused", {"spec": {"paused": False}})
    cluster.wait_for(
        "Succeeded after resume", phase_is(cluster, ns, "paused", "Succeeded"), timeout=60
    )


@pytest.mark.parametrize(
    ("name", "spec", "reason"),
    [
        ("unknown-agent", {"agentRef": "nobody", "weight": 10}, "AgentNotFound"),
        ("no-llm", {"component": "llm", "weight": 10}, "ComponentNotFound"),
        ("steps-descending", {"progressive": {"steps": [50, 20]}}, "InvalidSpec"),
        ("manual-and-progressive", {"weight": 10, "progressive": {"steps": [10]}}, "InvalidSpec"),
    ],
)
def test_invalid_rollouts_are_conditioned(
    cluster: Any, invalid_ns: str, name: str, spec: dict[str, Any], reason: str
) -> None:
    ns = invalid_ns
    body = rollout(name)
    body["spec"].update(spec)
    if "progressive" in spec and "weight" not in spec:
        body["spec"].pop("weight", None)
    cluster.create(body, ns)
    ready = cluster.wait_for(
        reason,
        lambda: next(
            (
                c
                for c in rollout_status(cluster, ns, name).get("conditions", [])
                if c["type"] == "Ready"
            ),
            None,
        ),
    )
    assert ready["status"] == "False" and ready["reason"] == reason
    # Nothing changes for the agent: only its stable revision serves.
    assert len(routes(cluster, ns)) == 1
    cluster.wait_for(f"{reason} event", lambda: ("Warning", reason) in cluster.events(ns, name))


def test_rollout_synced_before_its_agent_starts_once_the_agent_exists(
    cluster: Any, operator: Any, prometheus: Prometheus
) -> None:
    """Argo CD may create the ModelRollout first: AgentNotFound is not a final verdict."""
    ns = cluster.namespace("rollout-early")
    prometheus.healthy()
    cluster.create(rollout("early", progressive=progressive([20, 100])), ns)
    cluster.wait_for("AgentNotFound", lambda: ready_reason(cluster, ns, "early") == "AgentNotFound")
    status = rollout_status(cluster, ns, "early")
    states = {c["type"]: (c["status"], c["reason"]) for c in status["conditions"]}
    assert states == {
        "Ready": ("False", "AgentNotFound"),
        "Progressing": ("False", "AgentNotFound"),
        "Degraded": ("True", "AgentNotFound"),
    }
    time.sleep(3)  # the rollout timer ticks every 2 s: the Event is posted once all the same
    assert cluster.events(ns, "early").count(("Warning", "AgentNotFound")) == 1
    cluster.apply_dir(REPO / "examples" / "quickstart", ns)
    cluster.wait_for("Succeeded", phase_is(cluster, ns, "early", "Succeeded"), timeout=60)


def test_unreachable_prometheus_holds_the_weight_and_says_why(cluster: Any, operator: Any) -> None:
    ns = "rollout-no-prometheus"
    quickstart(cluster, ns)
    steps = progressive([20, 100], interval=1)
    steps["analysis"]["prometheusUrl"] = "http://127.0.0.1:9"  # nothing listens on discard
    cluster.create(rollout("blind", progressive=steps), ns)
    cluster.wait_for(
        "PrometheusUnavailable",
        lambda: ready_reason(cluster, ns, "blind") == "PrometheusUnavailable",
        timeout=30,
    )
    time.sleep(3)  # several intervals: no evidence, no step
    status = rollout_status(cluster, ns, "blind")
    assert status["phase"] == "Progressing" and status["currentWeight"] == 20
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert "127.0.0.1:9" in ready["message"]
    cluster.wait_for(
        "PrometheusUnavailable event",
        lambda: ("Warning", "PrometheusUnavailable") in cluster.events(ns, "blind"),
    )


@pytest.fixture(scope="module")
def invalid_ns(cluster: Any, operator: Any) -> str:
    quickstart(cluster, "rollout-invalid")
    return "rollout-invalid"


def test_schema_rejects_weights_over_100(cluster: Any, installed_crds: Any) -> None:
    body = rollout("too-much", weight=150)
    with pytest.raises(ApiException) as raised:
        cluster.objects.create_namespaced_custom_object(
            GROUP, VERSION, "default", "modelrollouts", body
        )
    assert raised.value.status == 422


def test_git_flow_converges_without_a_traffic_gap(cluster: Any, operator: Any) -> None:
    """Succeeded at 100%, then the user commits the candidate model into the SupportAgent and
    deletes the ModelRollout: every route state on the way serves an existing application."""
    ns = "rollout-gitops"
    quickstart(cluster, ns)
    cluster.create(rollout("promote", weight=100), ns)
    cluster.wait_for("Succeeded", phase_is(cluster, ns, "promote", "Succeeded"))
    candidate = rollout_status(cluster, ns, "promote")["candidateRevision"]
    cluster.wait_for("candidate at 100", lambda: weights(cluster, ns)[-1] == (candidate, 100))
    observed: list[tuple[list[tuple[str, int]], set[str]]] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            with contextlib.suppress(Exception):  # a read racing a write; the next one counts
                observed.append((weights(cluster, ns), set(serve_apps(cluster, ns))))
            time.sleep(0.05)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        cluster.patch(
            API,
            "SupportAgent",
            ns,
            "acme",
            {"spec": {"nlu": {"modelUri": "file:///models/nlu/acme-v2"}}},
        )
        cluster.wait_for("Promoted", lambda: ready_reason(cluster, ns, "promote") == "Promoted")
        cluster.delete(API, "ModelRollout", ns, "promote")
        cluster.wait_for("only the new stable", lambda: weights(cluster, ns) == [(candidate, 100)])
        cluster.wait_for(
            "old revision cleaned up",
            lambda: set(serve_apps(cluster, ns)) == {"acme", f"acme-{candidate}"},
        )
    finally:
        stop.set()
        watcher.join()
    assert observed
    for route_weights, apps in observed:
        assert sum(w for _, w in route_weights) == 100
        for revision, weight in route_weights:
            if weight > 0:
                assert f"acme-{revision}" in apps, (route_weights, apps)
    agent = cluster.agent(ns, "acme")
    assert agent["status"]["traffic"] == [{"revision": candidate, "percent": 100, "tag": "stable"}]
