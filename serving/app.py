"""One model revision of an agent as a Ray Serve application (`build_app`).

    Ingress ─► Orchestrator ─► NLU (batched)
                            ├─► Retriever   (when the agent has a knowledge base)
                            └─► LLM         (when the agent has an in-cluster LLM)

Deployment names come from the contract, because the operator sets their autoscaling and
resources by name. Tunables that may change without a redeploy arrive through `user_config`.
"""

from __future__ import annotations

import asyncio
import functools
import time
import uuid
from typing import Any

from ray import serve
from ray.serve import Application, Deployment
from ray.serve.handle import DeploymentHandle

from .config import (
    INGRESS_DEPLOYMENT,
    LLM_DEPLOYMENT,
    NLU_DEPLOYMENT,
    NLU_MAX_BATCH_SIZE,
    ORCHESTRATOR_DEPLOYMENT,
    RETRIEVER_DEPLOYMENT,
    AgentAppConfig,
    KnowledgeBaseConfig,
    LlmConfig,
    NluConfig,
    ToolConfig,
)
from .nlu_service import NluService, understanding
from .workflow.orchestrator import Orchestrator, Passage, Understanding
from .workflow.sessions import open_store
from .workflow.tools import HttpToolCaller, TaskDone, ToolResult
from .workflow.types import ChatRequest

# Deployment name -> `.options()` keyword arguments, as in a serveConfigV2 deployment entry.
DeploymentOptions = dict[str, dict[str, Any]]
LATENCY_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]


class NLU:
    """The intent classifier, batched across concurrent turns."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.service = NluService(NluConfig.model_validate(config))
        self.inference_seconds = serve.metrics.Histogram(
            "nlu_inference_time_seconds",
            description="NLU model time per batch.",
            boundaries=LATENCY_BUCKETS,
        )

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        batcher: Any = self.classify  # serve.batch adds these setters at run time
        batcher.set_max_batch_size(int(user_config.get("max_batch_size", NLU_MAX_BATCH_SIZE)))
        batcher.set_batch_wait_timeout_s(float(user_config.get("batch_wait_timeout_s", 0.005)))

    @serve.batch(max_batch_size=NLU_MAX_BATCH_SIZE, batch_wait_timeout_s=0.005)
    async def classify(self, texts: list[str]) -> list[dict[str, Any]]:
        started = time.perf_counter()
        results = self.service.classify(texts)
        self.inference_seconds.observe(time.perf_counter() - started)
        return results


class Retriever:
    def __init__(self, config: dict[str, Any]) -> None:
        from .retriever import KnowledgeBase

        kb = KnowledgeBaseConfig.model_validate(config)
        self.kb = KnowledgeBase.load(kb.path, top_k=kb.top_k)

    async def search(self, text: str, k: int) -> list[dict[str, Any]]:
        return [p.__dict__ for p in await self.kb.asearch(text, k)]


class LLM:
    def __init__(self, config: dict[str, Any]) -> None:
        from .llm import load_generator

        self.generator = load_generator(LlmConfig.model_validate(config))

    async def generate(self, prompt: str, max_tokens: int) -> str:
        text: str = await self.generator.generate(prompt, max_tokens)
        return text


# --- the orchestrator's view of the other deployments --------------------------------------


class _HandleUnderstander:
    def __init__(self, handle: DeploymentHandle[Any]) -> None:
        self.handle = handle

    async def understand(self, text: str) -> Understanding:
        raw: dict[str, Any] = await self.handle.classify.remote(text)
        return understanding(raw)


class _HandleRetriever:
    def __init__(self, handle: DeploymentHandle[Any]) -> None:
        self.handle = handle

    async def search(self, text: str, k: int) -> list[Passage]:
        raw: list[dict[str, Any]] = await self.handle.search.remote(text, k)
        return [Passage(**p) for p in raw]


class _HandleGenerator:
    def __init__(self, handle: DeploymentHandle[Any]) -> None:
        self.handle = handle

    async def generate(self, prompt: str, max_tokens: int) -> str:
        text: str = await self.handle.generate.remote(prompt, max_tokens)
        return text


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


class OrchestratorDeployment:
    def __init__(
        self,
        config: dict[str, Any],
        nlu: DeploymentHandle[Any],
        retriever: DeploymentHandle[Any] | None,
        llm: DeploymentHandle[Any] | None,
    ) -> None:
        self.config = AgentAppConfig.model_validate(config)
        self.tools = HttpToolCaller(self.config.tools)
        generator: Any = _HandleGenerator(llm) if llm is not None else None
        if self.config.llm is not None and self.config.llm.backend == "openai":
            from .llm import load_generator  # an HTTP client: no deployment of its own

            generator = load_generator(self.config.llm)
        self.orchestrator = Orchestrator(
            self.config,
            understander=_HandleUnderstander(nlu),
            tools=self.tools,
            sessions=open_store(
                self.config.sessions, f"{self.config.namespace}:{self.config.agent}"
            ),
            tasks=_RayTaskRunner([t.model_dump() for t in self.config.tools]),
            generator=generator,
            retriever=_HandleRetriever(retriever) if retriever is not None else None,
            metrics=_ServeMetrics(),
        )

    async def turn(self, request: dict[str, Any]) -> dict[str, Any]:
        response = await self.orchestrator.turn(ChatRequest.model_validate(request))
        return response.model_dump()


class Ingress:
    """The revision's entry for the router: one method per request kind."""

    def __init__(self, orchestrator: DeploymentHandle[Any]) -> None:
        self.orchestrator = orchestrator

    async def chat(self, request: dict[str, Any]) -> dict[str, Any]:
        response: dict[str, Any] = await self.orchestrator.turn.remote(request)
        return response

    async def healthz(self) -> dict[str, str]:
        return {"status": "ok"}


NLUDeployment: Deployment = serve.deployment(name=NLU_DEPLOYMENT)(NLU)
RetrieverDeployment: Deployment = serve.deployment(name=RETRIEVER_DEPLOYMENT)(Retriever)
LLMDeployment: Deployment = serve.deployment(name=LLM_DEPLOYMENT)(LLM)
Orchestrator_: Deployment = serve.deployment(name=ORCHESTRATOR_DEPLOYMENT)(OrchestratorDeployment)
IngressDeployment: Deployment = serve.deployment(name=INGRESS_DEPLOYMENT)(Ingress)


def with_options(deployment: Deployment, options: DeploymentOptions | None) -> Deployment:
    """Apply a rendered `serveConfigV2` deployment entry (local runs; on a cluster Serve's
    controller applies the config itself)."""
    if not options or deployment.name not in options:
        return deployment
    return deployment.options(**options[deployment.name])


def build_app(args: dict[str, Any], options: DeploymentOptions | None = None) -> Application:
    """Serve entry point (`switchboard.serving.app:build_app`); `args` is an AgentAppConfig."""
    config = AgentAppConfig.model_validate(args)
    nlu = with_options(NLUDeployment, options).bind(config.nlu.model_dump())
    retriever = None
    if config.knowledge_base:
        kb = config.knowledge_base.model_dump()
        retriever = with_options(RetrieverDeployment, options).bind(kb)
    llm = None
    if config.llm is not None and config.llm.backend != "openai":
        llm = with_options(LLMDeployment, options).bind(config.llm.model_dump())
    orchestrator = with_options(Orchestrator_, options).bind(
        config.model_dump(), nlu, retriever, llm
    )
    return with_options(IngressDeployment, options).bind(orchestrator)
