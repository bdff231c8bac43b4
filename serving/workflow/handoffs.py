"""A handoff as a conversation state: the record a human agent works from, and its transitions.

    waiting ──claim──► claimed ──reply/transfer──► claimed ──resolve──► resolved
       └────────────────────────────resolve──────────────────────────────┘

While a handoff is open the bot does not answer the conversation: the customer's messages
join the handoff and the human's replies reach the customer (poll or stream). Resolving hands
the conversation back to the bot.

Each transition is a pure function of (record, who, request, now) that returns the new record or
raises `HandoffError` (an HTTP status, a one-word code and a message): the API layer stores the
result and the tests run them as a table. Every mutating call carries the client's request id;
one already applied returns the record as it is, so a client that retries after a timeout does
not reply twice.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from ..config import OOS_INTENT
from .types import Action

APPLIED_KEPT = 128
MESSAGES_KEPT = 500
OUT_OF_SCOPE = OOS_INTENT
"""The NLU's label for messages outside what the agent handles (a correction may pick it)."""

HandoffStatus = Literal["waiting", "claimed", "resolved"]
OPEN: tuple[HandoffStatus, ...] = ("waiting", "claimed")


class HandoffError(Exception):
    """A transition refused: what the API answers (status, code, message)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


class HandoffMessage(BaseModel):
    """One message of the human part of a conversation, in order (`seq` from 1)."""

    seq: int
    role: Literal["customer", "agent", "system"]
    """`agent`: a human agent; `system`: a notice (claimed, transferred, handed back)."""
    author: str | None = None
    """The human agent's name for `agent` and their notices."""
    text: str
    at: float
    """Unix time."""


class Correction(BaseModel):
    """A human's label for a customer message the bot misread."""

    text: str
    corrected_intent: str
    """An intent of the model, or `oos` (out of scope)."""
    predicted_intent: str | None = None
    confidence: float | None = None
    by: str
    at: float


class HandoffRecord(BaseModel):
    """Everything a human needs to take over without asking the customer to repeat anything."""

    id: str
    session_id: str
    agent: str
    """The SupportAgent."""
    revision: str | None = None
    customer_id: str | None = None
    status: HandoffStatus = "waiting"
    reason: str
    trigger: str
    """The customer's message that brought the conversation to a human (redacted)."""
    intent: str | None = None
    confidence: float | None = None
    slots: dict[str, Any] = Field(default_factory=dict)
    attempted_actions: list[Action] = Field(default_factory=list)
    proposed_action: dict[str, Any] | None = None
    policy: list[str] = Field(default_factory=list)
    """The policy gate's decisions of the turn, with their rationale."""
    transcript: list[dict[str, str]] = Field(default_factory=list)
    """The conversation before the handoff, ending with the trigger (redacted)."""
    trace_id: str | None = None
    ticket_id: str | None = None
    ticket_queued: bool = False
    """The ticket system has not taken the ticket yet (it is retried on later turns)."""
    assignee: str | None = None
    created_at: float
    claimed_at: float | None = None
    first_reply_at: float | None = None
    resolved_at: float | None = None
    resolved_by: str | None = None
    messages: list[HandoffMessage] = Field(default_factory=list)
    corrections: list[Correction] = Field(default_factory=list)
    bot_rating: int | None = Field(default=None, ge=1, le=5)
    """A human's rating of the bot's handling of the conversation (1-5)."""
    csat: int | None = Field(default=None, ge=1, le=5)
    """The customer's rating at the end (1-5)."""
    applied: list[str] = Field(default_factory=list)
    """Client request ids already applied, newest last (a retry of one changes nothing)."""
    version: int = 0
    """Bumped by every change: what live views compare."""

    @property
    def is_open(self) -> bool:
        return self.status in OPEN

    @property
    def last_seq(self) -> int:
        return self.messages[-1].seq if self.messages else 0


def handoff_id(session_id: str, number: int) -> str:
    """The session's `number`th handoff (from 1): deterministic, so a turn retried after a crash
    finds the handoff its first attempt opened instead of opening another."""
    return f"{session_id}~{number}"


def already_applied(record: HandoffRecord, request_id: str) -> bool:
    return request_id in record.applied


def _changed(record: HandoffRecord, request_id: str | None, **update: Any) -> HandoffRecord:
    applied = record.applied
    if request_id:
        applied = [*applied, request_id][-APPLIED_KEPT:]
    return record.model_copy(update={**update, "applied": applied, "version": record.version + 1})


def _message(
    record: HandoffRecord,
    role: Literal["customer", "agent", "system"],
    text: str,
    now: float,
    author: str | None = None,
) -> list[HandoffMessage]:
    message = HandoffMessage(seq=record.last_seq + 1, role=role, author=author, text=text, at=now)
    return [*record.messages, message][-MESSAGES_KEPT:]


def _require_open(record: HandoffRecord) -> None:
    if not record.is_open:
        raise HandoffError(409, "resolved", f"handoff {record.id} is already resolved")


def _require_assignee(record: HandoffRecord, human: str) -> None:
    _require_open(record)
    if record.assignee is None:
        raise HandoffError(409, "not_claimed", f"claim handoff {record.id} before answering it")
    _require_not_someone_elses(record, human)


def _require_not_someone_elses(record: HandoffRecord, human: str) -> None:
    """Anyone may act on an unclaimed handoff; on a claimed one only its assignee."""
    if record.assignee is not None and record.assignee != human:
        raise HandoffError(
            403, "not_assignee", f"handoff {record.id} is assigned to {record.assignee}"
        )


def claim(record: HandoffRecord, human: str, request_id: str, now: float) -> HandoffRecord:
    if already_applied(record, request_id):
        return record
    _require_open(record)
    if record.assignee == human:
        return record
    if record.assignee is not None:
        raise HandoffError(
            409, "already_claimed", f"handoff {record.id} is claimed by {record.assignee}"
        )
    return _changed(
        record,
        request_id,
        status="claimed",
        assignee=human,
        claimed_at=now,
        messages=_message(record, "system", f"{human} joined the conversation.", now, human),
    )


def reply(
    record: HandoffRecord, human: str, text: str, request_id: str, now: float
) -> HandoffRecord:
    if already_applied(record, request_id):
        return record
    _require_assignee(record, human)
    return _changed(
        record,
        request_id,
        messages=_message(record, "agent", text, now, human),
        first_reply_at=record.first_reply_at or now,
    )


def transfer(
    record: HandoffRecord, human: str, to: str, request_id: str, now: float
) -> HandoffRecord:
    if already_applied(record, request_id):
        return record
    _require_assignee(record, human)
    if to == human:
        raise HandoffError(422, "same_assignee", f"handoff {record.id} is already yours")
    notice = f"{human} passed the conversation to {to}."
    return _changed(
        record, request_id, assignee=to, messages=_message(record, "system", notice, now, human)
    )


def resolve(record: HandoffRecord, human: str, request_id: str, now: float) -> HandoffRecord:
    """Close the handoff and hand the conversation back to the bot. An unclaimed handoff may be
    resolved by anyone (a duplicate, a customer who left); a claimed one only by its assignee."""
    if already_applied(record, request_id):
        return record
    _require_open(record)
    _require_not_someone_elses(record, human)
    notice = "The assistant is back; a colleague can be reached again at any time."
    return _changed(
        record,
        request_id,
        status="resolved",
        assignee=record.assignee or human,
        resolved_at=now,
        resolved_by=human,
        messages=_message(record, "system", notice, now, human),
    )


def customer_message(
    record: HandoffRecord, text: str, now: float, request_id: str
) -> HandoffRecord:
    """A customer's message while the handoff is open (`request_id` derives from the turn, so
    a turn retried after a crash does not add it twice)."""
    if already_applied(record, request_id):
        return record
    _require_open(record)
    return _changed(record, request_id, messages=_message(record, "customer", text, now))


def correct(
    record: HandoffRecord,
    human: str,
    intent: str,
    request_id: str,
    now: float,
    text: str | None = None,
) -> HandoffRecord:
    """Label a customer message (the trigger unless `text` names another message of the
    conversation) with the right intent, or `oos`. Allowed after resolution too: reviewing
    comes after the conversation."""
    if already_applied(record, request_id):
        return record
    _require_not_someone_elses(record, human)
    target = text if text is not None else record.trigger
    known = (
        {record.trigger}
        | {t["text"] for t in record.transcript if t.get("role") == "customer"}
        | {m.text for m in record.messages if m.role == "customer"}
    )
    if target not in known:
        raise HandoffError(
            422, "unknown_message", f"the text is not a customer message of handoff {record.id}"
        )
    is_trigger = target == record.trigger
    correction = Correction(
        text=target,
        corrected_intent=intent,
        predicted_intent=record.intent if is_trigger else None,
        confidence=record.confidence if is_trigger else None,
        by=human,
        at=now,
    )
    return _changed(record, request_id, corrections=[*record.corrections, correction])


def rate_bot(
    record: HandoffRecord, human: str, rating: int, request_id: str, now: float
) -> HandoffRecord:
    if already_applied(record, request_id):
        return record
    _require_not_someone_elses(record, human)
    return _changed(record, request_id, bot_rating=rating)


def rate_by_customer(record: HandoffRecord, rating: int, request_id: str) -> HandoffRecord:
    """The customer's CSAT rating; the last one counts."""
    if already_applied(record, request_id):
        return record
    return _changed(record, request_id, csat=rating)


def queue_position(record: HandoffRecord, waiting: list[HandoffRecord]) -> int | None:
    """1 for the next handoff a human will pick up; None once claimed or resolved."""
    if record.status != "waiting":
        return None
    ahead = [r for r in waiting if r.status == "waiting" and r.created_at < record.created_at]
    return len(ahead) + 1


def feedback_record(
    record: HandoffRecord,
    text: str,
    corrected_intent: str | None,
    source: Literal["escalation", "correction"],
    by: str | None,
    now: float,
    namespace: str,
) -> dict[str, Any]:
    """One line of the feedback log, in the format `switchboard nlu train --feedback` reads
    (docs/nlu.md): an escalation (unlabelled) or a human's correction of a customer message."""
    is_trigger = text == record.trigger
    return {
        "text": text,
        "corrected_intent": corrected_intent,
        "predicted_intent": record.intent if is_trigger else None,
        "confidence": record.confidence if is_trigger else None,
        "trace_id": record.trace_id,
        "timestamp": datetime.fromtimestamp(now, UTC).isoformat().replace("+00:00", "Z"),
        "model_revision": record.revision,
        "agent": record.agent,
        "namespace": namespace,
        "source": source,
        "reason": record.reason,
        "session_id": record.session_id,
        "handoff_id": record.id,
        "by": by,
    }
