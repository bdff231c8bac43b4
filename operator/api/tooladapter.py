"""ToolAdapter: a connector to one business system, run as its own gateway Deployment so that
credentials stay out of the Ray cluster and a slow system cannot starve the agents."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field

from .base import ApiModel, BaseStatus, CelRule, ObjectName, ResourceRequirements, list_map

DEFAULT_GATEWAY_IMAGE = "ghcr.io/switchboard-dev/tool-gateway:0.1.0"


class Operation(ApiModel):
    """One call the agent may make on the system."""

    cel_rules = (
        CelRule(
            rule="!(self.method == 'GET' && self.mutating)",
            message="a GET operation cannot be mutating",
        ),
    )

    name: str = Field(pattern=r"^[a-z][a-z0-9_]{0,62}$")
    """Operation name the agent calls (`snake_case`), served at `/v1/ops/{name}`."""
    description: str | None = Field(default=None, max_length=1024)
    """What the operation does, shown to planners and in audit records."""
    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE"] = "GET"
    """HTTP method used against the system."""
    path: str = Field(pattern=r"^/", max_length=1024)
    """Path template under `baseURL`; `{param}` placeholders are filled from the input."""
    input_schema: dict[str, Any] = Field(
        default_factory=lambda: {"type": "object"},
        json_schema_extra={"x-kubernetes-preserve-unknown-fields": True},
    )
    """JSON Schema the operation's input must satisfy; the gateway rejects other input."""
    mutating: bool = False
    """Changes data in the system: never retried without an idempotency key, and subject to
    the agent's approval policy."""
    long_running: bool = False
    """Runs asynchronously: the agent gets a task id and the result on a later turn."""


class CredentialsSpec(ApiModel):
    """How the gateway authenticates to the system, from a Secret mounted only into it."""

    cel_rules = (
        CelRule(
            rule="(self.type == 'none') != has(self.secretRef)",
            message="auth types bearer, basic and header need secretRef; type none takes none",
        ),
        CelRule(
            rule="(self.type == 'header') == has(self.headerName)",
            message="headerName is required for auth type header, and only for it",
        ),
    )

    type: Literal["none", "bearer", "basic", "header"] = "none"
    """`bearer` sends key `token`; `basic` sends keys `username` and `password`; `header`
    sends key `value` in `headerName`."""
    secret_ref: ObjectName | None = None
    """Name of the Secret in the adapter's namespace holding the keys above."""
    header_name: str | None = Field(default=None, pattern=r"^[A-Za-z0-9-]+$", max_length=128)
    """Header carrying the credential (type `header`)."""


class RetrySpec(ApiModel):
    """Retries of failed calls (timeouts, 5xx, 429) with exponential backoff. Mutating calls
    are retried only when they carry an idempotency key."""

    cel_rules = (
        CelRule(
            rule="self.initialBackoffMs <= self.maxBackoffMs",
            message="initialBackoffMs must be less than or equal to maxBackoffMs",
        ),
    )

    attempts: int = Field(default=3, ge=1, le=10)
    """Total attempts per call, the first included."""
    initial_backoff_ms: int = Field(default=100, ge=0, le=60000)
    """Wait before the first retry."""
    max_backoff_ms: int = Field(default=2000, ge=0, le=300000)
    """Upper bound on the wait between retries."""
    multiplier: float = Field(default=2.0, ge=1, le=10)
    """Growth of the wait from one retry to the next."""


class CircuitBreakerSpec(ApiModel):
    """Stops calling a failing system for a while, answering at once instead."""

    failure_threshold: int = Field(default=5, ge=1, le=1000)
    """Consecutive failures that open the breaker."""
    open_seconds: int = Field(default=30, ge=1, le=3600)
    """How long the breaker stays open before a trial call."""
    half_open_max_calls: int = Field(default=1, ge=1, le=100)
    """Trial calls allowed while half-open."""


class RateLimitSpec(ApiModel):
    """Token bucket protecting the system from the agents."""

    requests_per_second: float = Field(default=50, gt=0, le=100000)
    """Sustained calls per second per gateway replica."""
    burst: int = Field(default=100, ge=1, le=100000)
    """Calls allowed at once above the sustained rate."""


class IdempotencySpec(ApiModel):
    """Idempotency keys on mutating calls, so retries cannot double-charge or double-cancel."""

    enabled: bool = True
    """Send an idempotency key with every mutating call."""
    header_name: str = Field(default="Idempotency-Key", pattern=r"^[A-Za-z0-9-]+$")
    """Header the system reads the key from."""


class HpaBehavior(ApiModel):
    """How fast the gateway scales (HPA `behavior`)."""

    scale_up_stabilization_seconds: int = Field(default=0, ge=0, le=3600)
    """Look-back window before scaling up."""
    scale_down_stabilization_seconds: int = Field(default=300, ge=0, le=3600)
    """Look-back window before scaling down, to avoid flapping."""
    scale_down_percent_per_minute: int = Field(default=50, ge=1, le=100)
    """Most replicas removed per minute, as a percentage."""


class GatewaySpec(ApiModel):
    """The gateway Deployment and its HorizontalPodAutoscaler."""

    cel_rules = (
        CelRule(
            rule="self.minReplicas <= self.maxReplicas",
            message="minReplicas must be less than or equal to maxReplicas",
        ),
    )

    image: str = Field(default=DEFAULT_GATEWAY_IMAGE, min_length=1)
    """Gateway container image (contains `switchboard.serving`)."""
    min_replicas: int = Field(default=2, ge=1, le=100)
    """Fewest gateway replicas."""
    max_replicas: int = Field(default=5, ge=1, le=100)
    """Most gateway replicas."""
    target_cpu_utilization: int = Field(default=70, ge=1, le=100)
    """CPU utilisation (% of requests) the HPA aims for."""
    behavior: HpaBehavior = Field(default_factory=HpaBehavior)
    """Scaling speed."""
    resources: ResourceRequirements = Field(
        default_factory=lambda: ResourceRequirements(
            requests={"cpu": "100m", "memory": "128Mi"}, limits={"memory": "256Mi"}
        )
    )
    """Resources of the gateway container (CPU requests drive the HPA)."""


class ToolAdapterSpec(ApiModel):
    """Desired state of a ToolAdapter."""

    system: Literal["crm", "ticketing", "orders", "knowledgeBase", "other"]
    """Kind of business system; `ticketing` adapters can receive human handoffs."""
    base_url: str = Field(pattern=r"^https?://[^\s]+$", max_length=2048, alias="baseURL")
    """Base URL of the system's HTTP API."""
    operations: list[Operation] = Field(
        min_length=1, max_length=100, json_schema_extra=list_map("name")
    )
    """Operations the gateway exposes; agents may call only these. Names are unique."""
    credentials: CredentialsSpec = Field(default_factory=CredentialsSpec)
    """Authentication to the system."""
    timeout_seconds: float = Field(default=5, gt=0, le=300)
    """Time limit of one attempt."""
    retries: RetrySpec = Field(default_factory=RetrySpec)
    """Retry policy."""
    circuit_breaker: CircuitBreakerSpec = Field(default_factory=CircuitBreakerSpec)
    """Circuit breaker."""
    rate_limit: RateLimitSpec = Field(default_factory=RateLimitSpec)
    """Rate limit."""
    idempotency: IdempotencySpec = Field(default_factory=IdempotencySpec)
    """Idempotency keys for mutating calls."""
    gateway: GatewaySpec = Field(default_factory=GatewaySpec)
    """Gateway Deployment and autoscaling."""


class ToolAdapterStatus(BaseStatus):
    """Observed state of a ToolAdapter."""

    endpoint: str | None = None
    """In-cluster URL of the gateway."""
    available_replicas: int | None = None
    """Gateway replicas ready to serve."""
    operations: int | None = None
    """Number of declared operations."""


class ToolAdapter(ApiModel):
    """A connector to a business system, with its resilience policy and credentials."""

    kind: ClassVar[str] = "ToolAdapter"
    plural: ClassVar[str] = "tooladapters"
    short_names: ClassVar[tuple[str, ...]] = ("tadapter",)

    spec: ToolAdapterSpec
    status: ToolAdapterStatus | None = None
