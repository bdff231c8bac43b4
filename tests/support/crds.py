"""The CRDs the operator needs, installed into the envtest server (kube-apiserver 1.20).

The project's own (``crds/``) and kopf's peering CRDs (from the chart), Istio's VirtualService
and DestinationRule from the shared folder (``schemas/crds/networking.istio.io``: unmodified
documents of istio/istio 1.30.3's ``crd-all.gen.yaml``, see ``SOURCES.md`` there), and
permissive RayService and RayJob stand-ins (KubeRay's CRDs do not install into a 1.20 server).
Each is stripped of what 1.20 rejects (:func:`envtest_crd`).
"""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any

from kubernetes import client
from kubernetes.client import ApiException

from .errors import SetupError
from .manifests import load_documents
from .paths import CHART_DIR, CRDS_DIR, ENVTEST_SCRIPTS, UPSTREAM_CRDS

RAYSERVICE_STANDIN_CRD = ENVTEST_SCRIPTS / "rayservice-standin-crd.yaml"
RAYJOB_STANDIN_CRD = ENVTEST_SCRIPTS / "rayjob-standin-crd.yaml"
ISTIO_CRD_FILES = ("virtualservices.yaml", "destinationrules.yaml")
# Istio's security API: the tool gateways' AuthorizationPolicies (and the RBAC they need) are
# rendered where the cluster serves it.
ISTIO_SECURITY_CRD_FILES = ("authorizationpolicies.yaml",)
ESTABLISH_TIMEOUT_S = 60.0

# Keys whose values are maps of field names (not schema keywords) or plain data.
_NAME_MAPS = frozenset({"properties", "patternProperties", "definitions"})
_DATA_KEYS = frozenset({"default", "example", "enum"})


def _strip_schema(node: Any, *, names: bool = False) -> Any:
    """Drop ``x-kubernetes-validations`` and ``default: ""`` from an OpenAPI v3 schema."""
    if isinstance(node, list):
        return [_strip_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if names:
            out[key] = _strip_schema(value)
        elif key == "x-kubernetes-validations" or (key == "default" and value == ""):
            continue
        elif key in _DATA_KEYS:
            out[key] = value
        else:
            out[key] = _strip_schema(value, names=key in _NAME_MAPS)
    return out


def envtest_crd(crd: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``crd`` that the 1.20 test server accepts.

    It ignores CEL (``x-kubernetes-validations``) anyway, and rejects empty-string defaults.
    """
    crd = copy.deepcopy(crd)
    crd.get("metadata", {}).pop("resourceVersion", None)
    crd.pop("status", None)
    for version in crd.get("spec", {}).get("versions", []):
        schema = version.get("schema", {})
        if "openAPIV3Schema" in schema:
            schema["openAPIV3Schema"] = _strip_schema(schema["openAPIV3Schema"])
    return crd


def envtest_crd_files() -> list[Path]:
    """The CRD files to install; missing Istio CRDs are a SetupError that says where from."""
    istio_dir = UPSTREAM_CRDS / "networking.istio.io"
    istio = [istio_dir / name for name in ISTIO_CRD_FILES] + [
        UPSTREAM_CRDS / "security.istio.io" / name for name in ISTIO_SECURITY_CRD_FILES
    ]
    missing = [str(p) for p in istio if not p.is_file()]
    if missing:
        raise SetupError(
            f"upstream Istio CRDs missing: {', '.join(missing)}. They come from the project's "
            "shared folder ../shared (or SWITCHBOARD_SHARED_DIR); see tests/support/crds.py."
        )
    own = [*sorted(CRDS_DIR.glob("*.yaml")), CHART_DIR / "crds" / "kopf-peerings.yaml"]
    return [*own, *istio, RAYSERVICE_STANDIN_CRD, RAYJOB_STANDIN_CRD]


def envtest_crds() -> dict[str, dict[str, Any]]:
    """Every CRD to install, as installed (after :func:`envtest_crd`), by name."""
    return {
        doc["metadata"]["name"]: envtest_crd(doc)
        for doc in load_documents(*envtest_crd_files())
        if doc.get("kind") == "CustomResourceDefinition"
    }


def _create_or_replace_crd(ext: client.ApiextensionsV1Api, crd: dict[str, Any]) -> None:
    # The client validates bodies into its pydantic models; for these CRDs that round trip is
    # lossless (checked field by field against the YAML), so the typed API is used as is.
    body = client.V1CustomResourceDefinition.model_validate(crd)
    name = crd["metadata"]["name"]
    try:
        ext.create_custom_resource_definition(body=body)
    except ApiException as exc:
        if exc.status != 409:
            raise SetupError(f"creating CRD {name} failed ({exc.status}): {exc.body}") from None
        current = ext.read_custom_resource_definition(name)
        if current.metadata and body.metadata:
            body.metadata.resource_version = current.metadata.resource_version
        try:
            ext.replace_custom_resource_definition(name, body=body)
        except ApiException as exc2:
            raise SetupError(f"replacing CRD {name} failed ({exc2.status}): {exc2.body}") from None


def _condition(
    crd: client.V1CustomResourceDefinition, kind: str
) -> client.V1CustomResourceDefinitionCondition | None:
    conditions = crd.status.conditions if crd.status else None
    return next((c for c in conditions or [] if c.type == kind), None)


def _served(api: client.ApiClient, crd: dict[str, Any]) -> bool:
    """Whether every served version of ``crd`` answers a list request yet."""
    spec = crd["spec"]
    objects = client.CustomObjectsApi(api)
    try:
        for version in spec["versions"]:
            if version.get("served", True):
                objects.list_cluster_custom_object(
                    spec["group"], version["name"], spec["names"]["plural"], limit=1
                )
    except ApiException as exc:
        if exc.status == 404:
            return False
        raise
    return True


def _wait_established(api: client.ApiClient, crds: dict[str, dict[str, Any]]) -> None:
    """Wait until every CRD is Established and each served version answers a list."""
    ext = client.ApiextensionsV1Api(api)
    deadline = time.monotonic() + ESTABLISH_TIMEOUT_S
    pending = set(crds)
    while pending:
        for name in sorted(pending):
            live = ext.read_custom_resource_definition(name)
            accepted = _condition(live, "NamesAccepted")
            if accepted and accepted.status == "False":
                raise SetupError(f"CRD {name} names not accepted: {accepted.message}")
            established = _condition(live, "Established")
            if established and established.status == "True" and _served(api, crds[name]):
                pending.discard(name)
        if pending:
            if time.monotonic() > deadline:
                raise SetupError(
                    f"CRDs not established after {ESTABLISH_TIMEOUT_S:.0f}s: {pending}"
                )
            time.sleep(0.2)


def install_envtest_crds(api: client.ApiClient) -> dict[str, dict[str, Any]]:
    """Install (or replace) every CRD and wait until all are served; return them by name."""
    crds = envtest_crds()
    ext = client.ApiextensionsV1Api(api)
    for crd in crds.values():
        _create_or_replace_crd(ext, crd)
    _wait_established(api, crds)
    return crds
