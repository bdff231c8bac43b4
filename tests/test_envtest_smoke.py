"""Smoke test of the envtest fixtures: the server answers, CRDs serve, and tokens authenticate."""

from __future__ import annotations

from typing import Any

import pytest
from kubernetes import client, config
from kubernetes.client.rest import ApiException

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
    client.CoreV1Api(kube_admin).create_namespace({"metadata": {"name": namespace}})
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

    got = objects.get_namespaced_custom_object(VS_GROUP, VS_VERSION, namespace, VS_PLURAL, "support")
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


def test_operator_token_authenticates_without_rights(envtest: Any) -> None:
    api = config.new_client_from_config(config_file=str(envtest.kubeconfig_for(envtest.operator_token)))
    with api, pytest.raises(ApiException) as raised:
        client.CoreV1Api(api).list_namespace()
    # 403, not 401: the token is known; nothing is bound to the operator's user yet.
    assert raised.value.status == 403
    assert "system:serviceaccount:switchboard-system:switchboard-operator" in raised.value.body
