"""SupportAgent → KubeRay `RayService`: a head, a CPU worker pool, an optional GPU pool, and the
Serve applications of `serve_config`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import yaml

from switchboard.serving.config import SERVE_HTTP_PORT

from ..api.base import ResourceRequirements
from ..api.supportagent import SupportAgentSpec, WorkerPool
from ..api.tooladapter import ToolAdapterSpec
from .names import Parent, metadata, ray_service_account_name
from .serve_config import Canary, PodRuntime, pod_runtime, serve_config

_DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
GPU_RESOURCE = "nvidia.com/gpu"
# GPU nodes are commonly tainted so that only GPU work lands there.
GPU_TOLERATION = {"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}
HEAD_PORTS = [
    {"name": "gcs-server", "containerPort": 6379},
    {"name": "dashboard", "containerPort": 8265},
    {"name": "client", "containerPort": 10001},
    {"name": "serve", "containerPort": SERVE_HTTP_PORT},
    {"name": "metrics", "containerPort": 8080},
]
WORKER_PORTS = [{"name": "metrics", "containerPort": 8080}]


def container_resources(res: ResourceRequirements, gpus: int = 0) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for section, values in (("requests", dict(res.requests)), ("limits", dict(res.limits))):
        if gpus:
            values[GPU_RESOURCE] = gpus
        if values:
            out[section] = {k: str(v) for k, v in sorted(values.items())}
    return out


def _container(
    name: str,
    image: str,
    resources: dict[str, Any],
    runtime: PodRuntime,
    ports: list[dict[str, Any]],
) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": name,
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "resources": resources,
        "ports": ports,
        # Let Ray drain the node's actors before the pod goes away.
        "lifecycle": {"preStop": {"exec": {"command": ["/bin/sh", "-c", "ray stop"]}}},
        "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
    }
    if runtime.env:
        container["env"] = runtime.env
    if runtime.volume_mounts:
        container["volumeMounts"] = runtime.volume_mounts
    return container


def _pod_template(
    parent: Parent,
    container: dict[str, Any],
    runtime: PodRuntime,
    pool: WorkerPool | None = None,
    extra_tolerations: tuple[dict[str, Any], ...] = (),
) -> dict[str, Any]:
    # Head and workers run as the agent's own ServiceAccount: their identity to the gateways.
    pod: dict[str, Any] = {
        "serviceAccountName": ray_service_account_name(parent.name),
        "containers": [container],
    }
    if runtime.volumes:
        pod["volumes"] = runtime.volumes
    if pool and pool.node_selector:
        pod["nodeSelector"] = dict(sorted(pool.node_selector.items()))
    tolerations = list(extra_tolerations) + [
        t.to_wire() for t in (pool.tolerations if pool else ())
    ]
    if tolerations:
        pod["tolerations"] = tolerations
    return {"metadata": {"labels": metadata(parent, "", "ray")["labels"]}, "spec": pod}


def _worker_group(
    parent: Parent, group: str, image: str, pool: WorkerPool, runtime: PodRuntime, gpus: int = 0
) -> dict[str, Any]:
    container = _container(
        "ray-worker", image, container_resources(pool.resources, gpus), runtime, WORKER_PORTS
    )
    return {
        "groupName": group,
        "replicas": pool.min_workers,
        "minReplicas": pool.min_workers,
        "maxReplicas": pool.max_workers,
        "rayStartParams": {},
        "template": _pod_template(
            parent, container, runtime, pool, (GPU_TOLERATION,) if gpus else ()
        ),
    }


def render_rayservice(
    parent: Parent,
    spec: SupportAgentSpec,
    adapters: Mapping[str, ToolAdapterSpec],
    canary: Canary | None = None,
) -> dict[str, Any]:
    runtime = pod_runtime(spec, [canary.model_uri] if canary else [])
    head = _container(
        "ray-head",
        spec.ray.image,
        container_resources(spec.ray.head.resources),
        runtime,
        HEAD_PORTS,
    )
    workers = [_worker_group(parent, "cpu", spec.ray.image, spec.worker_pools.cpu, runtime)]
    gpu = spec.worker_pools.gpu
    if gpu:
        workers.append(
            _worker_group(parent, "gpu", spec.ray.image, gpu, runtime, gpu.gpus_per_worker)
        )
    serve = serve_config(parent, spec, adapters, canary)
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayService",
        "metadata": metadata(parent, parent.name, "ray-service"),
        "spec": {
            # libyaml's dumper: same text, five times faster than the pure-Python one.
            "serveConfigV2": yaml.dump(serve, Dumper=_DUMPER, sort_keys=False, width=1000),
            "rayClusterConfig": {
                "rayVersion": spec.ray.version,
                "enableInTreeAutoscaling": True,
                "autoscalerOptions": {"upscalingMode": "Default", "idleTimeoutSeconds": 60},
                "headGroupSpec": {
                    # The head schedules no replicas: GCS and the Serve controller need headroom.
                    "rayStartParams": {"dashboard-host": "0.0.0.0", "num-cpus": "0"},
                    "template": _pod_template(parent, head, runtime),
                },
                "workerGroupSpecs": workers,
            },
        },
    }
