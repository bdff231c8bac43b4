"""Deterministic names, labels, revisions and owner references of child objects.

Everything here is a pure function of the parent's identity and spec, so re-rendering always
yields the same names (no duplicates on update) and `switchboard render` matches the cluster.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from ..api.base import API_VERSION

MANAGED_BY = "switchboard"
AGENT_LABEL = "switchboard.dev/agent"
ADAPTER_LABEL = "switchboard.dev/tool-adapter"
REVISION_LABEL = "switchboard.dev/revision"
TRAINING_LABEL = "switchboard.dev/model-training"
# The label naming the parent object on each child, by the parent's kind.
OWN_LABELS = {
    "SupportAgent": AGENT_LABEL,
    "ToolAdapter": ADAPTER_LABEL,
    "ModelTraining": TRAINING_LABEL,
}
APP_NAMES = {"ToolAdapter": "tool-gateway", "ModelTraining": "model-training"}


@dataclass(frozen=True)
class Parent:
    """The custom resource a child belongs to. `uid` is unknown when rendering offline."""

    kind: str
    name: str
    namespace: str
    uid: str | None = None


def gateway_name(adapter: str) -> str:
    """Deployment, Service and HPA of a ToolAdapter."""
    return f"{adapter}-gateway"


def gateway_grants_name(adapter: str) -> str:
    """The ConfigMap holding a ToolAdapter's grants table, which its gateway pods mount."""
    return f"{gateway_name(adapter)}-grants"


def ray_service_account_name(agent: str) -> str:
    """The ServiceAccount an agent's Ray pods (head and workers) run as: their identity to the
    tool gateways' Istio AuthorizationPolicies."""
    return f"{agent}-ray"


def serve_service_name(agent: str) -> str:
    """The Serve Service KubeRay creates for a RayService named `agent`."""
    return f"{agent}-serve-svc"


def revision_app_name(agent: str, revision: str) -> str:
    """Serve application running one model revision of an agent."""
    return f"{agent}-{revision}"


def revision(models: dict[str, Any]) -> str:
    """Short, stable hash of the model specs: the identity of what a Serve application serves.

    Only model identity goes in (URIs, backends, precision), never scaling, so resizing an
    agent updates its application in place instead of starting a new revision.
    """
    canonical = json.dumps(models, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:8]


def service_url(name: str, namespace: str, port: int) -> str:
    return f"http://{name}.{namespace}.svc.cluster.local:{port}"


def labels(parent: Parent, component: str) -> dict[str, str]:
    """Recommended `app.kubernetes.io/*` labels plus the parent's own label."""
    return {
        "app.kubernetes.io/name": APP_NAMES.get(parent.kind, "agent"),
        "app.kubernetes.io/instance": parent.name,
        "app.kubernetes.io/component": component,
        "app.kubernetes.io/part-of": "switchboard",
        "app.kubernetes.io/managed-by": MANAGED_BY,
        OWN_LABELS[parent.kind]: parent.name,
    }


def metadata(parent: Parent, name: str, component: str) -> dict[str, Any]:
    """Child metadata: name, namespace, labels and (when the uid is known) the owner."""
    meta: dict[str, Any] = {
        "name": name,
        "namespace": parent.namespace,
        "labels": labels(parent, component),
    }
    if parent.uid:
        meta["ownerReferences"] = [
            {
                "apiVersion": API_VERSION,
                "kind": parent.kind,
                "name": parent.name,
                "uid": parent.uid,
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ]
    return meta


def customer_auth_name(agent: str) -> str:
    """RequestAuthentication and AuthorizationPolicy checking an agent's customers' tokens."""
    return f"{agent}-customer-auth"


def scheduled_run_name(training: str, when: datetime) -> str:
    """The run of a ModelTraining due at the scheduled time `when`: its RayJob, its output
    folder and its status record. Derived from what made it due (here the time, for a run by hand
    the request), so a reconcile retried after a crash finds the RayJob it created instead of
    starting a second run. Short: KubeRay derives pod names from it (63 characters at most)."""
    return f"{_run_prefix(training)}-s{when.astimezone(UTC):%Y%m%d-%H%M}"


def manual_run_name(training: str, request: str) -> str:
    """The run asked for by hand with the annotation value `request` (see scheduled_run_name)."""
    return f"{_run_prefix(training)}-m{hashlib.sha256(request.encode()).hexdigest()[:10]}"


def preview_run_name(training: str) -> str:
    """The run `switchboard render` shows: offline there is no clock or request to name it by."""
    return f"{_run_prefix(training)}-preview"


def _run_prefix(training: str) -> str:
    return training[:30].rstrip("-.")


def ray_pod_labels(agent: str) -> dict[str, str]:
    """Labels selecting every Ray pod (head and workers) of an agent: each runs a Serve proxy."""
    return {"app.kubernetes.io/component": "ray", AGENT_LABEL: agent}
