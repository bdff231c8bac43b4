"""The operator's configuration: one object, built once at start and kept in kopf's `memo`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

# For `kopf run -m switchboard.operator.main` (tests run it so), where no command line of ours
# is parsed: the same settings from the environment.
METRICS_PORT_ENV = "SWITCHBOARD_METRICS_PORT"
PROMETHEUS_URL_ENV = "SWITCHBOARD_PROMETHEUS_URL"


@dataclass(frozen=True)
class OperatorConfig:
    metrics_port: int = 8080
    """Where `/metrics` is served; 0 serves none."""
    prometheus_url: str | None = None
    """The Prometheus that progressive rollouts ask, unless a rollout names its own."""
    drift_seconds: float = 60.0
    """How often an object is reconciled when nothing marked it: children edited or deleted
    by someone else, and Secrets or ConfigMaps (not watched) that appeared, are found so."""
    rollout_tick_seconds: float = 2.0
    """Rollout steps are measured in seconds: a rollout is re-evaluated this often."""
    reconcile_threads: int = 16
    """Reconciles running at once (each makes blocking API calls)."""

    @classmethod
    def from_environment(cls, env: Mapping[str, str]) -> OperatorConfig:
        return cls(
            metrics_port=int(env.get(METRICS_PORT_ENV, "8080")),
            prometheus_url=env.get(PROMETHEUS_URL_ENV) or None,
        )
