"""ToolAdapter reconciler: validate → check the credentials Secret → render the gateway →
apply → report readiness from the Deployment's available replicas."""

from __future__ import annotations

from typing import Any

from switchboard.serving.config import GATEWAY_HTTP_PORT

from ..api.tooladapter import ToolAdapterSpec
from ..api.validation import SpecError, validate_spec
from ..indexes import Lookup
from ..kube import Kube
from ..render import GatewayAccess, Parent, Scrapers, render_adapter
from ..render.names import gateway_name, service_url
from .common import (
    Desired,
    EventRecorder,
    Outcome,
    apply_children,
    build_status,
    invalid_spec_status,
    reconcile_object,
)
from .conditions import Check, failed_spec, summarize

KIND = "ToolAdapter"
GATEWAY = "GatewayReady"
PROGRESSING_REASONS = frozenset({"GatewayRollingOut", "GatewayStarting"})


def gateway_check(deployment: dict[str, Any], min_replicas: int) -> Check:
    """Ready when the Deployment controller has seen the current template and enough replicas
    are available; starting (none available yet) is progress, too few later is degradation."""
    meta = deployment["metadata"]
    name = f"Deployment {meta['namespace']}/{meta['name']}"
    status = deployment.get("status") or {}
    observed = status.get("observedGeneration")
    if observed is None or observed < (meta.get("generation") or 0):
        return Check(
            GATEWAY,
            "False",
            "GatewayRollingOut",
            f"{name}: rollout of the current spec not observed yet",
        )
    available = int(status.get("availableReplicas") or 0)
    updated = int(status.get("updatedReplicas") or 0)
    if available == 0:
        return Check(GATEWAY, "False", "GatewayStarting", f"{name}: no replica available yet")
    if updated < available:
        return Check(
            GATEWAY, "False", "GatewayRollingOut", f"{name}: {updated}/{available} replicas updated"
        )
    if available < min_replicas:
        return Check(
            GATEWAY,
            "False",
            "GatewayUnderReplicated",
            f"{name}: {available} of at least {min_replicas} replicas available",
        )
    return Check(GATEWAY, "True", "GatewayAvailable", f"{name}: {available} replicas available")


# Where the cluster serves this, each gateway also gets an Istio AuthorizationPolicy.
ISTIO_SECURITY = ("security.istio.io", "v1")


def reconcile(
    kube: Kube,
    body: dict[str, Any],
    record: EventRecorder,
    lookup: Lookup | None = None,
    scrapers: Scrapers | None = None,
) -> Outcome:
    """`lookup` names the agents that reference the adapter (none without one: the gateway
    then admits only the metrics `scrapers`)."""

    def desired(kube: Kube, body: dict[str, Any]) -> Desired:
        return _desired_status(kube, body, lookup, scrapers)

    return reconcile_object(KIND, desired, kube, body, record)


def gateway_access(
    kube: Kube, namespace: str, name: str, lookup: Lookup | None, scrapers: Scrapers | None
) -> GatewayAccess:
    """Who may call the gateway: the agents whose `spec.tools` reference it (from the index,
    so an agent that starts or stops referencing it re-renders its policies and its grants
    ConfigMap, never the Deployment), the scrapers, and Istio's principals where the cluster
    serves Istio's security API."""
    grants = lookup.operations_granted(namespace, name) if lookup else {}
    group, version = ISTIO_SECURITY
    return GatewayAccess.of(grants, scrapers, version in kube.served_versions(group), grants)


def _desired_status(
    kube: Kube, body: dict[str, Any], lookup: Lookup | None, scrapers: Scrapers | None
) -> Desired:
    meta = body["metadata"]
    namespace, name = meta["namespace"], meta["name"]
    try:
        spec = validate_spec(ToolAdapterSpec, body.get("spec"))
    except SpecError as exc:
        return Desired(invalid_spec_status(KIND, body, exc))
    secret = spec.credentials.secret_ref
    if secret and not kube.exists("v1", "Secret", namespace, secret):
        checks, phase = failed_spec(
            "SecretNotFound",
            f"Secret {namespace}/{secret} (spec.credentials.secretRef) does not exist",
        )
        return Desired(build_status(body, checks, phase, {}))

    parent = Parent(KIND, name, namespace, meta.get("uid"))
    access = gateway_access(kube, namespace, name, lookup, scrapers)
    live = apply_children(kube, render_adapter(parent, spec, kube.hpa_api_version(), access))
    deployment = live["Deployment"]
    gateway = gateway_check(deployment, spec.gateway.min_replicas)
    ready, progressing, degraded, phase = summarize(
        [gateway], progressing_reasons=PROGRESSING_REASONS
    )
    status = build_status(
        body,
        [ready, progressing, degraded, gateway],
        phase,
        {
            "endpoint": service_url(gateway_name(name), namespace, GATEWAY_HTTP_PORT),
            "availableReplicas": int(
                (deployment.get("status") or {}).get("availableReplicas") or 0
            ),
            "operations": len(spec.operations),
        },
    )
    return Desired.applied(status, live)
