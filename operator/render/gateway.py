"""ToolAdapter → tool-gateway `Deployment`, `Service` and `HorizontalPodAutoscaler`, and the
`ConfigMap` of its grants table.

The adapter's Secret is mounted here and nowhere else: the agents reach business systems only
through this gateway, so credentials never enter the Ray cluster.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from switchboard.serving import config as contract

from ..api.tooladapter import ToolAdapterSpec
from .names import ADAPTER_LABEL, Parent, gateway_grants_name, gateway_name, metadata

HPA_API_VERSIONS = ("autoscaling/v2", "autoscaling/v2beta2")
NONROOT_UID = 65532


def gateway_config(
    parent: Parent, spec: ToolAdapterSpec, check_callers: bool = False
) -> contract.ToolGatewayConfig:
    """`check_callers`: the gateway verifies every caller's ServiceAccount token and checks it
    against the grants file mounted from `render_grants`; off (a local run, no cluster to ask):
    callers are not checked."""
    return contract.ToolGatewayConfig(
        adapter=parent.name,
        namespace=parent.namespace,
        system=spec.system,
        base_url=spec.base_url,
        operations=[
            contract.GatewayOperation(
                name=op.name,
                method=op.method,
                path=op.path,
                input_schema=op.input_schema,
                mutating=op.mutating,
                long_running=op.long_running,
            )
            for op in spec.operations
        ],
        auth=contract.GatewayAuth(
            type=spec.credentials.type, header_name=spec.credentials.header_name
        ),
        timeout_seconds=spec.timeout_seconds,
        retries=contract.RetryPolicy(
            attempts=spec.retries.attempts,
            initial_backoff_ms=spec.retries.initial_backoff_ms,
            max_backoff_ms=spec.retries.max_backoff_ms,
            multiplier=spec.retries.multiplier,
        ),
        circuit_breaker=contract.CircuitBreakerPolicy(
            failure_threshold=spec.circuit_breaker.failure_threshold,
            open_seconds=spec.circuit_breaker.open_seconds,
            half_open_max_calls=spec.circuit_breaker.half_open_max_calls,
        ),
        rate_limit=contract.RateLimitPolicy(
            requests_per_second=spec.rate_limit.requests_per_second, burst=spec.rate_limit.burst
        ),
        idempotency_header=spec.idempotency.header_name if spec.idempotency.enabled else None,
        caller_auth="tokenreview" if check_callers else "none",
        grants_file=contract.GATEWAY_GRANTS_FILE if check_callers else None,
    )


def gateway_selector(parent: Parent) -> dict[str, str]:
    # Deployment selectors are immutable: only labels that never change for this adapter.
    return {"app.kubernetes.io/name": "tool-gateway", ADAPTER_LABEL: parent.name}


def render_grants(parent: Parent, grants: Mapping[str, Iterable[str]]) -> dict[str, Any]:
    """The gateway's grants table (agent → the operations it may call; an agent not in it may
    call none) as a ConfigMap its pods mount. A file, not the config in the pod template:
    agents coming and going must not roll the gateway (BENCHMARKS.md "Regression fixed")."""
    table = contract.GatewayGrants(
        grants={agent: sorted(set(ops)) for agent, ops in sorted(grants.items())}
    )
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": metadata(parent, gateway_grants_name(parent.name), "tool-gateway"),
        "data": {contract.GATEWAY_GRANTS_KEY: table.model_dump_json()},
    }


def render_deployment(parent: Parent, spec: ToolAdapterSpec) -> dict[str, Any]:
    """The gateway pods, checking callers against the grants mounted from `render_grants`."""
    name = gateway_name(parent.name)
    meta = metadata(parent, name, "tool-gateway")
    # Not exclude_none: `idempotency_header: null` means "disabled"; dropped, the gateway would
    # read the default header and retry mutating calls the system cannot deduplicate.
    config = gateway_config(parent, spec, check_callers=True).model_dump_json()
    # The whole directory, not a subPath: only a directory mount follows ConfigMap updates.
    volumes: list[dict[str, Any]] = [
        {"name": "tmp", "emptyDir": {"sizeLimit": "16Mi"}},
        {"name": "grants", "configMap": {"name": gateway_grants_name(parent.name)}},
    ]
    mounts: list[dict[str, Any]] = [
        {"name": "tmp", "mountPath": "/tmp"},
        {"name": "grants", "mountPath": contract.GATEWAY_GRANTS_DIR, "readOnly": True},
    ]
    if spec.credentials.secret_ref:
        # Mounted files follow Secret rotation without a restart; env vars would not.
        volumes.append(
            {
                "name": "credentials",
                "secret": {"secretName": spec.credentials.secret_ref, "defaultMode": 0o440},
            }
        )
        mounts.append(
            {"name": "credentials", "mountPath": contract.GATEWAY_CREDENTIALS_DIR, "readOnly": True}
        )
    probe = {"periodSeconds": 10, "timeoutSeconds": 2, "failureThreshold": 3}
    container = {
        "name": "gateway",
        "image": spec.gateway.image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["python", "-m", "switchboard.serving.gateway"],
        "ports": [{"name": "http", "containerPort": contract.GATEWAY_HTTP_PORT}],
        "env": [{"name": contract.GATEWAY_CONFIG_ENV, "value": config}],
        "resources": {
            section: {k: str(v) for k, v in sorted(values.items())}
            for section, values in (
                ("requests", spec.gateway.resources.requests),
                ("limits", spec.gateway.resources.limits),
            )
            if values
        },
        "readinessProbe": {"httpGet": {"path": "/readyz", "port": "http"}, **probe},
        "livenessProbe": {"httpGet": {"path": "/healthz", "port": "http"}, **probe},
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": mounts,
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": meta,
        # No `replicas`: the HPA owns the count, and applying one would fight it.
        "spec": {
            "selector": {"matchLabels": gateway_selector(parent)},
            "revisionHistoryLimit": 5,
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1},
            },
            "template": {
                "metadata": {"labels": meta["labels"]},
                "spec": {
                    # The gateways' shared ServiceAccount (created and bound by the chart: it
                    # may create TokenReviews and nothing else); its token, mounted, is how the
                    # gateway asks the API server who is calling.
                    "serviceAccountName": contract.GATEWAY_SERVICE_ACCOUNT,
                    "automountServiceAccountToken": True,
                    "securityContext": {
                        "runAsNonRoot": True,
                        "runAsUser": NONROOT_UID,
                        "runAsGroup": NONROOT_UID,
                        "fsGroup": NONROOT_UID,
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    "terminationGracePeriodSeconds": 30,
                    "containers": [container],
                    "volumes": volumes,
                },
            },
        },
    }


def render_service(parent: Parent) -> dict[str, Any]:
    name = gateway_name(parent.name)
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(parent, name, "tool-gateway"),
        "spec": {
            "type": "ClusterIP",
            "selector": gateway_selector(parent),
            "ports": [
                {
                    "name": "http",
                    "port": contract.GATEWAY_HTTP_PORT,
                    "targetPort": "http",
                    "protocol": "TCP",
                }
            ],
        },
    }


def render_hpa(parent: Parent, spec: ToolAdapterSpec, api_version: str) -> dict[str, Any]:
    """`autoscaling/v2`, or `v2beta2` on clusters that do not serve v2 (before 1.23): the two
    versions share this shape."""
    if api_version not in HPA_API_VERSIONS:
        raise ValueError(f"unsupported HPA version {api_version}")
    name = gateway_name(parent.name)
    gw = spec.gateway
    return {
        "apiVersion": api_version,
        "kind": "HorizontalPodAutoscaler",
        "metadata": metadata(parent, name, "tool-gateway"),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
            "minReplicas": gw.min_replicas,
            "maxReplicas": gw.max_replicas,
            "metrics": [
                {
                    "type": "Resource",
                    "resource": {
                        "name": "cpu",
                        "target": {
                            "type": "Utilization",
                            "averageUtilization": gw.target_cpu_utilization,
                        },
                    },
                }
            ],
            "behavior": {
                "scaleUp": {
                    "stabilizationWindowSeconds": gw.behavior.scale_up_stabilization_seconds
                },
                "scaleDown": {
                    "stabilizationWindowSeconds": gw.behavior.scale_down_stabilization_seconds,
                    "policies": [
                        {
                            "type": "Percent",
                            "value": gw.behavior.scale_down_percent_per_minute,
                            "periodSeconds": 60,
                        }
                    ],
                },
            },
        },
    }


def render_gateway(
    parent: Parent,
    spec: ToolAdapterSpec,
    hpa_api_version: str,
    grants: Mapping[str, Iterable[str]] | None = None,
) -> list[dict[str, Any]]:
    """The grants first: the gateway pods cannot start before the ConfigMap they mount exists."""
    return [
        render_grants(parent, grants or {}),
        render_deployment(parent, spec),
        render_service(parent),
        render_hpa(parent, spec, hpa_api_version),
    ]
