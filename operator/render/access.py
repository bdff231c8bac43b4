"""Who may call a tool gateway: its `NetworkPolicy`, and with Istio its `AuthorizationPolicy`;
and the agent's side of it, the `ServiceAccount` its Ray pods run as.

A gateway admits, on its HTTP port, only the Ray pods (head and workers) of the SupportAgents
whose `spec.tools` reference its ToolAdapter, and the metrics scrapers (Prometheus). Nothing
references it: only the scrapers (deny by default). The NetworkPolicy selects callers by label
(`switchboard.dev/agent` on the Ray pod templates); the AuthorizationPolicy by the mesh identity
of the agent's own ServiceAccount, which a pod cannot claim by relabelling itself.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from switchboard.serving.config import GATEWAY_HTTP_PORT

from .gateway import gateway_selector
from .names import AGENT_LABEL, Parent, gateway_name, metadata, ray_service_account_name

# Istio's default trust domain: SPIFFE principals read `<trust domain>/ns/<ns>/sa/<sa>`.
TRUST_DOMAIN = "cluster.local"
# The label of every agent's Ray pods (`rayservice._pod_template`) besides the agent's name.
RAY_POD_LABELS = {"app.kubernetes.io/component": "ray"}
# Prometheus as the Prometheus Operator (kube-prometheus-stack) labels its pods, any namespace.
DEFAULT_SCRAPER_POD_LABELS = {"app.kubernetes.io/name": "prometheus"}
METRICS_PATH = "/metrics"


@dataclass(frozen=True)
class Scrapers:
    """The pods that scrape gateway metrics: `pod_labels` in namespaces with `namespace_labels`
    (empty: any namespace)."""

    pod_labels: Mapping[str, str] = field(default_factory=lambda: dict(DEFAULT_SCRAPER_POD_LABELS))
    namespace_labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class GatewayAccess:
    """What a gateway's access policies render from: the agents that reference the adapter,
    the scrapers, and whether the cluster runs Istio (serves `security.istio.io/v1`)."""

    agents: tuple[str, ...] = ()
    scrapers: Scrapers = field(default_factory=Scrapers)
    istio: bool = False
    grants: tuple[tuple[str, tuple[str, ...]], ...] = ()
    """(agent, the operations it is granted): what the gateway checks each verified caller
    against. An agent in `agents` without an entry here is granted nothing."""

    @classmethod
    def of(
        cls,
        agents: Iterable[str],
        scrapers: Scrapers | None = None,
        istio: bool = False,
        grants: Mapping[str, Iterable[str]] | None = None,
    ) -> GatewayAccess:
        granted = tuple(
            (agent, tuple(sorted(set(ops)))) for agent, ops in sorted((grants or {}).items())
        )
        return cls(tuple(sorted(set(agents))), scrapers or Scrapers(), istio, granted)

    def grant_table(self) -> dict[str, list[str]]:
        return {agent: list(ops) for agent, ops in self.grants}


def principal(namespace: str, agent: str) -> str:
    """The Istio (SPIFFE) identity of an agent's Ray pods."""
    return f"{TRUST_DOMAIN}/ns/{namespace}/sa/{ray_service_account_name(agent)}"


def render_service_account(parent: Parent) -> dict[str, Any]:
    """The agent's Ray pods' own ServiceAccount (not the namespace's `default`, which every
    other pod shares): what the gateways' AuthorizationPolicies name."""
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": metadata(parent, ray_service_account_name(parent.name), "ray"),
    }


def render_networkpolicy(parent: Parent, access: GatewayAccess) -> dict[str, Any]:
    ports = [{"protocol": "TCP", "port": GATEWAY_HTTP_PORT}]
    ingress: list[dict[str, Any]] = []
    if access.agents:
        agents = {
            "matchLabels": dict(RAY_POD_LABELS),
            "matchExpressions": [
                {"key": AGENT_LABEL, "operator": "In", "values": list(access.agents)}
            ],
        }
        ingress.append({"from": [{"podSelector": agents}], "ports": ports})
    scrapers = access.scrapers
    ingress.append(
        {
            "from": [
                {
                    "namespaceSelector": _match_labels(scrapers.namespace_labels),
                    "podSelector": _match_labels(scrapers.pod_labels),
                }
            ],
            "ports": ports,
        }
    )
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": metadata(parent, gateway_name(parent.name), "tool-gateway"),
        "spec": {
            "podSelector": {"matchLabels": gateway_selector(parent)},
            "policyTypes": ["Ingress"],
            "ingress": ingress,
        },
    }


def render_authorizationpolicy(parent: Parent, access: GatewayAccess) -> dict[str, Any]:
    """ALLOW the referencing agents' principals anything, and anyone `GET /metrics` (scrapers
    often have no mesh identity; the NetworkPolicy admits only them besides the agents). With no
    rule matching, Istio denies: a gateway no agent references serves nothing but metrics."""
    rules: list[dict[str, Any]] = []
    if access.agents:
        principals = [principal(parent.namespace, agent) for agent in access.agents]
        rules.append({"from": [{"source": {"principals": principals}}]})
    rules.append({"to": [{"operation": {"methods": ["GET"], "paths": [METRICS_PATH]}}]})
    return {
        "apiVersion": "security.istio.io/v1",
        "kind": "AuthorizationPolicy",
        "metadata": metadata(parent, gateway_name(parent.name), "tool-gateway"),
        "spec": {
            "selector": {"matchLabels": gateway_selector(parent)},
            "action": "ALLOW",
            "rules": rules,
        },
    }


def render_gateway_access(parent: Parent, access: GatewayAccess) -> list[dict[str, Any]]:
    children = [render_networkpolicy(parent, access)]
    if access.istio:
        children.append(render_authorizationpolicy(parent, access))
    return children


def _match_labels(labels: Mapping[str, str]) -> dict[str, Any]:
    """A label selector; no labels selects everything (`{}`)."""
    return {"matchLabels": dict(sorted(labels.items()))} if labels else {}
