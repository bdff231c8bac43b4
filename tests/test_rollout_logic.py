"""The rollout's pure parts, table by table: the step function, step lists, query templates,
and the router's revision choice (headers, testers, weights)."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from switchboard.operator.api.modelrollout import AnalysisMetric, ModelRolloutSpec
from switchboard.operator.render.rollout import initial_weight, steps_of
from switchboard.operator.resources.modelrollout import RolloutState, advance, metric_query
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


def metrics(value: float | None) -> Any:
    return lambda metric: value


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
        # No data: hold without counting a failure.
        (RolloutState("Progressing", 50, 1, stamp(0), stamp(0)), 61, None,
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
         "deadline", "terminal", "resume"],
)  # fmt: skip
def test_advance(
    state: RolloutState, now: float, value: float | None, expected: dict[str, Any]
) -> None:
    after = advance(spec(), state, at(now), metrics(value))
    for key, wanted in expected.items():
        assert getattr(after, key) == wanted, key


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
    ("weight", "phase"), [(0, "Progressing"), (30, "Progressing"), (100, "Succeeded")]
)
def test_manual_weight(weight: int, phase: str) -> None:
    manual = spec(progressive=None, weight=weight)
    after = advance(manual, RolloutState(), at(0), metrics(None))
    assert (after.phase, after.weight) == (phase, weight)


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
    rayservice, vs = render_agent(
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
