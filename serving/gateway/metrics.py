"""The gateway's Prometheus metrics, in a registry of its own (one per app, so tests can run
several gateways in one process)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from enum import StrEnum

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest


class Outcome(StrEnum):
    """The `outcome` label of `tool_call_total`."""

    SUCCESS = "success"
    """Upstream answered 1xx-3xx."""
    CLIENT_ERROR = "client_error"
    """Upstream answered 4xx other than 429 (passed back as is)."""
    UPSTREAM_ERROR = "upstream_error"
    """5xx, 429, connection failure or unusable response, after retries."""
    TIMEOUT = "timeout"
    """The last attempt timed out."""
    REJECTED_BREAKER = "rejected_breaker"
    REJECTED_RATE_LIMIT = "rejected_rate_limit"
    INVALID_INPUT = "invalid_input"
    """Malformed, oversized or schema-violating input: upstream never called."""
    UNAVAILABLE = "unavailable"
    """The gateway cannot authenticate (credentials missing or unusable)."""


REFUSAL_REASONS = ("missing_token", "invalid_token", "not_granted", "unavailable")

# Tool calls span milliseconds (cache hits) to the retry budget (several seconds).
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class GatewayMetrics:
    def __init__(
        self, tool: str, operations: Iterable[str], circuit_state: Callable[[], float]
    ) -> None:
        self.tool = tool
        self.registry = CollectorRegistry()
        self.calls = Counter(
            "tool_call",
            "Tool calls by operation and outcome.",
            ["tool", "operation", "outcome"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "tool_call_latency_seconds",
            "Time to answer a tool call that reached upstream, retries and backoff included.",
            ["tool", "operation"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.retries = Counter(
            "tool_call_retries",
            "Upstream attempts beyond the first.",
            ["tool", "operation"],
            registry=self.registry,
        )
        self.circuit = Gauge(
            "tool_gateway_circuit_state",
            "Circuit breaker state: 0 closed, 1 half-open, 2 open.",
            ["tool"],
            registry=self.registry,
        )
        self.refusals = Counter(
            "tool_gateway_caller_refusals",
            "Calls refused before the pipeline because of who called: missing_token, "
            "invalid_token, not_granted, unavailable (the caller could not be verified).",
            ["tool", "reason"],
            registry=self.registry,
        )
        for reason in REFUSAL_REASONS:
            self.refusals.labels(tool, reason)
        # Read at scrape time: the breaker moves from open to half-open by the clock alone.
        self.circuit.labels(tool=tool).set_function(circuit_state)
        # Every series exists from the start at 0, so rate() and alerts see the first event.
        for operation in operations:
            for outcome in Outcome:
                self.calls.labels(tool, operation, outcome.value)
            self.latency.labels(tool, operation)
            self.retries.labels(tool, operation)

    def call(self, operation: str, outcome: Outcome) -> None:
        self.calls.labels(self.tool, operation, outcome.value).inc()

    def caller_refused(self, reason: str) -> None:
        self.refusals.labels(self.tool, reason).inc()

    def observe_latency(self, operation: str, seconds: float) -> None:
        self.latency.labels(self.tool, operation).observe(seconds)

    def retry(self, operation: str) -> None:
        self.retries.labels(self.tool, operation).inc()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
