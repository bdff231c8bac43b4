"""The only module that talks to the Kubernetes API: server-side apply, reads, status patches,
discovery. Objects go in and out as plain dicts, exactly as the renderers produce them."""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass
from typing import Any

import urllib3
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

FIELD_MANAGER = "switchboard"

# Plural resource names of every kind the operator reads or writes.
PLURALS = {
    "SupportAgent": "supportagents",
    "ToolAdapter": "tooladapters",
    "ModelRollout": "modelrollouts",
    "ModelTraining": "modeltrainings",
    "RayService": "rayservices",
    "RayJob": "rayjobs",
    "VirtualService": "virtualservices",
    "RequestAuthentication": "requestauthentications",
    "Deployment": "deployments",
    "Service": "services",
    "HorizontalPodAutoscaler": "horizontalpodautoscalers",
    "NetworkPolicy": "networkpolicies",
    "ServiceAccount": "serviceaccounts",
    "AuthorizationPolicy": "authorizationpolicies",
    "Secret": "secrets",
    "ConfigMap": "configmaps",
}


class KubeError(Exception):
    """An API call failed; `status` is the HTTP status (0 when the server was unreachable)."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message

    @property
    def retryable(self) -> bool:
        return self.status == 0 or self.status == 409 or self.status == 429 or self.status >= 500


def _path(api_version: str, kind: str, namespace: str, name: str | None = None) -> str:
    base = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
    path = f"{base}/namespaces/{namespace}/{PLURALS[kind]}"
    return f"{path}/{name}" if name else path


@dataclass(frozen=True)
class ObjectRef:
    api_version: str
    kind: str
    namespace: str
    name: str

    @classmethod
    def of(cls, obj: dict[str, Any]) -> ObjectRef:
        meta = obj["metadata"]
        return cls(obj["apiVersion"], obj["kind"], meta["namespace"], meta["name"])


class Kube:
    """Thin, thread-safe wrapper over the official client's `ApiClient.call_api`."""

    def __init__(self, api_client: client.ApiClient, field_manager: str = FIELD_MANAGER) -> None:
        self._api = api_client
        self.field_manager = field_manager
        self._discovery: dict[str, list[str]] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_environment(cls, pool_size: int = 16) -> Kube:
        """In-cluster service account if present, else the kubeconfig (`KUBECONFIG`)."""
        configuration = client.Configuration()
        try:
            config.load_incluster_config(client_configuration=configuration)
        except config.ConfigException:
            # Read KUBECONFIG now: the client captured it at import, maybe before it was set.
            config.load_kube_config(
                config_file=os.environ.get("KUBECONFIG"), client_configuration=configuration
            )
        configuration.connection_pool_maxsize = pool_size
        return cls(client.ApiClient(configuration))

    def _call(
        self,
        method: str,
        path: str,
        body: Any = None,
        query: list[tuple[str, str]] | None = None,
        content_type: str = "application/json",
    ) -> Any:
        method, url, headers, _, _ = self._api.param_serialize(
            method=method,
            resource_path=path,
            query_params=query or [],
            header_params={"Accept": "application/json", "Content-Type": content_type},
            auth_settings=["BearerToken"],
        )
        try:
            # Bodies are JSON (apply patches arrive already encoded, see apply()).
            response = self._api.call_api(
                method, url, header_params=headers, body=body, _request_timeout=30
            )
            data = response.read()
        except ApiException as exc:
            raise KubeError(
                exc.status or 0, str(exc.reason), _message(exc.body, exc.reason)
            ) from None
        except (OSError, urllib3.exceptions.HTTPError) as exc:  # refused, TLS, timeouts
            raise KubeError(0, "Unreachable", str(exc)) from None
        if response.status >= 400:
            raise KubeError(response.status, str(response.reason), _message(data, response.reason))
        return json.loads(data) if data else {}

    def apply(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Server-side apply under the operator's field manager; returns the live object."""
        ref = ObjectRef.of(obj)
        result: dict[str, Any] = self._call(
            "PATCH",
            _path(ref.api_version, ref.kind, ref.namespace, ref.name),
            # JSON is YAML too, but not JSON's `\ud83d\ude9a` surrogate escapes of characters
            # above U+FFFF: the server's YAML decoder rejects them (400). Raw UTF-8 it takes.
            body=json.dumps(obj, ensure_ascii=False).encode(),
            query=[("fieldManager", self.field_manager), ("force", "true")],
            content_type="application/apply-patch+yaml",
        )
        return result

    def get(self, api_version: str, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            result: dict[str, Any] = self._call("GET", _path(api_version, kind, namespace, name))
        except KubeError as exc:
            if exc.status == 404:
                return None
            raise
        return result

    def annotate(
        self, api_version: str, kind: str, namespace: str, name: str, annotations: dict[str, str]
    ) -> dict[str, Any]:
        """Merge-patch annotations onto an object (not server-side apply: they are a user's
        request, not a field the operator owns)."""
        result: dict[str, Any] = self._call(
            "PATCH",
            _path(api_version, kind, namespace, name),
            body={"metadata": {"annotations": annotations}},
            content_type="application/merge-patch+json",
        )
        return result

    def delete(self, api_version: str, kind: str, namespace: str, name: str) -> bool:
        """Delete in the background (dependents go by owner reference); False if it was gone."""
        try:
            self._call(
                "DELETE",
                _path(api_version, kind, namespace, name),
                body={
                    "kind": "DeleteOptions",
                    "apiVersion": "v1",
                    "propagationPolicy": "Background",
                },
            )
        except KubeError as exc:
            if exc.status == 404:
                return False
            raise
        return True

    def list_objects(self, api_version: str, kind: str, namespace: str) -> list[dict[str, Any]]:
        found = self._call("GET", _path(api_version, kind, namespace))
        items: list[dict[str, Any]] = found.get("items") or []
        for item in items:  # list items carry no apiVersion/kind of their own
            item.setdefault("apiVersion", api_version)
            item.setdefault("kind", kind)
        return items

    def exists(self, api_version: str, kind: str, namespace: str, name: str) -> bool:
        return self.get(api_version, kind, namespace, name) is not None

    def patch_status(
        self, api_version: str, kind: str, namespace: str, name: str, status: dict[str, Any]
    ) -> dict[str, Any]:
        """Merge-patch the status subresource (a null value removes a field)."""
        result: dict[str, Any] = self._call(
            "PATCH",
            _path(api_version, kind, namespace, name) + "/status",
            body={"status": status},
            content_type="application/merge-patch+json",
        )
        return result

    def served_versions(self, group: str) -> list[str]:
        """API versions the cluster serves for a group (cached: discovery rarely changes)."""
        with self._lock:
            if group not in self._discovery:
                try:
                    found = self._call("GET", f"/apis/{group}")
                    self._discovery[group] = [v["version"] for v in found.get("versions", [])]
                except KubeError as exc:
                    if exc.status != 404:
                        raise
                    self._discovery[group] = []
            return self._discovery[group]

    def hpa_api_version(self) -> str:
        """`autoscaling/v2` where served (1.23+), else `autoscaling/v2beta2`."""
        return (
            "autoscaling/v2"
            if "v2" in self.served_versions("autoscaling")
            else "autoscaling/v2beta2"
        )


def _message(data: Any, reason: Any) -> str:
    """The API server's own explanation from a Status body, else the HTTP reason."""
    try:
        status = json.loads(data or b"{}")
    except ValueError:
        return str(data or reason)
    return str(status.get("message") or reason) if isinstance(status, dict) else str(reason)
