"""ModelRollout against a real kube-apiserver, with the operator under its shipped RBAC and a
real Prometheus (`start_prometheus`: Debian's 2.42, scraping every second) reading an exporter
the tests drive: the data plane's own series, served by prometheus_client on 127.0.0.1, with a
thread playing each candidate's traffic (healthy, failing, or none at all)."""

from __future__ import annotations

import contextlib
import copy
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from kubernetes.client.rest import ApiException
from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server

from support.cluster import Cluster
from support.paths import EXAMPLES, QUICKSTART
from support.polling import wait_for
from support.prometheus import PrometheusServer
from switchboard.operator.api.modelrollout import AnalysisMetric
from switchboard.operator.prometheus import query
from switchboard.operator.render.names import revision_app_name
from switchboard.operator.resources.modelrollout import BUILTIN_QUERIES, TRAFFIC, metric_query

pytestmark = pytest.mark.envtest

GROUP, VERSION = "switchboard.dev", "v1alpha1"
API = f"{GROUP}/{VERSION}"
# The operator's own --prometheus-url: a port where nothing listens. Each test's rollout names
# its own real Prometheus (`analysis.prometheusUrl`), so one test's outage touches no other;
# a rollout that names none shows the operator's URL at work.
NO_PROMETHEUS = "http://127.0.0.1:9"
# A step's interval and the rate window: three 1 s scrapes, enough for rate() and increase().
STEP_SECONDS = 3
# Every built-in analysis, with the thresholds of examples/rollout.
METRICS = [
    {"name": "errors", "builtin": "errorRate", "thresholdRange": {"max": 0.02}},
    {"name": "escalations", "builtin": "escalationRate", "thresholdRange": {"max": 0.25}},
    {"name": "confidence", "builtin": "nluConfidence", "thresholdRange": {"min": 0.7}},
    {"name": "latency", "builtin": "latencyP95", "thresholdRange": {"max": 0.5}},
    {"name": "tools", "builtin": "toolErrorRate", "thresholdRange": {"max": 0.05}},
]


class Exporter:
    """The series the data plane exports (serving/app.py `_ServeMetrics`, `ray_`-prefixed by
    Ray's metrics agent), labelled as Prometheus stores them: `application` from Serve,
    `namespace` from the scrape. A thread plays five chat turns a second per application
    being served; a given share of them fail (status="error", a failed tool call, a handoff).
    Nothing else: a failure counter has no series until its first failure, as in production."""

    TURN_SECONDS = 0.2

    def __init__(self) -> None:
        registry = CollectorRegistry()
        app = ["namespace", "application"]
        # prometheus_client appends `_total` to counters (and adds `_created` series, which no
        # query reads): `ray_agent_request` is exposed as `ray_agent_request_total`.
        self.requests = Counter(
            "ray_agent_request", "Chat turns.", [*app, "status", "intent"], registry=registry
        )
        self.latency = Histogram(
            "ray_agent_response_latency_seconds", "Time to answer one chat turn.", app,
            buckets=(0.05, 0.1, 0.25, 0.5, 1.0, 2.5), registry=registry,
        )  # fmt: skip
        self.confidence = Histogram(
            "ray_agent_nlu_confidence", "NLU confidence of each turn.", app,
            buckets=(0.5, 0.7, 0.9, 0.95, 0.99), registry=registry,
        )  # fmt: skip
        self.escalations = Counter(
            "ray_escalation_to_human", "Handoffs.", [*app, "reason"], registry=registry
        )
        self.tool_calls = Counter(
            "ray_agent_tool_calls", "Tool calls.", [*app, "outcome"], registry=registry
        )
        self.server, _ = start_http_server(0, addr="127.0.0.1", registry=registry)
        self.target = f"127.0.0.1:{self.server.server_port}"
        self.traffic: dict[tuple[str, str], float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._play, daemon=True)
        self._thread.start()

    def serve(self, namespace: str, application: str, errors: float = 0.0) -> None:
        """Turns for `application` from now on, the share `errors` of them failing."""
        self.traffic[(namespace, application)] = errors

    def silence(self, namespace: str, application: str) -> None:
        self.traffic.pop((namespace, application), None)

    def _play(self) -> None:
        turns: dict[tuple[str, str], int] = {}
        while not self._stop.wait(self.TURN_SECONDS):
            for key, errors in list(self.traffic.items()):
                n = turns[key] = turns.get(key, 0) + 1
                self._turn(*key, failed=int(n * errors) > int((n - 1) * errors))

    def _turn(self, namespace: str, application: str, failed: bool) -> None:
        app = {"namespace": namespace, "application": application}
        status = "error" if failed else "ok"
        self.requests.labels(**app, status=status, intent="order_status").inc()
        self.latency.labels(**app).observe(1.2 if failed else 0.12)
        self.confidence.labels(**app).observe(0.41 if failed else 0.93)
        self.tool_calls.labels(**app, outcome="failure" if failed else "success").inc()
        if failed:
            self.escalations.labels(**app, reason="tool_failure").inc()

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def exporter() -> Iterator[Exporter]:
    served = Exporter()
    try:
        yield served
    finally:
        served.close()


@pytest.fixture
def traffic(exporter: Exporter) -> Iterator[Exporter]:
    """The exporter, its traffic stopped after the test."""
    yield exporter
    exporter.traffic.clear()


@pytest.fixture
def prometheus(start_prometheus: Any, exporter: Exporter) -> PrometheusServer:
    """A real Prometheus of the test's own, scraping the exporter."""
    return start_prometheus([exporter.target])


@pytest.fixture(scope="module")
def operator(run_operator: Any) -> Iterator[dict[str, Any]]:
    with run_operator(env={"SWITCHBOARD_PROMETHEUS_URL": NO_PROMETHEUS}) as running:
        yield running


def quickstart(cluster: Cluster, namespace: str) -> None:
    cluster.namespace(namespace)
    cluster.apply_dir(QUICKSTART, namespace)
    cluster.wait_for(
        "RayService", lambda: cluster.get("ray.io/v1", "RayService", namespace, "acme")
    )


def rollout(name: str, **spec: Any) -> dict[str, Any]:
    base = yaml.safe_load((EXAMPLES / "rollout" / "10-modelrollout.yaml").read_text())
    body = copy.deepcopy(base)
    body["metadata"] = {"name": name}
    body["spec"].pop("progressive")
    body["spec"].update(spec)
    return body


def progressive(
    steps: list[int],
    prometheus_url: str | None = None,
    *,
    metrics: list[dict[str, Any]] = METRICS,
    interval: int = STEP_SECONDS,
    deadline: int = 600,
    failure_limit: int = 0,
    min_requests: int = 5,
) -> dict[str, Any]:
    """Steps gated by `metrics` (none: by time alone) read from `prometheus_url` (None: the
    operator's). Five requests per step: the exporter plays about fifteen per window."""
    analysis: dict[str, Any] = {
        "failureLimit": failure_limit, "minRequests": min_requests, "metrics": metrics,
    }  # fmt: skip
    if prometheus_url is not None:
        analysis["prometheusUrl"] = prometheus_url
    return {
        "steps": steps,
        "intervalSeconds": interval,
        "progressDeadlineSeconds": deadline,
        "analysis": analysis,
    }


def serve_apps(cluster: Cluster, ns: str) -> dict[str, Any]:
    rs = cluster.get("ray.io/v1", "RayService", ns, "acme")
    config = yaml.safe_load(rs["spec"]["serveConfigV2"])
    return {app["name"]: app for app in config["applications"]}


def routes(cluster: Cluster, ns: str) -> list[dict[str, Any]]:
    """The VirtualService's routes; none before the operator has applied it."""
    vs = cluster.get("networking.istio.io/v1", "VirtualService", ns, "acme")
    return list(vs["spec"]["http"]) if vs else []


def weights(cluster: Cluster, ns: str) -> list[tuple[str, int]]:
    http = routes(cluster, ns)
    if not http:
        return []
    main = http[-1]["route"]
    return [(d["headers"]["request"]["set"]["x-switchboard-revision"], d["weight"]) for d in main]


def rollout_status(cluster: Cluster, ns: str, name: str) -> dict[str, Any]:
    body = cluster.get(API, "ModelRollout", ns, name) or {}
    return dict(body.get("status") or {})


def ready_condition(cluster: Cluster, ns: str, name: str) -> dict[str, Any]:
    conditions = rollout_status(cluster, ns, name).get("conditions", [])
    return next((c for c in conditions if c["type"] == "Ready"), {})


def ready_reason(cluster: Cluster, ns: str, name: str) -> str | None:
    return ready_condition(cluster, ns, name).get("reason")


def phase_is(cluster: Cluster, ns: str, name: str, phase: str) -> Any:
    return lambda: rollout_status(cluster, ns, name).get("phase") == phase


def applications(cluster: Cluster, ns: str, name: str) -> tuple[str, str]:
    """The Serve applications of the rollout's (candidate, stable) revisions, once known."""
    status = cluster.wait_for(
        "the rollout's revisions",
        lambda: (s := rollout_status(cluster, ns, name)).get("candidateRevision") and s,
    )
    return (
        revision_app_name("acme", status["candidateRevision"]),
        revision_app_name("acme", status["stableRevision"]),
    )


# ------------------------------------------------------------------------------------------


def test_builtin_queries_on_a_real_prometheus(
    prometheus: PrometheusServer, traffic: Exporter
) -> None:
    """Each built-in as the operator fills it in, against the exporter's series: a number for a
    candidate with traffic (0.0 for no failures, though their series do not exist), and no data
    for one without traffic, whether its series never existed or stood still in the window."""
    ns = "promql"
    traffic.serve(ns, "acme-stopped")  # two turns, then silence: series that stay flat
    time.sleep(2.5 * Exporter.TURN_SECONDS)
    traffic.silence(ns, "acme-stopped")
    traffic.serve(ns, "acme-healthy")
    traffic.serve(ns, "acme-failing", errors=0.25)

    def values(application: str) -> dict[str, float | None]:
        variables = {"namespace": ns, "application": application, "window": f"{STEP_SECONDS}s"}
        metrics = [
            AnalysisMetric.model_validate(
                {"name": name, "builtin": name, "thresholdRange": {"min": 0}}
            )
            for name in BUILTIN_QUERIES
        ]
        found = {m.name: query(prometheus.url, metric_query(m, variables)) for m in metrics}
        return {**found, "requests": query(prometheus.url, metric_query(TRAFFIC, variables))}

    def judged() -> dict[str, dict[str, float | None]] | None:
        seen = {app: values(app) for app in ("acme-healthy", "acme-failing")}
        every = [v for app in seen.values() for v in app.values()]
        return seen if None not in every and seen["acme-failing"]["errorRate"] else None

    seen = wait_for("both candidates judged", judged, timeout=30)
    seen |= {app: values(app) for app in ("acme-stopped", "acme-quiet")}
    for app, found in seen.items():
        print(f"real Prometheus, {app}: {found}")
    healthy, failing = seen["acme-healthy"], seen["acme-failing"]
    assert (healthy["errorRate"], healthy["escalationRate"], healthy["toolErrorRate"]) == (0, 0, 0)
    assert healthy["nluConfidence"] == pytest.approx(0.93)
    assert 0.1 < (healthy["latencyP95"] or 0) <= 0.25  # every turn in the (0.1, 0.25] bucket
    assert (healthy["requests"] or 0) >= 5
    assert 0.02 < (failing["errorRate"] or 0) < 1  # a quarter of the turns, give or take a window
    # Every failed turn fails a tool call and hands off: the three rates agree.
    assert failing["toolErrorRate"] == pytest.approx(failing["errorRate"])
    assert failing["escalationRate"] == pytest.approx(failing["errorRate"])
    assert (failing["nluConfidence"] or 1) < 0.93
    # No traffic in the window: no data, never 0 (a pass) and never NaN.
    assert seen["acme-stopped"] == {name: None for name in seen["acme-stopped"]} | {"requests": 0.0}
    assert seen["acme-quiet"] == {name: None for name in seen["acme-quiet"]}


def test_manual_weight_holds_in_routes_and_serve_config(cluster: Cluster, operator: Any) -> None:
    ns = "rollout-manual"
    quickstart(cluster, ns)
    cluster.create(rollout("manual", weight=30), ns)
    cluster.wait_for(
        "30% on the candidate",
        lambda: len(weights(cluster, ns)) == 2 and weights(cluster, ns)[1][1] == 30,
    )
    status = rollout_status(cluster, ns, "manual")
    # A manual split is a resting state of its own, not a rollout forever in progress.
    assert status["currentWeight"] == 30 and status["phase"] == "Holding"
    conditions = {c["type"]: (c["status"], c["reason"]) for c in status["conditions"]}
    assert conditions["Progressing"] == ("False", "ManualWeight")
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


def test_healthy_candidate_steps_up_to_100_and_succeeds(
    cluster: Cluster, operator: Any, prometheus: PrometheusServer, traffic: Exporter
) -> None:
    ns = "rollout-good"
    quickstart(cluster, ns)
    # A fresh Prometheus scrapes a few seconds after it starts: wait, so the first step is not
    # held for want of samples.
    cluster.wait_for("the first scrape", lambda: prometheus.query("up == 1"))
    cluster.create(rollout("good", progressive=progressive([10, 25, 50, 100], prometheus.url)), ns)
    candidate, stable = applications(cluster, ns, "good")
    traffic.serve(ns, candidate)
    traffic.serve(ns, stable, errors=0.5)  # the stable revision's failures are not the candidate's
    weights_seen: set[int] = set()
    # Each analysis seen, with the step and phase it left the rollout in: a healthy candidate's
    # values are the same step after step, so the values alone cannot tell two analyses apart.
    seen: list[tuple[Any, Any, list[dict[str, Any]]]] = []

    def done() -> bool:
        status = rollout_status(cluster, ns, "good")
        weights_seen.add(int(status.get("currentWeight") or 0))
        record = (status.get("stepIndex"), status.get("phase"), status.get("metrics"))
        if record[2] and record not in seen:
            seen.append(record)
        return status.get("phase") == "Succeeded"

    cluster.wait_for("Succeeded", done, timeout=90)
    analyses = [metrics for _, _, metrics in seen]
    judged = [a for a in analyses if {m["verdict"] for m in a} == {"Pass"}]
    for analysis in judged:
        print("real Prometheus, healthy candidate:", {m["name"]: m["value"] for m in analysis})
    assert weights_seen >= {10, 25, 50, 100}
    assert len(judged) >= 4  # one passed analysis per step
    assert all(m["verdict"] != "Fail" for a in analyses for m in a)
    for analysis in judged:
        values = {m["name"]: m["value"] for m in analysis}
        assert (values["errors"], values["escalations"], values["tools"]) == (0, 0, 0)
        assert values["confidence"] == pytest.approx(0.93)
        assert 0.1 < values["latency"] <= 0.25
    status = rollout_status(cluster, ns, "good")
    assert status["currentWeight"] == 100 and status["failures"] == 0
    cluster.wait_for(
        "all traffic on the candidate",
        lambda: weights(cluster, ns)[-1] == (status["candidateRevision"], 100),
    )
    events = cluster.events(ns, "good")
    assert events.count(("Normal", "StepStarted")) == 4 and ("Normal", "Succeeded") in events


def test_failing_candidate_rolls_back_to_zero(
    cluster: Cluster, operator: Any, prometheus: PrometheusServer, traffic: Exporter
) -> None:
    ns = "rollout-bad"
    quickstart(cluster, ns)
    cluster.create(rollout("bad", progressive=progressive([20, 50, 100], prometheus.url)), ns)
    candidate, _ = applications(cluster, ns, "bad")
    cluster.wait_for("candidate app", lambda: candidate in serve_apps(cluster, ns))
    traffic.serve(ns, candidate, errors=0.25)  # the error series appears with the first error
    cluster.wait_for("Failed", phase_is(cluster, ns, "bad", "Failed"), timeout=60)
    status = rollout_status(cluster, ns, "bad")
    assert status["currentWeight"] == 0
    results = {m["name"]: m for m in status["metrics"]}
    print("real Prometheus, failing candidate:", {n: m["value"] for n, m in results.items()})
    assert results["errors"]["verdict"] == "Fail" and results["errors"]["value"] > 0.02
    ready = ready_condition(cluster, ns, "bad")
    assert ready["reason"] == "AnalysisFailed" and "errors=" in ready["message"]
    cluster.wait_for("candidate removed", lambda: candidate not in serve_apps(cluster, ns))
    assert len(routes(cluster, ns)) == 1 and weights(cluster, ns)[0][1] == 100
    cluster.wait_for(
        "RolledBack event", lambda: ("Warning", "RolledBack") in cluster.events(ns, "bad")
    )


def test_quiet_candidate_holds_says_why_and_resumes_with_traffic(
    cluster: Cluster, operator: Any, prometheus: PrometheusServer, traffic: Exporter
) -> None:
    ns = "rollout-quiet"
    quickstart(cluster, ns)
    cluster.create(rollout("quiet", progressive=progressive([20], prometheus.url)), ns)
    cluster.wait_for(
        "NotEnoughTraffic",
        lambda: ready_reason(cluster, ns, "quiet") == "NotEnoughTraffic",
        timeout=30,
    )
    time.sleep(STEP_SECONDS + 1)  # another interval: still holding, and no failure counted
    status = rollout_status(cluster, ns, "quiet")
    assert (status["phase"], status["currentWeight"], status["failures"]) == ("Progressing", 20, 0)
    assert {m["verdict"] for m in status["metrics"]} == {"NoData"}
    assert ready_condition(cluster, ns, "quiet")["message"] == (
        f"Holding at 20%: the candidate served 0 request(s) in the last {STEP_SECONDS}s, "
        "fewer than minRequests (5)"
    )
    # One Event for the hold, not one per interval.
    assert cluster.events(ns, "quiet").count(("Warning", "NotEnoughTraffic")) == 1
    candidate, _ = applications(cluster, ns, "quiet")
    traffic.serve(ns, candidate)
    cluster.wait_for("Succeeded", phase_is(cluster, ns, "quiet", "Succeeded"), timeout=60)


def test_progress_deadline_bounds_the_wait_for_traffic(
    cluster: Cluster, operator: Any, prometheus: PrometheusServer
) -> None:
    ns = "rollout-deadline"
    quickstart(cluster, ns)
    steps = progressive([50, 100], prometheus.url, interval=1, deadline=4)
    cluster.create(rollout("slow", progressive=steps), ns)
    cluster.wait_for("Failed", phase_is(cluster, ns, "slow", "Failed"), timeout=45)
    assert ready_reason(cluster, ns, "slow") == "ProgressDeadlineExceeded"
    assert rollout_status(cluster, ns, "slow")["currentWeight"] == 0
    assert ("Warning", "NotEnoughTraffic") in cluster.events(ns, "slow")


def test_prometheus_outage_holds_the_weight_and_the_rollout_resumes(
    cluster: Cluster, operator: Any, prometheus: PrometheusServer, traffic: Exporter
) -> None:
    ns = "rollout-outage"
    quickstart(cluster, ns)
    # One step: stopped as it starts, Prometheus is down when its analysis comes.
    cluster.create(rollout("outage", progressive=progressive([20], prometheus.url)), ns)
    candidate, _ = applications(cluster, ns, "outage")
    traffic.serve(ns, candidate)
    cluster.wait_for(
        "first step", lambda: rollout_status(cluster, ns, "outage").get("currentWeight") == 20
    )
    prometheus.stop()
    try:
        cluster.wait_for(
            "PrometheusUnavailable",
            lambda: ready_reason(cluster, ns, "outage") == "PrometheusUnavailable",
            timeout=30,
        )
        time.sleep(STEP_SECONDS + 1)  # more ticks past the interval: no evidence, no step
        status = rollout_status(cluster, ns, "outage")
        assert (status["phase"], status["currentWeight"]) == ("Progressing", 20)
        assert (
            prometheus.url.removeprefix("http://")
            in ready_condition(cluster, ns, "outage")["message"]
        )
        cluster.wait_for(
            "PrometheusUnavailable event",
            lambda: ("Warning", "PrometheusUnavailable") in cluster.events(ns, "outage"),
        )
    finally:
        prometheus.start()
    cluster.wait_for("Succeeded", phase_is(cluster, ns, "outage", "Succeeded"), timeout=90)
    assert rollout_status(cluster, ns, "outage")["failures"] == 0


def test_pause_holds_the_weight_and_resume_continues(cluster: Cluster, operator: Any) -> None:
    ns = "rollout-pause"
    quickstart(cluster, ns)
    steps = progressive([30, 100], metrics=[], interval=1)  # steps by time alone
    cluster.create(rollout("paused", paused=True, progressive=steps), ns)
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
    cluster: Cluster, invalid_ns: str, name: str, spec: dict[str, Any], reason: str
) -> None:
    ns = invalid_ns
    body = rollout(name)
    body["spec"].update(spec)
    if "progressive" in spec and "weight" not in spec:
        body["spec"].pop("weight", None)
    cluster.create(body, ns)
    ready = cluster.wait_for(reason, lambda: ready_condition(cluster, ns, name) or None)
    assert ready["status"] == "False" and ready["reason"] == reason
    # Nothing changes for the agent: only its stable revision serves.
    assert len(routes(cluster, ns)) == 1
    cluster.wait_for(f"{reason} event", lambda: ("Warning", reason) in cluster.events(ns, name))


def test_rollout_synced_before_its_agent_starts_once_the_agent_exists(
    cluster: Cluster, operator: Any
) -> None:
    """Argo CD may create the ModelRollout first: AgentNotFound is not a final verdict."""
    ns = cluster.namespace("rollout-early")
    cluster.create(rollout("early", progressive=progressive([20, 100], metrics=[], interval=1)), ns)
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
    cluster.apply_dir(QUICKSTART, ns)
    cluster.wait_for("Succeeded", phase_is(cluster, ns, "early", "Succeeded"), timeout=60)


def test_rollout_without_a_prometheus_url_uses_the_operators(
    cluster: Cluster, operator: Any
) -> None:
    """No `prometheusUrl`: the operator's --prometheus-url, here a port where nothing listens.
    The weight holds and the status names the Prometheus at fault."""
    ns = "rollout-no-prometheus"
    quickstart(cluster, ns)
    cluster.create(rollout("blind", progressive=progressive([20, 100], interval=1)), ns)
    cluster.wait_for(
        "PrometheusUnavailable",
        lambda: ready_reason(cluster, ns, "blind") == "PrometheusUnavailable",
        timeout=30,
    )
    time.sleep(3)  # several intervals: no evidence, no step
    status = rollout_status(cluster, ns, "blind")
    assert status["phase"] == "Progressing" and status["currentWeight"] == 20
    assert NO_PROMETHEUS.removeprefix("http://") in ready_condition(cluster, ns, "blind")["message"]
    cluster.wait_for(
        "PrometheusUnavailable event",
        lambda: ("Warning", "PrometheusUnavailable") in cluster.events(ns, "blind"),
    )


@pytest.fixture(scope="module")
def invalid_ns(cluster: Cluster, operator: Any) -> str:
    quickstart(cluster, "rollout-invalid")
    return "rollout-invalid"


def test_schema_rejects_weights_over_100(cluster: Cluster, installed_crds: Any) -> None:
    body = rollout("too-much", weight=150)
    with pytest.raises(ApiException) as raised:
        cluster.objects.create_namespaced_custom_object(
            GROUP, VERSION, "default", "modelrollouts", body
        )
    assert raised.value.status == 422


def test_git_flow_converges_without_a_traffic_gap(cluster: Cluster, operator: Any) -> None:
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
        # One revision again: it answers at `/` itself, the router is gone with the rollout.
        cluster.wait_for(
            "old revision and router cleaned up",
            lambda: set(serve_apps(cluster, ns)) == {f"acme-{candidate}"},
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
