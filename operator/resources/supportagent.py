"""SupportAgent reconciler: validate → resolve references → render → apply → report.

Level-based: every call recomputes the whole desired state from the spec and what exists now
(other objects as the operator's indexes hold them), so the first reconcile, a spec edit, a
child's or an adapter's change and the drift deadline all run this same function.
"""

from __future__ import annotations

import json
from typing import Any

from switchboard.serving.config import OOS_INTENT

from ..api.supportagent import SupportAgentSpec
from ..api.tooladapter import ToolAdapterSpec
from ..api.validation import SpecError, validate_spec
from ..indexes import ChildView, Lookup
from ..kube import Kube
from ..models import ModelUnreadable, model_labels
from ..render import Parent, UnresolvedReference, render_agent, revision_traffic
from ..render.names import serve_service_name, service_url
from ..render.serve_config import fallback_config, handoff_config
from .common import (
    Desired,
    EventRecorder,
    Outcome,
    apply_children,
    build_status,
    invalid_spec_status,
    reconcile_object,
)
from .conditions import Check, condition, failed_spec, summarize
from .modelrollout import active_canary

KIND = "SupportAgent"
RAY_SERVICE = "RayServiceReady"
ROUTES = "RoutesReady"
TOOLS = "ToolsReady"
# Where handoffs go: the ticket adapter and operation resolve, the console tokens Secret exists.
HANDOFF = "HandoffReady"
# Advisory: the agent serves either way, but an SRE should know which intents get a fallback.
INTENTS = "IntentsCovered"
# Reasons that mean "on its way", not "broken": they make the agent Progressing, not Degraded.
PROGRESSING_REASONS = frozenset({"RayServiceDeploying", "ToolAdapterNotReady"})
SERVE_PORT = 8000


def _secret_refs(spec: SupportAgentSpec) -> list[tuple[str, str]]:
    refs = []
    if spec.sessions.redis:
        refs.append(("sessions.redis.urlSecretRef", spec.sessions.redis.url_secret_ref.name))
    if spec.llm and spec.llm.api_key_secret_ref:
        refs.append(("llm.apiKeySecretRef", spec.llm.api_key_secret_ref.name))
    if spec.auth and spec.auth.jwks_secret:
        refs.append(("auth.jwksSecret", spec.auth.jwks_secret.name))
    if spec.sessions.token_secret:
        refs.append(("sessions.tokenSecret", spec.sessions.token_secret))
    return refs


def missing_references(
    kube: Kube, namespace: str, spec: SupportAgentSpec
) -> tuple[str, str] | None:
    """The first Secret or ConfigMap the spec names that does not exist, as (reason, message)."""
    refs = _secret_refs(spec)
    if spec.model_storage and spec.model_storage.credentials_secret_ref:
        refs.append(
            ("modelStorage.credentialsSecretRef", spec.model_storage.credentials_secret_ref.name)
        )
    for field, secret in refs:
        if not kube.exists("v1", "Secret", namespace, secret):
            return "SecretNotFound", _secret_missing(namespace, field, secret)
    kb = spec.knowledge_base
    if kb and kb.config_map and not kube.exists("v1", "ConfigMap", namespace, kb.config_map.name):
        return (
            "ConfigMapNotFound",
            f"ConfigMap {namespace}/{kb.config_map.name} (spec.knowledgeBase.configMap) "
            "does not exist",
        )
    return None


def _secret_missing(namespace: str, field: str, secret: str) -> str:
    return f"Secret {namespace}/{secret} (spec.{field}) does not exist"


def missing_console_tokens(
    kube: Kube, namespace: str, spec: SupportAgentSpec
) -> tuple[str, str] | None:
    """`spec.handoff.consoleTokensSecret` when it names a Secret that does not exist."""
    secret = spec.handoff.console_tokens_secret
    if secret is None or kube.exists("v1", "Secret", namespace, secret):
        return None
    return "SecretNotFound", _secret_missing(namespace, "handoff.consoleTokensSecret", secret)


def load_adapters(
    lookup: Lookup, namespace: str, spec: SupportAgentSpec
) -> tuple[dict[str, ToolAdapterSpec], dict[str, bool]]:
    """Valid specs and readiness of the ToolAdapters the agent is granted, as the index has
    them. Missing or invalid ones are left out; rendering then names them."""
    specs: dict[str, ToolAdapterSpec] = {}
    ready: dict[str, bool] = {}
    for grant in spec.tools:
        adapter = lookup.adapter(namespace, grant.adapter)
        if adapter is None:
            continue
        ready[grant.adapter] = adapter.ready
        try:
            specs[grant.adapter] = validate_spec(ToolAdapterSpec, adapter.spec)
        except SpecError:
            continue
    return specs, ready


def rayservice_check(rayservice: dict[str, Any]) -> Check:
    """Readiness as KubeRay reports it: its `Ready` condition (or legacy `serviceStatus`), for
    the generation we applied, with every Serve application RUNNING."""
    name = f"RayService {rayservice['metadata']['namespace']}/{rayservice['metadata']['name']}"
    status = rayservice.get("status") or {}
    generation = rayservice["metadata"].get("generation")
    observed = status.get("observedGeneration")
    if not status or (generation and observed is not None and observed < generation):
        return Check(
            RAY_SERVICE,
            "False",
            "RayServiceDeploying",
            f"{name}: KubeRay has not reported the current spec yet",
        )
    apps = (status.get("activeServiceStatus") or {}).get("applicationStatuses") or {}
    not_running = sorted(
        f"{app}={s.get('status')}" for app, s in apps.items() if s.get("status") != "RUNNING"
    )
    ready = condition(status.get("conditions"), "Ready")
    if ready is not None:
        is_ready = ready.get("status") == "True"
        detail = ready.get("message") or ready.get("reason") or ""
    else:
        is_ready = status.get("serviceStatus") == "Running"
        detail = f"serviceStatus {status.get('serviceStatus') or 'unset'}"
    if is_ready and not not_running:
        return Check(RAY_SERVICE, "True", "RayServiceRunning", f"{name} is serving")
    if not_running:
        detail = f"Serve applications not running: {', '.join(not_running)}"
    failed = any(s.get("status") in ("DEPLOY_FAILED", "UNHEALTHY") for s in apps.values())
    reason = "ServeApplicationFailed" if failed else "RayServiceDeploying"
    return Check(RAY_SERVICE, "False", reason, f"{name}: {detail}")


def tools_check(
    namespace: str, spec: SupportAgentSpec, adapters_ready: dict[str, bool]
) -> tuple[Check, str]:
    not_ready = [g.adapter for g in spec.tools if not adapters_ready.get(g.adapter)]
    summary = f"{len(spec.tools) - len(not_ready)}/{len(spec.tools)}"
    if not_ready:
        names = ", ".join(f"ToolAdapter {namespace}/{n}" for n in not_ready)
        return Check(TOOLS, "False", "ToolAdapterNotReady", f"{names} not ready"), summary
    return Check(TOOLS, "True", "ToolAdaptersReady", f"{summary} ToolAdapters ready"), summary


def handoff_check(
    parent: Parent,
    spec: SupportAgentSpec,
    adapters: dict[str, ToolAdapterSpec],
    tokens_missing: tuple[str, str] | None,
) -> Check:
    """Whether handoffs can go where `spec.handoff` sends them: the console tokens Secret
    exists, the ticket adapter exists and its operation takes the fields (`handoff_config`)."""
    if tokens_missing:
        return Check(HANDOFF, "False", *tokens_missing)
    try:
        config = handoff_config(parent, spec, adapters)
    except UnresolvedReference as exc:
        return Check(HANDOFF, "False", exc.reason, exc.message)
    agent = f"SupportAgent {parent.namespace}/{parent.name}"
    secret = spec.handoff.console_tokens_secret
    console = (
        f"human agents sign in with the tokens of Secret {parent.namespace}/{secret}"
        if secret
        else "no spec.handoff.consoleTokensSecret: the agent API refuses every call"
    )
    if config.adapter is None:
        return Check(
            HANDOFF, "True", "ConsoleOnly", f"{agent}: handoffs go to the agent console; {console}"
        )
    return Check(
        HANDOFF,
        "True",
        "TicketAdapterResolved",
        f"{agent}: handoffs go to the agent console and open tickets with "
        f"{config.adapter}.{config.operation}; {console}",
    )


def routes_check(namespace: str, name: str, spec: SupportAgentSpec) -> Check:
    if spec.ingress is None:
        return Check(ROUTES, "True", "NoIngress", "No ingress hosts requested; in-cluster only")
    return Check(
        ROUTES,
        "True",
        "VirtualServiceApplied",
        f"VirtualService {namespace}/{name} routes {', '.join(spec.ingress.hosts)}",
    )


def coverage_check(
    namespace: str, name: str, spec: SupportAgentSpec, labels: list[str] | ModelUnreadable
) -> Check:
    """The model's intents against the agent's plans: intents no plan covers (they get the
    fallback) and plans for intents the model never predicts (they never run)."""
    agent = f"SupportAgent {namespace}/{name}"
    if isinstance(labels, ModelUnreadable):
        return Check(INTENTS, "Unknown", "ModelLabelsUnavailable", f"{agent}: {labels}")
    known = set(labels) - {OOS_INTENT}
    planned = {plan.intent for plan in spec.intents}
    unknown = sorted(planned - set(labels))
    uncovered = sorted(known - planned)
    if unknown:
        return Check(
            INTENTS,
            "False",
            "UnknownIntents",
            f"{agent}: spec.intents plans {', '.join(unknown)}, which model "
            f"{spec.nlu.model_uri} does not know (it knows {', '.join(sorted(known))})",
        )
    if uncovered:
        action = fallback_config(spec).action
        return Check(
            INTENTS,
            "False",
            "UncoveredIntents",
            f"{agent}: {len(uncovered)} of {len(known)} intents of model {spec.nlu.model_uri} "
            f"have no plan and get the fallback ({action}): {', '.join(uncovered)}",
        )
    return Check(
        INTENTS, "True", "AllIntentsCovered", f"{agent}: every intent of the model has a plan"
    )


def _labels(spec: SupportAgentSpec) -> list[str] | ModelUnreadable:
    try:
        return model_labels(spec.nlu.model_uri)
    except ModelUnreadable as exc:
        return exc


# The children whose status the agent reports (indexed by the operator, main.INDEXED_CHILDREN).
STATUS_KINDS = frozenset({"RayService"})
# Children whose content depends only on the agent's identity (name, namespace, uid): once the
# index shows one for this agent, applying it again would change nothing and cost a request on
# every reconcile. A deleted one drops out of the index (its event forces a full reconcile of
# the agent) and is applied again.
APPLY_ONCE_KINDS = frozenset({"ServiceAccount"})


def present_children(
    lookup: Lookup, parent: Parent, children: list[dict[str, Any]], kinds: frozenset[str]
) -> tuple[list[dict[str, Any]], frozenset[ChildView]]:
    """`children` less those of `kinds` that the `children` index already shows, and the
    index's views of those left out: the reconcile goes by them as by what it applies (and the
    worker, which read its inputs before, must not take their events for news)."""
    present = {
        (c.kind, c.name): c
        for c in lookup.children(parent.namespace, parent.kind, parent.name)
        if c.kind in kinds
    }
    rest = [c for c in children if (c["kind"], c["metadata"]["name"]) not in present]
    return rest, frozenset(present.values())


def as_live(view: ChildView, namespace: str) -> dict[str, Any]:
    """What the status reads of a live child (identity, generation, status), from its view."""
    meta = {"name": view.name, "namespace": namespace, "uid": view.uid}
    return {
        "kind": view.kind,
        "metadata": {**meta, "generation": view.generation},
        "status": json.loads(view.status_json),
    }


def reconcile(
    kube: Kube, body: dict[str, Any], record: EventRecorder, lookup: Lookup, refresh: bool = False
) -> Outcome:
    """`refresh`: the only news is a child's status (`workers.status_news_only`), so what was
    applied last stands: nothing is applied again, only the status is."""

    def desired(kube: Kube, body: dict[str, Any]) -> Desired:
        return _desired_status(kube, body, lookup, refresh)

    return reconcile_object(KIND, desired, kube, body, record, advisories=(HANDOFF, INTENTS))


def _desired_status(kube: Kube, body: dict[str, Any], lookup: Lookup, refresh: bool) -> Desired:
    meta = body["metadata"]
    namespace, name = meta["namespace"], meta["name"]
    try:
        spec = validate_spec(SupportAgentSpec, body.get("spec"))
    except SpecError as exc:
        return Desired(invalid_spec_status(KIND, body, exc))

    adapter_specs, adapters_ready = load_adapters(lookup, namespace, spec)
    parent = Parent(KIND, name, namespace, meta.get("uid"))
    tokens_missing = missing_console_tokens(kube, namespace, spec)
    missing = missing_references(kube, namespace, spec) or tokens_missing
    handoff = handoff_check(parent, spec, adapter_specs, tokens_missing)
    canary, rollout = active_canary(lookup, namespace, name)
    try:
        children = render_agent(parent, spec, adapter_specs, canary)
    except UnresolvedReference as exc:
        missing = missing or (exc.reason, exc.message)
    if missing:
        # Leave what runs untouched: a deleted Secret must not take a serving agent down.
        checks, phase = failed_spec(*missing)
        return Desired(build_status(body, [*checks, handoff], phase, {}))

    if refresh:
        # Only the status is read again; a RayService the index does not show yet is applied
        # for its live state. A deleted child forces a full reconcile (main.child_event).
        reported = [c for c in children if c["kind"] in STATUS_KINDS]
        to_apply, present = present_children(lookup, parent, reported, STATUS_KINDS)
    else:
        to_apply, present = present_children(lookup, parent, children, APPLY_ONCE_KINDS)
    live = apply_children(kube, to_apply)
    live.update({view.kind: as_live(view, namespace) for view in present})
    tools, ready_tools = tools_check(namespace, spec, adapters_ready)
    parts = [
        rayservice_check(live["RayService"]),
        routes_check(namespace, name, spec),
        tools,
        handoff,
    ]
    ready, progressing, degraded, phase = summarize(parts, progressing_reasons=PROGRESSING_REASONS)
    coverage = coverage_check(namespace, name, spec, _labels(spec))
    revisions = revision_traffic(spec, canary)
    traffic = [
        {"revision": rev, "percent": percent, "tag": "stable" if i == 0 else "candidate"}
        for i, (rev, percent) in enumerate(revisions)
    ]
    status = build_status(
        body,
        [ready, progressing, degraded, *parts, coverage],
        phase,
        {
            "revision": revisions[0][0],
            "endpoint": service_url(serve_service_name(name), namespace, SERVE_PORT),
            "traffic": traffic,
            "rollout": rollout if len(revisions) > 1 else None,
            "readyTools": ready_tools,
        },
    )
    return Desired.applied(status, live)
