"""A canary on a real Ray Serve: the quickstart agent with a ModelRollout at manual weight 50,
so a stable and a candidate revision (two Serve applications) run behind the agent's router,
built by `local_plan` from the manifests as `switchboard serve` builds it.

The candidate is the demo NLU model copied to another directory: its `file://` URI differs,
so its revision does too (what the routing and the metrics care about).

- Conversations stick to one revision: 200 conversations of 3 turns that echo the revision
  header as `switchboard chat` does, and 200 that do not (the router's session hash), with no
  switch mid-conversation; Ray's real metrics, scraped by a real Prometheus, count each
  conversation's turns on one revision only.
- Every built-in analysis, rendered by the operator's own `metric_query`, evaluated by that
  Prometheus for each revision while one is healthy and the other hits tool failures.
"""

from __future__ import annotations

import json
import random
import shutil
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from switchboard.operator.api.base import API_VERSION
from switchboard.operator.api.modelrollout import AnalysisMetric
from switchboard.operator.cli import load_manifests
from switchboard.operator.localrun import LocalOverrides, local_plan
from switchboard.operator.render import RenderError
from switchboard.operator.render.names import revision_app_name
from switchboard.operator.resources.modelrollout import BUILTIN_QUERIES, metric_query
from switchboard.serving import chat
from switchboard.serving import config as contract
from switchboard.serving.config import AGENT_APP_IMPORT_PATH
from switchboard.serving.demo import SAMPLE_ORDERS
from switchboard.serving.router import pick_revision

QUICKSTART = Path(__file__).resolve().parents[1] / "examples" / "quickstart"
AGENT = "acme"
NAMESPACE = "default"  # what local runs (and so the analysis variables) use
SHIPPED = SAMPLE_ORDERS["shipped"]
# A conversation: an order lookup (a tool call), a knowledge-base answer, a closing.
TURNS = (f"Where is my order {SHIPPED}?", "What shipping options do you have?", "thanks, bye")
CONVERSATIONS = 200


def rollout(model_uri: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": "ModelRollout",
        "metadata": {"name": "acme-nlu-v2"},
        "spec": {
            "agentRef": AGENT,
            "component": "nlu",
            "candidate": {"modelUri": model_uri},
            "weight": 50,
            "trafficProvider": "none",
            **spec,
        },
    }


# --------------------------------------------------------------------------------------------
# local_plan with a ModelRollout (pure: no Ray)


@pytest.fixture
def models(tmp_path: Path) -> tuple[Path, Path]:
    stable, candidate = tmp_path / "nlu-v1", tmp_path / "nlu-v2"
    stable.mkdir()
    candidate.mkdir()
    return stable, candidate


def plan_of(docs: list[dict[str, Any]], stable: Path, tmp: Path, **more: Any) -> Any:
    overrides = LocalOverrides(
        nlu_model=str(stable),
        knowledge_dir=str(tmp / "kb"),
        system_urls={"orders": "http://127.0.0.1:1", "ticketing": "http://127.0.0.1:2"},
        **more,
    )
    return local_plan(docs, overrides)


def test_local_plan_serves_the_rollouts_candidate_beside_the_stable_revision(
    models: tuple[Path, Path], tmp_path: Path
) -> None:
    stable_dir, candidate_dir = models
    docs = [*load_manifests([str(QUICKSTART)]), rollout(f"file://{candidate_dir}")]
    [agent] = plan_of(docs, stable_dir, tmp_path).agents
    assert agent.candidate is not None
    assert agent.app.nlu.model_path == str(stable_dir.resolve())
    assert agent.candidate.nlu.model_path == str(candidate_dir.resolve())
    assert agent.candidate.revision != agent.app.revision
    assert [(r.revision, r.weight) for r in agent.router.revisions] == [
        (agent.app.revision, 50),
        (agent.candidate.revision, 50),
    ]
    apps = {a["name"]: a for a in agent.serve_config["applications"]}
    assert list(apps) == [
        AGENT,
        revision_app_name(AGENT, agent.app.revision),
        revision_app_name(AGENT, agent.candidate.revision),
    ]
    for app in (agent.app, agent.candidate):  # the args the apps are deployed with
        args = apps[revision_app_name(AGENT, app.revision)]["args"]
        assert args == app.model_dump(mode="json", exclude_none=True)
    assert agent.candidate.model_dump(exclude={"nlu", "revision"}) == agent.app.model_dump(
        exclude={"nlu", "revision"}
    )


def test_local_plan_takes_the_weight_from_status_or_the_first_step(
    models: tuple[Path, Path], tmp_path: Path
) -> None:
    stable_dir, candidate_dir = models
    progressive = rollout(f"file://{candidate_dir}")
    del progressive["spec"]["weight"]
    progressive["spec"]["progressive"] = {"steps": [10, 60, 100]}
    docs = load_manifests([str(QUICKSTART)])
    [agent] = plan_of([*docs, progressive], stable_dir, tmp_path).agents
    assert [r.weight for r in agent.router.revisions] == [90, 10]
    progressive["status"] = {"currentWeight": 60}
    [agent] = plan_of([*docs, progressive], stable_dir, tmp_path).agents
    assert [r.weight for r in agent.router.revisions] == [40, 60]


def test_local_plan_needs_the_candidate_model_locally(
    models: tuple[Path, Path], tmp_path: Path
) -> None:
    stable_dir, candidate_dir = models
    docs = load_manifests([str(QUICKSTART)])
    with pytest.raises(RenderError, match=r"ModelRollout acme-nlu-v2: candidate model .*v9"):
        plan_of([*docs, rollout("file:///models/nlu/v9")], stable_dir, tmp_path)
    # ... or named by the override (the URI is the cluster's; the revision follows the URI).
    [agent] = plan_of(
        [*docs, rollout("pvc://models/nlu/v9")],
        stable_dir,
        tmp_path,
        candidate_model=str(candidate_dir),
    ).agents
    assert agent.candidate.nlu.model_path == str(candidate_dir.resolve())
    with pytest.raises(RenderError, match=r"ModelRollout acme-nlu-v2: .*no llm"):
        plan_of([*docs, rollout("file:///m", component="llm")], stable_dir, tmp_path)


def test_a_candidate_equal_to_stable_serves_one_revision(tmp_path: Path) -> None:
    docs = load_manifests([str(QUICKSTART)])
    stable_uri = next(d for d in docs if d["kind"] == "SupportAgent")["spec"]["nlu"]["modelUri"]
    stable_dir = tmp_path / "nlu"
    stable_dir.mkdir()
    [agent] = plan_of([*docs, rollout(stable_uri)], stable_dir, tmp_path).agents
    assert agent.candidate is None
    assert [r.weight for r in agent.router.revisions] == [100]
    # One revision answers at `/` itself: no router in front of it.
    [app] = agent.serve_config["applications"]
    assert app["route_prefix"] == "/" and app["import_path"] == AGENT_APP_IMPORT_PATH


# --------------------------------------------------------------------------------------------
# The canary on a real Ray Serve


@pytest.fixture(scope="module")
def canary(
    serve_manifests: Any, demo_nlu_model: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Any]:
    candidate_dir = tmp_path_factory.mktemp("candidate-nlu") / "model"
    shutil.copytree(demo_nlu_model, candidate_dir)
    docs = [*load_manifests([str(QUICKSTART)]), rollout(f"file://{candidate_dir}")]
    with serve_manifests(docs) as served:
        yield served


def revisions(agent: Any) -> tuple[str, str]:
    [local] = agent.plan.agents
    assert local.candidate is not None
    return local.app.revision, local.candidate.revision


def converse(url: str, session: str, echo: bool) -> list[str]:
    """One conversation; with `echo`, each turn sends back the revision of the last reply, as
    `switchboard chat` does. The revisions that answered, turn by turn."""
    answered: list[str] = []
    revision: str | None = None
    client = chat.Client(url)
    for message in TURNS:
        answer = client(session, message, revision=revision if echo else None)
        answered.append(answer["revision"])
        revision = answer.get("revision") or revision
    return answered


def prometheus_for(start_prometheus: Callable[[list[str]], Any], agent: Any, poll: Any) -> Any:
    """A real Prometheus scraping Ray's metrics endpoint; as on a cluster, the scrape adds the
    target's `namespace` (local runs: `default`), which the built-in analyses select on."""
    server = start_prometheus([f"127.0.0.1:{agent.metrics_port}"])
    server.set_targets([f"127.0.0.1:{agent.metrics_port}"], labels={"namespace": NAMESPACE})
    poll(
        "Prometheus scraping Ray with the namespace label",
        lambda: server.query(f'up{{namespace="{NAMESPACE}"}} == 1'),
        60,
    )
    return server


def requests_by_app(prometheus: Any) -> dict[str, int]:
    """The raw counter (no `increase()` extrapolation): turns each application answered."""
    found = prometheus.query(
        f'sum by (application) (ray_agent_request_total{{namespace="{NAMESPACE}"}})'
    )
    return {s["metric"]["application"]: round(float(s["value"][1])) for s in found}


def test_conversations_stick_to_one_revision(
    canary: Any, start_prometheus: Callable[[list[str]], Any], poll: Any
) -> None:
    stable, candidate = revisions(canary)
    apps = {rev: revision_app_name(AGENT, rev) for rev in (stable, candidate)}
    prometheus = prometheus_for(start_prometheus, canary, poll)
    time.sleep(3)  # earlier turns (none in file order) reported and scraped
    before = requests_by_app(prometheus)

    started = time.monotonic()
    sessions = [(f"echo-{i}", True) for i in range(CONVERSATIONS)]
    sessions += [(f"hash-{i}", False) for i in range(CONVERSATIONS)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        answered = dict(
            zip(
                [s for s, _ in sessions],
                pool.map(lambda s: converse(canary.url, *s), sessions),
                strict=True,
            )
        )
    elapsed = time.monotonic() - started

    router = canary.plan.agents[0].router
    switches = {s: revs for s, revs in answered.items() if len(set(revs)) != 1}
    per_revision: dict[str, Counter[str]] = {"echo": Counter(), "hash": Counter()}
    for session, revs in answered.items():
        per_revision[session.split("-")[0]][revs[0]] += 1
    print(
        f"\n{len(answered)} conversations x {len(TURNS)} turns in {elapsed:.1f}s; "
        f"stable {stable}, candidate {candidate}; switches: {len(switches)}; "
        f"conversations per revision: echo {dict(per_revision['echo'])}, "
        f"hash {dict(per_revision['hash'])}"
    )
    assert switches == {}
    for kind, counts in per_revision.items():
        assert set(counts) == {stable, candidate}, (kind, counts)
        for rev in (stable, candidate):
            assert 0.3 * CONVERSATIONS <= counts[rev] <= 0.7 * CONVERSATIONS, (kind, counts)
    # The first turn of every conversation (and every turn without echo) followed the hash.
    for session, revs in answered.items():
        assert revs[0] == pick_revision(router, {}, random.Random(), session_id=session).revision

    # Ray's own metrics, through Prometheus: each revision's application counted exactly the
    # turns of the conversations that went to it.
    routed = per_revision["echo"] + per_revision["hash"]
    wanted = {apps[rev]: before.get(apps[rev], 0) + len(TURNS) * routed[rev] for rev in apps}
    poll(
        f"ray_agent_request_total per application = {wanted}",
        lambda: {a: n for a, n in requests_by_app(prometheus).items() if a in wanted} == wanted,
        timeout=30,
    )
    print(f"ray_agent_request_total by application: {requests_by_app(prometheus)}")

    # And each conversation's audit lines (one per turn) name a single revision, the one its
    # replies named.
    def audited() -> dict[str, list[str]]:
        seen: dict[str, list[str]] = {}
        for record in canary.audit_lines():
            if record["session_id"] in answered:
                seen.setdefault(record["session_id"], []).append(record["revision"])
        return seen

    def all_audited() -> dict[str, list[str]] | None:
        seen = audited()
        return seen if sum(map(len, seen.values())) == len(TURNS) * len(answered) else None

    by_session = poll("an audit line for every turn", all_audited, timeout=30)
    assert {s: set(revs) for s, revs in by_session.items()} == {
        s: {revs[0]} for s, revs in answered.items()
    }


def pinned_turn(agent: Any, revision: str, session: str, message: str) -> dict[str, Any]:
    status, body = agent.raw(
        json.dumps({"session_id": session, "message": message}).encode(),
        headers={contract.REVISION_HEADER: revision},
    )
    assert status == 200, body
    assert body["revision"] == revision
    return body


def test_every_builtin_analysis_per_revision_from_ray_metrics(
    canary: Any, start_prometheus: Callable[[list[str]], Any], poll: Any
) -> None:
    """Stable healthy, candidate with injected tool failures (the demo orders system answers
    503): each built-in analysis, rendered exactly as the operator renders it, returns a number
    for each revision, and the numbers tell the two apart."""
    stable, candidate = revisions(canary)
    prometheus = prometheus_for(start_prometheus, canary, poll)
    faults = canary.demo.orders_faults

    # Two rounds, a few scrapes apart, so every series grows inside the window (rate() needs
    # two samples of a series; one born during the test has only its later ones).
    for round_ in range(2):
        for rev in (stable, candidate):
            for i in range(4):
                session = f"healthy-{rev}-{round_}-{i}"
                order = pinned_turn(canary, rev, session, TURNS[0])
                assert order["actions"][0]["status"] == "succeeded", order
                pinned_turn(canary, rev, session, TURNS[1])
        time.sleep(3)
    faults.configure(fail_next=1000, status=503)
    try:
        for round_ in range(2):
            for i in range(4):
                failed = pinned_turn(canary, candidate, f"faulty-{round_}-{i}", TURNS[0])
                assert failed["actions"][0]["status"] == "failed", failed
                assert failed["handoff"]["reason"] == "tool_failure"
            time.sleep(3)
    finally:
        faults.clear()

    def evaluate(rev: str) -> dict[str, float | None]:
        variables = {  # as the ModelRollout reconciler fills them
            "agent": AGENT,
            "namespace": NAMESPACE,
            "revision": rev,
            "application": revision_app_name(AGENT, rev),
            "window": "60s",
        }
        values: dict[str, float | None] = {}
        for builtin in BUILTIN_QUERIES:
            metric = AnalysisMetric.model_validate(
                {"name": builtin, "builtin": builtin, "thresholdRange": {"min": 0}}
            )
            found = prometheus.query(metric_query(metric, variables))
            values[builtin] = float(found[0]["value"][1]) if found else None
        return values

    def complete() -> dict[str, dict[str, float | None]] | None:
        values = {"stable": evaluate(stable), "candidate": evaluate(candidate)}
        ready = all(v is not None and v == v for per in values.values() for v in per.values())
        return values if ready and (values["candidate"]["toolErrorRate"] or 0) > 0 else None

    try:
        values = poll("every built-in analysis to return a number", complete, timeout=30)
    except pytest.fail.Exception:
        values = {"stable": evaluate(stable), "candidate": evaluate(candidate)}
        print(f"\nbuilt-in analyses (incomplete): {json.dumps(values, indent=2)}")
        raise
    print(f"\nbuilt-in analyses (stable {stable}, candidate {candidate}):")
    for builtin in BUILTIN_QUERIES:
        print(
            f"  {builtin:15} stable={values['stable'][builtin]!r:24} "
            f"candidate={values['candidate'][builtin]!r}"
        )
    ok, bad = values["stable"], values["candidate"]
    assert ok["toolErrorRate"] == 0.0 and 0 < bad["toolErrorRate"] <= 1  # type: ignore[operator]
    assert ok["errorRate"] == 0.0 and bad["errorRate"] == 0.0
    assert ok["escalationRate"] == 0.0 and 0 < bad["escalationRate"] <= 1  # type: ignore[operator]
    for per in (ok, bad):
        assert 0 < per["nluConfidence"] <= 1  # type: ignore[operator]
        assert per["latencyP95"] > 0  # type: ignore[operator]
