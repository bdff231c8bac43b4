"""The chat API's request and response, and the session state kept between turns."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

MAX_MESSAGE_CHARS = 4000


REQUEST_ID = r"^[A-Za-z0-9._:-]+$"


class ChatRequest(BaseModel):
    """`POST /v1/chat` body."""

    model_config = ConfigDict(extra="forbid")

    session_id: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._:-]+$")
    message: str = Field(min_length=1, max_length=MAX_MESSAGE_CHARS)
    customer_id: str | None = Field(default=None, max_length=128)
    channel: str | None = Field(default=None, max_length=32)
    request_id: str | None = Field(default=None, min_length=1, max_length=128, pattern=REQUEST_ID)
    """The client's id for this message (or its `Idempotency-Key` header): a retry with the same
    id gets the first answer back and repeats no action."""


class Action(BaseModel):
    """A tool operation the agent ran, started, or proposed during the turn."""

    operation: str
    status: Literal["succeeded", "failed", "started", "proposed"]
    task_id: str | None = None
    detail: dict[str, Any] = Field(default_factory=dict)


class Handoff(BaseModel):
    """The conversation is with a human (docs/handoffs.md)."""

    reason: str
    id: str | None = None
    """The handoff's id in the agent console."""
    status: Literal["waiting", "claimed", "resolved"] = "waiting"
    queue_position: int | None = None
    """1: next to be picked up; None once a human has it."""
    assignee: str | None = None
    """The human agent who has the conversation."""
    ticket_id: str | None = None
    proposed_action: dict[str, Any] | None = None
    queued: bool = False
    """The ticket system could not be reached: the ticket is kept and sent on a later turn."""


class QueuedTicket(BaseModel):
    """A handoff ticket the ticket system did not take yet, retried on the next turns with the
    idempotency key of its first attempt."""

    adapter: str
    payload: dict[str, Any]
    key: str
    handoff_id: str | None = None
    """The handoff that gets the ticket's id once the ticket system takes it."""


class Source(BaseModel):
    """A knowledge-base passage the answer is grounded in."""

    id: str
    title: str
    score: float


ReplyKind = Literal[
    "answer",  # a plan's answer (template, LLM or a confirmation), after its action if any
    "knowledge_base",  # grounded in passages that passed the relevance gate (in `sources`)
    "no_answer",  # nothing relevant enough in the knowledge base: said so, offered next steps
    "slot_prompt",  # asked for a detail the plan needs
    "clarify",  # asked the customer to rephrase or say what to do
    "fallback",  # the agent's configured reply for intents it has no plan for
    "small_talk",  # greeting, thanks, goodbye
    "refusal",  # the business system said no (unknown order, already shipped...)
    "task_started",  # a long-running operation was started
    "handoff",  # passed to a human
    "handoff_pending",  # a human has the conversation: the message joined the handoff
    "budget_exhausted",  # a budget (LLM tokens, tool calls) has nothing left: the set reply
]


class ChatResponse(BaseModel):
    reply: str
    reply_kind: ReplyKind
    intent: str | None
    confidence: float | None
    actions: list[Action] = Field(default_factory=list)
    handoff: Handoff | None = None
    sources: list[Source] = Field(default_factory=list)
    resolved: bool = False
    """The customer closed the conversation (thanks, goodbye) without a handoff."""
    trace_id: str
    revision: str | None = None
    session_token: str | None = None
    """Send it back as `X-Session-Token` with the conversation's next turns and reads (a fresh
    one comes with every answer); None when the agent binds no tokens."""


class Replay(BaseModel):
    """An answered request, kept so that a retry with its request id gets the same answer."""

    request_id: str
    response: ChatResponse


class PendingPlan(BaseModel):
    """An intent the agent is still collecting slots for."""

    intent: str
    slots: dict[str, str] = Field(default_factory=dict)
    awaiting: str | None = None


class TaskRecord(BaseModel):
    """A long-running operation started on an earlier turn."""

    task_id: str
    operation: str
    status: Literal["running", "succeeded", "failed"] = "running"
    result: Any = None
    reported: bool = False


class Session(BaseModel):
    session_id: str
    customer_id: str | None = None
    transcript: list[dict[str, str]] = Field(default_factory=list)
    """Redacted turns, newest last (role, text)."""
    pending: PendingPlan | None = None
    tasks: list[TaskRecord] = Field(default_factory=list)
    handoffs: int = 0
    """Handoffs opened in this conversation (the next one's id derives from it)."""
    open_handoff: str | None = None
    """The handoff a human has: while it is open the bot does not answer."""
    last_intent: str | None = None
    """The last intent the agent acted on, for a bare follow-up ("and ORD-10007?")."""
    offered_slots: dict[str, str] = Field(default_factory=dict)
    """Slot values the customer gave before saying what to do with them (next turn only)."""
    rephrase_requests: int = 0
    """Unclear messages in a row answered with a request to rephrase."""
    turns: int = 0
    """Turns answered so far: with the session id, what a turn's action keys derive from
    when the client sends no request id (a turn retried after a crash keeps its number)."""
    queued_ticket: QueuedTicket | None = None
    replays: list[Replay] = Field(default_factory=list)
    """The last answers to requests that carried a request id, newest last."""
    resolved: bool = False
