"""SupportAgent: one AI support agent on Ray Serve, and the tools and policy it works under."""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import AfterValidator, Field, WithJsonSchema

from switchboard.serving.config import (
    DEFAULT_BUDGET_REPLY,
    DEFAULT_HANDOFF_FIELDS,
    DEFAULT_MIN_RELEVANCE,
    HANDOFF_VALUES,
    SmallTalkConfig,
)

from .base import (
    ApiModel,
    BaseStatus,
    CelRule,
    ObjectName,
    ReplicaAutoscaling,
    ResourceRequirements,
    SecretKeyRef,
    Toleration,
    list_map,
)

DEFAULT_RAY_IMAGE = "ghcr.io/switchboard-dev/agent-runtime:0.1.0"
DEFAULT_RAY_VERSION = "2.60.0"

# `file:///path` is a path inside the Ray image; `pvc://claim/path` mounts that claim read-only;
# `s3://bucket/prefix` is downloaded by each replica at start (needs `spec.modelStorage`).
MODEL_URI_PATTERN = r"^(file:///|pvc://[a-z0-9]([-a-z0-9]*[a-z0-9])?/|s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/|$)).*$"


def _resources(cpu: str, memory: str) -> ResourceRequirements:
    return ResourceRequirements(
        requests={"cpu": cpu, "memory": memory}, limits={"cpu": cpu, "memory": memory}
    )


class HeadSpec(ApiModel):
    """The Ray head pod: GCS, dashboard and the Serve controller. It runs no replicas."""

    resources: ResourceRequirements = Field(default_factory=lambda: _resources("1", "4Gi"))
    """Resources of the head container."""


class RaySpec(ApiModel):
    """The Ray cluster that hosts the agent."""

    image: str = Field(default=DEFAULT_RAY_IMAGE, min_length=1)
    """Container image for every Ray pod; it must contain `switchboard[serving]`."""
    version: str = Field(default=DEFAULT_RAY_VERSION, pattern=r"^\d+\.\d+\.\d+$")
    """Ray version in the image (KubeRay's `rayVersion`)."""
    head: HeadSpec = Field(default_factory=HeadSpec)
    """The head pod."""


class WorkerPool(ApiModel):
    """A group of Ray worker pods of one shape, scaled by Ray's in-tree autoscaler."""

    cel_rules = (
        CelRule(
            rule="self.minWorkers <= self.maxWorkers",
            message="minWorkers must be less than or equal to maxWorkers",
        ),
    )

    min_workers: int = Field(default=1, ge=0, le=1000)
    """Fewest worker pods kept running."""
    max_workers: int = Field(default=4, ge=0, le=1000)
    """Most worker pods the autoscaler may add."""
    resources: ResourceRequirements = Field(default_factory=lambda: _resources("2", "4Gi"))
    """Resources of each worker container (GPUs are set with `gpusPerWorker`)."""
    node_selector: dict[str, str] = Field(default_factory=dict)
    """Node labels the worker pods must be scheduled on."""
    tolerations: list[Toleration] = Field(default_factory=list)
    """Taints the worker pods tolerate."""


class GpuWorkerPool(WorkerPool):
    """Worker pods with GPUs for LLM replicas. Tolerates the `nvidia.com/gpu` taint."""

    min_workers: int = Field(default=0, ge=0, le=1000)
    """Fewest GPU worker pods kept running (0 lets the autoscaler release idle GPUs)."""
    max_workers: int = Field(default=2, ge=0, le=1000)
    """Most GPU worker pods the autoscaler may add."""
    resources: ResourceRequirements = Field(default_factory=lambda: _resources("4", "32Gi"))
    """Resources of each GPU worker container besides the GPUs."""
    gpus_per_worker: int = Field(default=1, ge=1, le=16)
    """`nvidia.com/gpu` requested by each GPU worker pod."""


class WorkerPools(ApiModel):
    """The worker groups of the Ray cluster."""

    cpu: WorkerPool = Field(default_factory=WorkerPool)
    """CPU pool: NLU, retriever, orchestrator and ingress replicas."""
    gpu: GpuWorkerPool | None = None
    """Optional GPU pool: LLM replicas that ask for GPUs run here."""


class S3CredentialsRef(ApiModel):
    """A Secret in the agent's namespace holding S3 credentials."""

    name: ObjectName
    """Name of the Secret."""
    access_key_id_key: str = Field(default="accessKeyId", min_length=1, max_length=253)
    """Key of the access key id in the Secret."""
    secret_access_key_key: str = Field(default="secretAccessKey", min_length=1, max_length=253)
    """Key of the secret access key in the Secret."""


class ModelStorageSpec(ApiModel):
    """S3-compatible object storage that `s3://` model URIs (NLU, LLM, rollout candidates) are
    downloaded from; each replica verifies the artifact's checksums before it serves."""

    endpoint: str | None = Field(default=None, pattern=r"^https?://", max_length=1024)
    """Endpoint URL of an S3-compatible server (MinIO, Ceph, ...); unset is AWS S3."""
    region: str | None = Field(default=None, pattern=r"^[a-z0-9-]+$", max_length=64)
    """Region of the bucket (default `us-east-1`)."""
    credentials_secret_ref: S3CredentialsRef | None = None
    """Secret with the access key; unset uses the pods' ambient AWS credentials (IRSA, instance
    profile)."""


class NluSpec(ApiModel):
    """The intent classifier every conversation turn starts with."""

    model_uri: str = Field(pattern=MODEL_URI_PATTERN, max_length=1024)
    """Artifact directory from `switchboard nlu train`: `file:///path`, `pvc://claim/path` or
    `s3://bucket/prefix` (uploaded with `switchboard nlu push`; needs `modelStorage`)."""
    quantization: Literal["int8", "none"] = "int8"
    """`int8` runs the encoder with int8 weights on CPU; `none` keeps fp32."""
    cache_size: int = Field(default=4096, ge=0, le=1_000_000)
    """Results kept per orchestrator replica for repeated messages (least recently used go
    first; the key is the message with case and spacing folded); 0 turns the cache off. The
    NLU runs inside the orchestrator's replicas, which `orchestrator.autoscaling` sizes."""


class LlmSpec(ApiModel):
    """An optional language model that phrases grounded answers."""

    cel_rules = (
        CelRule(
            rule="self.backend == 'openai' ? (has(self.endpoint) && has(self.apiKeySecretRef))"
            " : (!has(self.endpoint) && !has(self.apiKeySecretRef))",
            message="backend openai needs endpoint and apiKeySecretRef; other backends take none",
        ),
        CelRule(
            rule="(self.backend == 'openai') != has(self.modelUri)",
            message="exactly one model source: modelUri (transformers, vllm) or endpoint (openai)",
        ),
        CelRule(
            rule="self.backend != 'vllm' || self.gpusPerReplica > 0",
            message="backend vllm needs gpusPerReplica of at least 1",
        ),
    )

    backend: Literal["transformers", "vllm", "openai"] = "transformers"
    """`transformers` and `vllm` serve a model in the cluster; `openai` calls an external
    OpenAI-compatible endpoint."""
    model_uri: str | None = Field(default=None, pattern=MODEL_URI_PATTERN, max_length=1024)
    """Model directory for in-cluster backends: `file:///path`, `pvc://claim/path` or
    `s3://bucket/prefix` (needs `modelStorage`)."""
    endpoint: str | None = Field(default=None, pattern=r"^https?://", max_length=1024)
    """Base URL of the external endpoint (backend `openai`)."""
    model_name: str | None = Field(default=None, max_length=253)
    """Model name sent to the external endpoint (backend `openai`)."""
    api_key_secret_ref: SecretKeyRef | None = None
    """Secret key holding the external endpoint's API key (backend `openai`)."""
    quantization: Literal["none", "int8", "bf16"] = "none"
    """Weights precision: `int8` dynamic quantization (CPU), `bf16` (GPU), `none` (fp32)."""
    gpus_per_replica: int = Field(default=0, ge=0, le=8)
    """GPUs per LLM replica; above 0 the replicas run on the GPU pool."""
    max_tokens: int = Field(default=256, ge=1, le=32768)
    """Upper bound on generated tokens per answer."""
    autoscaling: ReplicaAutoscaling = Field(default_factory=ReplicaAutoscaling)
    """Replica autoscaling of the LLM deployment."""


class OrchestratorAutoscaling(ReplicaAutoscaling):
    """Ray Serve autoscaling of the orchestrator; one replica unless sessions are in Redis."""

    max_replicas: int = Field(default=1, ge=1, le=1000)
    """Most replicas Ray Serve may start (above 1 needs `sessions.store: redis`)."""
    target_ongoing_requests: float = Field(default=16.0, gt=0, le=1000)
    """Turns in flight per replica that Serve's autoscaler aims for. A turn mostly waits on
    tools and the LLM, and the NLU batches the turns in flight: one replica takes many."""


class OrchestratorSpec(ApiModel):
    """The agentic workflow: plan, tool calls, policy gate, answer or handoff."""

    autoscaling: OrchestratorAutoscaling = Field(default_factory=OrchestratorAutoscaling)
    """Replica autoscaling of the orchestrator deployment: it takes the HTTP request and runs
    the whole turn, NLU and knowledge-base search included (only an in-cluster LLM has a
    deployment of its own). More than one replica needs `sessions.store: redis`."""


class RouterAutoscaling(ReplicaAutoscaling):
    """Ray Serve autoscaling of the router: it only forwards, so few replicas keep up."""

    max_replicas: int = Field(default=2, ge=1, le=1000)
    """Most replicas Ray Serve may start."""
    target_ongoing_requests: float = Field(default=8.0, gt=0, le=1000)
    """Ongoing requests per replica that Serve's autoscaler aims for."""


class RouterSpec(ApiModel):
    """The router in front of two model revisions while a ModelRollout serves a candidate."""

    autoscaling: RouterAutoscaling = Field(default_factory=RouterAutoscaling)
    """Replica autoscaling of the router deployment."""


class ConfigMapSource(ApiModel):
    """Documents from a ConfigMap: one document per key."""

    name: ObjectName
    """Name of the ConfigMap in the agent's namespace."""


class VolumeSource(ApiModel):
    """Documents from a PersistentVolumeClaim."""

    claim_name: ObjectName
    """Name of the PersistentVolumeClaim (mounted read-only in the Ray pods)."""
    path: str = Field(default="/", pattern=r"^/", max_length=1024)
    """Directory inside the volume holding the documents."""


class KnowledgeBaseSpec(ApiModel):
    """Documents the agent grounds its answers in and cites."""

    cel_rules = (
        CelRule(
            rule="has(self.configMap) != has(self.volume)",
            message="set exactly one knowledge base source: configMap or volume",
        ),
    )

    config_map: ConfigMapSource | None = None
    """Documents from a ConfigMap."""
    volume: VolumeSource | None = None
    """Documents from a PersistentVolumeClaim."""
    top_k: int = Field(default=3, ge=1, le=50)
    """Passages retrieved per question."""
    min_relevance: float = Field(default=DEFAULT_MIN_RELEVANCE, ge=0, le=1)
    """Cosine similarity a passage needs to ground an answer; below it the agent says it has
    no answer rather than cite something else. Measure it on your own documents and questions
    with `switchboard kb calibrate`."""


class ToolGrant(ApiModel):
    """Permission to call some operations of one ToolAdapter."""

    adapter: ObjectName
    """Name of a ToolAdapter in the agent's namespace."""
    operations: list[str] = Field(min_length=1, max_length=100)
    """Operations of that adapter the agent may call."""


class IntentPlan(ApiModel):
    """What the agent does when it recognises one intent."""

    cel_rules = (
        CelRule(
            rule="!(self.handoff && has(self.operation))",
            message="a plan either hands off or calls an operation, not both",
        ),
        CelRule(
            rule="self.requiredSlots.all(s, s in self.slotPrompts)",
            message="every required slot needs a prompt in slotPrompts",
        ),
        CelRule(
            rule="size(self.parameters) == 0 || has(self.operation)",
            message="parameters are inputs of an operation: set operation too",
        ),
    )

    intent: str = Field(min_length=1, max_length=100)
    """Intent label as the NLU model predicts it."""
    required_slots: list[str] = Field(default_factory=list, max_length=10)
    """Slots that must be known before acting (e.g. `order_id`); the agent asks for each
    missing one, over as many turns as it takes."""
    slot_prompts: dict[str, str] = Field(default_factory=dict)
    """Question asked for each missing slot, e.g. `order_id: What is your order number?`."""
    operation: str | None = Field(default=None, pattern=r"^[a-z0-9-]+\.[a-z][a-z0-9_]*$")
    """`adapter.operation` to call once the slots are filled; it must be granted in `tools`."""
    parameters: dict[str, str] = Field(default_factory=dict, max_length=20)
    """Fixed inputs of the operation besides the slots, e.g. `kind: damaged` for an item-issue
    operation shared by two intents."""
    answer_template: str | None = Field(default=None, max_length=2000)
    """Reply, with `{slots[name]}` and `{result[field]}` filled in; without one the LLM (or
    a generic template) phrases the answer."""
    use_knowledge_base: bool = False
    """Answer from knowledge-base passages, citing them."""
    handoff: bool = False
    """Always hand the conversation to a human (e.g. `talk_to_human`)."""


class RateLimitSpec(ApiModel):
    """A token bucket: `burst` messages at once, refilled at `perMinute`."""

    per_minute: int = Field(ge=1, le=100000)
    """Messages per minute, sustained."""
    burst: int = Field(default=10, ge=1, le=10000)
    """Messages allowed at once, after a pause."""


class RateLimitsSpec(ApiModel):
    """Inbound chat turns per session and per customer; a turn over a limit is refused with
    429 and `Retry-After`. Counted in the session store, so replicas share the limit."""

    session: RateLimitSpec | None = None
    """Per conversation (`session_id`)."""
    customer: RateLimitSpec | None = None
    """Per customer (the request's `customer_id`); a turn without one is limited per session
    only."""


class BudgetLimitSpec(ApiModel):
    """Limits per window; an unset one is unlimited."""

    llm_tokens: int | None = Field(default=None, ge=0)
    """LLM tokens (prompt and completion, estimated from words) per window."""
    tool_calls: int | None = Field(default=None, ge=0)
    """Tool calls (operations of the intent plans; handoff tickets not counted) per window."""


# A duration with its unit: 90s, 30m, 1h, 1d.
WINDOW_PATTERN = r"^[1-9][0-9]{0,6}(s|m|h|d)$"
WINDOW_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def window_seconds(window: str) -> int:
    """Seconds of a `WINDOW_PATTERN` duration."""
    return int(window[:-1]) * WINDOW_UNITS[window[-1]]


class BudgetsSpec(ApiModel):
    """Budgets on model use and tool calls per fixed window, counted in the session store
    (shared by replicas). A turn that would exceed one gets `reply` (or a handoff) without the
    LLM or tool call."""

    window: str = Field(default="1h", pattern=WINDOW_PATTERN)
    """The window the budgets count in, with a unit: `90s`, `30m`, `1h`, `1d`."""
    agent: BudgetLimitSpec | None = None
    """What the whole agent (all replicas and revisions) may use per window."""
    customer: BudgetLimitSpec | None = None
    """What one customer (the request's `customer_id`) may use per window."""
    on_exhausted: Literal["reply", "handoff"] = "reply"
    """`reply` answers with `reply`; `handoff` passes the conversation to a human (reason
    `budget_exhausted`)."""
    reply: str = Field(default=DEFAULT_BUDGET_REPLY, min_length=1, max_length=1000)
    """The answer when a budget is exhausted (`onExhausted: reply`)."""


class PolicySpec(ApiModel):
    """The policy gate every action passes before it runs."""

    handoff_confidence_threshold: float = Field(default=0.5, ge=0, le=1)
    """Below this intent confidence the conversation goes to a human."""
    approval_required: list[str] = Field(default_factory=list, max_length=100)
    """Operations (`adapter.operation`) that a human must approve: the agent hands off with
    the proposed action instead of running it."""
    pii_redaction: bool = True
    """Redact emails, phone and card numbers before any LLM prompt, log or audit record."""
    max_tool_calls_per_turn: int = Field(default=3, ge=0, le=20)
    """Tool calls allowed in one conversation turn."""
    rephrase_attempts: int = Field(default=1, ge=0, le=5)
    """Unclear (out-of-scope or low-confidence) messages in a row that the agent answers by
    asking to rephrase before it hands off; a customer asking for a person is handed off at
    once."""
    rate_limit: RateLimitsSpec | None = None
    """Inbound rate limits; unset: none."""
    budgets: BudgetsSpec | None = None
    """Budgets on LLM tokens and tool calls; unset: none."""


def _handoff_value(value: str) -> str:
    if value not in HANDOFF_VALUES:
        raise ValueError(f"must be one of {', '.join(HANDOFF_VALUES)}")
    return value


# One of the contract's HANDOFF_VALUES: an enum in the schema, so the API server rejects others.
HandoffValue = Annotated[
    str,
    AfterValidator(_handoff_value),
    WithJsonSchema({"type": "string", "enum": list(HANDOFF_VALUES)}),
]


class HandoffSpec(ApiModel):
    """Where handoffs go besides the agent console, and who may answer them there."""

    adapter: ObjectName | None = None
    """ToolAdapter (a ticketing system) that also gets a ticket for each handoff; it and
    `operation` must be granted in `tools`. Unset: handoffs live only in the agent console."""
    operation: str = Field(default="create_ticket", pattern=r"^[a-z][a-z0-9_]{0,62}$")
    """The adapter's operation that opens the ticket."""
    fields: dict[str, HandoffValue] = Field(
        default_factory=lambda: dict(DEFAULT_HANDOFF_FIELDS), min_length=1, max_length=50
    )
    """The operation's input fields and what each gets from the handoff: `subject`, `body`
    (the handoff's context as JSON), `priority` (`high` or `normal`), `reason`, `intent`,
    `confidence`, `handoff_id`, `session_id`, `customer_id`, `agent` (this SupportAgent),
    `trigger` (the message that caused the handoff), `transcript` (as text) or
    `conversation_url` (the handoff in the agent console). Every field must be declared by the
    operation's `inputSchema` (when it lists properties), and every input it requires mapped."""
    console_tokens_secret: ObjectName | None = None
    """Secret in the agent's namespace with the human agents' bearer tokens for the agent
    console and API: one key per person, named after them, its value their token. Mounted
    read-only in the Ray pods, so tokens rotate without a restart. Unset: the agent API
    refuses every call."""


class FallbackSpec(ApiModel):
    """What the agent does with an intent the model knows and no plan covers."""

    cel_rules = (
        CelRule(
            rule="!has(self.action) || self.action != 'reply' || has(self.reply)",
            message="action reply needs the reply text",
        ),
    )

    action: Literal["knowledgeBase", "reply", "clarify", "handoff"] | None = None
    """`knowledgeBase`: answer from passages that pass `knowledgeBase.minRelevance`, else say
    so and offer a person; `reply`: the fixed `reply`; `clarify`: ask the customer to say more
    (then hand off, as for unclear messages); `handoff`: a person. Default: `knowledgeBase`
    when the agent has one, else `handoff`."""
    reply: str | None = Field(default=None, max_length=2000)
    """The reply for `reply`, or the question for `clarify`."""


_SMALL_TALK = SmallTalkConfig()


class SmallTalkSpec(ApiModel):
    """Greetings, thanks and goodbyes: recognised from the words (any model), answered
    without the model or a ticket. A conversation closed with thanks or goodbye and no handoff
    counts as resolved."""

    enabled: bool = True
    """Answer small talk; off, such messages go to the model like any other."""
    greeting: str = Field(default=_SMALL_TALK.greeting, min_length=1, max_length=500)
    """Reply to a greeting."""
    thanks: str = Field(default=_SMALL_TALK.thanks, min_length=1, max_length=500)
    """Reply to thanks."""
    goodbye: str = Field(default=_SMALL_TALK.goodbye, min_length=1, max_length=500)
    """Reply to a goodbye."""


class RedisSessionSpec(ApiModel):
    """A Redis server shared by all replicas."""

    url_secret_ref: SecretKeyRef
    """Secret key holding the Redis URL (`redis://...`)."""


class SessionSpec(ApiModel):
    """Where conversation state lives between turns."""

    cel_rules = (
        CelRule(
            rule="(self.store == 'redis') == has(self.redis)",
            message="store redis needs the redis section, and only it",
        ),
    )

    store: Literal["memory", "redis"] = "memory"
    """`memory` keeps sessions in one orchestrator replica; `redis` shares them across
    replicas and restarts."""
    redis: RedisSessionSpec | None = None
    """Redis settings (store `redis`)."""
    ttl_seconds: int = Field(default=86400, ge=60, le=2592000)
    """Idle time after which a session is forgotten."""
    token_secret: ObjectName | None = None
    """Secret whose keys sign session tokens (any key names; tokens are signed with the key
    whose name sorts last and accepted with any): the first turn's answer carries a token, and
    later turns and reads of the conversation need it. Rotate by adding a key that sorts after
    the current one, then removing the old. Unset: a session id alone continues a conversation
    (`SessionsBound` in status says so)."""


class IngressSpec(ApiModel):
    """How customers' traffic reaches the agent through Istio."""

    hosts: list[str] = Field(min_length=1, max_length=50)
    """Hostnames the agent answers on."""
    gateways: list[str] = Field(default_factory=list, max_length=50)
    """Istio Gateways (`namespace/name`) to bind; empty means the mesh only."""


class AuthSpec(ApiModel):
    """Customers authenticate to the chat with a JWT from your identity provider. With
    `ingress` and `jwksUri` Istio verifies it at the edge (a RequestAuthentication and an
    AuthorizationPolicy on the agent's pods) and passes the customer id on in a header; else
    the agent verifies it itself. The agent console and its API keep their own bearer tokens
    (`handoff.consoleTokensSecret`)."""

    cel_rules = (
        CelRule(
            rule="has(self.jwksUri) != has(self.jwksSecret)",
            message="set exactly one key source: jwksUri or jwksSecret",
        ),
    )

    issuer: str = Field(min_length=1, max_length=1024)
    """The `iss` every token must carry, e.g. `https://login.example.com/`."""
    jwks_uri: str | None = Field(default=None, pattern=r"^https?://", max_length=2048)
    """URL of the issuer's JSON Web Key Set (fetched, cached, refetched for an unknown `kid`)."""
    jwks_secret: SecretKeyRef | None = None
    """Secret key holding a JSON Web Key Set document; mounted read-only in the Ray pods, so
    a rotated key reaches them without a restart. The agent verifies tokens itself then."""
    audiences: list[str] = Field(min_length=1, max_length=20)
    """Accepted `aud` values: a token must name at least one."""
    customer_id_claim: str = Field(
        default="sub", min_length=1, max_length=253, pattern=r"^[A-Za-z0-9_.:/-]+$"
    )
    """The claim that identifies the customer (the conversation's `customer_id`)."""
    required: bool = True
    """Refuse chat turns and session reads without a valid token (401); false lets anonymous
    customers chat while a token, if sent, must still be valid."""


class SupportAgentSpec(ApiModel):
    """Desired state of a SupportAgent."""

    cel_rules = (
        CelRule(
            rule="!has(self.llm) || self.llm.gpusPerReplica == 0 || has(self.workerPools.gpu)",
            message="an LLM with gpusPerReplica above 0 needs workerPools.gpu",
        ),
        CelRule(
            rule="self.sessions.store == 'redis' || self.orchestrator.autoscaling.maxReplicas == 1",
            message="sessions.store memory keeps conversations in one orchestrator replica: "
            "set orchestrator.autoscaling.maxReplicas to 1, or use sessions.store redis",
        ),
        CelRule(
            rule="!has(self.fallback.action) || self.fallback.action != 'knowledgeBase'"
            " || has(self.knowledgeBase)",
            message="fallback.action knowledgeBase needs spec.knowledgeBase",
        ),
        CelRule(
            rule="has(self.modelStorage) || !(self.nlu.modelUri.startsWith('s3://') ||"
            " (has(self.llm) && has(self.llm.modelUri) && self.llm.modelUri.startsWith('s3://')))",
            message="s3:// model URIs need spec.modelStorage",
        ),
        CelRule(
            rule="!has(self.handoff.adapter) || self.tools.exists(t, "
            "t.adapter == self.handoff.adapter && self.handoff.operation in t.operations)",
            message="handoff.adapter and handoff.operation must be granted in tools",
        ),
    )

    ray: RaySpec = Field(default_factory=RaySpec)
    """The Ray cluster (image, version, head pod)."""
    worker_pools: WorkerPools = Field(default_factory=WorkerPools)
    """CPU and optional GPU worker pools."""
    nlu: NluSpec
    """The intent classifier."""
    llm: LlmSpec | None = None
    """Optional language model for answers; templates are used without one."""
    model_storage: ModelStorageSpec | None = None
    """Object storage for `s3://` model URIs (this agent's and its rollouts' candidates)."""
    orchestrator: OrchestratorSpec = Field(default_factory=OrchestratorSpec)
    """The agentic workflow deployment."""
    router: RouterSpec = Field(default_factory=RouterSpec)
    """The router deployment, present only while a rollout serves two revisions."""
    knowledge_base: KnowledgeBaseSpec | None = None
    """Optional documents to ground answers in."""
    tools: list[ToolGrant] = Field(
        default_factory=list, max_length=50, json_schema_extra=list_map("adapter")
    )
    """ToolAdapters the agent may use, and which of their operations (one entry per adapter)."""
    intents: list[IntentPlan] = Field(
        default_factory=list, max_length=200, json_schema_extra=list_map("intent")
    )
    """Per-intent plans; intents without a plan get the `fallback`."""
    policy: PolicySpec = Field(default_factory=PolicySpec)
    """Handoff, approval and safety policy."""
    handoff: HandoffSpec = Field(default_factory=HandoffSpec)
    """Where handoffs to humans go (a ticketing system besides the agent console), and the
    human agents' console tokens."""
    fallback: FallbackSpec = Field(default_factory=FallbackSpec)
    """What to do for intents of the model that no plan covers (`IntentsCovered` in status
    lists them)."""
    small_talk: SmallTalkSpec = Field(default_factory=SmallTalkSpec)
    """Greetings, thanks and goodbyes."""
    sessions: SessionSpec = Field(default_factory=SessionSpec)
    """Conversation state store."""
    ingress: IngressSpec | None = None
    """Istio routing; without it no VirtualService is created."""
    auth: AuthSpec | None = None
    """Customer authentication of the chat by JWT; unset, the chat is open to anyone who can
    reach it."""


class TrafficEntry(ApiModel):
    """Share of the agent's traffic that one model revision receives."""

    revision: str
    """Model revision (short hash of the model specs)."""
    percent: int
    """Percent of untargeted traffic sent to this revision."""
    tag: str
    """`stable` or `candidate`."""


class SupportAgentStatus(BaseStatus):
    """Observed state of a SupportAgent."""

    revision: str | None = None
    """Stable model revision being served."""
    endpoint: str | None = None
    """In-cluster URL of the agent's Serve endpoint."""
    traffic: list[TrafficEntry] = Field(default_factory=list)
    """Traffic per model revision."""
    rollout: str | None = None
    """ModelRollout whose candidate is being served beside the stable revision."""
    ready_tools: str | None = None
    """Ready ToolAdapters out of those granted, e.g. `2/2`."""


class SupportAgent(ApiModel):
    """A customer-support agent: NLU, optional LLM, knowledge base and tools, served on Ray."""

    kind: ClassVar[str] = "SupportAgent"
    plural: ClassVar[str] = "supportagents"
    short_names: ClassVar[tuple[str, ...]] = ("sagent",)

    spec: SupportAgentSpec
    status: SupportAgentStatus | None = None
