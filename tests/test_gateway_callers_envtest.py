"""The tool gateway's caller check against a real kube-apiserver: an agent's token from the
TokenRequest API (audience `switchboard-gateway`, as the kubelet projects it into the Ray pods)
is reviewed by the gateway's verifier with the token of the gateway ServiceAccount that the
chart creates and binds, and only that binding lets it review (see docs/tool-gateway.md)."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from support.envtest import EnvTest
from switchboard.serving.config import (
    AGENT_TOKEN_AUDIENCE,
    AGENT_TOKEN_EXPIRATION_SECONDS,
    GATEWAY_SERVICE_ACCOUNT,
)
from switchboard.serving.gateway.caller_auth import (
    Caller,
    CallerAuth,
    Refusal,
    ReviewUnavailable,
    TokenReviewer,
)

NS = "gateway-callers"
RELEASE = "switchboard-callers"


def mint(core: client.CoreV1Api, account: str, audiences: list[str] | None) -> str:
    spec: dict[str, Any] = {"expirationSeconds": AGENT_TOKEN_EXPIRATION_SECONDS}
    if audiences is not None:
        spec["audiences"] = audiences
    answer = core.create_namespaced_service_account_token(account, NS, {"spec": spec})
    return str(answer.status.token)


@pytest.fixture(scope="module")
def cluster_tokens(envtest: EnvTest, helm_template: Any) -> dict[str, str]:
    """The chart's gateway RBAC applied for NS, the agents' accounts, and tokens of each."""
    rendered = helm_template(f"toolGateways.namespaces={{{NS}}}", release=RELEASE)
    gateway_rbac = [
        o
        for o in rendered
        if o["metadata"]["name"] in (GATEWAY_SERVICE_ACCOUNT, f"{RELEASE}-gateway-tokenreview")
    ]
    assert sorted(o["kind"] for o in gateway_rbac) == [
        "ClusterRole",
        "ClusterRoleBinding",
        "ServiceAccount",
    ]
    with contextlib.closing(envtest.client_for(envtest.admin_token)) as admin:
        core = client.CoreV1Api(admin)
        rbac = client.RbacAuthorizationV1Api(admin)
        core.create_namespace({"metadata": {"name": NS}})
        for obj in gateway_rbac:
            if obj["kind"] == "ServiceAccount":
                core.create_namespaced_service_account(NS, obj)
            elif obj["kind"] == "ClusterRole":
                rbac.create_cluster_role(obj)
            else:
                rbac.create_cluster_role_binding(obj)
        for account in ("acme-ray", "intruder"):
            core.create_namespaced_service_account(NS, {"metadata": {"name": account}})
        return {
            # What the kubelet projects into acme's Ray pods.
            "acme": mint(core, "acme-ray", [AGENT_TOKEN_AUDIENCE]),
            # acme's token for the API server: not for the gateways.
            "acme-api": mint(core, "acme-ray", None),
            "intruder": mint(core, "intruder", [AGENT_TOKEN_AUDIENCE]),
            # The gateway pod's own (automounted) token.
            "gateway": mint(core, GATEWAY_SERVICE_ACCOUNT, None),
        }


def reviewer(envtest: EnvTest, token: str, tmp_path: Path) -> TokenReviewer:
    own = tmp_path / "own-token"
    own.write_text(token)
    return TokenReviewer(envtest.server, str(own), str(envtest.run_dir / "certs/apiserver.crt"))


def check(auth: CallerAuth, token: str, operation: str) -> Caller | Refusal:
    return asyncio.run(auth.check(token, operation))


def test_gateway_reviews_agent_tokens_with_its_chart_binding(
    envtest: EnvTest, cluster_tokens: dict[str, str], tmp_path: Path
) -> None:
    review = reviewer(envtest, cluster_tokens["gateway"], tmp_path).review
    auth = CallerAuth(NS, {"acme": ["get_order"]}, review)

    granted = check(auth, cluster_tokens["acme"], "get_order")
    assert granted == Caller("acme", f"system:serviceaccount:{NS}:acme-ray")
    refused = check(auth, cluster_tokens["acme"], "refund_order")
    assert isinstance(refused, Refusal) and (refused.status, refused.code) == (403, "not_granted")
    for name in ("acme-api", "intruder"):
        refused = check(auth, cluster_tokens[name], "get_order")
        assert isinstance(refused, Refusal), name
        assert (refused.status, refused.code) == (401, "unauthenticated"), name
    refused = check(auth, "not.a.token", "get_order")
    assert isinstance(refused, Refusal) and refused.status == 401

    reviews = [
        e
        for e in envtest.audit_events()
        if e.get("objectRef", {}).get("resource") == "tokenreviews"
        and e["user"]["username"] == f"system:serviceaccount:{NS}:{GATEWAY_SERVICE_ACCOUNT}"
    ]
    assert reviews and {e["responseStatus"]["code"] for e in reviews} == {201}


def test_only_the_gateway_account_may_review(
    envtest: EnvTest, cluster_tokens: dict[str, str], tmp_path: Path
) -> None:
    """An agent's own account holds no such right: least privilege for the chart's binding."""
    as_agent = reviewer(envtest, cluster_tokens["acme-api"], tmp_path)
    with pytest.raises(ReviewUnavailable, match="HTTP 403"):
        as_agent.review(cluster_tokens["acme"])
    refused = check(CallerAuth(NS, {"acme": ["x"]}, as_agent.review), cluster_tokens["acme"], "x")
    assert isinstance(refused, Refusal) and refused.status == 503
