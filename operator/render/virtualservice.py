"""SupportAgent → Istio `VirtualService` in front of the RayService's Serve service.

Each destination sets the revision header, so the agent's router serves exactly the revision
Istio chose; a canary adds a weighted destination, header-matched tester routes, and one pin
route per served revision that keeps a conversation on the revision a client echoes back.
"""

from __future__ import annotations

from typing import Any

from switchboard.serving.config import REVISION_HEADER, SERVE_HTTP_PORT

from ..api.modelrollout import HeaderMatch
from ..api.supportagent import IngressSpec
from .names import Parent, metadata, serve_service_name
from .serve_config import Canary

# Only failures that happened before the agent saw the request are retried: a chat turn may
# have called a mutating tool, so replaying it on a 5xx could act twice.
RETRY_ON = "connect-failure,refused-stream,unavailable"


def destination(parent: Parent, revision: str | None, weight: int) -> dict[str, Any]:
    """The Serve service; with a revision, Istio pins the request to it by header."""
    dest: dict[str, Any] = {
        "destination": {
            "host": f"{serve_service_name(parent.name)}.{parent.namespace}.svc.cluster.local",
            "port": {"number": SERVE_HTTP_PORT},
        },
        "weight": weight,
    }
    if revision is not None:
        dest["headers"] = {"request": {"set": {REVISION_HEADER: revision}}}
    return dest


def _header_match(match: HeaderMatch) -> dict[str, Any]:
    value = {"exact": match.exact} if match.exact is not None else {"regex": match.regex}
    return {"headers": {match.name: value}}


def render_virtualservice(
    parent: Parent,
    ingress: IngressSpec,
    revisions: list[tuple[str, int]],
    canary: Canary | None = None,
) -> dict[str, Any]:
    """Routes for `revisions` [(revision, percent)]: stable first, then a candidate. Testers'
    header matches come first so they always reach the candidate. During a canary, a request
    that already names a served revision in the revision header (a client echoing the
    `revision` of its conversation's first reply) is pinned to it by a route of its own, placed
    before the weighted split, so a conversation never changes revision while its revision
    serves; a revision no longer served has no pin route, and its conversations fall into the
    split. With `trafficProvider: none` Istio sends everything to the router, which applies the
    same weights, matches and pins itself."""
    spec: dict[str, Any] = {"hosts": list(ingress.hosts)}
    if ingress.gateways:
        # Listing gateways replaces the implicit `mesh`; keep in-mesh callers on the same routes.
        spec["gateways"] = [*ingress.gateways, "mesh"]
    resilience = {
        "timeout": "60s",
        "retries": {"attempts": 2, "perTryTimeout": "30s", "retryOn": RETRY_ON},
    }
    routes: list[dict[str, Any]] = []
    by_istio = canary is None or canary.traffic_provider == "istio"
    if by_istio and canary and canary.testers and len(revisions) > 1:
        routes.append(
            {
                "name": "testers",
                "match": [_header_match(m) for m in canary.testers],
                "route": [destination(parent, revisions[-1][0], 100)],
                **resilience,
            }
        )
    if by_istio and len(revisions) > 1:
        routes += [
            {
                "name": f"revision-{rev}",
                "match": [{"headers": {REVISION_HEADER: {"exact": rev}}}],
                "route": [destination(parent, rev, 100)],
                **resilience,
            }
            for rev, _ in revisions
        ]
    if by_istio:
        main = [destination(parent, rev, percent) for rev, percent in revisions]
    else:
        main = [destination(parent, None, 100)]
    routes.append({"name": "stable" if len(main) == 1 else "canary", "route": main, **resilience})
    spec["http"] = routes
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": metadata(parent, parent.name, "routes"),
        "spec": spec,
    }
