"""The operator's own Prometheus metrics."""

from __future__ import annotations

import threading

from prometheus_client import Counter, Gauge, Histogram

RECONCILES = Counter(
    "switchboard_reconcile_total",
    "Reconciliations by kind and outcome (ready, progressing, degraded, failed, error).",
    ["kind", "outcome"],
)
RECONCILE_SECONDS = Histogram(
    "switchboard_reconcile_duration_seconds",
    "Time to reconcile one object, API calls included.",
    ["kind"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
AGENTS = Gauge(
    "switchboard_agents",
    "SupportAgents by Ready condition status.",
    ["ready"],
)

_agent_ready: dict[tuple[str, str], bool] = {}
_agent_lock = threading.Lock()


def set_agent_ready(namespace: str, name: str, ready: bool | None) -> None:
    """Record an agent's readiness (None: the agent is gone) and refresh the gauge."""
    with _agent_lock:
        if ready is None:
            _agent_ready.pop((namespace, name), None)
        else:
            _agent_ready[(namespace, name)] = ready
        ready_count = sum(_agent_ready.values())
        AGENTS.labels(ready="true").set(ready_count)
        AGENTS.labels(ready="false").set(len(_agent_ready) - ready_count)
