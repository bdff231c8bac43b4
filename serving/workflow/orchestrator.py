"""One conversation turn: understand → plan → policy gate → act → answer, or hand off.

Every turn records an explicit plan (the steps taken and why) in the audit trail. Customer data
is redacted before it reaches an LLM prompt, a log line, a ticket or an audit record (unless the
agent's `policy.piiRedaction` is off); raw slot values stay only in the session, where the agent
needs them to act.

A mutating tool call carries an idempotency key derived from the session and the client's
request id, or the turn's number when the client sends none, never from anything drawn per
attempt: a client that retries a message (a timeout, a replica that died mid-turn) must not
refund twice.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..config import AgentAppConfig, IntentPlanConfig, ToolOperationConfig
from .cues import SmallTalk, asks_for_human, is_bare_answer, small_talk
from .grounding import relevant
from .handoffs import (
    HandoffError,
    HandoffRecord,
    customer_message,
    feedback_record,
    handoff_id,
    queue_position,
)
from .limits import BudgetExhausted, Limits, RateLimited, estimate_tokens
from .pii import redact, redact_value
from .prompts import facts_prompt, leaks_prompt, passages_prompt
from .sessions import SessionStore
from .tools import TaskRunner, ToolCaller, ToolResult
from .types import (
    Action,
    ChatRequest,
    ChatResponse,
    Handoff,
    PendingPlan,
    QueuedTicket,
    Replay,
    ReplyKind,
    Session,
    Source,
    TaskRecord,
)

TRANSCRIPT_TURNS = 20
REPLAYS_KEPT = 8
REPHRASE_PROMPT = (
    "Sorry, I didn't quite understand that. Could you say it another way? For example: "
    "'where is my order ORD-12345?' You can also ask for a person at any time."
)
NO_ANSWER = (
    "I don't have a reliable answer to that in our help articles. Could you tell me a bit "
    "more about what you need, or would you like me to pass you to a colleague?"
)


def write_audit_line(record: dict[str, Any]) -> None:
    """One JSON line per turn on stdout: collected from the pod (or Ray's worker logs) like
    any container log, already redacted."""
    sys.stdout.write(json.dumps({"audit": record}, default=str) + "\n")
    sys.stdout.flush()


@dataclass(frozen=True)
class Understanding:
    intent: str
    confidence: float
    is_oos: bool
    slots: dict[str, str]
    extractable: frozenset[str] = frozenset()
    """Slot names the extractor knows how to find; other slots are taken verbatim."""


@dataclass(frozen=True)
class Passage:
    id: str
    title: str
    text: str
    score: float


class Understander(Protocol):
    async def understand(self, text: str) -> Understanding: ...


class Generator(Protocol):
    async def generate(self, prompt: str, max_tokens: int) -> str: ...


class Retriever(Protocol):
    async def search(self, text: str, k: int) -> list[Passage]: ...


class TurnMetrics(Protocol):
    def turn(self, status: str, intent: str, seconds: float) -> None: ...
    def escalation(self, reason: str) -> None: ...
    def confidence(self, value: float) -> None: ...
    def tool_call(self, outcome: str) -> None: ...
    def retrieval(self, top_score: float, grounded: bool) -> None: ...
    def resolved(self) -> None: ...
    def conversation_started(self) -> None: ...
    def conversation_escalated(self) -> None: ...
    # Limits and budgets (serving.workflow.limits.LimitMetrics).
    def llm_tokens(self, prompt: int, completion: int) -> None: ...
    def budget_remaining(self, budget: str, remaining: int, limit: int) -> None: ...
    def budget_exhausted(self, budget: str, scope: str) -> None: ...
    def rate_limited(self, scope: str) -> None: ...


class NoMetrics:
    def turn(self, status: str, intent: str, seconds: float) -> None:
        return None

    def escalation(self, reason: str) -> None:
        return None

    def confidence(self, value: float) -> None:
        return None

    def tool_call(self, outcome: str) -> None:
        return None

    def retrieval(self, top_score: float, grounded: bool) -> None:
        return None

    def resolved(self) -> None:
        return None

    def conversation_started(self) -> None:
        return None

    def conversation_escalated(self) -> None:
        return None

    def llm_tokens(self, prompt: int, completion: int) -> None:
        return None

    def budget_remaining(self, budget: str, remaining: int, limit: int) -> None:
        return None

    def budget_exhausted(self, budget: str, scope: str) -> None:
        return None

    def rate_limited(self, scope: str) -> None:
        return None


class _Missing(dict[str, Any]):
    """Template values: a field the system did not return renders as `unknown`."""

    def __missing__(self, key: str) -> str:
        return "unknown"


def _as_template_value(value: Any) -> Any:
    return _Missing(value) if isinstance(value, dict) else value


def fill_template(template: str, slots: dict[str, str], result: Any) -> str | None:
    try:
        return template.format(slots=_Missing(slots), result=_as_template_value(result or {}))
    except (KeyError, IndexError, ValueError, AttributeError):
        return None


@dataclass
class Turn:
    """What happened in one turn, for the response and the audit record."""

    trace_id: str
    message: str = ""
    """The customer's message this turn answers."""
    customer_id: str | None = None
    """Whose budgets this turn spends (the request's customer, else the session's)."""
    rate_limited: bool = False
    """Refused by the inbound rate limit: not run, not counted as a turn."""
    key_base: str = ""
    """What this turn's idempotency keys derive from (`action_key`)."""
    understanding: Understanding | None = None
    steps: list[str] = field(default_factory=list)
    actions: list[Action] = field(default_factory=list)
    policy: list[str] = field(default_factory=list)
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    handoff: Handoff | None = None
    sources: list[Source] = field(default_factory=list)
    updates: list[str] = field(default_factory=list)
    reply_kind: ReplyKind = "answer"
    retrieval: dict[str, Any] | None = None
    """Top score, threshold and cited passages of a knowledge-base lookup (for the audit)."""
    ticket_refused: bool = False
    """The ticket system refused a ticket this turn (it is not asked twice in one turn)."""
    replayed: bool = False
    """Answered from the session's replays: a client's retry, not a turn of its own."""
    new_conversation: bool = False
    handoff_opened: str | None = None
    """The id of the handoff this turn opened."""
    first_escalation: bool = False
    """This turn opened the conversation's first handoff (it is no longer contained)."""

    def action_key(self, action: str) -> str:
        """The idempotency key of one action of this turn: the same on every retry of it."""
        return hashlib.sha256(f"{self.key_base}\0{action}".encode()).hexdigest()[:40]


def turn_key_base(session_id: str, request_id: str | None, turn_number: int) -> str:
    """A turn's identity across retries: the client's request id, else the turn's number in
    its session (unchanged when a turn is retried because the first attempt never finished)."""
    which = f"request:{request_id}" if request_id else f"turn:{turn_number}"
    return f"{session_id}\0{which}"


def _as_is(value: Any) -> Any:
    return value


class Orchestrator:
    def __init__(
        self,
        config: AgentAppConfig,
        understander: Understander,
        tools: ToolCaller,
        sessions: SessionStore,
        tasks: TaskRunner,
        generator: Generator | None = None,
        retriever: Retriever | None = None,
        metrics: TurnMetrics | None = None,
        audit: Callable[[dict[str, Any]], None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.clock = clock
        self.understander = understander
        self.tools = tools
        self.sessions = sessions
        self.tasks = tasks
        self.generator = generator
        self.retriever = retriever
        self.metrics = metrics or NoMetrics()
        self.audit = audit or write_audit_line
        self.plans = {p.intent: p for p in config.intents}
        # policy.piiRedaction off keeps customer text as written everywhere it goes.
        self.redact: Callable[[str], str] = redact if config.policy.pii_redaction else _as_is
        self.redact_value: Callable[[Any], Any] = (
            redact_value if config.policy.pii_redaction else _as_is
        )
        self.operations: dict[str, tuple[str, ToolOperationConfig]] = {
            f"{t.adapter}.{op.name}": (t.adapter, op) for t in config.tools for op in t.operations
        }

    @property
    def limits(self) -> Limits:
        """Rate limits and budgets, kept in the session store (shared by replicas)."""
        return Limits(self.config.policy, self.sessions, self.metrics, self.clock)

    # --- the turn ------------------------------------------------------------------------

    async def turn(self, request: ChatRequest) -> ChatResponse:
        started = time.perf_counter()
        turn = Turn(trace_id=uuid.uuid4().hex, message=request.message)
        session: Session | None = None
        status = "ok"
        was_resolved = False
        try:
            # Inside the measured block: a session store that fails (Redis down) is a failed
            # turn in the metrics, which is what SwitchboardChatTurnsFailing watches.
            try:
                await self.limits.admit(request.session_id, request.customer_id)
            except RateLimited:
                turn.rate_limited = True
                raise
            session = await self.sessions.get(request.session_id) or Session(
                session_id=request.session_id, customer_id=request.customer_id
            )
            turn.customer_id = request.customer_id or session.customer_id
            replayed = self._replayed(session, request.request_id)
            if replayed is not None:
                turn.replayed = True
                return replayed
            turn.key_base = turn_key_base(session.session_id, request.request_id, session.turns)
            turn.new_conversation = session.turns == 0
            was_resolved = session.resolved
            await self._collect_finished_tasks(session, turn)
            await self._send_queued_ticket(session, turn)
            joined = await self._join_handoff(session, request.message, turn)
            if joined is not None:
                reply = joined
            else:
                try:
                    reply = await self._respond(session, request.message, turn)
                except BudgetExhausted as exhausted:
                    reply = await self._budget_exhausted(session, exhausted, turn)
            if turn.updates:
                reply = " ".join([*turn.updates, reply])
            session.transcript = [
                *session.transcript,
                {"role": "customer", "text": self.redact(request.message)},
                {"role": "agent", "text": self.redact(reply)},
            ][-TRANSCRIPT_TURNS:]
            response = self._response(turn, reply, session)
            session.turns += 1
            if request.request_id:
                replay = Replay(request_id=request.request_id, response=response)
                session.replays = [*session.replays, replay][-REPLAYS_KEPT:]
            await self.sessions.put(session)
        except Exception:
            status = "error"
            raise
        finally:
            seconds = time.perf_counter() - started
            self._count(turn, status, seconds, session, was_resolved)
        self._audit(request, turn, reply, seconds)
        return response

    def _replayed(self, session: Session, request_id: str | None) -> ChatResponse | None:
        """The answer already given to this request id in this session, if any."""
        if not request_id:
            return None
        return next((r.response for r in session.replays if r.request_id == request_id), None)

    def _response(self, turn: Turn, reply: str, session: Session) -> ChatResponse:
        u = turn.understanding
        return ChatResponse(
            reply=reply,
            reply_kind=turn.reply_kind,
            intent=u.intent if u else None,
            confidence=round(u.confidence, 4) if u else None,
            actions=turn.actions,
            handoff=turn.handoff,
            sources=turn.sources,
            resolved=session.resolved,
            trace_id=turn.trace_id,
            revision=self.config.revision,
        )

    def _count(
        self, turn: Turn, status: str, seconds: float, session: Session | None, was_resolved: bool
    ) -> None:
        """The turn's metrics, failed or not (a replayed answer or a turn refused by the rate
        limit is no new turn)."""
        if turn.replayed or turn.rate_limited:
            return
        if turn.new_conversation:
            self.metrics.conversation_started()
        if turn.handoff and status == "ok":
            status = turn.reply_kind  # handoff, or handoff_pending (joined an open one)
        if turn.handoff_opened and turn.handoff:
            self.metrics.escalation(turn.handoff.reason)
            if turn.first_escalation:
                self.metrics.conversation_escalated()
        if turn.understanding:
            self.metrics.confidence(turn.understanding.confidence)
        for call in turn.tool_calls:
            self.metrics.tool_call(call["outcome"])
        if turn.retrieval:
            self.metrics.retrieval(turn.retrieval["top_score"], bool(turn.retrieval["cited"]))
        if session is not None and session.resolved and not was_resolved:
            self.metrics.resolved()  # a second "bye" is the same closing
        intent = turn.understanding.intent if turn.understanding else "unknown"
        self.metrics.turn(status, intent, seconds)

    async def _respond(self, session: Session, message: str, turn: Turn) -> str:
        talk = small_talk(message) if self.config.small_talk.enabled else None
        if talk is not None:
            return self._small_talk(session, talk, turn)
        session.resolved = False
        understanding = await self.understander.understand(message)
        turn.understanding = understanding
        turn.steps.append(f"understand: intent={understanding.intent}")
        pending = session.pending
        if pending and self._continues(pending, understanding):
            current = self.plans[pending.intent]
            turn.steps.append(f"continue plan {current.intent}")
            self._fill_slots(pending, current, understanding, message)
            # The turn is about the pending intent, whatever this message looks like alone.
            turn.understanding = Understanding(
                current.intent, understanding.confidence, False, understanding.slots
            )
            session.rephrase_requests = 0
            return await self._run_plan(session, current, pending, message, turn)
        session.pending = None
        offered, session.offered_slots = session.offered_slots, {}

        if is_bare_answer(message, understanding.slots.values()):
            # An order number alone is an answer, not a request: whatever the model makes of
            # it, it belongs to what the customer was doing.
            return await self._bare_answer(session, understanding, message, turn)
        threshold = self.config.policy.handoff_confidence_threshold
        if understanding.is_oos or understanding.confidence < threshold:
            turn.policy.append(
                f"confidence {understanding.confidence:.2f} below {threshold:.2f} or out of scope"
            )
            if asks_for_human(message):
                turn.steps.append("the customer asks for a person")
                turn.policy.append("the customer asked for a person: hand off at once")
                return await self._handoff(session, "requested", turn)
            reason = "out_of_scope" if understanding.is_oos else "low_confidence"
            return await self._unclear(session, turn, reason)
        session.last_intent = understanding.intent
        plan = self.plans.get(understanding.intent)
        if plan is None:
            return await self._fallback(session, message, turn)
        session.rephrase_requests = 0
        pending = PendingPlan(intent=plan.intent)
        # Details given on the turn before ("ORD-10003", then "cancel it") count for this plan.
        pending.slots.update({k: v for k, v in offered.items() if k in plan.required_slots})
        self._fill_slots(pending, plan, understanding, message)
        return await self._run_plan(session, plan, pending, message, turn)

    def _continues(self, pending: PendingPlan, understanding: Understanding) -> bool:
        """A reply to our question continues the plan, unless the customer clearly moved on to
        another intent and gave none of the slot we asked for."""
        if pending.intent not in self.plans:
            return False
        if pending.awaiting and pending.awaiting in understanding.slots:
            return True
        switched = (
            understanding.intent != pending.intent
            and not understanding.is_oos
            and understanding.confidence >= self.config.policy.handoff_confidence_threshold
            and understanding.intent in self.plans
        )
        return not switched

    def _small_talk(self, session: Session, talk: SmallTalk, turn: Turn) -> str:
        turn.understanding = Understanding(talk, 1.0, False, {})
        turn.steps.append(f"small talk: {talk}")
        turn.reply_kind = "small_talk"
        config = self.config.small_talk
        if talk == "greeting":
            pending = session.pending
            if pending and pending.awaiting:  # still waiting for an answer: ask again
                plan = self.plans.get(pending.intent)
                prompt = plan.slot_prompts.get(pending.awaiting) if plan else None
                return f"{config.greeting} {prompt}" if prompt else config.greeting
            return config.greeting
        # Thanks and goodbye close what was open; a conversation that ends so without a human
        # counts as resolved.
        session.pending = None
        session.rephrase_requests = 0
        session.resolved = session.handoffs == 0
        return config.thanks if talk == "thanks" else config.goodbye

    async def _bare_answer(
        self, session: Session, understanding: Understanding, message: str, turn: Turn
    ) -> str:
        plan = self.plans.get(session.last_intent or "")
        fits = plan is not None and any(s in understanding.slots for s in plan.required_slots)
        # Repeating a lookup for another order is safe; repeating a change is not: ask first.
        if plan is not None and fits and not self._mutates(plan):
            turn.steps.append(f"bare answer: repeat plan {plan.intent}")
            turn.understanding = Understanding(
                plan.intent, understanding.confidence, False, understanding.slots
            )
            pending = PendingPlan(intent=plan.intent)
            self._fill_slots(pending, plan, understanding, message)
            return await self._run_plan(session, plan, pending, message, turn)
        session.offered_slots = dict(understanding.slots)
        turn.steps.append("bare answer: ask what to do with it")
        turn.reply_kind = "clarify"
        values = ", ".join(understanding.slots.values())
        return f"Thanks. What would you like me to do with {values}?"

    def _mutates(self, plan: IntentPlanConfig) -> bool:
        if plan.handoff:
            return True
        if not plan.operation:
            return False
        return self.operations[plan.operation][1].mutating

    async def _unclear(
        self, session: Session, turn: Turn, reason: str = "low_confidence", prompt: str = ""
    ) -> str:
        """Ask the customer to say it again, as often in a row as the policy allows; then a
        human (`reason`)."""
        if session.rephrase_requests < self.config.policy.rephrase_attempts:
            session.rephrase_requests += 1
            turn.steps.append(f"ask to rephrase ({session.rephrase_requests})")
            turn.reply_kind = "clarify"
            return prompt or REPHRASE_PROMPT
        session.rephrase_requests = 0
        return await self._handoff(session, reason, turn)

    async def _fallback(self, session: Session, message: str, turn: Turn) -> str:
        """An intent the model knows and the agent has no plan for: the configured outcome."""
        fallback = self.config.fallback
        turn.steps.append(f"no plan: fallback {fallback.action}")
        if fallback.action == "knowledge_base" and self.retriever is not None:
            return await self._answer_from_knowledge(message, turn)
        if fallback.action == "reply" and fallback.reply:
            turn.reply_kind = "fallback"
            return fallback.reply
        if fallback.action == "clarify":
            return await self._unclear(session, turn, "no_plan", fallback.reply or "")
        return await self._handoff(session, "no_plan", turn)

    def _fill_slots(
        self, pending: PendingPlan, plan: IntentPlanConfig, understanding: Understanding, text: str
    ) -> None:
        for name in plan.required_slots:
            if name in understanding.slots and name not in pending.slots:
                pending.slots[name] = understanding.slots[name]
        awaiting = pending.awaiting
        if awaiting and awaiting not in pending.slots and awaiting not in understanding.extractable:
            pending.slots[awaiting] = text.strip()  # free-text slot: the answer is the value

    async def _run_plan(
        self,
        session: Session,
        plan: IntentPlanConfig,
        pending: PendingPlan,
        message: str,
        turn: Turn,
    ) -> str:
        if plan.handoff:
            turn.steps.append(f"plan {plan.intent}: hand off")
            turn.policy.append(f"the plan for {plan.intent} hands off to a person")
            session.pending = None
            return await self._handoff(session, "requested", turn)
        missing = [s for s in plan.required_slots if s not in pending.slots]
        if missing:
            pending.awaiting = missing[0]
            session.pending = pending
            turn.steps.append(f"ask for slot {missing[0]}")
            turn.reply_kind = "slot_prompt"
            return plan.slot_prompts.get(missing[0], f"Could you tell me your {missing[0]}?")
        session.pending = None
        result: Any = None
        if plan.operation:
            outcome = await self._act(session, plan, pending.slots, turn)
            if isinstance(outcome, str):
                return outcome
            result = outcome.result
        if plan.use_knowledge_base and self.retriever is not None:
            return await self._answer_from_knowledge(message, turn)
        return await self._answer(plan, pending.slots, result, message, turn)

    async def _act(
        self, session: Session, plan: IntentPlanConfig, slots: dict[str, str], turn: Turn
    ) -> ToolResult | str:
        """Run the plan's operation through the policy gate; a string is the turn's reply."""
        assert plan.operation
        adapter, op = self.operations[plan.operation]
        payload = {**slots, **plan.parameters}
        policy = self.config.policy
        if plan.operation in policy.approval_required:
            turn.policy.append(f"{plan.operation} needs human approval")
            turn.actions.append(
                Action(
                    operation=plan.operation, status="proposed", detail=self.redact_value(payload)
                )  # type: ignore[arg-type]
            )
            proposed = {"operation": plan.operation, "input": self.redact_value(payload)}
            return await self._handoff(session, "approval_required", turn, proposed)
        if len(turn.tool_calls) >= policy.max_tool_calls_per_turn:
            turn.policy.append(f"tool call limit {policy.max_tool_calls_per_turn} reached")
            return await self._handoff(session, "tool_call_limit", turn)
        turn.policy.append(f"{plan.operation} allowed")
        await self.limits.spend_tool_call(turn.customer_id)  # BudgetExhausted: not called
        if op.long_running:
            task_id = self.tasks.start(adapter, op.name, payload, self._task_done(session, plan))
            turn.steps.append(f"start {plan.operation} as task {task_id}")
            turn.tool_calls.append({"operation": plan.operation, "outcome": "started"})
            turn.actions.append(Action(operation=plan.operation, status="started", task_id=task_id))
            session.tasks.append(TaskRecord(task_id=task_id, operation=plan.operation))
            turn.reply_kind = "task_started"
            return (
                f"I've started that ({plan.operation}); it takes a little while. "
                f"I'll tell you here as soon as it's done (reference {task_id})."
            )
        # The payload is part of the key: two turns that share a number (two tabs of one
        # session sending at once) but act on different orders must not be taken for one.
        action = f"{plan.operation}#{len(turn.tool_calls)}:{json.dumps(payload, sort_keys=True)}"
        key = turn.action_key(action) if op.mutating else None
        started = time.perf_counter()
        result = await self.tools.call(adapter, op.name, payload, key)
        turn.tool_calls.append(
            {
                "operation": plan.operation,
                "outcome": "success" if result.ok else "failure",
                "status": result.status,
                "attempts": result.attempts,
                "ms": round((time.perf_counter() - started) * 1000, 1),
            }
        )
        turn.steps.append(f"call {plan.operation}: {'ok' if result.ok else result.error}")
        if not result.ok:
            turn.actions.append(
                Action(operation=plan.operation, status="failed", detail={"error": result.error})
            )
            if 400 <= result.status < 500 and result.status not in (408, 429):
                # The system understood and said no (unknown order, already shipped...).
                turn.reply_kind = "refusal"
                return (
                    "I couldn't do that: the system reported "
                    f"{_describe_refusal(result)}. Could you check the details?"
                )
            return await self._handoff(session, "tool_failure", turn)
        turn.actions.append(Action(operation=plan.operation, status="succeeded"))
        return result

    def _task_done(self, session: Session, plan: IntentPlanConfig) -> Any:
        store, session_id, operation = self.sessions, session.session_id, plan.operation or ""

        async def done(task_id: str, result: ToolResult) -> None:
            record = TaskRecord(
                task_id=task_id,
                operation=operation,
                status="succeeded" if result.ok else "failed",
                result=result.result if result.ok else {"error": result.error},
            )
            await store.put_task(session_id, record)

        return done

    async def _collect_finished_tasks(self, session: Session, turn: Turn) -> None:
        finished = await self.sessions.tasks(session.session_id)
        for task in session.tasks:
            done = finished.get(task.task_id)
            if task.reported or done is None or done.status == "running":
                continue
            task.status, task.result, task.reported = done.status, done.result, True
            verb = "finished" if done.status == "succeeded" else "failed"
            turn.updates.append(f"Update on {task.task_id}: {task.operation} {verb}.")
            turn.steps.append(f"report task {task.task_id} {done.status}")
        session.tasks = [t for t in session.tasks if not t.reported][-10:] + [
            t for t in session.tasks if t.reported
        ][-5:]

    # --- answers -------------------------------------------------------------------------

    async def _answer(
        self, plan: IntentPlanConfig, slots: dict[str, str], result: Any, message: str, turn: Turn
    ) -> str:
        if plan.answer_template:
            filled = fill_template(plan.answer_template, slots, result)
            if filled is not None:
                turn.steps.append("answer from template")
                return filled
        if self.generator is not None:
            facts = json.dumps(self.redact_value({"slots": slots, "result": result}), default=str)
            prompt = facts_prompt(facts, self.redact(message))
            return await self._generate(prompt, turn) or "Done: your request has been processed."
        turn.steps.append("answer: generic confirmation")
        return "Done: your request has been processed."

    async def _answer_from_knowledge(self, message: str, turn: Turn) -> str:
        """A grounded answer from passages that pass the relevance gate, or an honest "no
        answer": never a passage about something else."""
        assert self.retriever is not None
        kb = self.config.knowledge_base
        k, min_relevance = (kb.top_k, kb.min_relevance) if kb else (3, 0.0)
        found = await self.retriever.search(message, k)
        passages = relevant(found, min_relevance)
        top = found[0].score if found else 0.0
        turn.retrieval = {
            "top_score": round(top, 4),
            "min_relevance": min_relevance,
            "cited": [p.id for p in passages],
        }
        turn.steps.append(
            f"retrieve {len(found)} passages, {len(passages)} at or above {min_relevance}"
        )
        if not passages:
            turn.reply_kind = "no_answer"
            return NO_ANSWER
        turn.sources = [Source(id=p.id, title=p.title, score=round(p.score, 4)) for p in passages]
        turn.reply_kind = "knowledge_base"
        if self.generator is not None:
            prompt = passages_prompt(((p.id, p.text) for p in passages), self.redact(message))
            generated = await self._generate(prompt, turn)
            if generated:
                return f"{generated} (sources: {', '.join(p.id for p in passages)})"
        best = passages[0]
        turn.sources = turn.sources[:1]  # a quoted passage cites only itself
        return f"{_first_sentences(best.text, 2)} (source: {best.id})"

    async def _generate(self, prompt: str, turn: Turn) -> str | None:
        """The LLM phrases the answer; a failing LLM falls back to templates, not to an error."""
        assert self.generator is not None
        max_tokens = self.config.llm.max_tokens if self.config.llm else 128
        await self.limits.check_llm(turn.customer_id)  # BudgetExhausted: the LLM is not asked
        try:
            generated = await self.generator.generate(prompt, max_tokens)
        except Exception as exc:
            turn.steps.append(f"llm failed: {type(exc).__name__}")
            return None
        await self.limits.charge_llm(
            turn.customer_id, estimate_tokens(prompt), estimate_tokens(generated)
        )
        text = generated.strip()
        if leaks_prompt(text):
            # The model echoed its instructions or its data's tags: say it another way.
            turn.steps.append("llm answer withheld: it repeated its prompt")
            turn.policy.append("an LLM answer that repeated its prompt was withheld")
            return None
        turn.steps.append("answer from llm")
        return text or None

    async def _budget_exhausted(
        self, session: Session, exhausted: BudgetExhausted, turn: Turn
    ) -> str:
        """The graceful answer of a turn that a budget stopped before an LLM or tool call: the
        configured reply, or a handoff (reason `budget_exhausted`)."""
        budgets = self.config.policy.budgets
        assert budgets is not None
        what = exhausted.budget.replace("_", " ")
        turn.policy.append(f"{exhausted.scope} budget of {what} exhausted")
        turn.steps.append(f"budget exhausted: {budgets.on_exhausted}")
        session.pending = None
        if budgets.on_exhausted == "handoff":
            return await self._handoff(session, "budget_exhausted", turn)
        turn.reply_kind = "budget_exhausted"
        return budgets.reply

    # --- handoff -------------------------------------------------------------------------

    async def _handoff(
        self, session: Session, reason: str, turn: Turn, proposed: dict[str, Any] | None = None
    ) -> str:
        """Open the conversation's handoff: a record in the agent console with the context, so
        that the customer need not repeat anything, and a ticket where one is configured. From
        now on the bot does not answer this conversation (`_join_handoff`)."""
        session.pending = None
        u = turn.understanding
        first = session.handoffs == 0
        session.handoffs += 1
        now = time.time()
        record = await self.sessions.create_handoff(
            HandoffRecord(
                id=handoff_id(session.session_id, session.handoffs),
                session_id=session.session_id,
                agent=self.config.agent,
                revision=self.config.revision,
                customer_id=session.customer_id,
                reason=reason,
                trigger=self.redact(turn.message),
                intent=u.intent if u else None,
                confidence=round(u.confidence, 4) if u else None,
                slots=self.redact_value(u.slots if u else {}),
                attempted_actions=turn.actions,
                proposed_action=proposed,
                policy=list(turn.policy),
                # The conversation so far and the message that brought it to a human (the
                # session's transcript gets this turn only once it is answered).
                transcript=[
                    *session.transcript[-(TRANSCRIPT_TURNS - 1) :],
                    {"role": "customer", "text": self.redact(turn.message)},
                ],
                trace_id=turn.trace_id,
                created_at=now,
            )
        )
        session.open_handoff = record.id
        turn.handoff_opened = record.id
        turn.first_escalation = first
        await self.sessions.add_feedback(self._feedback_record(record, now))
        ticket_id = None
        handoff = self.config.handoff
        if handoff.adapter:
            payload = self._ticket_payload(record)
            queued = session.queued_ticket
            if queued is not None:
                # The ticket system has not taken an earlier handoff's ticket yet: that ticket
                # (with its first key) stands for this handoff too rather than a second one.
                queued.handoff_id = record.id
            else:
                queued = QueuedTicket(
                    adapter=handoff.adapter,
                    payload=payload,
                    key=turn.action_key("handoff"),
                    handoff_id=record.id,
                )
            if not turn.ticket_refused:
                ticket_id = await self._create_ticket(queued, turn)
            session.queued_ticket = None if ticket_id is not None else queued
            if session.queued_ticket is not None:
                record = await self.sessions.update_handoff(
                    record.id, lambda r: r.model_copy(update={"ticket_queued": True})
                )
        waiting = session.queued_ticket is not None
        position = await self._queue_position(record)
        turn.handoff = Handoff(
            reason=reason,
            id=record.id,
            status=record.status,
            queue_position=position,
            ticket_id=ticket_id or None,
            proposed_action=proposed,
            queued=waiting,
        )
        turn.reply_kind = "handoff"
        turn.steps.append(f"hand off: {reason} ({record.id})")
        reasons = {
            "low_confidence": "I'm not sure I understood that",
            "out_of_scope": "That's outside what I can help with",
            "requested": "Of course",
            "approval_required": "That needs a colleague's approval",
            "tool_failure": "I can't reach that system right now",
            "tool_call_limit": "That needs more steps than I may take",
            "no_plan": "That's something a colleague handles",
            "budget_exhausted": "I can't take on more requests just now",
        }
        lead = reasons.get(reason, "Let me get a colleague")
        console = self.config.handoff.console_tokens_dir is not None
        if waiting and not console:
            # Nobody sees the handoff until the ticket exists: never announce it as done.
            return (
                f"{lead}, but I couldn't reach our ticket system just now, so no colleague has "
                "this yet. I've kept our conversation and will pass it on as soon as the "
                "system is back; you can also write again in a few minutes."
            )
        ticket = f" (ticket {ticket_id})" if ticket_id else ""
        queue = f" You are number {position} in the queue." if position else ""
        later = (
            " Our ticket system is unreachable just now; the ticket reference will follow."
            if waiting
            else ""
        )
        return (
            f"{lead}. I've passed our conversation to a colleague{ticket}, who will reply "
            f"here.{queue}{later}"
        )

    async def _join_handoff(self, session: Session, message: str, turn: Turn) -> str | None:
        """While a human has the conversation, the customer's message joins the handoff and the
        bot stays quiet; None once the handoff is resolved (the bot answers again)."""
        if session.open_handoff is None:
            return None
        record = await self.sessions.get_handoff(session.open_handoff)
        if record is not None and record.is_open:
            text, now, key = self.redact(message), time.time(), turn.action_key("join")
            try:
                record = await self.sessions.update_handoff(
                    record.id, lambda r: customer_message(r, text, now, key)
                )
            except (KeyError, HandoffError):
                record = None  # resolved (or expired) in between
        if record is None or not record.is_open:
            session.open_handoff = None
            turn.steps.append("handoff resolved: the assistant answers again")
            return None
        turn.steps.append(f"join handoff {record.id}")
        turn.reply_kind = "handoff_pending"
        position = await self._queue_position(record)
        turn.handoff = Handoff(
            reason=record.reason,
            id=record.id,
            status=record.status,
            queue_position=position,
            assignee=record.assignee,
            ticket_id=record.ticket_id,
            queued=record.ticket_queued,
        )
        if record.assignee:
            return f"{record.assignee} has your message and will reply here."
        queue = f" You are number {position} in the queue." if position else ""
        return f"Thanks, I've added that for our colleague, who will reply here soon.{queue}"

    async def _queue_position(self, record: HandoffRecord) -> int | None:
        if record.status != "waiting":
            return None
        return queue_position(record, await self.sessions.handoffs(open_only=True))

    def _ticket_payload(self, record: HandoffRecord) -> dict[str, Any]:
        """The ticket operation's input, mapped by `spec.handoff.fields` from the handoff."""
        subject = (
            f"[{self.config.agent}] {record.reason.replace('_', ' ')}: {record.intent or 'unknown'}"
        )
        context = {
            "reason": record.reason,
            "intent": record.intent,
            "confidence": record.confidence,
            "slots": record.slots,
            "attempted_actions": [a.model_dump() for a in record.attempted_actions],
            "proposed_action": record.proposed_action,
            "policy": record.policy,
            "transcript": record.transcript,
            "handoff_id": record.id,
            "trace_id": record.trace_id,
        }
        values: dict[str, Any] = {
            "subject": subject,
            "body": json.dumps(context, indent=1, default=str),
            "priority": "high"
            if record.reason in ("tool_failure", "approval_required")
            else "normal",
            "reason": record.reason,
            "intent": record.intent,
            "confidence": record.confidence,
            "handoff_id": record.id,
            "session_id": record.session_id,
            "customer_id": record.customer_id,
            "agent": record.agent,
            "trigger": record.trigger,
            "transcript": "\n".join(f"{t['role']}: {t['text']}" for t in record.transcript),
            "conversation_url": f"/console#{record.id}",
        }
        return {field: values[value] for field, value in self.config.handoff.fields.items()}

    def _feedback_record(self, record: HandoffRecord, now: float) -> dict[str, Any]:
        """The escalation in the feedback log: unlabelled until a human corrects it."""
        return feedback_record(
            record, record.trigger, None, "escalation", None, now, self.config.namespace
        )

    async def _create_ticket(self, ticket: QueuedTicket, turn: Turn) -> str | None:
        """The ticket's id once the ticket system took it (an empty id when it names none);
        None when it did not."""
        operation = self.config.handoff.operation
        result = await self.tools.call(ticket.adapter, operation, ticket.payload, ticket.key)
        turn.tool_calls.append(
            {
                "operation": f"{ticket.adapter}.{operation}",
                "outcome": "success" if result.ok else "failure",
            }
        )
        if not result.ok:
            turn.steps.append(f"ticket not created: {result.error}")
            turn.ticket_refused = True
            return None
        found = result.result if isinstance(result.result, dict) else {}
        ticket_id = str(found.get("ticket_id") or found.get("id") or "")
        if ticket.handoff_id:
            update = {"ticket_id": ticket_id or None, "ticket_queued": False}
            with contextlib.suppress(KeyError):
                await self.sessions.update_handoff(
                    ticket.handoff_id, lambda r: r.model_copy(update=update)
                )
        return ticket_id

    async def _send_queued_ticket(self, session: Session, turn: Turn) -> None:
        """Retry a handoff ticket that an earlier turn could not send."""
        queued = session.queued_ticket
        if queued is None:
            return
        ticket_id = await self._create_ticket(queued, turn)
        if ticket_id is None:
            return
        session.queued_ticket = None
        ticket = f" (ticket {ticket_id})" if ticket_id else ""
        turn.updates.append(f"Update: our ticket system now has your request{ticket}.")
        turn.steps.append("queued ticket sent")

    # --- audit ---------------------------------------------------------------------------

    def _audit(self, request: ChatRequest, turn: Turn, reply: str, seconds: float) -> None:
        u = turn.understanding
        # Identifiers stay as they are: an all-digit revision hash looks like a phone number
        # to the redactor, and the audit is searched by them.
        identifiers = {
            "trace_id": turn.trace_id,
            "agent": self.config.agent,
            "revision": self.config.revision,
            "session_id": request.session_id,
            "request_id": request.request_id,
        }
        record = {
            "channel": request.channel,
            "message": self.redact(request.message),
            "intent": u.intent if u else None,
            "confidence": round(u.confidence, 4) if u else None,
            "plan": turn.steps,
            "policy": turn.policy,
            "tool_calls": turn.tool_calls,
            "handoff": turn.handoff.model_dump() if turn.handoff else None,
            "reply_kind": turn.reply_kind,
            "retrieval": turn.retrieval,
            "reply": self.redact(reply),
            "latency_ms": round(seconds * 1000, 1),
        }
        self.audit({**identifiers, **self.redact_value(record)})


def _describe_refusal(result: ToolResult) -> str:
    if result.status == 404:
        return "that it could not find it"
    if result.status == 409:
        return "that it can no longer be changed"
    return f"an error ({result.status})"


def _first_sentences(text: str, n: int) -> str:
    body = " ".join(
        line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")
    )
    sentences = [s.strip() for s in body.split(". ") if s.strip()]
    joined = ". ".join(sentences[:n])
    return joined if joined.endswith(".") else joined + "."
