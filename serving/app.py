"""One model revision of an agent as a Ray Serve application (`build_app`).

    HTTP ─► Orchestrator (ingress: parse + validate once, NLU batched in the replica,
                          knowledge-base search, tools, policy, answer)
                      └─► LLM  (only an in-cluster LLM: a deployment of its own, often on GPUs)

Every hop costs more than the NLU's work (BENCHMARKS.md, Serving), so the turn stays in one
replica; the router (serving.router) exists only while a rollout serves two revisions and calls
`chat` on the revision's handle. Deployment names come from the contract: the operator sets
their autoscaling and resources by name.
"""

from __future__ import annotations

import asyncio
import functools
import time
import uuid
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI
from ray import serve
from ray.serve import Application, Deployment
from ray.serve.handle import DeploymentHandle

from .agent_api import HandoffService, agent_http_app
from .config import (
    LLM_DEPLOYMENT,
    NLU_BATCH_WAIT_SECONDS,
    NLU_MAX_BATCH_SIZE,
    ORCHESTRATOR_DEPLOYMENT,
    AgentAppConfig,
    LlmConfig,
    ToolConfig,
)
from .http import Overloaded
from .nlu_service import NluService, understanding
from .workflow.orchestrator import Orchestrator, Understanding
from .workflow.sessions import open_store
from .workflow.tools import HttpToolCaller, TaskDone, ToolResult
from .workflow.types import ChatRequest

# Deployment name -> `.options()` keyword arguments, as in a serveConfigV2 deployment entry.
DeploymentOptions = dict[str, dict[str, Any]]
LATENCY_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]
# Human response and handling times: seconds to a day.
HUMAN_TIME_BUCKETS = [15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 14400.0, 86400.0]


class _HandleGenerator:
    """The LLM deployment as the orchestrator's generator."""

    def __init__(self, handle: DeploymentHandle[Any]) -> None:
        self.handle = handle

    async def generate(self, prompt: str, max_tokens: int) -> str:
        text: str = await self.handle.generate.remote(prompt, max_tokens)
        return text


class LLM:
    def __init__(self, config: dict[str, Any]) -> None:
        from .llm import load_generator

        self.generator = load_generator(LlmConfig.model_validate(config))

    async def generate(self, prompt: str, max_tokens: int) -> str:
        text: str = await self.generator.generate(prompt, max_tokens)
        return text


class ServeHandoffMetrics:
    """The human side's metrics (`HandoffMetrics`): the revisions' replicas and, during a
    rollout, the router serve the agent API."""

    def __init__(self) -> None:
        self.first_replies = serve.metrics.Histogram(
            "agent_handoff_first_reply_seconds",
            description="Time from a handoff to the human's first reply.",
            boundaries=HUMAN_TIME_BUCKETS,
        )
        self.handling = serve.metrics.Histogram(
            "agent_handoff_handling_seconds",
            description="Time from a handoff to its resolution.",
            boundaries=HUMAN_TIME_BUCKETS,
        )
        self.ratings = serve.metrics.Counter(
            "agent_csat_ratings_total",
            description="Customers' ratings (1-5) at the end of a conversation, by rating and "
            "by whether a human took part (handled_by: bot, human).",
            tag_keys=("rating", "handled_by"),  # type: ignore[arg-type]
        )

    def first_human_reply(self, seconds: float) -> None:
        self.first_replies.observe(seconds)

    def handoff_handled(self, seconds: float) -> None:
        self.handling.observe(seconds)

    def rating(self, rating: int, handled_by: str) -> None:
        self.ratings.inc(tags={"rating": str(rating), "handled_by": handled_by})


class _ServeMetrics:
    """The seed metrics, exported through Ray's metrics agent (Prometheus adds `ray_`)."""

    def __init__(self) -> None:
        self.requests = serve.metrics.Counter(
            "agent_request_total",
            description="Chat turns by outcome status and intent.",
            tag_keys=("status", "intent"),  # type: ignore[arg-type]
        )
        self.latency = serve.metrics.Histogram(
            "agent_response_latency_seconds",
            description="Time to answer one chat turn.",
            boundaries=LATENCY_BUCKETS,
        )
        self.escalations = serve.metrics.Counter(
            "escalation_to_human_total",
            description="Conversations handed to a human, by reason.",
            tag_keys=("reason",),
        )
        # Per revision (Serve tags the application), for a ModelRollout's analysis.
        self.confidences = serve.metrics.Histogram(
            "agent_nlu_confidence",
            description="Calibrated NLU confidence of each turn.",
            # Ending at 1.0 (a confidence never exceeds it) keeps the +Inf bucket empty: Ray 2.60
            # exports a histogram's _sum from bucket midpoints, +Inf counting as twice the last
            # bound, so a 0.99 last bound turned confident turns into 1.98 in the mean.
            boundaries=[0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0],
        )
        self.tool_calls = serve.metrics.Counter(
            "agent_tool_calls_total",
            description="Tool calls made by the agent, by outcome (success, failure, started).",
            tag_keys=("outcome",),
        )
        self.retrieval_scores = serve.metrics.Histogram(
            "agent_retrieval_top_score",
            description="Relevance of the best knowledge-base passage per lookup.",
            boundaries=[0.1, 0.2, 0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6, 0.7, 0.8, 0.9, 1.0],
        )
        self.knowledge_answers = serve.metrics.Counter(
            "agent_knowledge_answers_total",
            description="Knowledge-base lookups by outcome: grounded, or no_answer (nothing "
            "passed the relevance threshold).",
            tag_keys=("outcome",),
        )
        self.resolutions = serve.metrics.Counter(
            "agent_conversations_resolved_total",
            description="Conversations the customer closed (thanks, goodbye) without a handoff.",
        )
        self.nlu_seconds = serve.metrics.Histogram(
            "nlu_inference_time_seconds",
            description="NLU model time per batch.",
            boundaries=LATENCY_BUCKETS,
        )
        self.nlu_lookups = serve.metrics.Counter(
            "agent_nlu_cache_total",
            description="NLU lookups of repeated messages, by result (hit, miss).",
            tag_keys=("result",),
        )
        self.conversations = serve.metrics.Counter(
            "agent_conversations_total",
            description="Conversations started (a session's first turn); containment is "
            "1 - escalated / started.",
        )
        self.escalated = serve.metrics.Counter(
            "agent_conversations_escalated_total",
            description="Conversations handed to a human at least once (counted at the first).",
        )
        self.people = ServeHandoffMetrics()
        self.refusals = serve.metrics.Counter(
            "agent_overload_refusals_total",
            description="Turns refused with 503 because the replica ran max_turns_in_flight.",
        )
        self.llm_token_count = serve.metrics.Counter(
            "agent_llm_tokens_total",
            description="LLM tokens of the agent's generations, by kind (prompt, completion); "
            "estimated from words (serving.workflow.limits.estimate_tokens).",
            tag_keys=("kind",),
        )
        # Agent scope only: a series per customer would explode the metric's cardinality.
        self.budget_left = serve.metrics.Gauge(
            "agent_budget_remaining",
            description="What the agent's budget (llm_tokens, tool_calls) has left in the "
            "current window, as last seen by this replica.",
            tag_keys=("budget", "scope"),  # type: ignore[arg-type]
        )
        self.budget_limit = serve.metrics.Gauge(
            "agent_budget_limit",
            description="The agent's budget per window (llm_tokens, tool_calls).",
            tag_keys=("budget", "scope"),  # type: ignore[arg-type]
        )
        self.budgets_exhausted = serve.metrics.Counter(
            "agent_budget_exhausted_total",
            description="Turns answered without an LLM or tool call because a budget was "
            "exhausted, by budget and scope (agent, customer).",
            tag_keys=("budget", "scope"),  # type: ignore[arg-type]
        )
        self.rate_limits = serve.metrics.Counter(
            "agent_rate_limited_total",
            description="Turns refused with 429 by the inbound rate limit, by scope "
            "(session, customer).",
            tag_keys=("scope",),
        )

    def turn(self, status: str, intent: str, seconds: float) -> None:
        self.requests.inc(tags={"status": status, "intent": intent})
        self.latency.observe(seconds)

    def escalation(self, reason: str) -> None:
        self.escalations.inc(tags={"reason": reason})

    def confidence(self, value: float) -> None:
        self.confidences.observe(value)

    def tool_call(self, outcome: str) -> None:
        self.tool_calls.inc(tags={"outcome": outcome})

    def retrieval(self, top_score: float, grounded: bool) -> None:
        self.retrieval_scores.observe(top_score)
        self.knowledge_answers.inc(tags={"outcome": "grounded" if grounded else "no_answer"})

    def resolved(self) -> None:
        self.resolutions.inc()

    def nlu_batch(self, seconds: float) -> None:
        self.nlu_seconds.observe(seconds)

    def nlu_cache(self, hits: int, misses: int) -> None:
        for result, count in (("hit", hits), ("miss", misses)):
            if count:
                self.nlu_lookups.inc(count, tags={"result": result})

    def refusal(self) -> None:
        self.refusals.inc()

    def conversation_started(self) -> None:
        self.conversations.inc()

    def conversation_escalated(self) -> None:
        self.escalated.inc()

    def llm_tokens(self, prompt: int, completion: int) -> None:
        for kind, count in (("prompt", prompt), ("completion", completion)):
            if count:
                self.llm_token_count.inc(count, tags={"kind": kind})

    def budget_remaining(self, budget: str, remaining: int, limit: int) -> None:
        tags = {"budget": budget, "scope": "agent"}
        self.budget_left.set(remaining, tags=tags)
        self.budget_limit.set(limit, tags=tags)

    def budget_exhausted(self, budget: str, scope: str) -> None:
        self.budgets_exhausted.inc(tags={"budget": budget, "scope": scope})

    def rate_limited(self, scope: str) -> None:
        self.rate_limits.inc(tags={"scope": scope})


class _RayTaskRunner:
    """Long-running operations as Ray tasks: they outlive the turn and run beside the
    replicas; the result is written to the session store for a later turn to report."""

    def __init__(self, tools: list[dict[str, Any]]) -> None:
        self.tools = tools
        self._waiting: set[asyncio.Task[None]] = set()

    def start(
        self, adapter: str, operation: str, payload: dict[str, Any], on_done: TaskDone
    ) -> str:
        task_id = f"task-{uuid.uuid4().hex[:12]}"
        ref = _remote_call_tool().remote(self.tools, adapter, operation, payload, task_id)

        async def wait() -> None:
            ok, status, result, error = await ref
            await on_done(task_id, ToolResult(ok, status, result=result, error=error))

        task = asyncio.get_running_loop().create_task(wait())
        self._waiting.add(task)  # keep a reference until done, or the task may be collected
        task.add_done_callback(self._waiting.discard)
        return task_id


def _call_tool(
    tools: list[dict[str, Any]], adapter: str, operation: str, payload: dict[str, Any], key: str
) -> tuple[bool, int, Any, str | None]:
    async def run() -> tuple[bool, int, Any, str | None]:
        caller = HttpToolCaller([ToolConfig.model_validate(t) for t in tools])
        try:
            result = await caller.call(adapter, operation, payload, key)
        finally:
            await caller.close()
        return result.ok, result.status, result.result, result.error

    return asyncio.run(run())


@functools.cache
def _remote_call_tool() -> Any:
    import ray

    return ray.remote(num_cpus=0.1)(_call_tool)


@serve.ingress()
class AgentIngress:
    """A revision's whole turn in one replica: HTTP in, NLU (batched across the turns in flight
    here, with a cache for repeated messages), knowledge base, tools, policy, reply out."""

    def __init__(self, config: dict[str, Any], llm: DeploymentHandle[Any] | None) -> None:
        self.config = AgentAppConfig.model_validate(config)
        self.nlu = NluService(self.config.nlu)
        self.metrics = _ServeMetrics()
        self._cache_seen = (0, 0)
        self._in_flight = 0
        retriever = None
        if self.config.knowledge_base is not None:
            from .retriever import KnowledgeBase, KnowledgeBaseRetriever

            kb = self.config.knowledge_base
            retriever = KnowledgeBaseRetriever(KnowledgeBase.load(kb.path, top_k=kb.top_k))
        generator: Any = _HandleGenerator(llm) if llm is not None else None
        if self.config.llm is not None and self.config.llm.backend == "openai":
            from .llm import load_generator  # an HTTP client: no deployment of its own

            generator = load_generator(self.config.llm)
        sessions = open_store(self.config.sessions, f"{self.config.namespace}:{self.config.agent}")
        self.handoffs = HandoffService.of(
            sessions,
            self.config.handoff,
            self.config.namespace,
            self.intents,
            self.metrics.people,
            self.config.sessions.token_keys_dir,
            self.config.auth,
        )
        self.orchestrator = Orchestrator(
            self.config,
            understander=self,
            tools=HttpToolCaller(self.config.tools),
            sessions=sessions,
            tasks=_RayTaskRunner([t.model_dump() for t in self.config.tools]),
            generator=generator,
            retriever=retriever,
            metrics=self.metrics,
        )

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        batcher: Any = self._classify  # serve.batch adds these setters at run time
        batcher.set_max_batch_size(int(user_config.get("max_batch_size", NLU_MAX_BATCH_SIZE)))
        wait = user_config.get("batch_wait_timeout_s", NLU_BATCH_WAIT_SECONDS)
        batcher.set_batch_wait_timeout_s(float(wait))

    @serve.batch(max_batch_size=NLU_MAX_BATCH_SIZE, batch_wait_timeout_s=NLU_BATCH_WAIT_SECONDS)
    async def _classify(self, texts: list[str]) -> list[dict[str, Any]]:
        # In the event loop, not a thread: a batch takes about 2 ms, less than a thread hop
        # costs the other turns of this replica when they all wait for it anyway.
        started = time.perf_counter()
        results = self.nlu.classify(texts)
        self.metrics.nlu_batch(time.perf_counter() - started)
        hits, misses = self.nlu.cache.hits, self.nlu.cache.misses
        seen_hits, seen_misses = self._cache_seen
        self.metrics.nlu_cache(hits - seen_hits, misses - seen_misses)
        self._cache_seen = (hits, misses)
        return results

    async def understand(self, text: str) -> Understanding:
        """The orchestrator's NLU (its `Understander`)."""
        raw: dict[str, Any] = await self._classify(text)
        return understanding(raw)

    async def chat(self, request: ChatRequest) -> dict[str, Any]:
        """One turn of an already validated request (the router's call during a rollout).
        Raises `Overloaded` when this replica already runs `max_turns_in_flight` turns: a
        prompt refusal the client can retry beats a queue whose waits keep growing."""
        if self._in_flight >= self.config.max_turns_in_flight:
            self.metrics.refusal()
            raise Overloaded()
        self._in_flight += 1
        try:
            response = await self.orchestrator.turn(request)
        finally:
            self._in_flight -= 1
        return response.model_dump()

    async def intents(self) -> list[str]:
        """The labels this revision's model predicts (the console's correction choices)."""
        return list(self.nlu.model.labels)

    async def _dispatch(self, request: ChatRequest, headers: Mapping[str, str]) -> dict[str, Any]:
        return await self.chat(request)

    def __serve_build_asgi_app__(self) -> FastAPI:
        """Serve calls this in the replica after `__init__`: the routes need its state."""
        title = f"Switchboard agent {self.config.agent}"
        return agent_http_app(title, self._dispatch, self.handoffs)


LLMDeployment: Deployment = serve.deployment(name=LLM_DEPLOYMENT)(LLM)
AgentDeployment: Deployment = serve.deployment(name=ORCHESTRATOR_DEPLOYMENT)(AgentIngress)


def with_options(deployment: Deployment, options: DeploymentOptions | None) -> Deployment:
    """Apply a rendered `serveConfigV2` deployment entry (local runs; on a cluster Serve's
    controller applies the config itself)."""
    if not options or deployment.name not in options:
        return deployment
    return deployment.options(**options[deployment.name])


def build_app(args: dict[str, Any], options: DeploymentOptions | None = None) -> Application:
    """Serve entry point (`switchboard.serving.app:build_app`); `args` is an AgentAppConfig,
    validated here so that a bad config fails the deploy with pydantic's message."""
    config = AgentAppConfig.model_validate(args)
    llm = None
    if config.llm is not None and config.llm.backend != "openai":
        llm = with_options(LLMDeployment, options).bind(config.llm.model_dump())
    return with_options(AgentDeployment, options).bind(config.model_dump(), llm)
