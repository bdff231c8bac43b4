"""Handoffs as a conversation state (docs/handoffs.md): the transitions as a table, the turn
while a human has the conversation, and the agent API over HTTP — every transition, duplicates
and retries, refused callers, and a replica restart in the middle of a handoff with the state in
a real Redis.

The agent here is the orchestrator with scripted parts (tests/support/scripted_agent.py); the
HTTP app is the one every replica builds (`agent_http_app`), served by uvicorn on 127.0.0.1.
tests/test_browser.py runs the same flow through the pages on the real demo agent.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from support.agent_replica import Replica, with_console
from support.redis_server import RedisServer
from support.scripted_agent import scripted_orchestrator, talk
from switchboard.serving.config import HandoffConfig, SessionConfig
from switchboard.serving.workflow import handoffs as t
from switchboard.serving.workflow.handoffs import HandoffError, HandoffRecord
from switchboard.serving.workflow.sessions import MemorySessionStore, open_store
from switchboard.serving.workflow.types import ChatRequest

# --- the transitions ----------------------------------------------------------------------


def _record(**changes: Any) -> HandoffRecord:
    base: dict[str, Any] = {
        "id": "s1~1",
        "session_id": "s1",
        "agent": "acme",
        "reason": "requested",
        "trigger": "get me a human",
        "intent": "talk_to_human",
        "confidence": 0.9,
        "transcript": [{"role": "customer", "text": "get me a human"}],
        "created_at": 100.0,
    }
    return HandoffRecord.model_validate({**base, **changes})


WAITING = _record()
CLAIMED = _record(status="claimed", assignee="alice", claimed_at=110.0)
RESOLVED = _record(status="resolved", assignee="alice", resolved_at=200.0)

# (name, record, transition, expected: dict of fields or (status, code))
TRANSITIONS: list[tuple[str, HandoffRecord, Any, dict[str, Any] | tuple[int, str]]] = [
    (
        "claim a waiting handoff",
        WAITING,
        lambda r: t.claim(r, "alice", "c1", 110.0),
        {"status": "claimed", "assignee": "alice", "claimed_at": 110.0},
    ),
    ("claim one already mine", CLAIMED, lambda r: t.claim(r, "alice", "c2", 120.0), {}),
    (
        "claim someone else's",
        CLAIMED,
        lambda r: t.claim(r, "bob", "c1", 120.0),
        (409, "already_claimed"),
    ),
    ("claim a resolved one", RESOLVED, lambda r: t.claim(r, "bob", "c1", 220.0), (409, "resolved")),
    (
        "reply to my handoff",
        CLAIMED,
        lambda r: t.reply(r, "alice", "Hi, I'm Alice", "r1", 130.0),
        {"first_reply_at": 130.0, "last_seq": 1},
    ),
    (
        "reply before claiming",
        WAITING,
        lambda r: t.reply(r, "alice", "hi", "r1", 130.0),
        (409, "not_claimed"),
    ),
    (
        "reply to someone else's",
        CLAIMED,
        lambda r: t.reply(r, "bob", "hi", "r1", 130.0),
        (403, "not_assignee"),
    ),
    (
        "transfer mine",
        CLAIMED,
        lambda r: t.transfer(r, "alice", "bob", "x1", 140.0),
        {"assignee": "bob", "status": "claimed"},
    ),
    (
        "transfer someone else's",
        CLAIMED,
        lambda r: t.transfer(r, "bob", "bob", "x1", 140.0),
        (403, "not_assignee"),
    ),
    (
        "resolve mine",
        CLAIMED,
        lambda r: t.resolve(r, "alice", "z1", 150.0),
        {"status": "resolved", "resolved_at": 150.0, "resolved_by": "alice"},
    ),
    (
        "resolve an unclaimed duplicate",
        WAITING,
        lambda r: t.resolve(r, "bob", "z1", 150.0),
        {"status": "resolved", "resolved_by": "bob"},
    ),
    (
        "resolve someone else's",
        CLAIMED,
        lambda r: t.resolve(r, "bob", "z1", 150.0),
        (403, "not_assignee"),
    ),
    (
        "resolve twice",
        RESOLVED,
        lambda r: t.resolve(r, "alice", "z2", 250.0),
        (409, "resolved"),
    ),
    (
        "correct the trigger after resolution",
        RESOLVED,
        lambda r: t.correct(r, "alice", "order_status", "k1", 260.0),
        {"corrections": 1},
    ),
    (
        "correct a text that is not the customer's",
        CLAIMED,
        lambda r: t.correct(r, "alice", "order_status", "k1", 260.0, text="made up"),
        (422, "unknown_message"),
    ),
    (
        "a customer message joins",
        CLAIMED,
        lambda r: t.customer_message(r, "still there?", 160.0, "turn-3"),
        {"last_seq": 1},
    ),
    (
        "a customer message after resolution",
        RESOLVED,
        lambda r: t.customer_message(r, "hello?", 260.0, "turn-4"),
        (409, "resolved"),
    ),
]


@pytest.mark.parametrize(
    ("name", "record", "transition", "expected"), TRANSITIONS, ids=[x[0] for x in TRANSITIONS]
)
def test_transitions(
    name: str,
    record: HandoffRecord,
    transition: Any,
    expected: dict[str, Any] | tuple[int, str],
) -> None:
    if isinstance(expected, tuple):
        with pytest.raises(HandoffError) as refused:
            transition(record)
        assert (refused.value.status, refused.value.code) == expected
        return
    changed = transition(record)
    for field, value in expected.items():
        got = len(changed.corrections) if field == "corrections" else getattr(changed, field)
        assert got == value, field
    assert changed.version == record.version + (1 if expected else 0)


def test_a_retried_call_changes_nothing() -> None:
    once = t.reply(CLAIMED, "alice", "hello", "r1", 130.0)
    assert t.reply(once, "alice", "hello", "r1", 131.0) is once
    resolved = t.resolve(once, "alice", "z1", 140.0)
    assert t.resolve(resolved, "alice", "z1", 141.0) is resolved  # the retry, not a 409


def test_queue_position_counts_the_waiting_handoffs_before() -> None:
    first, second = _record(id="a~1", created_at=1.0), _record(id="b~1", created_at=2.0)
    claimed = _record(id="c~1", created_at=0.5, status="claimed", assignee="bob")
    queue = [claimed, first, second]
    assert [t.queue_position(r, queue) for r in queue] == [None, 1, 2]


# --- the turn while a human has the conversation -------------------------------------------


def test_after_a_handoff_the_bot_stays_quiet_until_a_human_resolves_it() -> None:
    orchestrator, tools = scripted_orchestrator()
    with_console(orchestrator)
    store = orchestrator.sessions
    handed, joined, again = talk(
        orchestrator,
        "my payment failed",
        "gibberish, get me a human",
        "gibberish, get me a human",
        "where is my order",
    )[1:]
    assert handed["reply_kind"] == "handoff" and handed["handoff"]["queue_position"] == 1
    assert "will reply here" in handed["reply"]
    assert joined["reply_kind"] == "handoff_pending"  # asked again: no second ticket
    assert again["reply_kind"] == "handoff_pending"  # a request the bot knows: still quiet
    tickets = [c for c in tools.calls if c[1] == "create_ticket"]
    assert len(tickets) == 1
    assert [c for c in tools.calls if c[1] == "get_order"] == []

    record = asyncio.run(store.get_handoff(handed["handoff"]["id"]))
    assert record is not None and record.ticket_id == "TCK-1"
    # The context a human needs: the trigger, in the transcript too, and what the bot made of it.
    assert record.trigger == "gibberish, get me a human"
    assert [x["text"] for x in record.transcript if x["role"] == "customer"] == [
        "my payment failed",
        "gibberish, get me a human",
    ]
    assert record.intent == "oos" and record.confidence == 0.6 and record.reason == "requested"
    assert any("below" in p for p in record.policy)  # the gate's decision and its rationale
    assert [m.text for m in record.messages] == ["gibberish, get me a human", "where is my order"]

    asyncio.run(
        store.update_handoff(record.id, lambda r: t.resolve(r, "alice", "z1", record.created_at))
    )
    (back,) = talk(orchestrator, "where is my order")
    assert back["reply_kind"] == "slot_prompt" and back["handoff"] is None


def test_the_ticket_uses_the_configured_operation_and_field_mapping() -> None:
    """The operation and its payload were hard-coded (`create_ticket` with subject, body and
    priority) whatever the ticket system took."""
    orchestrator, tools = scripted_orchestrator()
    handoff = HandoffConfig(
        adapter="ticketing",
        operation="open_case",
        fields={"title": "subject", "details": "transcript", "ref": "handoff_id"},
    )
    orchestrator.config = orchestrator.config.model_copy(update={"handoff": handoff})
    talk(orchestrator, "my payment failed", "gibberish, get me a human")
    adapter, operation, payload = tools.calls[-1]
    assert (adapter, operation, sorted(payload)) == ("ticketing", "open_case", [
        "details", "ref", "title"])  # fmt: skip
    assert payload["ref"] == "s1~1" and payload["title"].startswith("[acme] requested")
    assert payload["details"].splitlines() == [
        "customer: my payment failed",
        "agent: payments.md#1 text. (source: payments.md#1)",
        "customer: gibberish, get me a human",
    ]


def test_a_handoff_turn_retried_after_a_crash_opens_one_handoff() -> None:
    orchestrator, _ = scripted_orchestrator()
    with_console(orchestrator)
    request = ChatRequest(session_id="s1", message="gibberish, get me a human", request_id="m1")

    class DiesOnce(MemorySessionStore):
        crashes = 1

        async def put(self, session: Any) -> None:
            if self.crashes:
                self.crashes -= 1
                raise ConnectionError("replica died")
            await super().put(session)

    orchestrator.sessions = store = DiesOnce(3600)

    async def run() -> Any:
        with pytest.raises(ConnectionError):
            await orchestrator.turn(request)
        return await orchestrator.turn(request)

    answered = asyncio.run(run())
    assert answered.handoff is not None and answered.handoff.id == "s1~1"
    assert [r.id for r in asyncio.run(store.handoffs(open_only=False))] == ["s1~1"]


def test_an_escalation_is_logged_as_unlabelled_feedback() -> None:
    orchestrator, _ = scripted_orchestrator()
    talk(orchestrator, "gibberish", "gibberish")
    (entry,) = asyncio.run(orchestrator.sessions.feedback())
    assert entry["text"] == "gibberish" and entry["corrected_intent"] is None
    assert entry["source"] == "escalation" and entry["reason"] == "out_of_scope"


# --- the agent API over HTTP ---------------------------------------------------------------


@pytest.fixture
def tokens(tmp_path: Path) -> Path:
    folder = tmp_path / "console-tokens"
    folder.mkdir()
    for name in ("alice", "bob"):
        (folder / name).write_text(f"token-of-{name}\n")
    return folder


@pytest.fixture
def replica(tokens: Path) -> Iterator[Replica]:
    running = Replica(MemorySessionStore(3600), tokens)
    yield running
    running.stop()


def test_every_transition_over_http(replica: Replica) -> None:
    handed = replica.chat("gibberish, get me a human")
    hid = handed["handoff"]["id"]
    alice = {"Authorization": "Bearer token-of-alice"}
    listed = replica.http.get("/v1/handoffs", headers=alice).json()
    assert listed["me"] == "alice" and [h["id"] for h in listed["handoffs"]] == [hid]
    assert listed["handoffs"][0]["queue_position"] == 1
    assert listed["handoffs"][0]["trigger"] == "gibberish, get me a human"
    assert listed["intents"][-1] == "oos"

    assert replica.call("alice", "claim", hid, request_id="c1")[0] == 200
    assert replica.call("bob", "claim", hid, request_id="c2") == (
        409,
        {"error": {"code": "already_claimed", "message": f"handoff {hid} is claimed by alice"}},
    )
    status, body = replica.call("alice", "reply", hid, request_id="r1", text="Hi, Alice here.")
    assert status == 200 and body["first_reply_at"] is not None
    # The customer's page: on the next poll, and as a stream.
    feed = replica.http.get("/v1/sessions/s1/messages?after=0").json()
    assert [m["text"] for m in feed["messages"]] == [
        "alice joined the conversation.",
        "Hi, Alice here.",
    ]
    assert feed["handoff"]["assignee"] == "alice" and feed["handoff"]["queue_position"] is None
    with replica.http.stream("/v1/sessions/s1/events?after=2") as events:
        lines = events.iter_lines(decode_unicode=True)
        assert _next_event(lines) == ("handoff", {"assignee": "alice"})
        replica.call("alice", "reply", hid, request_id="r2", text="Looking into it.")
        name, message = _next_event(lines)
        assert name == "message" and message["text"] == "Looking into it."

    assert replica.chat("thanks, hurry")["reply"] == "alice has your message and will reply here."
    assert replica.call("alice", "transfer", hid, request_id="x1", to="carol")[1]["error"][
        "code"
    ] == ("unknown_agent")
    assert replica.call("alice", "transfer", hid, request_id="x2", to="bob")[0] == 200
    assert replica.call("alice", "resolve", hid, request_id="z1")[1]["error"]["code"] == (
        "not_assignee"
    )
    status, body = replica.call("bob", "correction", hid, request_id="k1", intent="payment_failed")
    assert status == 200 and body["corrections"][0]["corrected_intent"] == "payment_failed"
    assert replica.call("bob", "correction", hid, request_id="k2", intent="nonsense")[1]["error"][
        "code"
    ] == ("unknown_intent")
    assert replica.call("bob", "rating", hid, request_id="b1", rating=2)[1]["bot_rating"] == 2
    assert replica.call("bob", "resolve", hid, request_id="z2")[1]["status"] == "resolved"
    assert replica.call("bob", "resolve", hid, request_id="z2")[0] == 200  # a retry
    assert replica.call("bob", "resolve", hid, request_id="z3")[1]["error"]["code"] == "resolved"

    back = replica.chat("where is my order")
    assert back["reply_kind"] == "slot_prompt"
    rated = replica.http.post("/v1/sessions/s1/rating", json={"rating": 5, "request_id": "q1"})
    assert rated.json() == {"rating": 5, "handled_by": "human"}
    feedback = asyncio.run(replica.store.feedback())
    assert [(f["source"], f["corrected_intent"]) for f in feedback] == [
        ("escalation", None),
        ("correction", "payment_failed"),
    ]


def _next_event(lines: Iterator[str]) -> tuple[str, dict[str, Any]]:
    name = ""
    for line in lines:
        if line.startswith("event: "):
            name = line.removeprefix("event: ")
        elif line.startswith("data: ") and name:
            data = json.loads(line.removeprefix("data: "))
            if name == "handoff":
                return name, {"assignee": data["assignee"]}
            return name, data
    raise AssertionError("the stream ended")


def test_duplicates_and_retries_apply_once(replica: Replica) -> None:
    hid = replica.chat("gibberish, get me a human")["handoff"]["id"]
    replica.call("alice", "claim", hid, request_id="c1")
    for _ in range(3):  # a client retrying after timeouts
        status, body = replica.call("alice", "reply", hid, request_id="r1", text="Hello")
        assert status == 200
    assert [m["text"] for m in body["messages"]].count("Hello") == 1
    for _ in range(2):
        replica.call("alice", "correction", hid, request_id="k1", intent="order_status")
    assert len(asyncio.run(replica.store.feedback())) == 2  # the escalation, one correction
    # The Idempotency-Key header names the call as well as the body's request_id.
    headers = {"Authorization": "Bearer token-of-alice", "Idempotency-Key": "r9"}
    for _ in range(2):
        replica.http.post(f"/v1/handoffs/{hid}/reply", json={"text": "Again"}, headers=headers)
    record = asyncio.run(replica.store.get_handoff(hid))
    assert record is not None and [m.text for m in record.messages].count("Again") == 1


@pytest.mark.parametrize(
    ("headers", "status", "code"),
    [
        ({}, 401, "unauthenticated"),
        ({"Authorization": "Bearer nope"}, 401, "unauthenticated"),
        ({"Authorization": "Basic dG9rZW4tb2YtYWxpY2U="}, 401, "unauthenticated"),
        ({"Authorization": "Bearer token-of-bob"}, 403, "not_assignee"),
    ],
)
def test_unauthenticated_and_wrong_agent_calls_are_refused(
    replica: Replica, headers: dict[str, str], status: int, code: str
) -> None:
    hid = replica.chat("gibberish, get me a human")["handoff"]["id"]
    replica.call("alice", "claim", hid, request_id="c1")
    answer = replica.http.post(
        f"/v1/handoffs/{hid}/reply", json={"request_id": "r1", "text": "hi"}, headers=headers
    )
    assert (answer.status_code, answer.json()["error"]["code"]) == (status, code)
    if status == 401:
        assert replica.http.get("/v1/handoffs", headers=headers).status_code == 401
        assert "WWW-Authenticate" in answer.headers
    record = asyncio.run(replica.store.get_handoff(hid))
    assert record is not None and [m.role for m in record.messages] == ["system"]


@pytest.mark.parametrize(
    ("path", "body", "status"),
    [
        ("/v1/handoffs/s1~1/reply", b"{", 400),
        ("/v1/handoffs/s1~1/reply", b'{"text": "hi"}', 422),  # no request id
        ("/v1/handoffs/s1~1/rating", b'{"request_id": "a", "rating": 9}', 422),
        ("/v1/handoffs/nope~1/claim", b'{"request_id": "a"}', 404),
        ("/v1/sessions/unknown/rating", b'{"request_id": "a", "rating": 3}', 404),
    ],
)
def test_malformed_calls_get_json_errors(
    replica: Replica, path: str, body: bytes, status: int
) -> None:
    replica.chat("gibberish, get me a human")
    answer = replica.http.post(path, data=body, headers={"Authorization": "Bearer token-of-alice"})
    assert answer.status_code == status and "code" in answer.json()["error"]


def test_a_rotated_token_takes_effect_without_a_restart(replica: Replica, tokens: Path) -> None:
    from switchboard.serving import agent_api

    (tokens / "alice").write_text("rotated")
    # The tokens are re-read every TOKENS_RECHECK_SECONDS; a fresh read here stands for it.
    service_tokens = agent_api.ConsoleTokens(str(tokens))
    assert service_tokens.who("rotated") == "alice" and service_tokens.who("token-of-alice") is None


def test_a_replica_restart_in_the_middle_of_a_handoff_loses_nothing(
    redis_server: RedisServer, tokens: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The handoff's state is in Redis: a replica that goes away mid-handoff (a rollout, an
    eviction) is replaced by one that carries on where it stopped, and two replicas at once
    share one queue."""
    monkeypatch.setenv("SB_TEST_REDIS", redis_server.url)
    config = SessionConfig(store="redis", redis_url_env="SB_TEST_REDIS")
    namespace = f"shop:acme-{id(tokens)}"

    first = Replica(open_store(config, namespace), tokens)
    try:
        hid = first.chat("gibberish, get me a human")["handoff"]["id"]
        assert first.call("alice", "claim", hid, request_id="c1")[0] == 200
        first.chat("are you there?")
    finally:
        first.stop()  # the replica goes away

    second = Replica(open_store(config, namespace), tokens)
    other = Replica(open_store(config, namespace), tokens)
    try:
        listed = second.http.get(
            "/v1/handoffs", headers={"Authorization": "Bearer token-of-alice"}
        ).json()
        (record,) = listed["handoffs"]
        assert record["assignee"] == "alice"
        assert [m["text"] for m in record["messages"]][-1] == "are you there?"
        assert second.call("bob", "reply", hid, request_id="r1", text="x")[0] == 403
        assert second.call("alice", "reply", hid, request_id="r1", text="Yes, here.")[0] == 200
        # The customer's next turn lands on another replica: still with Alice.
        assert other.chat("ok")["reply_kind"] == "handoff_pending"
        feed = other.http.get("/v1/sessions/s1/messages?after=0").json()
        assert feed["messages"][-1]["text"] == "Yes, here."
        assert other.call("alice", "resolve", hid, request_id="z1")[1]["status"] == "resolved"
        assert second.chat("where is my order")["reply_kind"] == "slot_prompt"
        entries = asyncio.run(open_store(config, namespace).feedback())  # this loop's client
        assert [e["source"] for e in entries] == ["escalation"]
    finally:
        second.stop()
        other.stop()
