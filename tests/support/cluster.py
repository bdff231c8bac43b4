"""Admin-side helpers on a live API server: create and read objects, and play the controllers
the test server lacks (KubeRay's RayService status, the Deployment controller's)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client, dynamic
from kubernetes.client import ApiException

from .manifests import load_documents
from .polling import wait_for

GROUP, VERSION = "switchboard.dev", "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"


def condition_of(body: dict[str, Any], type_: str = "Ready") -> dict[str, Any] | None:
    """The condition ``type_`` in an object's ``status.conditions``, if it has one."""
    conditions = (body.get("status") or {}).get("conditions") or []
    return next((c for c in conditions if c.get("type") == type_), None)


def running_rayservice_status(rayservice: dict[str, Any]) -> dict[str, Any]:
    """The status KubeRay 1.x writes once every Serve application of ``rayservice`` runs."""
    serve = yaml.safe_load(rayservice["spec"]["serveConfigV2"])
    apps = {
        app["name"]: {"status": "RUNNING", "health_last_update_time": "2026-11-22T00:00:00Z"}
        for app in serve["applications"]
    }
    return {
        "observedGeneration": rayservice["metadata"]["generation"],
        "serviceStatus": "Running",
        "numServeEndpoints": 1,
        "conditions": [
            {
                "type": "Ready",
                "status": "True",
                "reason": "NonZeroServeEndpoints",
                "message": "Number of serve endpoints is greater than 0",
                "lastTransitionTime": "2026-11-22T00:00:00Z",
            }
        ],
        "activeServiceStatus": {"applicationStatuses": apps},
    }


def deployment_status(generation: int, replicas: int, available: int) -> dict[str, Any]:
    """The status the Deployment controller writes for ``replicas`` pods, ``available`` of them
    ready (merge-patched: ``unavailableReplicas: None`` removes an earlier count)."""
    return {
        "observedGeneration": generation,
        "replicas": replicas,
        "updatedReplicas": replicas,
        "readyReplicas": available,
        "availableReplicas": available,
        "unavailableReplicas": replicas - available or None,
    }


class Cluster:
    """Admin-side helpers: create manifests, read objects, play KubeRay and kube-controller."""

    wait_for = staticmethod(wait_for)

    def __init__(self, api: client.ApiClient) -> None:
        self.api = api
        self.dyn = dynamic.DynamicClient(api)
        self.objects = client.CustomObjectsApi(api)
        self.core = client.CoreV1Api(api)
        self.apps = client.AppsV1Api(api)

    def namespace(self, name: str) -> str:
        self.core.create_namespace({"metadata": {"name": name}})
        return name

    def resource(self, api_version: str, kind: str) -> Any:
        return self.dyn.resources.get(api_version=api_version, kind=kind)

    def create(self, doc: dict[str, Any], namespace: str) -> dict[str, Any]:
        res = self.resource(doc["apiVersion"], doc["kind"])
        created: dict[str, Any] = res.create(body=doc, namespace=namespace).to_dict()
        return created

    def apply_dir(self, folder: Path, namespace: str) -> None:
        """Create every document of ``folder`` (or one file) in ``namespace``."""
        for doc in load_documents(folder):
            self.create(doc, namespace)

    def get(self, api_version: str, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            found: dict[str, Any] = (
                self.resource(api_version, kind).get(name=name, namespace=namespace).to_dict()
            )
        except dynamic.exceptions.NotFoundError:
            return None
        return found

    def list(self, api_version: str, kind: str, namespace: str) -> list[dict[str, Any]]:
        found = self.resource(api_version, kind).get(namespace=namespace).to_dict()
        return list(found["items"])

    def patch(self, api_version: str, kind: str, namespace: str, name: str, body: Any) -> None:
        self.resource(api_version, kind).patch(
            name=name, namespace=namespace, body=body, content_type="application/merge-patch+json"
        )

    def patch_status(
        self, api_version: str, kind: str, namespace: str, name: str, status: Any
    ) -> None:
        res = self.resource(api_version, kind)
        res.status.patch(
            name=name,
            namespace=namespace,
            body={"status": status},
            content_type="application/merge-patch+json",
        )

    def delete(self, api_version: str, kind: str, namespace: str, name: str) -> None:
        self.resource(api_version, kind).delete(name=name, namespace=namespace)

    # --- the custom resources' view ------------------------------------------------------

    def agent(self, namespace: str, name: str) -> dict[str, Any]:
        found = self.get(API_VERSION, "SupportAgent", namespace, name)
        assert found is not None
        return found

    def condition(
        self, kind: str, namespace: str, name: str, type_: str = "Ready"
    ) -> dict[str, Any] | None:
        return condition_of(self.get(API_VERSION, kind, namespace, name) or {}, type_)

    def wait_for_reason(self, kind: str, namespace: str, name: str, reason: str) -> dict[str, Any]:
        """Wait until the object's `Ready` condition has `reason`; return the condition."""

        def probe() -> dict[str, Any] | None:
            ready = self.condition(kind, namespace, name)
            return ready if ready and ready["reason"] == reason else None

        return wait_for(f"{kind} {namespace}/{name}: Ready reason {reason}", probe)

    def events(self, namespace: str, name: str) -> list[tuple[str, str]]:
        events = self.core.list_namespaced_event(namespace).items
        return [(e.type, e.reason) for e in events if e.involved_object.name == name]

    # --- playing the controllers that are not there --------------------------------------

    def make_gateways_available(self, namespace: str, replicas: int = 2) -> None:
        """Every Deployment in ``namespace`` reports ``replicas`` pods, all available."""
        for dep in self.list("apps/v1", "Deployment", namespace):
            meta = dep["metadata"]
            status = deployment_status(meta["generation"], replicas, replicas)
            self.patch_status("apps/v1", "Deployment", namespace, meta["name"], status)

    def with_gateways_available(
        self, namespace: str, predicate: Callable[[], Any]
    ) -> Callable[[], Any]:
        """`predicate`, with every gateway reported available again before each check, as the
        Deployment controller would: a gateway whose template changes after the first report
        (its adapter's spec, not its grants: those live in a ConfigMap) rolls once more."""

        def check() -> Any:
            self.make_gateways_available(namespace)
            return predicate()

        return check

    def make_deployment_available(
        self, namespace: str, name: str, available: int, replicas: int
    ) -> bool:
        """Deployment ``name`` reports ``available`` of its ``replicas`` pods ready; False
        while it does not exist yet (its owner has not applied it)."""
        try:
            deployment = self.apps.read_namespaced_deployment(name, namespace)
        except ApiException as exc:
            if exc.status == 404:
                return False
            raise
        generation = deployment.metadata.generation if deployment.metadata else 1
        self.apps.patch_namespaced_deployment_status(
            name,
            namespace,
            {"status": deployment_status(generation, replicas, available)},
            _content_type="application/merge-patch+json",
        )
        return True

    def make_rayservice_running(self, namespace: str, name: str) -> None:
        """The status KubeRay 1.x writes once every Serve application runs."""
        rs = self.get("ray.io/v1", "RayService", namespace, name)
        assert rs is not None
        self.patch_status("ray.io/v1", "RayService", namespace, name, running_rayservice_status(rs))
