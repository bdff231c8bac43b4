"""SupportAgent → Istio `VirtualService` in front of the RayService's Serve service.

Each destination sets the revision header, so the agent's router serves exactly the revision
Istio chose; a canary adds a weighted destination and header-matched tester routes here.
"""

from __future__ import annotations

from typing import Any

from switchboard.serving.config import REVISION_HEADER, SERVE_HTTP_PORT

from ..api.supportagent import IngressSpec
from .names import Parent, metadata, serve_service_name

# Only failures that happened before the agent saw the request are retried: a chat turn may
# have called a mutating tool, so replaying it on a 5xx could act twice.
RETRY_ON = "connect-failure,refused-stream,unavailable"


def destination(parent: Parent, revision: str, weight: int) -> dict[str, Any]:
    return {
        "destination": {
            "host": f"{serve_service_name(parent.name)}.{parent.namespace}.svc.cluster.local",
            "port": {"number": SERVE_HTTP_PORT},
        },
        "weight": weight,
        "headers": {"request": {"set": {REVISION_HEADER: revision}}},
    }


def render_virtualservice(
    parent: Parent, ingress: IngressSpec, stable_revision: str
) -> dict[str, Any]:
    spec: dict[str, Any] = {"hosts": list(ingress.hosts)}
    if ingress.gateways:
        # Listing gateways replaces the implicit `mesh`; keep in-mesh callers on the same routes.
        spec["gateways"] = [*ingress.gateways, "mesh"]
    spec["http"] = [
        {
            "name": "stable",
            "route": [destination(parent, stable_revision, 100)],
            "timeout": "60s",
            "retries": {"attempts": 2, "perTryTimeout": "30s", "retryOn": RETRY_ON},
        }
    ]
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": metadata(parent, parent.name, "routes"),
        "spec": spec,
    }
