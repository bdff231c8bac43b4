"""ModelTraining → one KubeRay `RayJob` per run, and the `ModelRollout` a passing run opens.

The RayJob's Ray cluster is a small head that only coordinates (`num-cpus: 0`) and one training
worker: the entrypoint asks for a CPU (and the GPUs), so Ray starts it on the worker. Everything
the run reads and writes is in object storage; the pods get the storage credentials from the
Secret the spec names, as environment variables, and nothing else (no Kubernetes API token).
"""

from __future__ import annotations

import shlex
from typing import Any

from switchboard.serving.training_report import MODEL_DIR, REPORT_NAME

from ..api.base import API_VERSION
from ..api.modeltraining import ModelTrainingSpec
from ..api.supportagent import SupportAgentSpec
from .names import Parent, metadata
from .rayservice import GPU_TOLERATION, container_resources
from .serve_config import REDIS_URL_ENV, secret_env

RAYJOB_API_VERSION = "ray.io/v1"
HEAD_RESOURCES = {"cpu": "1", "memory": "2Gi"}
DEFAULT_REGION = "us-east-1"


def run_prefix(spec: ModelTrainingSpec, run: str) -> str:
    """Where a run writes: the candidate under `/model`, the report beside it."""
    return f"{spec.output_prefix.rstrip('/')}/{run}"


def candidate_uri(spec: ModelTrainingSpec, run: str) -> str:
    return f"{run_prefix(spec, run)}/{MODEL_DIR}"


def report_uri(spec: ModelTrainingSpec, run: str) -> str:
    return f"{run_prefix(spec, run)}/{REPORT_NAME}"


def retrain_command(
    spec: ModelTrainingSpec, run: str, current_model_uri: str, agent: str, namespace: str
) -> list[str]:
    """The run's entrypoint: `switchboard nlu retrain` with everything from the spec."""
    data, training = spec.data, spec.training
    command = [
        "switchboard", "nlu", "retrain",
        "--run", run,
        "--base-data", data.base_uri,
        "--heldout", data.heldout_uri,
        "--current-model", current_model_uri,
        "--output", run_prefix(spec, run),
        "--min-heldout", str(spec.gate.min_heldout_rows),
        "--text-col", data.text_column,
        "--label-col", data.label_column,
        "--seed", str(training.seed),
        "--device", "cuda" if spec.job.workers.gpus else "cpu",
    ]  # fmt: skip
    for uri in spec.feedback.uris:
        command += ["--feedback", uri]
    if spec.feedback.from_agent:
        command += ["--feedback-redis-url-env", REDIS_URL_ENV, "--agent", f"{namespace}/{agent}"]
    for flag, value in (
        ("--epochs", training.epochs),
        ("--per-class", training.per_class),
        ("--batch-size", training.batch_size),
    ):
        if value is not None:
            command += [flag, str(value)]
    return command


def job_env(spec: ModelTrainingSpec, agent_spec: SupportAgentSpec) -> list[dict[str, Any]]:
    """The standard AWS variables (boto3 reads them) and, for the agent's live feedback log,
    its Redis URL from the agent's own Secret."""
    storage = spec.storage
    env: list[dict[str, Any]] = [
        {"name": "AWS_REGION", "value": storage.region or DEFAULT_REGION},
    ]
    if storage.endpoint:
        env.append({"name": "AWS_ENDPOINT_URL", "value": storage.endpoint})
    creds = storage.credentials_secret_ref
    if creds:
        env.append(secret_env("AWS_ACCESS_KEY_ID", creds.name, creds.access_key_id_key))
        env.append(secret_env("AWS_SECRET_ACCESS_KEY", creds.name, creds.secret_access_key_key))
    redis = agent_spec.sessions.redis
    if spec.feedback.from_agent and redis is not None:
        env.append(secret_env(REDIS_URL_ENV, redis.url_secret_ref.name, redis.url_secret_ref.key))
    return env


def _container(
    name: str, image: str, resources: dict[str, Any], env: list[dict[str, Any]]
) -> dict[str, Any]:
    return {
        "name": name,
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "resources": resources,
        "env": env,
        "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
    }


def _pod(parent: Parent, run: str, container: dict[str, Any], **extra: Any) -> dict[str, Any]:
    labels = metadata(parent, run, "training")["labels"]
    return {
        "metadata": {"labels": labels},
        # The run reads and writes object storage only: no Kubernetes API credentials.
        "spec": {"automountServiceAccountToken": False, "containers": [container], **extra},
    }


def render_rayjob(
    parent: Parent,
    spec: ModelTrainingSpec,
    run: str,
    current_model_uri: str,
    agent_spec: SupportAgentSpec,
) -> dict[str, Any]:
    """The RayJob of run `run`, which retrains against `current_model_uri` (the agent's
    serving model, resolved by the caller)."""
    image = spec.job.image or agent_spec.ray.image
    env = job_env(spec, agent_spec)
    workers = spec.job.workers
    head = _container(
        "ray-head", image, {"requests": HEAD_RESOURCES, "limits": {"memory": "2Gi"}}, env
    )
    worker = _container(
        "ray-worker", image, container_resources(workers.resources, workers.gpus), env
    )
    worker_pod: dict[str, Any] = {}
    if workers.node_selector:
        worker_pod["nodeSelector"] = dict(sorted(workers.node_selector.items()))
    tolerations = ([GPU_TOLERATION] if workers.gpus else []) + [
        t.to_wire() for t in workers.tolerations
    ]
    if tolerations:
        worker_pod["tolerations"] = tolerations
    command = retrain_command(spec, run, current_model_uri, spec.agent_ref, parent.namespace)
    job_spec: dict[str, Any] = {
        "entrypoint": shlex.join(command),
        # One CPU (and the GPUs) for the entrypoint: Ray runs it on the worker, never the head.
        "entrypointNumCpus": 1,
        "shutdownAfterJobFinishes": True,
        "ttlSecondsAfterFinished": spec.job.ttl_seconds_after_finished,
        "activeDeadlineSeconds": spec.job.active_deadline_seconds,
        # A failed run is recorded, not retried: the next run (scheduled or by hand) is the
        # retry, with whatever data has arrived since.
        "backoffLimit": 0,
        "rayClusterSpec": {
            "rayVersion": agent_spec.ray.version,
            "headGroupSpec": {
                "rayStartParams": {"dashboard-host": "0.0.0.0", "num-cpus": "0"},
                "template": _pod(parent, run, head),
            },
            "workerGroupSpecs": [
                {
                    "groupName": "train",
                    "replicas": 1,
                    "minReplicas": 1,
                    "maxReplicas": 1,
                    "rayStartParams": {},
                    "template": _pod(parent, run, worker, **worker_pod),
                }
            ],
        },
    }
    if workers.gpus:
        job_spec["entrypointNumGpus"] = workers.gpus
    return {
        "apiVersion": RAYJOB_API_VERSION,
        "kind": "RayJob",
        "metadata": metadata(parent, run, "training"),
        "spec": job_spec,
    }


def render_training_rollout(parent: Parent, spec: ModelTrainingSpec, run: str) -> dict[str, Any]:
    """The ModelRollout a passing run opens: the spec's template with the run's candidate.
    Owned by the ModelTraining (deleting it removes the canary); named after the run, so an
    apply retried after a crash opens no second one."""
    template = spec.rollout.to_wire()
    return {
        "apiVersion": API_VERSION,
        "kind": "ModelRollout",
        "metadata": metadata(parent, run, "rollout"),
        "spec": {
            "agentRef": spec.agent_ref,
            "component": spec.component,
            "candidate": {"modelUri": candidate_uri(spec, run)},
            **template,
        },
    }
