"""The operator's configuration: one object, built once at start and kept in kopf's `memo`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from .render.access import Scrapers

# For `kopf run -m switchboard.operator.main` (tests run it so), where no command line of ours
# is parsed: the same settings from the environment.
METRICS_PORT_ENV = "SWITCHBOARD_METRICS_PORT"
PROMETHEUS_URL_ENV = "SWITCHBOARD_PROMETHEUS_URL"
SCRAPER_POD_LABELS_ENV = "SWITCHBOARD_SCRAPER_POD_LABELS"
SCRAPER_NAMESPACE_LABELS_ENV = "SWITCHBOARD_SCRAPER_NAMESPACE_LABELS"


def parse_labels(text: str) -> dict[str, str]:
    """`key=value,key=value` → labels; an empty text, none."""
    labels: dict[str, str] = {}
    for pair in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"expected key=value, got {pair!r}")
        labels[key.strip()] = value.strip()
    return labels


def scrapers_of(pod_labels: str | None, namespace_labels: str | None) -> Scrapers:
    """Scrapers from label texts; an unset one keeps the default (Prometheus, any namespace)."""
    default = Scrapers()
    return Scrapers(
        pod_labels=default.pod_labels if pod_labels is None else parse_labels(pod_labels),
        namespace_labels=(
            default.namespace_labels if namespace_labels is None else parse_labels(namespace_labels)
        ),
    )


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
    scrapers: Scrapers = field(default_factory=Scrapers)
    """The pods the gateways' NetworkPolicies admit for metrics besides the agents."""

    @classmethod
    def from_environment(cls, env: Mapping[str, str]) -> OperatorConfig:
        return cls(
            metrics_port=int(env.get(METRICS_PORT_ENV, "8080")),
            prometheus_url=env.get(PROMETHEUS_URL_ENV) or None,
            scrapers=scrapers_of(
                env.get(SCRAPER_POD_LABELS_ENV), env.get(SCRAPER_NAMESPACE_LABELS_ENV)
            ),
        )
