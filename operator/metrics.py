"""The operator's own Prometheus metrics."""

from __future__ import annotations

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

TRAINING_PHASE = Gauge(
    "switchboard_training_phase",
    "1 for a ModelTraining's current phase, 0 for the others.",
    ["namespace", "training", "phase"],
)
TRAINING_PHASES = ("Idle", "Running", "Passed", "Refused", "Failed", "Degraded")

TRAINING_RUNS = Counter(
    "switchboard_training_runs_total",
    "Finished ModelTraining runs by result (Passed, Refused, Failed, BadData).",
    ["namespace", "training", "result"],
)
TRAINING_ACCURACY = Gauge(
    "switchboard_training_heldout_accuracy",
    "Held-out accuracy (int8) of the last report of a ModelTraining, per model (current, "
    "candidate): both evaluated in the same run on the same rows.",
    ["namespace", "training", "model"],
)
TRAINING_RUN_SECONDS = Histogram(
    "switchboard_training_run_duration_seconds",
    "Time from a run's RayJob creation until its report (or failure) was seen.",
    ["namespace", "training"],
    buckets=(60, 120, 300, 600, 900, 1800, 3600, 7200, 14400, 28800),
)


class ObjectGauges:
    """The per-object series: set from the operator's event loop only (no lock), kept in its
    memo, and each series removed with its object."""

    def __init__(self) -> None:
        self._agent_ready: dict[tuple[str, str], bool] = {}
        self._rollouts: dict[tuple[str, str], str] = {}  # (namespace, rollout) → its agent
        self._trainings: set[tuple[str, str]] = set()

    def agent_ready(self, namespace: str, name: str, ready: bool | None) -> None:
        """Record an agent's readiness (None: the agent is gone) and refresh the totals."""
        if ready is None:
            if self._agent_ready.pop((namespace, name), None) is not None:
                AGENT_READY.remove(namespace, name)
        else:
            self._agent_ready[(namespace, name)] = ready
            AGENT_READY.labels(namespace=namespace, agent=name).set(1 if ready else 0)
        ready_count = sum(self._agent_ready.values())
        AGENTS.labels(ready="true").set(ready_count)
        AGENTS.labels(ready="false").set(len(self._agent_ready) - ready_count)

    def rollout(
        self, namespace: str, name: str, agent: str, phase: str | None, weight: int
    ) -> None:
        """Record a rollout's phase and weight; `phase=None` removes its series (deleted)."""
        previous_agent = self._rollouts.pop((namespace, name), None)
        if previous_agent is not None:
            if previous_agent != agent or phase is None:
                ROLLOUT_WEIGHT.remove(namespace, name, previous_agent)
            if phase is None:
                for p in ROLLOUT_PHASES:
                    ROLLOUT_PHASE.remove(namespace, name, p)
        if phase is None:
            return
        self._rollouts[(namespace, name)] = agent
        ROLLOUT_WEIGHT.labels(namespace=namespace, rollout=name, agent=agent).set(weight)
        for p in ROLLOUT_PHASES:
            ROLLOUT_PHASE.labels(namespace=namespace, rollout=name, phase=p).set(
                1 if p == phase else 0
            )

    def training(self, namespace: str, name: str, phase: str | None) -> None:
        """Record a training's phase; `phase=None` removes its series (deleted)."""
        if phase is None:
            if (namespace, name) in self._trainings:
                self._trainings.discard((namespace, name))
                for p in TRAINING_PHASES:
                    TRAINING_PHASE.remove(namespace, name, p)
            return
        self._trainings.add((namespace, name))
        for p in TRAINING_PHASES:
            TRAINING_PHASE.labels(namespace=namespace, training=name, phase=p).set(
                1 if p == phase else 0
            )
