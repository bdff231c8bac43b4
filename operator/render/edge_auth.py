"""SupportAgent `spec.auth` → Istio `RequestAuthentication` and `AuthorizationPolicy` on the
agent's Ray pods, when Istio verifies the customers' tokens at the edge (`istio_verifies`).

The RequestAuthentication rejects a request with an invalid token (401) and copies the
customer-id claim of a valid one into `CUSTOMER_HEADER`. The AuthorizationPolicy is a DENY
policy on the Serve port only (Ray's own ports, GCS and dashboard, stay untouched): a request
carrying that header without a verified token is refused everywhere (no customer can claim to
be another), and, when auth is required, a chat turn or session read without a verified token
is refused (403). The pages (`/widget`, `/console`), `/healthz` and the agent API
(`/v1/handoffs*`, the console's own bearer tokens) are not the customers' and stay reachable.
"""

from __future__ import annotations

from typing import Any

from switchboard.serving.config import CUSTOMER_HEADER, SERVE_HTTP_PORT

from ..api.supportagent import AuthSpec
from .names import Parent, customer_auth_name, metadata, ray_pod_labels

SECURITY_API_VERSION = "security.istio.io/v1"
# The customers' routes: chat turns, and the reads and ratings of their sessions.
CUSTOMER_PATHS = ["/v1/chat", "/v1/chat/*", "/v1/sessions/*"]


def render_request_authentication(parent: Parent, auth: AuthSpec) -> dict[str, Any]:
    """Istio verifies the bearer token (signature, issuer, audience, expiry); the token is
    forwarded too, and the customer-id claim goes to the agent in `CUSTOMER_HEADER`."""
    rule: dict[str, Any] = {
        "issuer": auth.issuer,
        "jwksUri": auth.jwks_uri,
        "audiences": list(auth.audiences),
        "forwardOriginalToken": True,
        "outputClaimToHeaders": [{"header": CUSTOMER_HEADER, "claim": auth.customer_id_claim}],
    }
    return {
        "apiVersion": SECURITY_API_VERSION,
        "kind": "RequestAuthentication",
        "metadata": metadata(parent, customer_auth_name(parent.name), "customer-auth"),
        "spec": {
            "selector": {"matchLabels": ray_pod_labels(parent.name)},
            "jwtRules": [rule],
        },
    }


def render_authorization_policy(parent: Parent, auth: AuthSpec) -> dict[str, Any]:
    """DENY on the Serve port: the customer header without a verified token, and (auth
    required) the customers' routes without one."""
    port = [str(SERVE_HTTP_PORT)]
    unverified = [{"source": {"notRequestPrincipals": ["*"]}}]
    rules: list[dict[str, Any]] = [
        {
            "from": unverified,
            "to": [{"operation": {"ports": port}}],
            "when": [{"key": f"request.headers[{CUSTOMER_HEADER}]", "values": ["*"]}],
        }
    ]
    if auth.required:
        rules.append(
            {"from": unverified, "to": [{"operation": {"ports": port, "paths": CUSTOMER_PATHS}}]}
        )
    return {
        "apiVersion": SECURITY_API_VERSION,
        "kind": "AuthorizationPolicy",
        "metadata": metadata(parent, customer_auth_name(parent.name), "customer-auth"),
        "spec": {
            "selector": {"matchLabels": ray_pod_labels(parent.name)},
            "action": "DENY",
            "rules": rules,
        },
    }


def render_edge_auth(parent: Parent, auth: AuthSpec) -> list[dict[str, Any]]:
    return [render_request_authentication(parent, auth), render_authorization_policy(parent, auth)]
