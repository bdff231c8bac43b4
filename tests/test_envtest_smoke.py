"""Smoke test of the envtest fixtures: the server answers, CRDs serve, and tokens authenticate."""

from __future__ import annotations

from typing import Any

import pytest
from kubernetes import client

pytestmark = pytest.mark.envtest

VS_GROUP, VS_VERSION, VS_PLURAL = "networking.istio.io", "v1", "virtualservices"


def test_virtualservice_round_trip(
    kube_admin: client.ApiClient, installed_crds: dict[str, dict[str, Any]]
) -> None:
    assert {
        "virtualservices.networking.istio.io",
        "destinationrules.networking.istio.io",
        "rayservices.ray.io",
    } <= set(installed_crds)

    namespace = "envtest-smoke"
    client.CoreV1Api(kube_admin).create_namespace(
        client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace))
    )
    objects = client.CustomObjectsApi(kube_admin)
    vs = {
        "apiVersion": f"{VS_GROUP}/{VS_VERSION}",
        "kind": "VirtualService",
        "metadata": {"name": "support", "namespace": namespace},
        "spec": {
            "hosts": ["support"],
            "http": [{"route": [{"destination": {"host": "support", "subset": "v1"}}]}],
        },
    }
    objects.create_namespaced_custom_object(VS_GROUP, VS_VERSION, namespace, VS_PLURAL, vs)

    got: Any = objects.get_namespaced_custom_object(
        VS_GROUP, VS_VERSION, namespace, VS_PLURAL, "support"
    )
    assert got["spec"] == vs["spec"]

    # The stand-in RayService CRD keeps any spec and serves a status subresource.
    rs = {
        "apiVersion": "ray.io/v1",
        "kind": "RayService",
        "metadata": {"name": "agent", "namespace": namespace},
        "spec": {"serveConfigV2": "applications: []\n"},
    }
    objects.create_namespaced_custom_object("ray.io", "v1", namespace, "rayservices", rs)
    objects.patch_namespaced_custom_object_status(
        "ray.io", "v1", namespace, "rayservices", "agent", {"status": {"serviceStatus": "Running"}}
    )
    got = objects.get_namespaced_custom_object("ray.io", "v1", namespace, "rayservices", "agent")
    assert got["spec"] == rs["spec"]
    assert got["status"] == {"serviceStatus": "Running"}


def test_a_requested_service_account_token_authenticates_without_rights(envtest: Any) -> None:
    """The server signs TokenRequest tokens (as the chart's operator uses): the token names the
    account with the service-account groups, and holds no right until RBAC grants one."""
    with envtest.client_for(envtest.admin_token) as admin:
        core = client.CoreV1Api(admin)
        core.create_namespace({"metadata": {"name": "smoke-sa"}})
        core.create_namespaced_service_account("smoke-sa", {"metadata": {"name": "robot"}})
        token = core.create_namespaced_service_account_token(
            "robot", "smoke-sa", {"spec": {"expirationSeconds": 600}}
        ).status.token
    # Asked, not tried: a denied request would stay in the session's audit log.
    review = client.V1SelfSubjectAccessReview(
        spec=client.V1SelfSubjectAccessReviewSpec(
            resource_attributes=client.V1ResourceAttributes(verb="list", resource="namespaces")
        )
    )
    with envtest.client_for(token) as api:
        answer = client.AuthorizationV1Api(api).create_self_subject_access_review(review)
    assert answer.status is not None and answer.status.allowed is False
    asked = [
        e
        for e in envtest.audit_events()
        if e["user"]["username"] == "system:serviceaccount:smoke-sa:robot"
        and e.get("objectRef", {}).get("resource") == "selfsubjectaccessreviews"
    ]
    assert [e["responseStatus"]["code"] for e in asked] == [201]
    assert set(asked[0]["user"]["groups"]) >= {"system:serviceaccounts", "system:authenticated"}
