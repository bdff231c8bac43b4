"""The conversation rules as tables: cues (small talk, a request for a person, a bare answer),
the relevance gate and its calibration, and the orchestrator's turn with scripted parts.

The orchestrator here talks to in-process stand-ins (a scripted understander and retriever, a
recording tool caller): these tests pin the rules. tests/test_conversations.py runs the same
rules end to end on the real demo agent (Ray Serve, the trained model, MiniLM, gateways).
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any

import pytest

from support.scripted_agent import (
    KeyRecordingTools,
    ScriptedUnderstander,
    passage,
    scripted_orchestrator,
    talk,
)
from switchboard.serving.config import (
    FallbackConfig,
    PolicyConfig,
)
from switchboard.serving.conversations import Expectation, check_turn
from switchboard.serving.workflow.cues import asks_for_human, is_bare_answer, small_talk
from switchboard.serving.workflow.grounding import (
    LabelledQuestion,
    Retrieved,
    calibrate,
    relevant,
)
from switchboard.serving.workflow.orchestrator import (
    NoMetrics,
    Orchestrator,
)
from switchboard.serving.workflow.sessions import MemorySessionStore
from switchboard.serving.workflow.tools import ToolResult
from switchboard.serving.workflow.types import ChatRequest

# --- cues ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ("hi there", "greeting"),
        ("Hello!", "greeting"),
        ("good morning", "greeting"),
        ("thanks, that's all", "thanks"),
        ("great, thank you so much", "thanks"),
        ("ok thanks again", "thanks"),
        ("ok bye", "goodbye"),
        ("thanks, bye!", "goodbye"),  # a closing wins over thanks
        ("hi, where is my order?", None),  # a request with a greeting is the request
        ("thanks, anything new?", None),
        ("ok", None),
        ("yes", None),
        ("", None),
        ("great, now cancel my order", None),
    ],
)
def test_small_talk(text: str, kind: str | None) -> None:
    assert small_talk(text) == kind


@pytest.mark.parametrize(
    ("text", "asks"),
    [
        ("get me a representative", True),
        ("can I speak to a real person", True),
        ("I want a human", True),
        ("transfer me to an agent", True),
        ("where is my order", False),
        ("the humming noise in my garden", False),
    ],
)
def test_asks_for_human(text: str, asks: bool) -> None:
    assert asks_for_human(text) is asks


@pytest.mark.parametrize(
    ("text", "values", "bare"),
    [
        ("ORD-10003", ["ORD-10003"], True),
        ("it's ORD-10003", ["ORD-10003"], True),
        ("sorry, I meant ORD-10007", ["ORD-10007"], True),
        ("the order number is ORD-10004 thanks", ["ORD-10004"], False),  # "thanks" is a word
        ("cancel ORD-10003", ["ORD-10003"], False),
        ("where is my order", [], False),
        ("jane@example.com", ["jane@example.com"], True),
    ],
)
def test_bare_answer(text: str, values: list[str], bare: bool) -> None:
    assert is_bare_answer(text, values) is bare


# --- the gate and its calibration ---------------------------------------------------------------


def test_relevant_keeps_only_passages_at_or_above_the_threshold() -> None:
    found = [passage("a.md#1", 0.62), passage("b.md#1", 0.45), passage("c.md#1", 0.2)]
    assert [p.id for p in relevant(found, 0.45)] == ["a.md#1", "b.md#1"]
    assert relevant(found, 0.7) == []


def _retrieved(text: str, expected: str | None, top: str, score: float) -> Retrieved:
    return Retrieved(LabelledQuestion(text, expected), top, score)


def test_calibration_sits_between_the_two_kinds_of_question() -> None:
    results = [
        _retrieved("a", "x.md", "x.md", 0.70),
        _retrieved("b", "y.md", "y.md", 0.55),
        _retrieved("c", None, "x.md", 0.35),
        _retrieved("d", None, "y.md", 0.25),
    ]
    calibration = calibrate(results)
    assert calibration.correct == 4 and calibration.wrong_answers == 0
    assert calibration.best_range == (0.35, 0.55)
    assert calibration.min_relevance == 0.45


def test_calibration_prefers_declining_to_a_wrong_answer() -> None:
    # One unanswerable question scores above one answerable one: either threshold gets one
    # question wrong; a wrong answer is worse than an honest "I don't know".
    results = [
        _retrieved("a", "x.md", "x.md", 0.70),
        _retrieved("b", "y.md", "y.md", 0.40),
        _retrieved("c", None, "x.md", 0.50),
    ]
    calibration = calibrate(results)
    assert (calibration.correct, calibration.wrong_answers, calibration.missed) == (2, 0, 1)
    assert 0.5 < calibration.min_relevance <= 0.7


def test_calibration_counts_the_wrong_document_as_wrong() -> None:
    results = [_retrieved("a", "x.md", "y.md", 0.9), _retrieved("b", None, "y.md", 0.1)]
    calibration = calibrate(results)
    assert calibration.wrong_answers == 0 and calibration.min_relevance > 0.1
    assert calibration.missed == 1


# --- the turn, with scripted parts ---------------------------------------------------------------


# (name, agent config changes, messages, expectation of each turn)
TURNS: list[tuple[str, dict[str, Any], list[str], list[dict[str, Any]]]] = [
    (
        "bare number after the question fills the slot",
        {},
        ["cancel my order", "ORD-10003"],
        [
            {"reply_kind": "slot_prompt"},
            {"intent": "cancel_order", "action": "orders.cancel_order", "handoff": False},
        ],
    ),
    (
        "bare number alone asks what to do, the next request uses it",
        {},
        ["ORD-10006", "where is it"],
        [
            {"reply_kind": "clarify", "handoff": False, "action": "none"},
            {"intent": "order_status", "action": "orders.get_order", "reply_contains": "10006"},
        ],
    ),
    (
        "a lookup repeats on a bare number, a change does not",
        {},
        ["cancel ORD-10001", "ORD-10006"],
        [
            {"action": "orders.cancel_order"},
            {"reply_kind": "clarify", "action": "none"},
        ],
    ),
    (
        "fixed parameters join the slots",
        {},
        ["my item arrived damaged ORD-10007"],
        [{"action": "orders.report_item_issue", "reply_contains": "ISS-1"}],
    ),
    (
        "small talk is answered without the model or a ticket; thanks resolves",
        {},
        ["hi there", "thanks, that's all"],
        [
            {"reply_kind": "small_talk", "handoff": False, "resolved": False},
            {"reply_kind": "small_talk", "handoff": False, "resolved": True},
        ],
    ),
    (
        "an out-of-scope message is asked to rephrase once, then a person (reason out_of_scope)",
        {},
        ["gibberish", "gibberish"],
        [{"reply_kind": "clarify", "handoff": False}, {"handoff": "out_of_scope"}],
    ),
    (
        "an unsure message is asked to rephrase once, then a person (reason low_confidence)",
        {},
        ["maybe the thing", "maybe the thing"],
        [{"reply_kind": "clarify", "handoff": False}, {"handoff": "low_confidence"}],
    ),
    (
        "no rephrasing when the policy allows none",
        {"policy": PolicyConfig(rephrase_attempts=0)},
        ["gibberish"],
        [{"handoff": "out_of_scope"}],
    ),
    (
        "an unclear message asking for a person is handed off at once",
        {},
        ["gibberish, get me a human"],
        [{"handoff": "requested"}],
    ),
    (
        "a relevant passage answers, citing only what passed the gate",
        {},
        ["my payment failed"],
        [{"reply_kind": "knowledge_base", "source": "payments.md", "handoff": False}],
    ),
    (
        "nothing relevant: an honest no-answer, never the nearest passage",
        {},
        ["do you sell gift cards"],
        [{"reply_kind": "no_answer", "handoff": False, "action": "none"}],
    ),
    (
        "fallback reply for unplanned intents",
        {"fallback": FallbackConfig(action="reply", reply="Please see our help centre.")},
        ["do you sell gift cards"],
        [{"reply_kind": "fallback", "reply_contains": "help centre"}],
    ),
    (
        "fallback clarify asks once, then hands off",
        {"fallback": FallbackConfig(action="clarify")},
        ["do you sell gift cards", "do you sell gift cards"],
        [{"reply_kind": "clarify"}, {"handoff": "no_plan"}],
    ),
    (
        "fallback handoff",
        {"fallback": FallbackConfig(action="handoff")},
        ["do you sell gift cards"],
        [{"handoff": "no_plan"}],
    ),
]


@pytest.mark.parametrize(
    ("name", "changes", "messages", "expected"), TURNS, ids=[t[0] for t in TURNS]
)
def test_turns(
    name: str, changes: dict[str, Any], messages: list[str], expected: list[dict[str, Any]]
) -> None:
    orchestrator, _ = scripted_orchestrator(**changes)
    responses = talk(orchestrator, *messages)
    for n, (response, expect) in enumerate(zip(responses, expected, strict=True)):
        problems = check_turn(Expectation.model_validate(expect), response)
        assert problems == [], f"turn {n + 1} ({messages[n]!r}): {problems}"


def test_small_talk_never_reaches_the_model() -> None:
    orchestrator, _ = scripted_orchestrator()
    talk(orchestrator, "hi there", "thanks, bye")
    understander = orchestrator.understander
    assert isinstance(understander, ScriptedUnderstander) and understander.seen == []


def test_the_item_issue_payload_carries_the_fixed_kind() -> None:
    orchestrator, tools = scripted_orchestrator()
    talk(orchestrator, "my item arrived damaged ORD-10007")
    assert tools.calls == [
        ("orders", "report_item_issue", {"order_id": "ORD-10007", "kind": "damaged"})
    ]


def test_audit_records_the_retrieval_score_and_threshold() -> None:
    orchestrator, _ = scripted_orchestrator()
    records: list[dict[str, Any]] = []
    orchestrator.audit = records.append
    talk(orchestrator, "do you sell gift cards", "my payment failed")
    assert records[0]["retrieval"] == {"top_score": 0.34, "min_relevance": 0.45, "cited": []}
    assert records[0]["reply_kind"] == "no_answer"
    assert records[1]["retrieval"]["cited"] == ["payments.md#1"]


class CountingMetrics(NoMetrics):
    def __init__(self) -> None:
        self.resolutions = 0
        self.retrievals: list[tuple[float, bool]] = []
        self.turns: list[str] = []

    def turn(self, status: str, intent: str, seconds: float) -> None:
        self.turns.append(status)

    def resolved(self) -> None:
        self.resolutions += 1

    def retrieval(self, top_score: float, grounded: bool) -> None:
        self.retrievals.append((top_score, grounded))


def test_metrics_count_each_closing_once_and_every_lookup() -> None:
    orchestrator, _ = scripted_orchestrator()
    metrics = CountingMetrics()
    orchestrator.metrics = metrics
    talk(orchestrator, "my payment failed", "thanks", "bye", "do you sell gift cards", "thanks")
    assert metrics.resolutions == 2  # "thanks" + "bye" is one closing; the later thanks another
    assert metrics.retrievals == [(0.61, True), (0.34, False)]


class BrokenStore(MemorySessionStore):
    async def get(self, session_id: str) -> Any:
        raise ConnectionError("redis is down")


def test_a_failing_session_store_is_a_failed_turn_in_the_metrics() -> None:
    """What the SwitchboardChatTurnsFailing alert counts (status="error")."""
    orchestrator, _ = scripted_orchestrator()
    metrics = CountingMetrics()
    orchestrator.metrics = metrics
    orchestrator.sessions = BrokenStore(3600)
    with pytest.raises(ConnectionError):
        talk(orchestrator, "where is my order")
    assert metrics.turns == ["error"]


# --- retries and idempotency ----------------------------------------------------------------


class DiesBeforeSaving(MemorySessionStore):
    """A replica that dies after the turn's action and before the session is saved, once."""

    def __init__(self) -> None:
        super().__init__(3600)
        self.crashes = 1

    async def put(self, session: Any) -> None:
        if self.crashes:
            self.crashes -= 1
            raise ConnectionError("replica died")
        await super().put(session)


def _with_keys(orchestrator: Orchestrator) -> KeyRecordingTools:
    tools = KeyRecordingTools([], [])
    orchestrator.tools = tools
    return tools


def _send(orchestrator: Orchestrator, *requests: ChatRequest) -> list[Any]:
    async def run() -> list[Any]:
        answers: list[Any] = []
        for request in requests:
            try:
                answers.append(await orchestrator.turn(request))
            except ConnectionError as exc:
                answers.append(exc)
        return answers

    return asyncio.run(run())


@pytest.mark.parametrize("request_id", [None, "msg-7"])
def test_a_turn_retried_after_a_crash_repeats_its_action_with_the_same_key(
    request_id: str | None,
) -> None:
    """The gateway and the system behind it deduplicate by the key: the same key on a retry
    means one cancellation. (The key used to be drawn per attempt, from the trace id.)"""
    orchestrator, _ = scripted_orchestrator()
    tools = _with_keys(orchestrator)
    orchestrator.sessions = DiesBeforeSaving()
    request = ChatRequest(session_id="s1", message="cancel ORD-10001", request_id=request_id)
    failed, answered = _send(orchestrator, request, request)
    assert isinstance(failed, ConnectionError) and answered.reply == "Order ORD-10001 is cancelled."
    assert len(tools.keys) == 2 and tools.keys[0] == tools.keys[1] and tools.keys[0]


def test_a_retry_of_an_answered_request_gets_the_same_answer_and_runs_nothing() -> None:
    orchestrator, _ = scripted_orchestrator()
    tools = _with_keys(orchestrator)
    metrics = CountingMetrics()
    orchestrator.metrics = metrics
    first, again, _ = _send(
        orchestrator,
        ChatRequest(session_id="s1", message="cancel ORD-10001", request_id="msg-1"),
        ChatRequest(session_id="s1", message="cancel ORD-10001", request_id="msg-1"),
        ChatRequest(session_id="s1", message="cancel ORD-10001", request_id="msg-2"),
    )
    assert again == first  # the same reply, trace id included
    assert len(tools.keys) == 2 and tools.keys[0] != tools.keys[1]  # msg-2 is a new request
    assert metrics.turns == ["ok", "ok"]  # the replay is not counted as a turn


def test_two_turns_without_request_ids_are_two_actions() -> None:
    orchestrator, _ = scripted_orchestrator()
    tools = _with_keys(orchestrator)
    talk(orchestrator, "cancel ORD-10001", "cancel ORD-10001")
    assert len(tools.keys) == 2 and tools.keys[0] != tools.keys[1]


def test_two_turns_sent_at_once_on_different_orders_get_different_keys() -> None:
    """Two tabs of one session: both turns read the same turn number."""
    orchestrator, _ = scripted_orchestrator()
    tools = _with_keys(orchestrator)

    async def run() -> None:
        await asyncio.gather(
            orchestrator.turn(ChatRequest(session_id="s1", message="cancel ORD-10001")),
            orchestrator.turn(ChatRequest(session_id="s1", message="cancel ORD-10002")),
        )

    asyncio.run(run())
    assert len(tools.keys) == 2 and tools.keys[0] != tools.keys[1]


def test_the_idempotency_key_header_names_the_request() -> None:
    from starlette.requests import Request

    from switchboard.serving.http import parse_chat_request

    def request(body: bytes, headers: dict[str, str]) -> Request:
        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": body, "more_body": False}

        raw = [(k.lower().encode(), v.encode()) for k, v in headers.items()]
        return Request({"type": "http", "method": "POST", "headers": raw}, receive)

    body = b'{"session_id": "s1", "message": "hi"}'
    parsed = asyncio.run(parse_chat_request(request(body, {"Idempotency-Key": "k-1"})))
    assert isinstance(parsed, ChatRequest) and parsed.request_id == "k-1"
    own = b'{"session_id": "s1", "message": "hi", "request_id": "k-2"}'
    parsed = asyncio.run(parse_chat_request(request(own, {"Idempotency-Key": "k-1"})))
    assert isinstance(parsed, ChatRequest) and parsed.request_id == "k-2"
    refused = asyncio.run(parse_chat_request(request(body, {"Idempotency-Key": "no spaces"})))
    assert not isinstance(refused, ChatRequest) and refused.status_code == 422


# --- policy.piiRedaction --------------------------------------------------------------------


@pytest.mark.parametrize(("redaction", "kept"), [(True, False), (False, True)])
def test_pii_redaction_follows_the_policy(redaction: bool, kept: bool) -> None:
    """`policy.piiRedaction: false` used to be carried to the data plane and ignored."""
    policy = PolicyConfig(pii_redaction=redaction)
    orchestrator, tools = scripted_orchestrator(policy=policy)
    records: list[dict[str, Any]] = []
    orchestrator.audit = records.append
    talk(orchestrator, "gibberish, get me a human jane@example.com")
    ticket = tools.calls[-1][2]["body"]
    for text in (records[0]["message"], ticket):
        assert ("jane@example.com" in text) is kept, text


def test_the_ticket_carries_the_message_that_brought_the_handoff() -> None:
    orchestrator, tools = scripted_orchestrator()
    talk(orchestrator, "my payment failed", "gibberish, get me a human")
    transcript = json.loads(tools.calls[-1][2]["body"])["transcript"]
    assert [t["text"] for t in transcript if t["role"] == "customer"] == [
        "my payment failed",
        "gibberish, get me a human",
    ]


# --- a ticket system that is down -----------------------------------------------------------


@dataclass
class FlakyTicketing(KeyRecordingTools):
    """Ticketing refuses (503) while `down`; the other systems answer."""

    down: bool = True

    async def call(
        self, adapter: str, operation: str, payload: dict[str, Any], idempotency_key: str | None
    ) -> ToolResult:
        if operation == "create_ticket" and self.down:
            self.keys.append(idempotency_key)
            self.calls.append((adapter, operation, payload))
            return ToolResult(False, 503, None, error="ticketing unavailable")
        return await super().call(adapter, operation, payload, idempotency_key)


def test_a_ticket_that_could_not_be_sent_is_not_announced_and_is_sent_later() -> None:
    orchestrator, _ = scripted_orchestrator()
    tools = FlakyTicketing([], [])
    orchestrator.tools = tools

    async def run() -> list[Any]:
        answers = []
        for message, down in (
            ("gibberish, get me a human", True),
            ("gibberish, get me a human", True),  # asked again while the ticket waits
            ("my payment failed", False),
        ):
            tools.down = down
            answers.append(await orchestrator.turn(ChatRequest(session_id="s1", message=message)))
        return answers

    first, second, third = asyncio.run(run())
    assert "passed" not in first.reply and "couldn't reach" in first.reply
    assert first.handoff is not None and first.handoff.queued and first.handoff.ticket_id is None
    # Asked again: the message joins the open handoff; no second ticket is opened.
    assert second.reply_kind == "handoff_pending"
    assert second.handoff is not None and second.handoff.queued
    assert third.reply.startswith("Update: our ticket system now has your request (ticket TCK-1).")
    tickets = [c for c in tools.calls if c[1] == "create_ticket"]
    assert len(tickets) == 3 and len(set(tools.keys)) == 1  # one ticket, tried three times


def test_the_audit_keeps_identifiers_that_look_like_phone_numbers() -> None:
    """An all-digit revision hash was redacted to [PHONE] in the audit (a flaky rollout test)."""
    orchestrator, _ = scripted_orchestrator()
    orchestrator.config = orchestrator.config.model_copy(update={"revision": "78260142"})
    records: list[dict[str, Any]] = []
    orchestrator.audit = records.append
    talk(orchestrator, "my payment failed, call me on 0171 234 5678")
    assert records[0]["revision"] == "78260142" and records[0]["session_id"] == "s1"
    assert "5678" not in records[0]["message"]
