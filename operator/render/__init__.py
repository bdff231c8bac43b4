"""Pure renderers: a custom resource's spec (plus observed facts) → the child objects as dicts.

Nothing here does I/O or imports a Kubernetes client; the reconcilers apply what these return,
and `switchboard render` prints it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from ..api.base import API_VERSION
from ..api.modelrollout import ModelRolloutSpec
from ..api.modeltraining import ModelTrainingSpec
from ..api.supportagent import SupportAgentSpec
from ..api.tooladapter import ToolAdapterSpec
from ..api.validation import SpecError, validate_spec
from .access import GatewayAccess, Scrapers, render_gateway_access, render_service_account
from .edge_auth import render_edge_auth
from .gateway import render_gateway
from .names import Parent, preview_run_name
from .rayservice import render_rayservice
from .rollout import canary_of, initial_weight
from .serve_config import (
    Canary,
    UnresolvedReference,
    agent_revision,
    candidate_spec,
    istio_verifies,
    traffic,
)
from .training import render_rayjob
from .virtualservice import render_virtualservice

__all__ = [
    "Canary",
    "GatewayAccess",
    "Parent",
    "RenderError",
    "Scrapers",
    "UnresolvedReference",
    "render_adapter",
    "render_agent",
    "render_manifests",
]


def render_agent(
    parent: Parent,
    spec: SupportAgentSpec,
    adapters: Mapping[str, ToolAdapterSpec],
    canary: Canary | None = None,
) -> list[dict[str, Any]]:
    """RayService, then the VirtualService when the agent has ingress hosts (and, when Istio
    verifies its customers' tokens, a RequestAuthentication and an AuthorizationPolicy); a
    rollout's canary adds its candidate application and weighted, tester-aware routes."""
    children = [render_rayservice(parent, spec, adapters, canary)]
    if spec.ingress:
        revisions = revision_traffic(spec, canary)
        children.append(render_virtualservice(parent, spec.ingress, revisions, canary))
    if spec.auth and istio_verifies(spec):
        children += render_edge_auth(parent, spec.auth)
    # The Ray pods' own identity, which the tool gateways' AuthorizationPolicies admit.
    children.append(render_service_account(parent))
    return children


def revision_traffic(spec: SupportAgentSpec, canary: Canary | None) -> list[tuple[str, int]]:
    """(revision, percent) of every revision the agent serves: stable, then any candidate."""
    stable = agent_revision(spec)
    if canary is None:
        return traffic(stable, None, 0)
    return traffic(stable, agent_revision(candidate_spec(spec, canary)), canary.weight)


def render_adapter(
    parent: Parent,
    spec: ToolAdapterSpec,
    hpa_api_version: str = "autoscaling/v2",
    access: GatewayAccess | None = None,
) -> list[dict[str, Any]]:
    """The grants ConfigMap, Deployment, Service and HorizontalPodAutoscaler of the adapter's
    gateway, then its NetworkPolicy and (with Istio) AuthorizationPolicy: who may call it, and
    which operations (`access`; none given, no agent may)."""
    access = access or GatewayAccess()
    return render_gateway(
        parent, spec, hpa_api_version, access.grant_table()
    ) + render_gateway_access(parent, access)


class RenderError(Exception):
    """A manifest that cannot be rendered, named by kind, namespace and name."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def render_manifests(
    documents: Iterable[dict[str, Any]],
    *,
    default_namespace: str = "default",
    hpa_api_version: str = "autoscaling/v2",
    istio: bool = True,
    scrapers: Scrapers | None = None,
) -> list[dict[str, Any]]:
    """Everything the operator would create for these manifests, in a stable order.

    Each gateway admits the agents among the documents that reference its adapter; `istio`
    adds their AuthorizationPolicies (the operator renders them where the cluster serves
    `security.istio.io/v1`).

    Documents of other kinds (Secrets, ConfigMaps, ...) are skipped; ToolAdapters referenced by
    agents must be among the documents. A ModelRollout renders at its status weight if the
    manifest has one, else at the weight the operator starts it with. A ModelTraining renders
    the RayJob of one run (named `<training>-preview`).
    """
    adapters: dict[tuple[str, str], ToolAdapterSpec] = {}
    agents: dict[tuple[str, str], SupportAgentSpec] = {}
    canaries: dict[tuple[str, str], Canary] = {}
    trainings: dict[tuple[str, str], ModelTrainingSpec] = {}
    for doc in documents:
        if not doc or doc.get("apiVersion") != API_VERSION:
            continue
        meta = doc.get("metadata") or {}
        key = (meta.get("namespace") or default_namespace, meta.get("name", ""))
        where = f"{doc.get('kind')} {key[0]}/{key[1]}"
        try:
            if doc.get("kind") == "ToolAdapter":
                adapters[key] = validate_spec(ToolAdapterSpec, doc.get("spec"))
            elif doc.get("kind") == "SupportAgent":
                agents[key] = validate_spec(SupportAgentSpec, doc.get("spec"))
            elif doc.get("kind") == "ModelRollout":
                rollout = validate_spec(ModelRolloutSpec, doc.get("spec"))
                status_weight = (doc.get("status") or {}).get("currentWeight")
                weight = initial_weight(rollout) if status_weight is None else int(status_weight)
                canaries.setdefault((key[0], rollout.agent_ref), canary_of(rollout, weight))
            elif doc.get("kind") == "ModelTraining":
                trainings[key] = validate_spec(ModelTrainingSpec, doc.get("spec"))
        except SpecError as exc:
            raise RenderError(f"{where}: {exc}") from None
    rendered: list[dict[str, Any]] = []
    for (namespace, name), adapter_spec in sorted(adapters.items()):
        parent = Parent("ToolAdapter", name, namespace)
        grants = {
            agent: [op for t in agent_spec.tools if t.adapter == name for op in t.operations]
            for (agent_ns, agent), agent_spec in agents.items()
            if agent_ns == namespace and any(t.adapter == name for t in agent_spec.tools)
        }
        access = GatewayAccess.of(grants, scrapers, istio, grants)
        rendered += render_adapter(parent, adapter_spec, hpa_api_version, access)
    for (namespace, name), agent_spec in sorted(agents.items()):
        parent = Parent("SupportAgent", name, namespace)
        in_namespace = {n: s for (ns, n), s in adapters.items() if ns == namespace}
        try:
            canary = canaries.get((namespace, name))
            rendered += render_agent(parent, agent_spec, in_namespace, canary)
        except UnresolvedReference as exc:
            raise RenderError(f"SupportAgent {namespace}/{name}: {exc.message}") from None
    for (namespace, name), training in sorted(trainings.items()):
        # The RayJob of one run as it would start now (the operator names each run after its
        # scheduled time or request); its agent must be among the documents.
        trained = agents.get((namespace, training.agent_ref))
        if trained is None:
            raise RenderError(
                f"ModelTraining {namespace}/{name}: SupportAgent {training.agent_ref} is not "
                "among the documents"
            )
        parent = Parent("ModelTraining", name, namespace)
        rendered.append(
            render_rayjob(parent, training, preview_run_name(name), trained.nlu.model_uri, trained)
        )
    return rendered
