"""Offline validation of any object the project renders or ships, as the API server would.

Built-in kinds go through kubernetes-validate; custom kinds through the CRD that defines them:
upstream ones from the shared folder (see ``../shared/schemas/crds/SOURCES.md``), the project's
own from ``crds/`` and the chart.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate
import yaml
from openapi_schema_validator import OAS30Validator, oas30_format_checker

from .errors import SetupError
from .paths import CHART_DIR, CRDS_DIR, UPSTREAM_CRDS

# Custom kinds → the CRD file that defines them.
CRD_FILES: dict[tuple[str, str], Path] = {
    ("ray.io/v1", "RayService"): UPSTREAM_CRDS / "ray.io" / "ray.io_rayservices.yaml",
    ("ray.io/v1", "RayJob"): UPSTREAM_CRDS / "ray.io" / "ray.io_rayjobs.yaml",
    ("networking.istio.io/v1", "VirtualService"): (
        UPSTREAM_CRDS / "networking.istio.io" / "virtualservices.yaml"
    ),
    **{
        ("monitoring.coreos.com/v1", kind): (
            UPSTREAM_CRDS / "monitoring.coreos.com" / f"monitoring.coreos.com_{kind.lower()}s.yaml"
        )
        for kind in ("ServiceMonitor", "PodMonitor", "PrometheusRule")
    },
    ("argoproj.io/v1alpha1", "Application"): UPSTREAM_CRDS / "argoproj.io" / "application-crd.yaml",
    **{
        ("security.istio.io/v1", kind): UPSTREAM_CRDS / "security.istio.io" / f"{plural}.yaml"
        for kind, plural in (
            ("RequestAuthentication", "requestauthentications"),
            ("AuthorizationPolicy", "authorizationpolicies"),
        )
    },
    ("kopf.dev/v1", "ClusterKopfPeering"): CHART_DIR / "crds" / "kopf-peerings.yaml",
    ("kopf.dev/v1", "KopfPeering"): CHART_DIR / "crds" / "kopf-peerings.yaml",
    **{
        ("switchboard.dev/v1alpha1", kind): CRDS_DIR / f"{plural}.switchboard.dev.yaml"
        for kind, plural in (
            ("SupportAgent", "supportagents"),
            ("ToolAdapter", "tooladapters"),
            ("ModelRollout", "modelrollouts"),
            ("ModelTraining", "modeltrainings"),
        )
    },
}
# Oldest Kubernetes with CEL validation of CRDs, and the newest the validator bundles.
K8S_VERSIONS = ("1.25.0", kubernetes_validate.latest_version())


def strict_schema(node: Any) -> Any:
    """A CRD's structural schema as the API server applies it: unknown fields are errors.

    OpenAPI validators allow unlisted properties unless told otherwise; the API server prunes
    or (with `fieldValidation=Strict`) rejects them, so this adds `additionalProperties: false`
    to every object with listed properties unless it preserves unknown
    fields; `x-kubernetes-int-or-string` without an explicit `anyOf` accepts integer or string.
    """
    if isinstance(node, list):
        return [strict_schema(n) for n in node]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key == "properties":
            out[key] = {name: strict_schema(sub) for name, sub in value.items()}
        elif key in ("enum", "default", "example", "required", "x-kubernetes-validations"):
            out[key] = value
        else:
            out[key] = strict_schema(value)
    if (
        "properties" in node
        and "additionalProperties" not in node
        and not node.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    if node.get("x-kubernetes-int-or-string") and not {"anyOf", "oneOf", "type"} & set(node):
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    return out


class Schemas:
    """``schemas.errors(obj)``: what the API server would reject in ``obj``, offline.

    Built-in kinds go through kubernetes-validate (strict: unknown fields are errors); custom
    kinds through their CRD's schema (:data:`CRD_FILES`), made strict, plus their metadata
    checked as a ConfigMap's (CRD schemas say only ``metadata: {type: object}``).
    """

    def __init__(self) -> None:
        self._validators: dict[tuple[str, str], OAS30Validator] = {}

    def crd_validator(self, api_version: str, kind: str) -> OAS30Validator:
        key = (api_version, kind)
        if key not in self._validators:
            path = CRD_FILES[key]
            if not path.is_file():
                raise SetupError(
                    f"CRD {path} is missing: upstream ones come from the project's shared folder "
                    "(../shared, or SWITCHBOARD_SHARED_DIR); see ../shared/schemas/crds/SOURCES.md"
                )
            loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
            group, version = api_version.split("/")
            [crd] = [
                doc
                for doc in yaml.load_all(path.read_text(encoding="utf-8"), Loader=loader)
                if doc and doc["spec"]["names"]["kind"] == kind
            ]
            assert crd["spec"]["group"] == group
            [served] = [v for v in crd["spec"]["versions"] if v["name"] == version and v["served"]]
            schema = strict_schema(served["schema"]["openAPIV3Schema"])
            # Every object may carry these at its root, whatever the schema lists.
            root = schema.setdefault("properties", {})
            root.setdefault("apiVersion", {"type": "string"})
            root.setdefault("kind", {"type": "string"})
            root.setdefault("metadata", {"type": "object"})
            schema["additionalProperties"] = False
            self._validators[key] = OAS30Validator(schema, format_checker=oas30_format_checker)
        return self._validators[key]

    def crd_errors(self, obj: dict[str, Any]) -> list[str]:
        validator = self.crd_validator(obj["apiVersion"], obj["kind"])
        return [
            f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
            for e in sorted(validator.iter_errors(obj), key=lambda e: list(map(str, e.path)))
        ]

    @staticmethod
    def builtin_errors(obj: dict[str, Any], version: str = K8S_VERSIONS[-1]) -> list[str]:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as exc:  # a jsonschema.ValidationError
            return [f"{'.'.join(map(str, exc.absolute_path)) or '<root>'}: {exc.message}"]
        return []

    def metadata_errors(self, obj: dict[str, Any]) -> list[str]:
        probe = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": obj["metadata"]}
        return self.builtin_errors(probe)

    def errors(self, obj: dict[str, Any], version: str = K8S_VERSIONS[-1]) -> list[str]:
        if (obj["apiVersion"], obj["kind"]) in CRD_FILES:
            return self.crd_errors(obj) + self.metadata_errors(obj)
        return self.builtin_errors(obj, version)
