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

AGENT_READY = Gauge(
    "switchboard_agent_ready",
    "1 while a SupportAgent's Ready condition is True, 0 otherwise (one series per agent).",
    ["namespace", "agent"],
)

_agent_ready: dict[tuple[str, str], bool] = {}
_agent_lock = threading.Lock()


def set_agent_ready(namespace: str, name: str, ready: bool | None) -> None:
    """Record an agent's readiness (None: the agent is gone) and refresh the gauge."""
    with _agent_lock:
        if ready is None:
            if _agent_ready.pop((namespace, name), None) is not None:
                AGENT_READY.remove(namespace, name)
        else:
            _agent_ready[(namespace, name)] = ready
            AGENT_READY.labels(namespace=namespace, agent=name).set(1 if ready else 0)
        ready_count = sum(_agent_ready.values())
        AGENTS.labels(ready="true").set(ready_count)
        AGENTS.labels(ready="false").set(len(_agent_ready) - ready_count)


ROLLOUT_WEIGHT = Gauge(
    "switchboard_rollout_weight",
    "Percent of an agent's traffic a ModelRollout's candidate receives.",
    ["namespace", "rollout", "agent"],
)
ROLLOUT_PHASE = Gauge(
    "switchboard_rollout_phase",
    "1 for a ModelRollout's current phase, 0 for the others.",
    ["namespace", "rollout", "phase"],
)
ROLLOUT_PHASES = ("Initializing", "Progressing", "Holding", "Paused", "Succeeded", "Failed")


def set_rollout(namespace: str, name: str, agent: str, phase: str | None, weight: int) -> None:
    """Record a rollout's phase and weight; `phase=None` removes its series (deleted)."""
    if phase is None:
        for p in ROLLOUT_PHASES:
            ROLLOUT_PHASE.remove(namespace, name, p) if (
                namespace,
                name,
                p,
            ) in _phase_keys else None
            _phase_keys.discard((namespace, name, p))
        if (namespace, name, agent) in _weight_keys:
            ROLLOUT_WEIGHT.remove(namespace, name, agent)
            _weight_keys.discard((namespace, name, agent))
        return
    ROLLOUT_WEIGHT.labels(namespace=namespace, rollout=name, agent=agent).set(weight)
    _weight_keys.add((namespace, name, agent))
    for p in ROLLOUT_PHASES:
        ROLLOUT_PHASE.labels(namespace=namespace, rollout=name, phase=p).set(1 if p == phase else 0)
        _phase_keys.add((namespace, name, p))


_weight_keys: set[tuple[str, str, str]] = set()
_phase_keys: set[tuple[str, str, str]] = set()
