"""An orchestrator with scripted parts for the conversation and handoff tests: a scripted
understander and retriever and a recording tool caller, in process. These pin the rules;
tests/test_conversations.py runs the same rules end to end on the real demo agent."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from switchboard.serving.config import (
    AgentAppConfig,
    HandoffConfig,
    IntentPlanConfig,
    KnowledgeBaseConfig,
    NluConfig,
    PolicyConfig,
    ToolConfig,
    ToolOperationConfig,
)
from switchboard.serving.workflow.orchestrator import Orchestrator, Passage, Understanding
from switchboard.serving.workflow.sessions import MemorySessionStore
from switchboard.serving.workflow.tools import AsyncioTaskRunner, ToolResult
from switchboard.serving.workflow.types import ChatRequest


def passage(pid: str, score: float) -> Passage:
    return Passage(id=pid, title=pid, text=f"{pid} text.", score=score)


class ScriptedUnderstander:
    def __init__(self, script: dict[str, Understanding]) -> None:
        self.script = script
        self.seen: list[str] = []

    async def understand(self, text: str) -> Understanding:
        self.seen.append(text)
        return self.script.get(text, Understanding("oos", 0.9, True, {}))


class ScriptedRetriever:
    def __init__(self, passages: dict[str, list[Passage]]) -> None:
        self.passages = passages

    async def search(self, text: str, k: int) -> list[Passage]:
        return self.passages.get(text, [])[:k]


@dataclass
class RecordingTools:
    calls: list[tuple[str, str, dict[str, Any]]]

    async def call(
        self, adapter: str, operation: str, payload: dict[str, Any], idempotency_key: str | None
    ) -> ToolResult:
        self.calls.append((adapter, operation, payload))
        if operation == "create_ticket":
            return ToolResult(True, 201, {"ticket_id": "TCK-1"})
        return ToolResult(True, 200, {"status": "shipped", "issue_id": "ISS-1"})


def u(intent: str, confidence: float = 0.98, **slots: str) -> Understanding:
    return Understanding(intent, confidence, intent == "oos", slots, frozenset({"order_id"}))


SCRIPT = {
    "where is my order": u("order_status"),
    "ORD-10003": u("talk_to_human", 0.87, order_id="ORD-10003"),
    "ORD-10006": u("talk_to_human", 0.87, order_id="ORD-10006"),
    "cancel my order": u("cancel_order"),
    "cancel ORD-10001": u("cancel_order", order_id="ORD-10001"),
    "cancel ORD-10002": u("cancel_order", order_id="ORD-10002"),
    "where is it": u("order_status"),
    "my payment failed": u("payment_failed"),
    "my item arrived damaged ORD-10007": u("damaged_item", order_id="ORD-10007"),
    "do you sell gift cards": u("gift_cards"),
    "gibberish": u("oos", 0.95),
    "maybe the thing": u("order_status", 0.3),
    "gibberish, get me a human": u("oos", 0.6),
}
PASSAGES = {
    "my payment failed": [passage("payments.md#1", 0.61), passage("account.md#1", 0.32)],
    "do you sell gift cards": [passage("promotions.md#1", 0.34)],
}


def scripted_orchestrator(**changes: Any) -> tuple[Orchestrator, RecordingTools]:
    settings: dict[str, Any] = {
        "policy": PolicyConfig(handoff_confidence_threshold=0.5),
        "handoff": HandoffConfig(adapter="ticketing"),
        **changes,
    }
    config = AgentAppConfig(
        agent="acme",
        namespace="shop",
        revision="r1",
        nlu=NluConfig(model_path="/m", revision="n1"),
        knowledge_base=KnowledgeBaseConfig(path="/kb", min_relevance=0.45),
        tools=[
            ToolConfig(
                adapter="orders",
                system="orders",
                url="http://orders",
                operations=[
                    ToolOperationConfig(name="get_order"),
                    ToolOperationConfig(name="cancel_order", mutating=True),
                    ToolOperationConfig(name="report_item_issue", mutating=True),
                ],
            ),
            ToolConfig(
                adapter="ticketing",
                system="ticketing",
                url="http://ticketing",
                operations=[ToolOperationConfig(name="create_ticket", mutating=True)],
            ),
        ],
        intents=[
            IntentPlanConfig(
                intent="order_status",
                required_slots=["order_id"],
                slot_prompts={"order_id": "Your order number?"},
                operation="orders.get_order",
                answer_template="Order {slots[order_id]} is {result[status]}.",
            ),
            IntentPlanConfig(
                intent="cancel_order",
                required_slots=["order_id"],
                slot_prompts={"order_id": "Which order?"},
                operation="orders.cancel_order",
                answer_template="Order {slots[order_id]} is cancelled.",
            ),
            IntentPlanConfig(
                intent="damaged_item",
                required_slots=["order_id"],
                slot_prompts={"order_id": "Which order?"},
                operation="orders.report_item_issue",
                parameters={"kind": "damaged"},
                answer_template="Case {result[issue_id]}.",
            ),
            IntentPlanConfig(intent="talk_to_human", handoff=True),
        ],
        **settings,
    )
    tools = RecordingTools([])
    orchestrator = Orchestrator(
        config,
        understander=ScriptedUnderstander(SCRIPT),
        tools=tools,
        sessions=MemorySessionStore(3600),
        tasks=AsyncioTaskRunner(tools),
        retriever=ScriptedRetriever(PASSAGES),
        audit=lambda record: None,
    )
    return orchestrator, tools


def talk(orchestrator: Orchestrator, *messages: str) -> list[dict[str, Any]]:
    async def run() -> list[dict[str, Any]]:
        return [
            (await orchestrator.turn(ChatRequest(session_id="s1", message=m))).model_dump()
            for m in messages
        ]

    return asyncio.run(run())


@dataclass
class KeyRecordingTools(RecordingTools):
    keys: list[str | None]

    async def call(
        self, adapter: str, operation: str, payload: dict[str, Any], idempotency_key: str | None
    ) -> ToolResult:
        self.keys.append(idempotency_key)
        return await super().call(adapter, operation, payload, idempotency_key)
