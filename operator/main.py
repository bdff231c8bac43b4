"""kopf registrations and settings: a thin list that delegates to one module per concern.

- **indexes** (`indexes.py`): ToolAdapters, SupportAgents (and the adapters each is granted),
  ModelRollouts by agent, and the children of each owner, kept in memory by kopf from its watches;
- **workers** (`workers.py`): one kopf daemon per SupportAgent, ToolAdapter and ModelRollout,
  which reconciles its object (`resources/`) when marked and on a deadline;
- **events**: every watch event only marks the objects it concerns.

Run with `switchboard operator`, or `kopf run -m switchboard.operator.main -A` (configuration from
the environment then, see `config.py`).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import random
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, cast

import kopf
from prometheus_client import start_http_server

from . import metrics
from .api.base import GROUP, VERSION
from .config import OperatorConfig
from .indexes import (
    INDEX_NAMES,
    Lookup,
    adapter_entries,
    agent_entries,
    child_entries,
    grant_entries,
    owner_of,
    rollout_entries,
)
from .kube import Kube, KubeError
from .render.access import Scrapers
from .render.names import MANAGED_BY
from .resources import modelrollout, modeltraining, supportagent, tooladapter
from .resources.common import Outcome, apply_failed_status, write_status
from .workers import (
    Key,
    Marks,
    References,
    Retry,
    Worker,
    adapter_references,
    agent_references,
    rollout_references,
    training_references,
)

MANAGED_LABEL = "app.kubernetes.io/managed-by"
MANAGED = {MANAGED_LABEL: MANAGED_BY}
# (group, plural) of each kind of child, and how kopf's decorators name it. The children whose
# status an owner reports are indexed: RayServices (agents), Deployments (adapters) and RayJobs
# (trainings); so are the agents' ServiceAccounts, which an agent applies only while the index
# lacks them. The others are watched only for deletions: an index holds back every handler of
# the operator until its first listing succeeds, and a narrowed Role that forbids, say, HPAs
# must cost the adapters that need one an ApplyFailed condition, not the whole operator its start.
INDEXED_CHILDREN = {
    ("ray.io", "rayservices"): ("ray.io", "v1", "rayservices"),
    ("apps", "deployments"): ("apps", "v1", "deployments"),
    ("", "serviceaccounts"): ("serviceaccounts",),
    ("ray.io", "rayjobs"): ("ray.io", "v1", "rayjobs"),
}
WATCHED_CHILDREN = {
    ("networking.istio.io", "virtualservices"): ("networking.istio.io", "v1", "virtualservices"),
    ("", "services"): ("services",),
    ("autoscaling", "horizontalpodautoscalers"): ("horizontalpodautoscalers.autoscaling",),
    ("networking.k8s.io", "networkpolicies"): ("networkpolicies.networking.k8s.io",),
    ("security.istio.io", "authorizationpolicies"): (
        "security.istio.io",
        "v1",
        "authorizationpolicies",
    ),
    ("", "configmaps"): ("configmaps",),
}
CHILD_RESOURCES = {**INDEXED_CHILDREN, **WATCHED_CHILDREN}
AGENTS: dict[str, Any] = {"group": GROUP, "version": VERSION, "plural": "supportagents"}
ADAPTERS: dict[str, Any] = {"group": GROUP, "version": VERSION, "plural": "tooladapters"}
ROLLOUTS: dict[str, Any] = {"group": GROUP, "version": VERSION, "plural": "modelrollouts"}
TRAININGS: dict[str, Any] = {"group": GROUP, "version": VERSION, "plural": "modeltrainings"}
# A worker is cancelled when its object goes (or the operator stops); a reconcile then in a
# thread finishes on its own.
WORKER_CANCELLATION_SECONDS = 10.0

log = logging.getLogger("switchboard.operator")


class QuietMarks(logging.Filter):
    """Drops kopf's "Handler 'X' succeeded." for the handlers that run on every watch event and
    only index or mark objects: at a thousand agents they would be most of the log and say
    nothing (a worker logs what it does). A standby replica, whose kopf still runs them while
    paused, then logs nothing about the objects it leaves to the leader."""

    QUIET = frozenset(
        {
            *INDEX_NAMES,
            "agent_event",
            "adapter_event",
            "rollout_event",
            "training_event",
            "child_event",
            "unindexed_child_event",
        }
    )

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno != logging.INFO:
            return True
        message = record.getMessage()
        if not message.endswith(" succeeded."):
            return True
        return not any(f"'{name}'" in message for name in self.QUIET)


def quiet_marks() -> None:
    objects = logging.getLogger("kopf.objects")
    if not any(isinstance(f, QuietMarks) for f in objects.filters):
        objects.addFilter(QuietMarks())


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    config: OperatorConfig = memo.get("config") or OperatorConfig.from_environment(os.environ)
    memo.config = config
    quiet_marks()
    # Our own name for the finalizer the workers (kopf daemons) need, and none of kopf's
    # bookkeeping in status. (No change-detecting handler is left, so no diff-base either.)
    settings.persistence.finalizer = f"{GROUP}/finalizer"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    # A namespaced install holds no cluster-wide permission: kopf then must not watch CRDs or
    # namespaces (it would log a warning after a forbidden call); the resources it serves are
    # found by API discovery once, at start.
    if not settings.peering.clusterwide:
        settings.scanning.disabled = True
    # Events are posted deliberately (on condition transitions), not for every log line.
    settings.posting.level = logging.ERROR
    settings.networking.request_timeout = 60
    settings.watching.server_timeout = 300
    # Watch only our own children, filtered by the API server: a `labels=` filter on a handler
    # alone would stream every Deployment and Service of the cluster to the operator.
    for group, plural in CHILD_RESOURCES:
        settings.watching.label_selectors[group, plural] = f"{MANAGED_LABEL}={MANAGED_BY}"
    memo.kube = Kube.from_environment(pool_size=config.reconcile_threads)
    memo.executor = ThreadPoolExecutor(config.reconcile_threads, thread_name_prefix="reconcile")
    memo.marks = Marks()
    memo.gauges = metrics.ObjectGauges()
    if config.metrics_port:
        start_http_server(config.metrics_port)


@kopf.on.cleanup()
def release(memo: kopf.Memo, **_: Any) -> None:
    memo.executor.shutdown(wait=False, cancel_futures=True)


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


def record_event(body: dict[str, Any], *, type: str, reason: str, message: str) -> None:
    kopf.event(cast(kopf.Body, body), type=type, reason=reason, message=message)


def counted(
    kind: str, kube: Kube, body: dict[str, Any], reconcile: Callable[[], Outcome]
) -> Outcome:
    """`reconcile()` with its outcome and duration counted, and API failures turned into a
    `Retry`; one that retrying cannot fix (forbidden, invalid) is reported in status and an
    Event first, and retried slowly."""
    started = time.perf_counter()
    try:
        outcome = reconcile()
    except KubeError as exc:
        metrics.RECONCILES.labels(kind=kind, outcome="error").inc()
        if not exc.retryable:
            try:
                write_status(kube, body, apply_failed_status(kind, body, exc), record_event)
            except KubeError as status_exc:
                log.warning("could not report ApplyFailed on %s: %s", kind, status_exc)
        raise Retry(str(exc), delay=5 if exc.retryable else 60) from None
    finally:
        metrics.RECONCILE_SECONDS.labels(kind=kind).observe(time.perf_counter() - started)
    metrics.RECONCILES.labels(kind=kind, outcome=outcome.result).inc()
    return outcome


Reconciler = Callable[[Kube, dict[str, Any], Lookup, OperatorConfig], Outcome]


def _agent(kube: Kube, body: dict[str, Any], lookup: Lookup, config: OperatorConfig) -> Outcome:
    return supportagent.reconcile(kube, body, record_event, lookup)


def _agent_refresh(
    kube: Kube, body: dict[str, Any], lookup: Lookup, config: OperatorConfig
) -> Outcome:
    return supportagent.reconcile(kube, body, record_event, lookup, refresh=True)


def _adapter(kube: Kube, body: dict[str, Any], lookup: Lookup, config: OperatorConfig) -> Outcome:
    return tooladapter.reconcile(kube, body, record_event, lookup, config.scrapers)


def _rollout(kube: Kube, body: dict[str, Any], lookup: Lookup, config: OperatorConfig) -> Outcome:
    context = modelrollout.RolloutContext(config.prometheus_url)
    return modelrollout.reconcile(kube, body, record_event, lookup, context)


def _training(kube: Kube, body: dict[str, Any], lookup: Lookup, config: OperatorConfig) -> Outcome:
    return modeltraining.reconcile(kube, body, record_event, lookup)


# For when the only news is a child's status (`workers.Worker.refresh`); other kinds always
# reconcile in full.
REFRESHERS: dict[str, Reconciler] = {supportagent.KIND: _agent_refresh}
RECONCILERS: dict[str, Reconciler] = {
    supportagent.KIND: _agent,
    tooladapter.KIND: _adapter,
    modelrollout.KIND: _rollout,
    modeltraining.KIND: _training,
}


def lookup_of(kwargs: Mapping[str, Any]) -> Lookup:
    """The reconcilers' view of kopf's indexes (kopf hands every handler all of them, by name,
    among its keyword arguments)."""
    return Lookup({name: kwargs[name] for name in INDEX_NAMES})


def register_worker(
    kind: str,
    resource: Mapping[str, Any],
    interval: Callable[[OperatorConfig], float],
    references: References,
) -> None:
    """One kopf daemon per object of `resource`: the object's worker (see `workers.py`), which
    reconciles it when marked and at least every `interval(config)` seconds."""

    async def worker(
        body: kopf.Body,
        memo: kopf.Memo,
        stopped: kopf.DaemonStopped,
        logger: logging.Logger | logging.LoggerAdapter[Any],
        **kwargs: Any,
    ) -> None:
        meta = body["metadata"]
        kube: Kube = memo.kube
        config: OperatorConfig = memo.config
        lookup = lookup_of(kwargs)
        reconcile, refresh = RECONCILERS[kind], REFRESHERS.get(kind)

        def counting(reconciler: Reconciler) -> Callable[[dict[str, Any]], Outcome]:
            return lambda b: counted(kind, kube, b, lambda: reconciler(kube, b, lookup, config))

        def on_outcome(outcome: Outcome) -> None:
            if kind == supportagent.KIND and outcome.result != "deleted":
                memo.gauges.agent_ready(meta["namespace"], meta["name"], outcome.ready)

        await Worker(
            key=(kind, meta["namespace"], meta["name"]),
            body=body,
            lookup=lookup,
            marks=memo.marks,
            executor=memo.executor,
            reconcile=counting(reconcile),
            refresh=counting(refresh) if refresh else None,
            references=references,
            interval=interval(config),
            logger=logger,
            on_outcome=on_outcome,
        ).run(stopped)

    kopf.daemon(**resource, id="worker", cancellation_timeout=WORKER_CANCELLATION_SECONDS)(worker)


def mark(memo: kopf.Memo, key: Key, forced: bool = False) -> None:
    memo.marks.mark(key, forced)


# --- indexes ------------------------------------------------------------------------------


def register_index(
    name: str,
    entries: Callable[[kopf.Body], Mapping[Any, Any]],
    *selector: str,
    **resource: Any,
) -> None:
    """The kopf index `name`: each object of the resource → `entries(body)` (see `indexes.py`)."""

    async def index(body: kopf.Body, **_: Any) -> Mapping[Any, Any]:
        return entries(body)

    kopf.index(*selector, id=name, **resource)(index)


register_index("adapters", adapter_entries, **ADAPTERS)
register_index("agents", agent_entries, **AGENTS)
register_index("grants", grant_entries, **AGENTS)
register_index("rollouts", rollout_entries, **ROLLOUTS)


# --- SupportAgent ----------------------------------------------------------------------


register_worker(supportagent.KIND, AGENTS, lambda c: c.drift_seconds, agent_references)


@kopf.on.event(**AGENTS)
async def agent_event(event: kopf.RawEvent, meta: kopf.Meta, memo: kopf.Memo, **_: Any) -> None:
    namespace, name = str(meta["namespace"]), str(meta["name"])
    if event.get("type") == "DELETED":
        memo.gauges.agent_ready(namespace, name, None)
    mark(memo, (supportagent.KIND, namespace, name))
    # The gateways it references (or referenced: the grants index no longer names those) admit
    # its pods or stop admitting them; each adapter's worker compares who references it now.
    memo.marks.mark_namespace(tooladapter.KIND, namespace)
    # Its trainings compare against the model it serves.
    memo.marks.mark_namespace(modeltraining.KIND, namespace)


# --- ToolAdapter -----------------------------------------------------------------------


register_worker(tooladapter.KIND, ADAPTERS, lambda c: c.drift_seconds, adapter_references)


@kopf.on.event(**ADAPTERS)
async def adapter_event(meta: kopf.Meta, memo: kopf.Memo, **kwargs: Any) -> None:
    """An adapter that appears, changes, turns ready or goes away concerns every agent granted
    it (each agent's worker decides whether what it reads of the adapter changed)."""
    namespace, name = str(meta["namespace"]), str(meta["name"])
    mark(memo, (tooladapter.KIND, namespace, name))
    for agent in lookup_of(kwargs).agents_granted(namespace, name):
        mark(memo, (supportagent.KIND, namespace, agent))


# --- ModelRollout ----------------------------------------------------------------------


register_worker(modelrollout.KIND, ROLLOUTS, lambda c: c.rollout_tick_seconds, rollout_references)


@kopf.on.event(**ROLLOUTS)
async def rollout_event(event: kopf.RawEvent, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """The agent follows its rollout: a new weight, a rollback or a deletion re-renders its
    RayService and routes (a deleted rollout returns all traffic to stable)."""
    meta = body["metadata"]
    namespace, name = str(meta["namespace"]), str(meta["name"])
    status = body.get("status") or {}
    agent = str((body.get("spec") or {}).get("agentRef"))
    deleted = event.get("type") == "DELETED"
    memo.gauges.rollout(
        namespace, name, agent, None if deleted else status.get("phase"),
        int(status.get("currentWeight") or 0),
    )  # fmt: skip
    mark(memo, (modelrollout.KIND, namespace, name))
    mark(memo, (supportagent.KIND, namespace, agent))


# --- ModelTraining ---------------------------------------------------------------------


register_worker(modeltraining.KIND, TRAININGS, lambda c: c.drift_seconds, training_references)


@kopf.on.event(**TRAININGS)
async def training_event(event: kopf.RawEvent, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """Its own changes, a run asked for by hand (an annotation) among them; the worker decides."""
    meta = body["metadata"]
    namespace, name = str(meta["namespace"]), str(meta["name"])
    deleted = event.get("type") == "DELETED"
    memo.gauges.training(
        namespace, name, None if deleted else (body.get("status") or {}).get("phase")
    )
    mark(memo, (modeltraining.KIND, namespace, name))


# --- children: a status change or a deletion concerns the owner ------------------------


async def child_event(event: kopf.RawEvent, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """An indexed child's change reaches its owner's inputs through the index; its deletion
    forces the owner to re-create it (the index may never have shown it to the owner's
    worker, which then takes it as still applied)."""
    owner = owner_of(body)
    if owner is not None:
        deleted = event.get("type") == "DELETED"
        mark(memo, (owner[0], str(body["metadata"]["namespace"]), owner[1]), forced=deleted)


async def unindexed_child_event(
    event: kopf.RawEvent, body: kopf.Body, memo: kopf.Memo, **_: Any
) -> None:
    """No index shows this child: its deletion forces the owner to re-create it."""
    owner = owner_of(body)
    if owner is not None and event.get("type") == "DELETED":
        mark(memo, (owner[0], str(body["metadata"]["namespace"]), owner[1]), forced=True)


for _indexed in INDEXED_CHILDREN.values():
    register_index("children", child_entries, *_indexed, labels=MANAGED)
    kopf.on.event(*_indexed, labels=MANAGED)(child_event)
for _watched in WATCHED_CHILDREN.values():
    kopf.on.event(*_watched, labels=MANAGED)(unindexed_child_event)


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
    scrapers: Scrapers | None = None,
) -> int:
    """Entry point of `switchboard operator`.

    With `peering`, replicas meet on that (Cluster)KopfPeering object and only the one with the
    highest priority acts; the others stand by and resume when it stops. Each replica draws its
    own priority unless given one: equal priorities would pause them all (kopf's rule).
    """
    config = OperatorConfig(
        metrics_port=metrics_port,
        prometheus_url=prometheus_url or None,
        scrapers=scrapers or Scrapers(),
    )
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
        memo=kopf.Memo(config=config),
    )
    return 0
