"""The agent runtime for real: a fine-tuned int8 NLU model, Ray Serve on 2 CPUs (its own temp dir
and ports, `RAY_AUTH_MODE=disabled`), tool gateways in front of the demo orders and ticketing
systems (SQLite), sessions in a real Redis — built from examples/quickstart by the same code
path as `switchboard serve`.

The test agent differs from the quickstart in ways that make failures quick to provoke: a short
gateway timeout and breaker window, Redis sessions, and `track_package` answered by a
long-running operation.
"""

from __future__ import annotations

import concurrent.futures
import json
import re
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from switchboard.operator.cli import load_manifests
from switchboard.serving.demo import SAMPLE_ORDERS

QUICKSTART = Path(__file__).resolve().parents[1] / "examples" / "quickstart"
SHIPPED = SAMPLE_ORDERS["shipped"]
PROCESSING = SAMPLE_ORDERS["processing"]
DELIVERED = SAMPLE_ORDERS["delivered"]


def manifests_for_test(docs: list[dict[str, Any]], redis_url: str) -> list[dict[str, Any]]:
    for doc in docs:
        if doc.get("kind") == "ToolAdapter" and doc["metadata"]["name"] == "orders":
            spec = doc["spec"]
            spec["timeoutSeconds"] = 0.5
            spec["retries"] = {"attempts": 3, "initialBackoffMs": 20, "maxBackoffMs": 100}
            spec["circuitBreaker"] = {"failureThreshold": 2, "openSeconds": 2}
            spec["operations"].append(
                {
                    "name": "lookup_order_async",
                    "method": "GET",
                    "path": "/orders/{order_id}",
                    "longRunning": True,
                    "inputSchema": {"type": "object", "required": ["order_id"]},
                }
            )
        if doc.get("kind") == "SupportAgent":
            spec = doc["spec"]
            spec["sessions"] = {
                "store": "redis",
                "redis": {"urlSecretRef": {"name": "redis", "key": "url"}},
            }
            spec["tools"][0]["operations"].append("lookup_order_async")
            for plan in spec["intents"]:
                if plan["intent"] == "track_package":
                    plan["operation"] = "orders.lookup_order_async"
    docs.append(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "redis"},
            "stringData": {"url": redis_url},
        }
    )
    return docs


@pytest.fixture(scope="module")
def agent(redis_server: Any, serve_manifests: Any) -> Iterator[Any]:
    docs = manifests_for_test(load_manifests([str(QUICKSTART)]), redis_server.url)
    with serve_manifests(docs) as served:
        yield served


# ------------------------------------------------------------------------------------------


def test_order_status_calls_the_tool_and_answers_with_its_data(agent: Any) -> None:
    before = agent.demo.orders_faults.snapshot()["requests_seen"]
    answer = agent.chat("happy-1", f"Where is my order {SHIPPED}?")
    assert answer["intent"] == "order_status"
    assert answer["actions"] == [
        {"operation": "orders.get_order", "status": "succeeded", "task_id": None, "detail": {}}
    ]
    assert SHIPPED in answer["reply"] and "shipped" in answer["reply"]
    assert re.fullmatch(r"[0-9a-f]{32}", answer["trace_id"])
    assert answer["handoff"] is None
    assert agent.demo.orders_faults.snapshot()["requests_seen"] == before + 1


def test_missing_slot_is_asked_for_and_the_next_turn_completes(agent: Any) -> None:
    first = agent.chat("slots-1", "I need to change the delivery address of my order")
    assert first["intent"] == "update_shipping_address"
    assert first["actions"] == [] and "order" in first["reply"].lower()
    second = agent.chat("slots-1", f"it's {PROCESSING}")
    assert "address" in second["reply"].lower() and second["actions"] == []
    third = agent.chat("slots-1", "221B Baker Street, London NW1 6XE")
    assert third["actions"][0]["operation"] == "orders.update_shipping_address"
    assert third["actions"][0]["status"] == "succeeded"
    assert "221B Baker Street" in third["reply"]


def test_out_of_scope_hands_off_with_a_ticket_holding_the_context(agent: Any) -> None:
    first = agent.chat("lowconf-1", "the quantum flux capacitor in my garden hums at night")
    assert first["reply_kind"] == "clarify" and first["handoff"] is None  # rephrase, once
    answer = agent.chat("lowconf-1", "the quantum flux capacitor in my garden hums at night")
    assert answer["handoff"]["reason"] == "out_of_scope"  # the model's oos, not a low score
    ticket = agent.ticket(answer["handoff"]["ticket_id"])
    context = json.loads(ticket["body"])
    assert context["reason"] == "out_of_scope"
    assert context["trace_id"] == answer["trace_id"]
    assert "intent" in context and "transcript" in context


def test_approval_required_operation_hands_off_with_the_proposed_action(agent: Any) -> None:
    answer = agent.chat("approval-1", f"I want a refund for order {DELIVERED}")
    assert answer["intent"] == "refund_request"
    assert answer["handoff"]["reason"] == "approval_required"
    proposed = {"operation": "orders.refund_order", "input": {"order_id": DELIVERED}}
    assert answer["handoff"]["proposed_action"] == proposed
    assert answer["actions"][0]["status"] == "proposed"
    ticket = json.loads(agent.ticket(answer["handoff"]["ticket_id"])["body"])
    assert ticket["proposed_action"] == proposed
    # Nothing was refunded: the operation was only proposed.
    assert agent.demo.store.list_refunds(DELIVERED) == []


def test_tool_5xx_is_retried_then_the_agent_falls_back_to_a_human(agent: Any) -> None:
    faults = agent.demo.orders_faults
    faults.configure(fail_next=2, status=503)
    try:
        recovered = agent.chat("retry-1", f"Where is my order {SHIPPED}?")
    finally:
        faults.clear()
    assert recovered["actions"][0]["status"] == "succeeded"  # third attempt succeeded

    faults.configure(fail_next=3, status=500)
    try:
        failed = agent.chat("retry-2", f"Where is my order {SHIPPED}?")
    finally:
        faults.clear()
    assert failed["actions"][0]["status"] == "failed"
    assert failed["handoff"]["reason"] == "tool_failure"
    assert failed["handoff"]["ticket_id"]
    assert "can't reach" in failed["reply"]
    time.sleep(2.2)  # let the breaker (2 failures) close again for the next tests


def test_tool_timeout_is_retried_then_falls_back(agent: Any) -> None:
    faults = agent.demo.orders_faults
    faults.configure(delay_seconds=2.0)
    try:
        answer = agent.chat("timeout-1", f"Where is my order {SHIPPED}?")
    finally:
        faults.clear()
    assert answer["actions"][0]["status"] == "failed"
    assert answer["handoff"]["reason"] == "tool_failure"
    time.sleep(2.2)


def test_breaker_opens_after_its_threshold_and_recovers(agent: Any) -> None:
    faults = agent.demo.orders_faults
    faults.configure(fail_next=100, status=503)
    try:
        for i in range(2):  # failureThreshold: 2 failed calls (each after its retries)
            agent.chat(f"breaker-{i}", f"Where is my order {SHIPPED}?")
        seen = faults.snapshot()["requests_seen"]
        started = time.monotonic()
        rejected = agent.chat("breaker-open", f"Where is my order {SHIPPED}?")
        assert faults.snapshot()["requests_seen"] == seen  # the open breaker answered at once
        assert rejected["handoff"]["reason"] == "tool_failure"
        assert time.monotonic() - started < 2
    finally:
        faults.clear()
    time.sleep(2.2)  # openSeconds: 2, then a half-open trial closes it
    healed = agent.chat("breaker-healed", f"Where is my order {SHIPPED}?")
    assert healed["actions"][0]["status"] == "succeeded"


def test_long_running_operation_reports_on_a_later_turn(
    agent: Any, redis_server: Any, poll: Any
) -> None:
    import redis

    started = agent.chat("async-1", f"can you track the package for order {SHIPPED}")
    assert started["intent"] == "track_package"
    action = started["actions"][0]
    assert action["status"] == "started" and action["task_id"].startswith("task-")
    # The Ray task writes its result beside the session when it finishes (a worker process may
    # have to start first, seconds on a busy machine): wait for that, not for a fixed time.
    store = redis.Redis.from_url(redis_server.url, decode_responses=True)
    poll(
        "the task's result in the session store",
        lambda: any(
            action["task_id"] in store.hgetall(key) for key in store.keys("switchboard:*:tasks:*")
        ),
        timeout=60,
    )
    later = agent.chat("async-1", "thanks, anything new?")
    assert f"Update on {action['task_id']}: orders.lookup_order_async finished." in later["reply"]


def _orchestrator_replicas() -> list[str]:
    """Names of live Orchestrator replica actors (through the GCS: no dashboard needed)."""
    import ray

    return [
        a["name"]
        for a in ray.util.list_named_actors(all_namespaces=True)
        if a["namespace"] == "serve" and "#Orchestrator#" in a["name"]
    ]


def test_redis_sessions_survive_an_orchestrator_replica_restart(agent: Any) -> None:
    import ray
    from ray import serve

    first = agent.chat("restart-1", "I need to change the delivery address of my order")
    assert first["actions"] == []
    killed = _orchestrator_replicas()
    assert killed
    for name in killed:
        ray.kill(ray.get_actor(name, namespace="serve"), no_restart=True)
    app = agent.plan.agents[0].app

    def replaced() -> bool:
        status = serve.status().applications.get(f"{app.agent}-{app.revision}")
        fresh = set(_orchestrator_replicas()) - set(killed)
        return bool(status and status.status == "RUNNING" and fresh)

    deadline = time.monotonic() + 60
    while not replaced():
        assert time.monotonic() < deadline, "the Orchestrator replica did not come back"
        time.sleep(0.5)
    second = agent.chat("restart-1", f"it's {PROCESSING}")
    assert "address" in second["reply"].lower(), second  # the pending plan survived


def test_malformed_and_oversized_requests_get_json_4xx(agent: Any) -> None:
    status, body = agent.raw(b"{not json")
    assert status == 400 and body["error"]["code"] == "malformed_json"
    status, body = agent.raw(json.dumps({"session_id": "x"}).encode())
    assert status == 422 and body["error"]["problems"][0]["field"] == "message"
    big = json.dumps({"session_id": "x", "message": "a" * 20000}).encode()
    status, body = agent.raw(big)
    assert status == 413 and body["error"]["code"] == "payload_too_large"
    status, body = agent.raw(json.dumps({"session_id": "bad id!", "message": "hi"}).encode())
    assert status == 422


def test_audit_trail_is_one_redacted_line_per_turn(agent: Any) -> None:
    email, card, phone = "jane.roe@example.org", "4111 1111 1111 1111", "+44 20 7946 0958"
    answer = agent.chat("pii-1", f"Where is my order {SHIPPED}? I'm {email}, {phone}, card {card}")
    deadline = time.monotonic() + 10
    while not (mine := [r for r in agent.audit_lines() if r["trace_id"] == answer["trace_id"]]):
        assert time.monotonic() < deadline, "no audit line for the turn"
        time.sleep(0.3)
    record = mine[0]
    assert record["intent"] == "order_status"
    assert record["tool_calls"][0]["operation"] == "orders.get_order"
    assert record["plan"] and record["policy"]
    text = json.dumps(agent.audit_lines())
    for secret in (email, card, phone, "4111111111111111"):
        assert secret not in text


def test_seed_metrics_are_exported(agent: Any) -> None:
    wanted = (
        "ray_agent_request_total",
        "ray_agent_response_latency_seconds_bucket",
        "ray_nlu_inference_time_seconds_bucket",
        "ray_escalation_to_human_total",
    )
    deadline = time.monotonic() + 30
    text = ""
    while time.monotonic() < deadline:
        with urllib.request.urlopen(
            f"http://127.0.0.1:{agent.metrics_port}/metrics", timeout=5
        ) as r:
            text = r.read().decode()
        if all(name in text for name in wanted):
            break
        time.sleep(1)
    for name in wanted:
        assert name in text, name
    assert 'intent="order_status"' in text
    assert 'reason="approval_required"' in text
    gateway = agent.gateway_metrics("orders")
    assert 'tool_call_total{operation="get_order",outcome="success",tool="orders"}' in gateway
    assert "tool_call_latency_seconds_bucket" in gateway


def test_every_data_plane_metric_the_chart_queries_is_served(
    agent: Any, helm_template: Any
) -> None:
    """The alerts' and dashboard's `ray_*` and gateway series, as this real Ray Serve and
    gateway serve them (tests/test_monitoring.py checks the names against the code)."""
    objects = helm_template("prometheusRule.enabled=true", "grafanaDashboard.enabled=true")
    text = json.dumps([o for o in objects if o["kind"] in ("PrometheusRule", "ConfigMap")])
    # Recording rules' own names carry colons (`namespace_agent:ray_...:ratio_rate5m`).
    queried = set(re.findall(r"(?<![\w:])((?:ray|tool)_[a-z_]+)\b", text))
    assert {"ray_agent_request_total", "tool_call_total"} <= queried
    # Series of features the quickstart does not configure: an LLM, budgets and rate limits
    # (tests/test_limits.py drives them; tests/test_monitoring.py checks the code exports them).
    queried -= {
        "ray_agent_llm_tokens_total",
        "ray_agent_budget_remaining",
        "ray_agent_budget_limit",
        "ray_agent_budget_exhausted_total",
        "ray_agent_rate_limited_total",
    }
    # Series that exist only once something happened: a knowledge lookup, a closing, a rating,
    # a handoff answered by a human, a turn refused for overload.
    agent.chat("metrics-kb", "What shipping options do you have?")
    agent.chat("metrics-kb", "thanks, bye")
    agent.api("POST", "/v1/sessions/metrics-kb/rating", {"rating": 5, "request_id": "q1"})
    # A handoff a human answers and resolves (the quickstart's demo console token).
    handoff = agent.chat("metrics-human", "I want to talk to a person")["handoff"]["id"]
    for action, body in (("claim", {}), ("reply", {"text": "Hi!"}), ("resolve", {})):
        status, answer = agent.api(
            "POST",
            f"/v1/handoffs/{handoff}/{action}",
            {"request_id": action, **body},
            token="demo-alice-token",
        )
        assert status == 200, answer
    assert any(status == 503 for status, *_ in send_burst(agent, 100))
    deadline = time.monotonic() + 30
    missing = queried
    while missing and time.monotonic() < deadline:
        with urllib.request.urlopen(
            f"http://127.0.0.1:{agent.metrics_port}/metrics", timeout=5
        ) as r:
            served = r.read().decode() + agent.gateway_metrics("orders")
        names = set(re.findall(r"^([a-zA-Z_:][\w:]*)", served, re.MULTILINE))
        # Text may name a histogram by its family (descriptions, legends): its series count.
        names |= {re.sub(r"_(bucket|sum|count)$", "", n) for n in names}
        missing = queried - names
        time.sleep(0 if not missing else 1)
    assert missing == set()


Refusal = tuple[int, dict[str, Any], str | None, float]


def send_burst(agent: Any, turns: int) -> list[Refusal]:
    """`turns` order-status turns at once while the orders system answers after 2 s, so the
    first ones really are all in flight: (status, body, Retry-After, seconds) of each."""

    def turn(i: int) -> Refusal:
        request = urllib.request.Request(
            f"{agent.url}/v1/chat",
            data=json.dumps(
                {"session_id": f"burst-{i}", "message": f"Where is my order {SHIPPED}?"}
            ).encode(),
            headers={"content-type": "application/json"},
        )
        started = time.monotonic()
        try:
            with urllib.request.urlopen(request, timeout=60) as reply:
                status, body, retry = reply.status, json.loads(reply.read()), None
        except urllib.error.HTTPError as exc:
            status, body, retry = exc.code, json.loads(exc.read()), exc.headers["Retry-After"]
        return status, body, retry, time.monotonic() - started

    faults = agent.demo.orders_faults
    faults.configure(delay_seconds=2)
    try:
        with concurrent.futures.ThreadPoolExecutor(turns) as pool:
            return list(pool.map(turn, range(turns)))
    finally:
        faults.clear()


def test_a_burst_is_answered_or_refused_at_once_with_retry_after(agent: Any) -> None:
    """More turns than a replica may run at once (`max_turns_in_flight`, 64 here): the rest
    are refused at once with a JSON 503 and Retry-After, never queued without end."""
    results = send_burst(agent, 120)
    answered = [r for r in results if r[0] == 200]
    refused = [r for r in results if r[0] == 503]
    assert len(answered) + len(refused) == len(results), [r[:2] for r in results if r[0] > 200]
    assert answered and refused, (len(answered), len(refused))
    for _, body, retry, seconds in refused:
        assert body["error"]["code"] == "overloaded" and retry == "1", body
        assert seconds < 2, seconds  # refused at once, not after waiting for a slot
    assert all(seconds < 30 for *_, seconds in answered)
