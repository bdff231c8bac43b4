"""Rate limits and budgets (serving.workflow.limits, docs/data-plane.md "Limits and budgets"):
the token bucket and the windows as tables with an injected clock; the turn of the scripted
agent when a budget is exhausted (no tool call, no LLM call: the set reply or a handoff); two
replicas sharing one budget and one rate limit in a real Redis; and the 429 over HTTP."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Mapping
from typing import Any

import pytest
import requests
from fastapi import Request
from fastapi.responses import JSONResponse

from support.redis_server import RedisServer
from support.scripted_agent import scripted_orchestrator, talk
from switchboard.serving.asgi_thread import serve_in_thread
from switchboard.serving.config import (
    BudgetLimitConfig,
    BudgetsConfig,
    HandoffConfig,
    PolicyConfig,
    RateLimitConfig,
    RateLimitsConfig,
)
from switchboard.serving.http import handle_chat, new_api
from switchboard.serving.workflow.limits import (
    Bucket,
    BudgetExhausted,
    Limits,
    RateLimited,
    estimate_tokens,
    retry_after_header,
    take,
    window_start,
)
from switchboard.serving.workflow.orchestrator import NoMetrics, Orchestrator
from switchboard.serving.workflow.sessions import MemorySessionStore, RedisSessionStore
from switchboard.serving.workflow.types import ChatRequest

# --------------------------------------------------------------------------------------------
# The arithmetic


@pytest.mark.parametrize(
    ("state", "now", "rate", "burst", "expected", "wait"),
    [
        # a new bucket is full
        (None, 100.0, 1.0, 3.0, Bucket(2.0, 100.0), 0.0),
        # the last token
        (Bucket(1.0, 100.0), 100.0, 1.0, 3.0, Bucket(0.0, 100.0), 0.0),
        # empty: wait for one token at 0.5/s
        (Bucket(0.0, 100.0), 100.0, 0.5, 3.0, Bucket(0.0, 100.0), 2.0),
        # half refilled: wait the other half
        (Bucket(0.0, 100.0), 101.0, 0.5, 3.0, Bucket(0.5, 101.0), 1.0),
        # refilled after a pause, never above the burst
        (Bucket(0.0, 100.0), 1000.0, 1.0, 3.0, Bucket(2.0, 1000.0), 0.0),
        # another replica's clock behind: no refill, time does not go back
        (Bucket(0.0, 100.0), 99.0, 1.0, 3.0, Bucket(0.0, 100.0), 1.0),
    ],
)
def test_token_bucket(
    state: Bucket | None,
    now: float,
    rate: float,
    burst: float,
    expected: Bucket,
    wait: float,
) -> None:
    assert take(state, now, rate, burst) == (expected, pytest.approx(wait))


@pytest.mark.parametrize(
    ("now", "window", "start"),
    [(0.0, 3600, 0), (3599.9, 3600, 0), (3600.0, 3600, 3600), (7201.5, 60, 7200)],
)
def test_windows_are_epoch_aligned(now: float, window: int, start: int) -> None:
    assert window_start(now, window) == start


@pytest.mark.parametrize(("seconds", "header"), [(0.01, "1"), (1.0, "1"), (1.2, "2"), (59.5, "60")])
def test_retry_after_is_whole_seconds(seconds: float, header: str) -> None:
    assert retry_after_header(seconds) == header


@pytest.mark.parametrize(
    ("text", "tokens"), [("", 0), ("hello", 2), ("one two three", 4), ("a b c d e f", 8)]
)
def test_token_estimate(text: str, tokens: int) -> None:
    assert estimate_tokens(text) == tokens


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class RecordingMetrics(NoMetrics):
    def __init__(self) -> None:
        self.events: list[tuple[Any, ...]] = []

    def llm_tokens(self, prompt: int, completion: int) -> None:
        self.events.append(("tokens", prompt, completion))

    def budget_remaining(self, budget: str, remaining: int, limit: int) -> None:
        self.events.append(("remaining", budget, remaining, limit))

    def budget_exhausted(self, budget: str, scope: str) -> None:
        self.events.append(("exhausted", budget, scope))

    def rate_limited(self, scope: str) -> None:
        self.events.append(("rate_limited", scope))


def rate_policy(session: tuple[float, int] | None, customer: tuple[float, int] | None) -> Any:
    def limit(values: tuple[float, int] | None) -> RateLimitConfig | None:
        return RateLimitConfig(per_minute=values[0], burst=values[1]) if values else None

    return PolicyConfig(
        rate_limit=RateLimitsConfig(session=limit(session), customer=limit(customer))
    )


# (session limit, customer limit, [(seconds later, session, customer, refused scope or None)])
RATE_CASES = [
    (
        (60, 2),
        None,
        [(0, "s1", None, None), (0, "s1", None, None), (0, "s1", None, "session"),
         (0, "s2", None, None), (1, "s1", None, None), (0, "s1", None, "session")],
    ),
    (
        None,
        (60, 2),
        [(0, "s1", "c1", None), (0, "s2", "c1", None), (0, "s3", "c1", "customer"),
         (0, "s3", "c2", None), (0, "s4", None, None), (0, "s4", None, None)],
    ),
    (
        (60, 1),
        (60, 5),
        [(0, "s1", "c1", None), (0, "s1", "c1", "session"), (0, "s2", "c1", None)],
    ),
]  # fmt: skip


@pytest.mark.parametrize(("session", "customer", "steps"), RATE_CASES)
def test_rate_limit_table(
    session: tuple[float, int] | None,
    customer: tuple[float, int] | None,
    steps: list[tuple[float, str, str | None, str | None]],
) -> None:
    clock, metrics = Clock(), RecordingMetrics()
    limits = Limits(rate_policy(session, customer), MemorySessionStore(3600), metrics, clock)

    async def run() -> list[str | None]:
        refused: list[str | None] = []
        for later, session_id, customer_id, _ in steps:
            clock.now += later
            try:
                await limits.admit(session_id, customer_id)
                refused.append(None)
            except RateLimited as limited:
                assert limited.retry_after > 0
                refused.append(limited.scope)
        return refused

    assert asyncio.run(run()) == [step[3] for step in steps]
    assert [e for e in metrics.events if e[0] == "rate_limited"] == [
        ("rate_limited", s[3]) for s in steps if s[3]
    ]


def budget_policy(
    agent: dict[str, int] | None = None,
    customer: dict[str, int] | None = None,
    on_exhausted: str = "reply",
    window: int = 3600,
) -> PolicyConfig:
    return PolicyConfig(
        budgets=BudgetsConfig(
            window_seconds=window,
            agent=BudgetLimitConfig(**(agent or {})),
            customer=BudgetLimitConfig(**(customer or {})),
            on_exhausted=on_exhausted,  # type: ignore[arg-type]
        )
    )


# (agent limits, customer limits, [(seconds later, customer, action, amount, outcome)]);
# outcome: "ok" or the exhausted scope.
BUDGET_CASES = [
    (
        {"tool_calls": 2},
        None,
        [(0, "c1", "tool", 0, "ok"), (0, "c2", "tool", 0, "ok"), (0, "c1", "tool", 0, "agent"),
         (3600, "c1", "tool", 0, "ok")],  # the next window
    ),
    (
        None,
        {"tool_calls": 1},
        [(0, "c1", "tool", 0, "ok"), (0, "c1", "tool", 0, "customer"), (0, "c2", "tool", 0, "ok"),
         (0, None, "tool", 0, "ok"), (0, None, "tool", 0, "ok")],  # no customer: no limit
    ),
    (
        {"tool_calls": 2},
        {"tool_calls": 1},
        # the refused customer call is given back to the agent: c2 still gets one
        [(0, "c1", "tool", 0, "ok"), (0, "c1", "tool", 0, "customer"), (0, "c2", "tool", 0, "ok"),
         (0, "c3", "tool", 0, "agent")],
    ),
    (
        {"llm_tokens": 100},
        None,
        # asked while there is anything left; the last answer may overshoot
        [(0, "c1", "llm", 60, "ok"), (0, "c1", "llm", 60, "ok"), (0, "c1", "llm", 1, "agent"),
         (3600, "c1", "llm", 1, "ok")],
    ),
    (
        {"llm_tokens": 1000},
        {"llm_tokens": 50},
        [(0, "c1", "llm", 50, "ok"), (0, "c1", "llm", 1, "customer"), (0, "c2", "llm", 1, "ok")],
    ),
]  # fmt: skip


@pytest.mark.parametrize(("agent", "customer", "steps"), BUDGET_CASES)
def test_budget_table(
    agent: dict[str, int] | None,
    customer: dict[str, int] | None,
    steps: list[tuple[float, str | None, str, int, str]],
) -> None:
    clock, metrics = Clock(), RecordingMetrics()
    limits = Limits(budget_policy(agent, customer), MemorySessionStore(3600), metrics, clock)

    async def run() -> list[str]:
        outcomes: list[str] = []
        for later, customer_id, action, amount, _ in steps:
            clock.now += later
            try:
                if action == "tool":
                    await limits.spend_tool_call(customer_id)
                else:
                    await limits.check_llm(customer_id)
                    await limits.charge_llm(customer_id, amount - amount // 2, amount // 2)
                outcomes.append("ok")
            except BudgetExhausted as exhausted:
                outcomes.append(exhausted.scope)
        return outcomes

    assert asyncio.run(run()) == [step[4] for step in steps]
    exhausted = [e for e in metrics.events if e[0] == "exhausted"]
    assert len(exhausted) == sum(step[4] != "ok" for step in steps)


def test_agent_budget_remaining_is_reported() -> None:
    metrics = RecordingMetrics()
    limits = Limits(
        budget_policy({"tool_calls": 3, "llm_tokens": 100}), MemorySessionStore(60), metrics
    )

    async def run() -> None:
        await limits.spend_tool_call("c1")
        await limits.check_llm("c1")
        await limits.charge_llm("c1", 30, 10)

    asyncio.run(run())
    assert metrics.events == [
        ("remaining", "tool_calls", 2, 3),
        ("remaining", "llm_tokens", 100, 100),
        ("tokens", 30, 10),
        ("remaining", "llm_tokens", 60, 100),
    ]


# --------------------------------------------------------------------------------------------
# The turn


class CountingGenerator:
    def __init__(self) -> None:
        self.prompts: list[str] = []

    async def generate(self, prompt: str, max_tokens: int) -> str:
        self.prompts.append(prompt)
        return "Your order is on its way and should arrive soon."


def with_policy(policy: PolicyConfig, **changes: Any) -> tuple[Orchestrator, Any]:
    return scripted_orchestrator(policy=policy, **changes)


def test_exhausted_tool_budget_answers_without_calling_the_tool() -> None:
    orchestrator, tools = with_policy(budget_policy({"tool_calls": 1}))
    metrics = RecordingMetrics()
    orchestrator.metrics = metrics
    first, second = talk(orchestrator, "cancel ORD-10001", "cancel ORD-10002")
    assert first["reply"] == "Order ORD-10001 is cancelled."
    assert [c[1] for c in tools.calls] == ["cancel_order"]  # the second was never made
    assert second["reply_kind"] == "budget_exhausted"
    assert second["reply"] == BudgetsConfig().reply
    assert second["actions"] == [] and second["handoff"] is None
    assert ("exhausted", "tool_calls", "agent") in metrics.events


def test_exhausted_budget_can_hand_off() -> None:
    orchestrator, tools = with_policy(
        budget_policy({"tool_calls": 0}, on_exhausted="handoff"),
        handoff=HandoffConfig(adapter="ticketing"),
    )
    [answer] = talk(orchestrator, "cancel ORD-10001")
    assert answer["reply_kind"] == "handoff"
    assert answer["handoff"]["reason"] == "budget_exhausted"
    # The handoff's ticket is not an action of the agent: it is not counted, and it is made.
    assert [c[1] for c in tools.calls] == ["create_ticket"]


def test_exhausted_llm_budget_answers_without_the_generator() -> None:
    generator = CountingGenerator()
    orchestrator, _ = with_policy(budget_policy(customer={"llm_tokens": 10}))
    orchestrator.generator = generator
    metrics = RecordingMetrics()
    orchestrator.metrics = metrics

    async def run() -> list[dict[str, Any]]:
        answers = []
        for message in ("my payment failed", "my payment failed", "my payment failed"):
            request = ChatRequest(session_id="s1", message=message, customer_id="c1")
            answers.append((await orchestrator.turn(request)).model_dump())
        other = ChatRequest(session_id="s2", message="my payment failed", customer_id="c2")
        answers.append((await orchestrator.turn(other)).model_dump())
        return answers

    first, second, third, other = asyncio.run(run())
    assert first["reply_kind"] == "knowledge_base"
    assert second["reply_kind"] == third["reply_kind"] == "budget_exhausted"
    assert other["reply_kind"] == "knowledge_base"  # another customer's budget
    assert len(generator.prompts) == 2
    [(_, prompt, completion), _] = [e for e in metrics.events if e[0] == "tokens"]
    assert prompt == estimate_tokens(generator.prompts[0]) and completion == 14  # 10 words
    assert ("exhausted", "llm_tokens", "customer") in metrics.events


def test_rate_limited_turn_is_refused_and_not_counted() -> None:
    orchestrator, _ = with_policy(rate_policy((60, 1), None))
    metrics = RecordingMetrics()
    orchestrator.metrics = metrics
    talk(orchestrator, "where is my order")
    with pytest.raises(RateLimited) as refused:
        talk(orchestrator, "ORD-10001")
    assert refused.value.scope == "session" and 0 < refused.value.retry_after <= 1
    assert metrics.events == [("rate_limited", "session")]


# --------------------------------------------------------------------------------------------
# Two replicas, one Redis


def test_replicas_share_budgets_and_rate_limits_in_redis(redis_server: RedisServer) -> None:
    policy = PolicyConfig(
        rate_limit=RateLimitsConfig(customer=RateLimitConfig(per_minute=60, burst=3)),
        budgets=BudgetsConfig(agent=BudgetLimitConfig(tool_calls=3, llm_tokens=100)),
    )
    clock = Clock()

    async def run() -> tuple[list[str], list[str], list[str]]:
        stores = [RedisSessionStore(redis_server.url, "shop:limits", 3600) for _ in range(2)]
        replicas = [Limits(policy, store, NoMetrics(), clock) for store in stores]
        try:
            admitted, spent, asked = [], [], []
            for i in range(4):  # alternating replicas: one bucket of 3
                try:
                    await replicas[i % 2].admit(f"s{i}", "c1")
                    admitted.append("ok")
                except RateLimited as limited:
                    admitted.append(f"429 after {retry_after_header(limited.retry_after)}")
            clock.now += 1.0  # one token back, seen by both
            await replicas[1].admit("s9", "c1")
            admitted.append("ok")
            for i in range(4):
                try:
                    await replicas[i % 2].spend_tool_call(f"c{i}")
                    spent.append("ok")
                except BudgetExhausted as exhausted:
                    spent.append(exhausted.scope)
            for i in range(3):
                try:
                    await replicas[i % 2].check_llm("c1")
                    await replicas[i % 2].charge_llm("c1", 40, 20)
                    asked.append("ok")
                except BudgetExhausted as exhausted:
                    asked.append(exhausted.scope)
            return admitted, spent, asked
        finally:
            for store in stores:
                await store.close()

    admitted, spent, asked = asyncio.run(run())
    assert admitted == ["ok", "ok", "ok", "429 after 1", "ok"]
    assert spent == ["ok", "ok", "ok", "agent"]
    assert asked == ["ok", "ok", "agent"]


# --------------------------------------------------------------------------------------------
# HTTP


@pytest.fixture
def chat_url() -> Iterator[str]:
    orchestrator, _ = with_policy(rate_policy((6, 1), None))
    api = new_api("limits")

    async def dispatch(request: ChatRequest, _headers: Mapping[str, str]) -> dict[str, Any]:
        return (await orchestrator.turn(request)).model_dump()

    @api.post("/v1/chat")
    async def chat(request: Request) -> JSONResponse:
        return await handle_chat(request, dispatch)

    url, server = serve_in_thread("limits", api)
    yield url
    server.stop()


def test_rate_limit_is_429_json_with_retry_after(chat_url: str) -> None:
    body = {"session_id": "s1", "message": "where is my order"}
    assert requests.post(f"{chat_url}/v1/chat", json=body, timeout=10).status_code == 200
    refused = requests.post(f"{chat_url}/v1/chat", json=body, timeout=10)
    assert refused.status_code == 429
    assert refused.headers["content-type"] == "application/json"
    # 6 a minute: the next token in 10 s
    assert refused.headers["Retry-After"] == "10"
    error = refused.json()["error"]
    assert error["code"] == "rate_limited" and error["scope"] == "session"
    assert error["retry_after"] == 10
    other = {"session_id": "s2", "message": "where is my order"}
    assert requests.post(f"{chat_url}/v1/chat", json=other, timeout=10).status_code == 200
