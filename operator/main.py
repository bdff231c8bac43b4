"""kopf registrations and settings: a thin list that delegates to one module per kind.

Run with `switchboard operator`, or `kopf run -m switchboard.operator.main -A`.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import random
import time
from collections.abc import Callable, Mapping
from typing import Any, cast

import kopf
from prometheus_client import start_http_server

from . import metrics
from .api.base import API_VERSION, GROUP, VERSION
from .kube import Kube, KubeError
from .render.names import MANAGED_BY
from .resources import modelrollout, supportagent, tooladapter
from .resources.common import (
    EventRecorder,
    Outcome,
    apply_failed_status,
    child_changed,
    write_status,
)

METRICS_PORT_ENV = "SWITCHBOARD_METRICS_PORT"
DRIFT_INTERVAL_SECONDS = 60.0
MANAGED_LABEL = "app.kubernetes.io/managed-by"
MANAGED = {MANAGED_LABEL: MANAGED_BY}
CHILD_RESOURCES = (
    ("ray.io", "rayservices"),
    ("networking.istio.io", "virtualservices"),
    ("apps", "deployments"),
    ("", "services"),
    ("autoscaling", "horizontalpodautoscalers"),
)
AGENTS: dict[str, Any] = {"group": GROUP, "version": VERSION, "plural": "supportagents"}
ADAPTERS: dict[str, Any] = {"group": GROUP, "version": VERSION, "plural": "tooladapters"}
ROLLOUTS: dict[str, Any] = {"group": GROUP, "version": VERSION, "plural": "modelrollouts"}
PROMETHEUS_URL_ENV = "SWITCHBOARD_PROMETHEUS_URL"
# Rollout steps are measured in seconds: the timer that advances them ticks often.
ROLLOUT_TICK_SECONDS = 2.0

Reconcile = Callable[[Kube, dict[str, Any], EventRecorder], Outcome]


def _reconcile_rollout(kube: Kube, body: dict[str, Any], record: EventRecorder) -> Outcome:
    context = modelrollout.RolloutContext(prometheus_url=os.environ.get(PROMETHEUS_URL_ENV))
    outcome = modelrollout.reconcile(kube, body, record, context)
    return outcome


RECONCILERS: dict[str, Reconcile] = {
    supportagent.KIND: supportagent.reconcile,
    tooladapter.KIND: tooladapter.reconcile,
    modelrollout.KIND: _reconcile_rollout,
}

log = logging.getLogger("switchboard.operator")


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    # Our own names for kopf's bookkeeping, and none of it in status.
    settings.persistence.finalizer = f"{GROUP}/finalizer"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration"
    )
    # A namespaced install holds no cluster-wide permission: kopf then must not watch CRDs or
    # namespaces (it would log a warning after a forbidden call); the resources it serves are
    # found by API discovery once, at start.
    if not settings.peering.clusterwide:
        settings.scanning.disabled = True
    # Events are posted deliberately (on condition transitions), not for every log line.
    settings.posting.level = logging.ERROR
    settings.execution.max_workers = 16
    settings.networking.request_timeout = 60
    settings.watching.server_timeout = 300
    # Watch only our own children, filtered by the API server: a `labels=` filter on a handler
    # alone would stream every Deployment and Service of the cluster to the operator.
    for group, plural in CHILD_RESOURCES:
        settings.watching.label_selectors[group, plural] = f"{MANAGED_LABEL}={MANAGED_BY}"
    memo.kube = Kube.from_environment()
    port = int(os.environ.get(METRICS_PORT_ENV, "8080"))
    if port:
        start_http_server(port)


@kopf.on.login()
def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    """kopf's own readers of the service account or `KUBECONFIG` (read at login time, unlike
    the client library's default, which captures `KUBECONFIG` when first imported)."""
    in_cluster = kopf.login_with_service_account(**kwargs)
    if in_cluster is not None:
        return dataclasses.replace(in_cluster, server=in_cluster_server(os.environ))
    return kopf.login_with_kubeconfig(**kwargs)


def in_cluster_server(env: Mapping[str, str]) -> str:
    """The API server a pod reaches, as client-go and the Kubernetes Python client find it: from
    the variables the kubelet sets. kopf names `kubernetes.default.svc` on port 443 instead,
    which pods whose DNS does not resolve cluster names (hostNetwork with dnsPolicy Default, a
    custom resolver) and API servers behind another port cannot reach."""
    host, port = env.get("KUBERNETES_SERVICE_HOST"), env.get("KUBERNETES_SERVICE_PORT")
    if not host or not port:
        return "https://kubernetes.default.svc"
    return f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}"


def plain(obj: Any) -> Any:
    """kopf's body views → plain dicts and lists (for comparison and JSON)."""
    if isinstance(obj, Mapping):
        return {k: plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [plain(v) for v in obj]
    return obj


def record_event(body: dict[str, Any], *, type: str, reason: str, message: str) -> None:
    kopf.event(cast(kopf.Body, body), type=type, reason=reason, message=message)


def run_reconcile(kube: Kube, kind: str, body: dict[str, Any]) -> Outcome:
    """Reconcile, count the outcome, and turn API failures into kopf's retry with backoff."""
    started = time.perf_counter()
    try:
        outcome = RECONCILERS[kind](kube, body, record_event)
    except KubeError as exc:
        metrics.RECONCILES.labels(kind=kind, outcome="error").inc()
        if not exc.retryable:  # forbidden, invalid: say so in status and an Event, retry slowly
            try:
                write_status(kube, body, apply_failed_status(kind, body, exc), record_event)
            except KubeError as status_exc:
                log.warning("could not report ApplyFailed on %s: %s", kind, status_exc)
        raise kopf.TemporaryError(str(exc), delay=5 if exc.retryable else 60) from None
    finally:
        metrics.RECONCILE_SECONDS.labels(kind=kind).observe(time.perf_counter() - started)
    metrics.RECONCILES.labels(kind=kind, outcome=outcome.result).inc()
    if kind == supportagent.KIND:
        meta = body["metadata"]
        metrics.set_agent_ready(meta["namespace"], meta["name"], outcome.ready)
    return outcome


# --- SupportAgent ----------------------------------------------------------------------


@kopf.on.resume(**AGENTS)
@kopf.on.create(**AGENTS)
@kopf.on.update(**AGENTS)
def agent_changed(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    run_reconcile(memo.kube, supportagent.KIND, plain(body))


@kopf.timer(**AGENTS, interval=DRIFT_INTERVAL_SECONDS, initial_delay=DRIFT_INTERVAL_SECONDS)
def agent_drift(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    run_reconcile(memo.kube, supportagent.KIND, plain(body))


@kopf.on.delete(**AGENTS, optional=True)
def agent_deleted(meta: kopf.Meta, **_: Any) -> None:
    # Children go with their owner references; only our bookkeeping is left to drop.
    metrics.set_agent_ready(str(meta["namespace"]), str(meta["name"]), None)


# --- ToolAdapter -----------------------------------------------------------------------


@kopf.on.resume(**ADAPTERS)
@kopf.on.create(**ADAPTERS)
@kopf.on.update(**ADAPTERS)
def adapter_changed(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    run_reconcile(memo.kube, tooladapter.KIND, plain(body))


@kopf.timer(**ADAPTERS, interval=DRIFT_INTERVAL_SECONDS, initial_delay=DRIFT_INTERVAL_SECONDS)
def adapter_drift(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    run_reconcile(memo.kube, tooladapter.KIND, plain(body))


_adapter_seen: dict[tuple[str, str], tuple[Any, ...]] = {}


@kopf.on.event(**ADAPTERS)
def adapter_event(event: kopf.RawEvent, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """Agents follow their adapters: one that appears, changes, turns ready or goes away
    re-reconciles every agent granted it (a missing adapter's condition then clears)."""
    meta = body["metadata"]
    key = (meta["namespace"], meta["name"])
    ready = next(
        (
            c.get("status")
            for c in (body.get("status") or {}).get("conditions") or []
            if c.get("type") == "Ready"
        ),
        None,
    )
    fingerprint = (event.get("type") == "DELETED", meta.get("generation"), ready)
    if _adapter_seen.get(key) == fingerprint:
        return
    _adapter_seen[key] = fingerprint
    kube: Kube = memo.kube
    for agent in kube.list_objects(API_VERSION, supportagent.KIND, key[0]):
        if any(t.get("adapter") == key[1] for t in (agent.get("spec") or {}).get("tools") or []):
            _reconcile_quietly(kube, supportagent.KIND, agent)


# --- ModelRollout ----------------------------------------------------------------------


@kopf.on.resume(**ROLLOUTS)
@kopf.on.create(**ROLLOUTS)
@kopf.on.update(**ROLLOUTS)
def rollout_changed(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    run_reconcile(memo.kube, modelrollout.KIND, plain(body))


@kopf.timer(**ROLLOUTS, interval=ROLLOUT_TICK_SECONDS, initial_delay=ROLLOUT_TICK_SECONDS)
def rollout_tick(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    run_reconcile(memo.kube, modelrollout.KIND, plain(body))


@kopf.on.event(**ROLLOUTS)
def rollout_event(event: kopf.RawEvent, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """The agent follows its rollout: a new weight, a rollback or a deletion re-renders its
    RayService and routes (a deleted rollout returns all traffic to stable)."""
    meta = body["metadata"]
    status = body.get("status") or {}
    deleted = event.get("type") == "DELETED"
    agent_name = (body.get("spec") or {}).get("agentRef")
    metrics.set_rollout(
        meta["namespace"], meta["name"], str(agent_name), None if deleted else status.get("phase"),
        int(status.get("currentWeight") or 0),
    )  # fmt: skip
    kube: Kube = memo.kube
    agent = kube.get(API_VERSION, supportagent.KIND, meta["namespace"], str(agent_name))
    if agent and not agent["metadata"].get("deletionTimestamp"):
        _reconcile_quietly(kube, supportagent.KIND, agent)


# --- children: status changes and deletions bring the owner back to its desired state ------


def _reconcile_owner(kube: Kube, child: Mapping[str, Any]) -> None:
    meta = child["metadata"]
    for ref in meta.get("ownerReferences") or []:
        if ref.get("apiVersion") == API_VERSION and ref.get("kind") in RECONCILERS:
            owner = kube.get(API_VERSION, ref["kind"], meta["namespace"], ref["name"])
            if owner and not owner["metadata"].get("deletionTimestamp"):
                _reconcile_quietly(kube, ref["kind"], owner)


def _reconcile_quietly(kube: Kube, kind: str, body: dict[str, Any]) -> None:
    try:
        run_reconcile(kube, kind, body)
    except kopf.TemporaryError as exc:  # the drift timer retries
        log.warning(
            "reconcile of %s %s/%s failed: %s",
            kind,
            body["metadata"]["namespace"],
            body["metadata"]["name"],
            exc,
        )


@kopf.on.event("ray.io", "v1", "rayservices", labels=MANAGED)
@kopf.on.event("networking.istio.io", "v1", "virtualservices", labels=MANAGED)
@kopf.on.event("apps", "v1", "deployments", labels=MANAGED)
@kopf.on.event("services", labels=MANAGED)
@kopf.on.event("horizontalpodautoscalers.autoscaling", labels=MANAGED)
def child_event(event: kopf.RawEvent, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    child = plain(body)
    if child_changed(child, deleted=event.get("type") == "DELETED"):
        _reconcile_owner(memo.kube, child)


def run(
    *,
    namespaces: list[str],
    all_namespaces: bool,
    metrics_port: int,
    liveness_port: int,
    verbose: bool,
    prometheus_url: str | None = None,
    peering: str | None = None,
    priority: int | None = None,
) -> int:
    """Entry point of `switchboard operator`.

    With `peering`, replicas meet on that (Cluster)KopfPeering object and only the one with the
    highest priority acts; the others stand by and resume when it stops. Each replica draws its
    own priority unless given one: equal priorities would pause them all (kopf's rule).
    """
    os.environ[METRICS_PORT_ENV] = str(metrics_port)
    if prometheus_url:
        os.environ[PROMETHEUS_URL_ENV] = prometheus_url
    # Each line about an object names it ("[namespace/name] ..."); probes are not news.
    kopf.configure(verbose=verbose, log_prefix=True)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    if peering and priority is None:
        priority = random.SystemRandom().randint(1, 2**31 - 1)
    kopf.run(
        clusterwide=all_namespaces or not namespaces,
        namespaces=namespaces,
        standalone=not peering,
        peering_name=peering or None,
        priority=priority,
        liveness_endpoint=f"http://0.0.0.0:{liveness_port}/healthz",
    )
    return 0
