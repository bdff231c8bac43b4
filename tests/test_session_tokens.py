"""Conversations bound to whoever started them (docs/security.md): a session id alone no longer
continues someone else's conversation or reads its human messages.

The token logic with an injected clock, then over HTTP on a replica (support.agent_replica):
the first answer carries a token; later turns and reads without it are 401, with another's
403, and the refusal says nothing about the conversation.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from support.agent_replica import Replica
from switchboard.serving.session_tokens import (
    TOKEN_HEADER,
    TOKEN_SECONDS,
    SessionRefused,
    SessionTokens,
)
from switchboard.serving.workflow.sessions import MemorySessionStore


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def keys(tmp_path: Path) -> Path:
    folder = tmp_path / "keys"
    folder.mkdir()
    (folder / "k1").write_text("first-key-0123456789abcdef\n")
    return folder


def _refusal(tokens: SessionTokens, session: str, token: str | None) -> tuple[int, str] | None:
    try:
        tokens.check(session, token)
    except SessionRefused as exc:
        return exc.status, exc.code
    return None


def test_a_token_opens_its_own_conversation_only(keys: Path) -> None:
    clock = Clock()
    tokens = SessionTokens(str(keys), clock=clock)
    token = tokens.issue("s1")
    assert _refusal(tokens, "s1", token) is None
    assert _refusal(tokens, "s2", token) == (403, "session_token_invalid")
    assert _refusal(tokens, "s1", None) == (401, "session_token_required")
    for forged in ("", "v1.k1.99999999999.abc", token.replace("v1.", "v2."), token[:-2] + "xx"):
        assert _refusal(tokens, "s1", forged) is not None, forged
    clock.now += TOKEN_SECONDS + 1
    assert _refusal(tokens, "s1", token) == (403, "session_token_invalid")  # expired


def test_a_rotation_keeps_old_tokens_until_their_key_goes(keys: Path) -> None:
    monotonic = Clock()
    tokens = SessionTokens(str(keys), monotonic=monotonic)
    old = tokens.issue("s1")
    (keys / "k2").write_text("second-key-fedcba9876543210")
    monotonic.now += 60  # the keys are re-read every few seconds
    new = tokens.issue("s1")
    assert new.startswith("v1.k2.") and _refusal(tokens, "s1", old) is None
    (keys / "k1").unlink()
    monotonic.now += 60
    assert _refusal(tokens, "s1", old) == (403, "session_token_invalid")
    assert _refusal(tokens, "s1", new) is None


@pytest.fixture
def bound(tmp_path: Path, keys: Path) -> Iterator[Replica]:
    console = tmp_path / "console"
    console.mkdir()
    running = Replica(MemorySessionStore(3600), console, session_keys=keys)
    yield running
    running.stop()


def test_a_stranger_with_the_session_id_cannot_continue_or_read_it(bound: Replica) -> None:
    first = bound.chat("my payment failed", session="victim")
    assert first["session_token"].startswith("v1.k1.")
    handed = bound.chat("gibberish, get me a human", session="victim")  # with the token
    assert handed["reply_kind"] == "handoff"

    body = {"session_id": "victim", "message": "what did I say before?"}
    no_token = bound.http.post("/v1/chat", json=body)
    assert no_token.status_code == 401
    assert no_token.json() == {
        "error": {
            "code": "session_token_required",
            "message": "this conversation needs its session token",
        }
    }
    other = bound.chat("hello", session="attacker")["session_token"]
    wrong = bound.http.post("/v1/chat", json=body, headers={TOKEN_HEADER: other})
    assert wrong.status_code == 403 and "payment" not in wrong.text
    for path in ("messages?after=0", "events?after=0"):
        assert bound.http.get(f"/v1/sessions/victim/{path}").status_code == 401
        assert bound.http.get(f"/v1/sessions/victim/{path}&token={other}").status_code == 403
    rating = {"rating": 1, "request_id": "r1"}
    assert bound.http.post("/v1/sessions/victim/rating", json=rating).status_code == 401
    # Not even whether a session exists: an unknown id is refused the same way.
    assert bound.http.get("/v1/sessions/nobody/messages").status_code == 401

    token = bound.session_tokens["victim"]
    feed = bound.http.get("/v1/sessions/victim/messages", headers={TOKEN_HEADER: token})
    assert feed.status_code == 200 and feed.json()["handoff"]["status"] == "waiting"
    assert bound.chat("are you there?", session="victim")["reply_kind"] == "handoff_pending"
    session = asyncio.run(bound.store.get("victim"))
    assert session is not None and session.turns == 3  # the refused turns never ran


def test_the_retry_of_a_first_turn_whose_answer_was_lost_gets_it(bound: Replica) -> None:
    """A client that timed out on its very first turn has no token yet: the retry (same
    request id) gets the first answer and its token; any other request still needs one."""
    body = {"session_id": "fresh", "message": "where is my order", "request_id": "m1"}
    first = bound.http.post("/v1/chat", json=body).json()
    retry = bound.http.post("/v1/chat", json=body)
    assert retry.status_code == 200
    assert retry.json()["trace_id"] == first["trace_id"] and retry.json()["session_token"]
    other = bound.http.post("/v1/chat", json={**body, "request_id": "m2"})
    assert other.status_code == 401


def test_without_keys_a_session_id_alone_continues(tmp_path: Path) -> None:
    """What an agent without `spec.sessions.tokenSecret` does (the operator says so)."""
    running = Replica(MemorySessionStore(3600), tmp_path)
    try:
        assert running.chat("my payment failed")["session_token"] is None
        again = running.http.post("/v1/chat", json={"session_id": "s1", "message": "hi"})
        assert again.status_code == 200
    finally:
        running.stop()
