"""The rollout's pure parts, table by table: the step function, step lists, query templates,
and the router's revision choice (headers, testers, weights)."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from switchboard.operator.api.modelrollout import AnalysisMetric, ModelRolloutSpec
from switchboard.operator.render.rollout import initial_weight, steps_of
from switchboard.operator.resources.modelrollout import (
    BUILTIN_QUERIES,
    REQUESTS_QUERY,
    TRAFFIC,
    RolloutState,
    advance,
    metric_query,
)
from switchboard.serving import config as contract
from switchboard.serving.router import pick_revision

T0 = datetime(2026, 11, 22, 12, 0, 0, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def stamp(seconds: float) -> str:
    return at(seconds).strftime("%Y-%m-%dT%H:%M:%SZ")


def spec(**changes: Any) -> ModelRolloutSpec:
    base: dict[str, Any] = {
        "agentRef": "acme",
        "component": "nlu",
        "candidate": {"modelUri": "file:///m2"},
        "progressive": {
            "steps": [10, 50, 100],
            "intervalSeconds": 60,
            "progressDeadlineSeconds": 600,
            "analysis": {
                "failureLimit": 1,
                "metrics": [
                    {"name": "err", "builtin": "errorRate", "thresholdRange": {"max": 0.05}}
                ],
            },
        },
    }
    base.update(changes)
    return ModelRolloutSpec.model_validate(base)


def metrics(value: float | None, requests: float | None = 100.0) -> Any:
    """Prometheus answering `value` for every analysis metric and `requests` for the traffic
    guard (the candidate's requests during the step)."""
    return lambda metric: requests if metric == TRAFFIC else value


@pytest.mark.parametrize(
    ("state", "now", "value", "expected"),
    [
        (RolloutState(), 0, 0.0, {"phase": "Progressing", "weight": 10, "step_index": 0}),
        # Inside the interval nothing moves.
        (RolloutState("Progressing", 10, 0, stamp(0), stamp(0)), 30, 0.0,
         {"phase": "Progressing", "weight": 10, "step_index": 0}),
        # Interval over, analysis passes: next step.
        (RolloutState("Progressing", 10, 0, stamp(0), stamp(0)), 61, 0.01,
         {"phase": "Progressing", "weight": 50, "step_index": 1, "step_started_at": stamp(61)}),
        # The last step passes: succeeded at 100.
        (RolloutState("Progressing", 100, 2, stamp(0), stamp(0)), 61, 0.01,
         {"phase": "Succeeded", "weight": 100}),
        # A failure within the limit holds the weight and restarts the step.
        (RolloutState("Progressing", 50, 1, stamp(0), stamp(0)), 61, 0.2,
         {"phase": "Progressing", "weight": 50, "failures": 1, "reason": "AnalysisFailed"}),
        # Over the limit: rolled back to 0.
        (RolloutState("Progressing", 50, 1, stamp(0), stamp(0), failures=1), 61, 0.2,
         {"phase": "Failed", "weight": 0, "failures": 2, "reason": "AnalysisFailed"}),
        # No data despite traffic: hold without counting a failure, the step restarts.
        (RolloutState("Progressing", 50, 1, stamp(0), stamp(0)), 61, None,
         {"phase": "Progressing", "weight": 50, "failures": 0, "reason": "WaitingForData",
          "step_started_at": stamp(61)}),
        # NaN (0/0 in a custom query) and infinities are no data, never a pass.
        (RolloutState("Progressing", 50, 1, stamp(0), stamp(0)), 61, float("nan"),
         {"phase": "Progressing", "weight": 50, "failures": 0, "reason": "WaitingForData"}),
        (RolloutState("Progressing", 50, 1, stamp(0), stamp(0)), 61, float("-inf"),
         {"phase": "Progressing", "weight": 50, "failures": 0, "reason": "WaitingForData"}),
        # Past the deadline: rolled back, whatever the metrics say.
        (RolloutState("Progressing", 50, 1, stamp(0), stamp(0)), 601, 0.0,
         {"phase": "Failed", "weight": 0, "reason": "ProgressDeadlineExceeded"}),
        # Terminal phases stay.
        (RolloutState("Failed", 0, 1, None, stamp(0)), 61, 0.0, {"phase": "Failed", "weight": 0}),
        # Resumed after a pause: the step's interval starts again.
        (RolloutState("Paused", 50, 1, None, stamp(0)), 100, 0.0,
         {"phase": "Progressing", "weight": 50, "step_started_at": stamp(100)}),
    ],
    ids=["start", "within-interval", "advance", "succeed", "fail-once", "roll-back", "no-data",
         "nan", "infinity", "deadline", "terminal", "resume"],
)  # fmt: skip
def test_advance(
    state: RolloutState, now: float, value: float | None, expected: dict[str, Any]
) -> None:
    after = advance(spec(), state, at(now), metrics(value))
    for key, wanted in expected.items():
        assert getattr(after, key) == wanted, key


STEP_OVER = RolloutState("Progressing", 50, 1, stamp(0), stamp(0))


@pytest.mark.parametrize(
    ("changes", "value", "requests", "expected"),
    [
        # Default minRequests (20): 5 requests are too few to judge, whatever the metrics say.
        ({}, 0.9, 5.0, {"reason": "NotEnoughTraffic", "failures": 0, "weight": 50}),
        ({}, 0.0, 5.0, {"reason": "NotEnoughTraffic", "step_index": 1}),
        # No request series at all: the candidate served nothing.
        ({}, None, None, {"reason": "NotEnoughTraffic", "failures": 0}),
        # Enough traffic: judged as usual.
        ({}, 0.0, 20.0, {"reason": "StepStarted", "weight": 100, "step_index": 2}),
        ({}, 0.9, 500.0, {"reason": "AnalysisFailed", "failures": 1}),
        # minRequests 0: the guard is off, any traffic is judged.
        ({"minRequests": 0}, 0.0, None, {"reason": "StepStarted", "weight": 100}),
        ({"minRequests": 500}, 0.0, 499.0, {"reason": "NotEnoughTraffic"}),
        # increase() extrapolates: 19.6 falls short of 20, and is reported as 19.
        ({}, 0.0, 19.6, {"reason": "NotEnoughTraffic"}),
        # No metrics, nothing to judge: the steps go by time alone, no traffic asked for.
        ({"metrics": []}, None, None, {"reason": "StepStarted", "weight": 100}),
    ],
    ids=["too-few-bad", "too-few-good", "no-series", "enough", "enough-bad", "guard-off",
         "custom-minimum", "fractional", "no-metrics"],
)  # fmt: skip
def test_traffic_guard(
    changes: dict[str, Any], value: float | None, requests: float | None, expected: dict[str, Any]
) -> None:
    rollout = spec()
    progressive = rollout.progressive
    assert progressive is not None
    analysis = {**progressive.analysis.model_dump(by_alias=True), **changes}
    rollout = spec(progressive={**progressive.model_dump(by_alias=True), "analysis": analysis})
    after = advance(rollout, STEP_OVER, at(61), metrics(value, requests))
    for key, wanted in expected.items():
        assert getattr(after, key) == wanted, key
    if after.reason == "NotEnoughTraffic":
        assert after.step_started_at == stamp(61)  # the step starts over: a fresh window
        assert after.message.startswith(
            f"Holding at 50%: the candidate served {int(requests or 0)} request(s) in the last 60s"
        )
        assert f"fewer than minRequests ({analysis['minRequests']})" in after.message
        assert [m["verdict"] for m in after.metrics] == ["NoData"] * len(analysis["metrics"])


def test_a_quiet_candidate_is_reported_once() -> None:
    """The Warning Event comes with the first hold, not with every interval of it."""
    quiet = metrics(0.0, requests=3.0)
    first = advance(spec(), STEP_OVER, at(61), quiet)
    assert first.events == (
        ("Warning", "NotEnoughTraffic",
         "Analysis on hold: the candidate served 3 request(s) in the last 60s, fewer than "
         "minRequests (20)"),
    )  # fmt: skip
    again = advance(spec(), first, at(122), quiet)
    assert again.reason == "NotEnoughTraffic" and again.events == ()
    served = advance(spec(), again, at(183), metrics(0.0, requests=80.0))
    assert (served.reason, served.weight) == ("StepStarted", 100)


def test_no_data_is_reported_once() -> None:
    first = advance(spec(), STEP_OVER, at(61), metrics(None))
    assert first.events == (("Warning", "WaitingForData", "Analysis on hold: no data for err"),)
    assert advance(spec(), first, at(122), metrics(None)).events == ()


def test_pause_holds_and_emits_one_event() -> None:
    paused = spec(paused=True)
    first = advance(
        paused, RolloutState("Progressing", 50, 1, stamp(0), stamp(0)), at(5), metrics(0)
    )
    assert (first.phase, first.weight, first.step_started_at) == ("Paused", 50, None)
    assert [e[1] for e in first.events] == ["Paused"]
    again = advance(paused, first, at(500), metrics(0))
    assert again.weight == 50 and again.events == ()


@pytest.mark.parametrize(
    ("weight", "paused", "phase"),
    [(0, False, "Holding"), (30, False, "Holding"), (100, False, "Succeeded"),
     (30, True, "Paused")],
)  # fmt: skip
def test_manual_weight(weight: int, paused: bool, phase: str) -> None:
    """A manual split is its own resting phase, not a rollout forever in progress."""
    manual = spec(progressive=None, weight=weight, paused=paused)
    after = advance(manual, RolloutState(), at(0), metrics(None))
    assert (after.phase, after.weight, after.reason) == (phase, weight, "ManualWeight")
    assert [e[1] for e in after.events] == (["WeightSet"] if weight else [])
    again = advance(manual, after, at(3600), metrics(None))
    assert (again.phase, again.events) == (phase, ())  # it stays, quietly


@pytest.mark.parametrize(
    ("progressive", "steps"),
    [
        ({"steps": [5, 25, 100]}, [5, 25, 100]),
        ({"stepWeight": 20}, [20, 40, 60, 80, 100]),
        ({"stepWeight": 30, "maxWeight": 50}, [30, 50]),
        ({"stepWeight": 50, "maxWeight": 50}, [50]),
    ],
)
def test_steps(progressive: dict[str, Any], steps: list[int]) -> None:
    rollout = spec(progressive=progressive)
    assert steps_of(rollout) == steps
    assert initial_weight(rollout) == steps[0]


@pytest.mark.parametrize(
    ("builtin", "numerator"),
    [
        ("errorRate", 'status="error"'),
        ("escalationRate", "ray_escalation_to_human_total"),
        ("toolErrorRate", 'outcome="failure"'),
    ],
)
def test_failure_counters_count_as_zero_before_the_first_failure(
    builtin: str, numerator: str
) -> None:
    """The series of a failure counter does not exist until the first failure: the numerator
    falls back to 0, the denominator (`> 0`) keeps no traffic no data. (Their values against a
    real Prometheus: tests/test_rollout_envtest.py.)"""
    query = BUILTIN_QUERIES[builtin]
    head, _, tail = query.partition(" or vector(0)) / (")
    assert numerator in head and head.startswith("(sum(rate(")
    assert numerator not in tail.split(" > 0)")[0] and " > 0)" in tail


def test_the_traffic_guard_counts_the_candidates_requests() -> None:
    variables = {"namespace": "shop", "application": "acme-1234abcd", "window": "60s"}
    assert metric_query(TRAFFIC, variables) == (
        'sum(increase(ray_agent_request_total{namespace="shop",application="acme-1234abcd"}[60s]))'
    )
    assert TRAFFIC.query == REQUESTS_QUERY


def test_query_templates_are_filled() -> None:
    variables = {"namespace": "shop", "application": "acme-1234abcd", "window": "60s",
                 "agent": "acme", "revision": "1234abcd"}  # fmt: skip
    builtin = AnalysisMetric.model_validate(
        {"name": "e", "builtin": "errorRate", "thresholdRange": {"max": 1}}
    )
    query = metric_query(builtin, variables)
    assert 'namespace="shop",application="acme-1234abcd",status="error"' in query
    assert "[60s]" in query and "{{" not in query
    custom = AnalysisMetric.model_validate(
        {
            "name": "c",
            "query": 'x{agent="{{agent}}",rev="{{revision}}"}',
            "thresholdRange": {"min": 0},
        }
    )
    assert metric_query(custom, variables) == 'x{agent="acme",rev="1234abcd"}'


ROUTER = contract.RouterConfig(
    agent="acme",
    revisions=[
        contract.RevisionRoute(revision="stable1", app_name="acme-stable1", weight=80),
        contract.RevisionRoute(revision="cand2", app_name="acme-cand2", weight=20),
    ],
    testers=[
        contract.TesterMatch(name="x-canary", exact="true"),
        contract.TesterMatch(name="user-agent", regex="^beta/"),
    ],
    tester_revision="cand2",
)


@pytest.mark.parametrize(
    ("headers", "revision"),
    [
        ({"x-switchboard-revision": "stable1", "x-canary": "true"}, "stable1"),  # Istio decided
        ({"x-canary": "true"}, "cand2"),
        ({"user-agent": "beta/2.1"}, "cand2"),
        ({"user-agent": "mozilla"}, None),
    ],
)
def test_router_picks_by_header_then_tester(headers: dict[str, str], revision: str | None) -> None:
    picked = pick_revision(ROUTER, headers, random.Random(0))
    assert picked.revision == revision if revision else picked.revision in ("stable1", "cand2")


def test_router_weights_without_istio() -> None:
    rng = random.Random(7)
    picks = [pick_revision(ROUTER, {}, rng).revision for _ in range(4000)]
    share = picks.count("cand2") / len(picks)
    assert 0.17 < share < 0.23


def test_without_istio_the_router_splits_and_matches_testers() -> None:
    from switchboard.operator.api.supportagent import SupportAgentSpec
    from switchboard.operator.render import Parent, render_agent
    from switchboard.operator.render.rollout import canary_of

    agent = SupportAgentSpec.model_validate(
        {"nlu": {"modelUri": "file:///m1"}, "ingress": {"hosts": ["help.example.com"]}}
    )
    rollout = spec(
        progressive=None,
        weight=25,
        trafficProvider="none",
        testers=[{"name": "x-canary", "exact": "true"}],
    )
    rayservice, vs, _ = render_agent(
        Parent("SupportAgent", "acme", "shop"), agent, {}, canary_of(rollout, 25)
    )
    http = vs["spec"]["http"]
    assert len(http) == 1 and http[0]["route"][0]["weight"] == 100
    assert "headers" not in http[0]["route"][0]  # Istio does not pick: the router does
    import yaml

    router = yaml.safe_load(rayservice["spec"]["serveConfigV2"])["applications"][0]["args"]
    assert [r["weight"] for r in router["revisions"]] == [75, 25]
    assert router["testers"] == [{"name": "x-canary", "exact": "true", "regex": None}]
    assert router["tester_revision"] == router["revisions"][1]["revision"]
