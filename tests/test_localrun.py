"""`switchboard serve`'s plan (operator/localrun.py) for the handoff: the console tokens Secret
among the manifests, the feedback log, and the router that serves the agent API during a
rollout. Pure: no Ray."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from support.manifests import example_documents
from switchboard.operator.api.base import API_VERSION
from switchboard.operator.localrun import LocalOverrides, local_plan
from switchboard.operator.render import RenderError
from switchboard.serving import config as contract

DEMO_TOKENS = {"alice": "demo-alice-token", "bob": "demo-bob-token"}


def overrides(tmp: Path, **more: Any) -> LocalOverrides:
    model = tmp / "nlu"
    model.mkdir(exist_ok=True)
    return LocalOverrides(
        nlu_model=str(model),
        knowledge_dir=str(tmp / "kb"),
        system_urls={"orders": "http://127.0.0.1:1", "ticketing": "http://127.0.0.1:2"},
        **more,
    )


def quickstart(change: Any = None) -> list[dict[str, Any]]:
    docs = copy.deepcopy(example_documents("quickstart"))
    if change:
        change(next(d for d in docs if d["kind"] == "SupportAgent")["spec"])
    return docs


def without_secret(docs: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [d for d in docs if not (d["kind"] == "Secret" and d["metadata"]["name"] == name)]


def test_console_tokens_travel_in_the_plan_not_in_the_configs(tmp_path: Path) -> None:
    [agent] = local_plan(quickstart(), overrides(tmp_path, state_dir=str(tmp_path))).agents
    assert agent.console_tokens == DEMO_TOKENS
    # The cluster's mount path means nothing locally: the local run sets its own directory.
    for handoff in (agent.app.handoff, agent.router.handoff):
        assert handoff.console_tokens_dir is None
        assert handoff.adapter == "ticketing" and handoff.operation == "create_ticket"
    rendered = json.dumps(agent.serve_config)
    assert contract.CONSOLE_TOKENS_DIR not in rendered
    assert (
        "demo-alice-token" not in rendered and "demo-alice-token" not in agent.app.model_dump_json()
    )


def test_the_feedback_log_is_under_the_current_directory_by_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    [agent] = local_plan(quickstart(), overrides(tmp_path), namespace="shop").agents
    expected = str(tmp_path.resolve() / ".switchboard" / "feedback" / "shop-acme.jsonl")
    assert agent.app.sessions.feedback_path == expected
    assert agent.router.sessions == agent.app.sessions
    assert agent.router.namespace == "shop"


def test_a_redis_store_keeps_its_feedback_in_redis(tmp_path: Path) -> None:
    redis = {"store": "redis", "redis": {"urlSecretRef": {"name": "acme-redis", "key": "url"}}}
    docs = quickstart(lambda spec: spec.update(sessions=redis))
    docs.append(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "acme-redis"},
            "stringData": {"url": "redis://127.0.0.1:1/0"},
        }
    )
    [agent] = local_plan(docs, overrides(tmp_path)).agents
    assert agent.app.sessions.feedback_path is None
    assert agent.router.sessions.store == "redis"


def test_during_a_rollout_the_router_has_the_revisions_settings(tmp_path: Path) -> None:
    candidate = tmp_path / "nlu-v2"
    candidate.mkdir()
    rollout = {
        "apiVersion": API_VERSION,
        "kind": "ModelRollout",
        "metadata": {"name": "acme-nlu-v2"},
        "spec": {
            "agentRef": "acme",
            "component": "nlu",
            "candidate": {"modelUri": f"file://{candidate}"},
            "weight": 50,
            "trafficProvider": "none",
        },
    }
    plan = local_plan([*quickstart(), rollout], overrides(tmp_path, state_dir=str(tmp_path)))
    [agent] = plan.agents
    assert agent.candidate is not None
    assert agent.router.handoff == agent.app.handoff == agent.candidate.handoff
    assert agent.router.sessions == agent.app.sessions == agent.candidate.sessions
    assert agent.app.sessions.feedback_path == str(
        tmp_path.resolve() / "feedback" / "default-acme.jsonl"
    )
    [router_app] = [
        a
        for a in agent.serve_config["applications"]
        if a["import_path"] == contract.ROUTER_APP_IMPORT_PATH
    ]
    assert contract.RouterConfig.model_validate(router_app["args"]) == agent.router


def test_console_only_agents_without_tokens(tmp_path: Path) -> None:
    docs = quickstart(lambda spec: spec.update(handoff={}))
    [agent] = local_plan(docs, overrides(tmp_path)).agents
    assert agent.console_tokens == {}
    assert agent.app.handoff.adapter is None


def test_a_tokens_secret_missing_from_the_manifests_is_an_error(tmp_path: Path) -> None:
    docs = without_secret(quickstart(), "acme-console-tokens")
    with pytest.raises(RenderError, match=r"acme-console-tokens \(spec.handoff.consoleTokens"):
        local_plan(docs, overrides(tmp_path))


@pytest.mark.parametrize("key", ["..", ".", ".alice", "a/b", ""])
def test_a_token_key_must_name_a_file(tmp_path: Path, key: str) -> None:
    docs = without_secret(quickstart(), "acme-console-tokens")
    docs.append(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "acme-console-tokens"},
            "stringData": {"alice": "t1", key: "t2"},
        }
    )
    with pytest.raises(RenderError, match="cannot be file names"):
        local_plan(docs, overrides(tmp_path))
