"""CustomResourceDefinitions generated from the pydantic models, the API's single source of truth.

Pydantic emits JSON Schema 2020-12; the API server wants a *structural* OpenAPI v3.0 schema:
no `$ref`, no `anyOf` with null, no `additionalProperties: false`, boolean exclusive bounds,
and the Kubernetes extensions (`x-kubernetes-*`). This module does that translation.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import GenerateJsonSchema
from pydantic_core import core_schema

from .. import yamlio
from .base import GROUP, VERSION, ApiModel
from .modelrollout import ModelRollout
from .modeltraining import ModelTraining
from .supportagent import SupportAgent
from .tooladapter import ToolAdapter

KINDS: tuple[type[ApiModel], ...] = (SupportAgent, ToolAdapter, ModelRollout, ModelTraining)
CATEGORY = "switchboard"


def _condition_column(name: str, field: str, priority: int = 0) -> dict[str, Any]:
    column: dict[str, Any] = {
        "name": name,
        "type": "string",
        "jsonPath": f'.status.conditions[?(@.type=="Ready")].{field}',
    }
    if priority:
        column["priority"] = priority
    return column


_AGE = {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}

PRINTER_COLUMNS: dict[str, list[dict[str, Any]]] = {
    "SupportAgent": [
        _condition_column("Ready", "status"),
        _condition_column("Reason", "reason"),
        {"name": "Tools", "type": "string", "jsonPath": ".status.readyTools"},
        _AGE,
        {"name": "Phase", "type": "string", "jsonPath": ".status.phase", "priority": 1},
        {"name": "Revision", "type": "string", "jsonPath": ".status.revision", "priority": 1},
        {"name": "LLM", "type": "string", "jsonPath": ".spec.llm.backend", "priority": 1},
        {"name": "Endpoint", "type": "string", "jsonPath": ".status.endpoint", "priority": 1},
        _condition_column("Message", "message", priority=1),
    ],
    "ToolAdapter": [
        _condition_column("Ready", "status"),
        _condition_column("Reason", "reason"),
        {"name": "System", "type": "string", "jsonPath": ".spec.system"},
        {"name": "Available", "type": "integer", "jsonPath": ".status.availableReplicas"},
        _AGE,
        {"name": "Operations", "type": "integer", "jsonPath": ".status.operations", "priority": 1},
        {"name": "Endpoint", "type": "string", "jsonPath": ".status.endpoint", "priority": 1},
        _condition_column("Message", "message", priority=1),
    ],
    "ModelRollout": [
        {"name": "Agent", "type": "string", "jsonPath": ".spec.agentRef"},
        {"name": "Component", "type": "string", "jsonPath": ".spec.component"},
        {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
        {"name": "Weight", "type": "integer", "jsonPath": ".status.currentWeight"},
        _AGE,
        _condition_column("Ready", "status", priority=1),
        _condition_column("Reason", "reason", priority=1),
        {"name": "Step", "type": "integer", "jsonPath": ".status.stepIndex", "priority": 1},
        _condition_column("Message", "message", priority=1),
    ],
    "ModelTraining": [
        {"name": "Agent", "type": "string", "jsonPath": ".spec.agentRef"},
        {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
        {"name": "Last Run", "type": "date", "jsonPath": ".status.lastRun.finishedAt"},
        {"name": "Result", "type": "string", "jsonPath": ".status.lastRun.result"},
        {"name": "Current", "type": "number", "jsonPath": ".status.lastRun.currentAccuracy"},
        {"name": "Candidate", "type": "number", "jsonPath": ".status.lastRun.candidateAccuracy"},
        _AGE,
        {"name": "Schedule", "type": "string", "jsonPath": ".spec.schedule", "priority": 1},
        {"name": "Next", "type": "date", "jsonPath": ".status.nextScheduleTime", "priority": 1},
        {"name": "Running", "type": "string", "jsonPath": ".status.active.name", "priority": 1},
        _condition_column("Reason", "reason", priority=1),
        _condition_column("Message", "message", priority=1),
    ],
}


class _SchemaGenerator(GenerateJsonSchema):
    """Also emits defaults produced by `default_factory`, in wire form (camelCase)."""

    def default_schema(self, schema: core_schema.WithDefaultSchema) -> dict[str, Any]:
        if "default_factory" in schema and not schema.get("default_factory_takes_data"):
            factory: Any = schema["default_factory"]
            schema = {**schema, "default": factory()}
            schema.pop("default_factory", None)  # type: ignore[misc]
        return super().default_schema(schema)

    def encode_default(self, dft: Any) -> Any:
        if isinstance(dft, ApiModel):
            return dft.to_wire()
        return super().encode_default(dft)


def _structural(
    node: dict[str, Any], defs: dict[str, Any], *, keep_defaults: bool
) -> dict[str, Any]:
    """Translate one pydantic JSON-Schema node into a structural OpenAPI v3.0 node."""
    node = dict(node)
    # Unwrap references and `Optional[...]`; the outer node's description/default win.
    for key in ("allOf", "anyOf"):
        if key in node:
            branches = [b for b in node[key] if b.get("type") != "null"]
            if len(branches) == 1:
                del node[key]
                node = {**branches[0], **node}
    if "$ref" in node:
        target = defs[node.pop("$ref").rsplit("/", 1)[-1]]
        node = {**target, **node}
        if "$ref" in node or "anyOf" in node or "allOf" in node:
            return _structural(node, defs, keep_defaults=keep_defaults)

    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in ("title", "additionalProperties", "properties", "items", "const", "$defs"):
            continue
        if key == "description":
            out[key] = " ".join(value.split())
        elif key == "default":
            if keep_defaults and value is not None:
                out[key] = value
        elif key in ("exclusiveMinimum", "exclusiveMaximum"):
            out[key.replace("exclusive", "").lower()] = value
            out[key] = True
        else:
            out[key] = value

    if "const" in node:
        out["enum"] = [node["const"]]
    if "properties" in node:
        out["type"] = "object"
        out["properties"] = {
            name: _structural(prop, defs, keep_defaults=keep_defaults)
            for name, prop in node["properties"].items()
        }
    elif out.get("type") == "object" and not out.get("x-kubernetes-preserve-unknown-fields"):
        extra = node.get("additionalProperties")
        if isinstance(extra, dict) and extra:
            out["additionalProperties"] = _structural(extra, defs, keep_defaults=keep_defaults)
        else:  # free-form object, e.g. an operation's input JSON Schema
            out["x-kubernetes-preserve-unknown-fields"] = True
    if "items" in node:
        out["items"] = _structural(node["items"], defs, keep_defaults=keep_defaults)
    if out.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
    return out


def openapi_schema(model: type[BaseModel], *, keep_defaults: bool = True) -> dict[str, Any]:
    """Structural OpenAPI v3.0 schema of one model (spec or status)."""
    raw = model.model_json_schema(by_alias=True, schema_generator=_SchemaGenerator)
    return _structural(raw, raw.get("$defs", {}), keep_defaults=keep_defaults)


def crd(kind_model: type[ApiModel]) -> dict[str, Any]:
    """The CustomResourceDefinition of one kind."""
    kind: str = kind_model.kind  # type: ignore[attr-defined]
    plural: str = kind_model.plural  # type: ignore[attr-defined]
    fields = kind_model.model_fields
    spec_model = fields["spec"].annotation
    status_model = next(
        a for a in getattr(fields["status"].annotation, "__args__", ()) if a is not type(None)
    )
    assert isinstance(spec_model, type) and issubclass(spec_model, BaseModel)
    spec_schema = openapi_schema(spec_model)
    status_schema = openapi_schema(status_model, keep_defaults=False)
    status_schema["properties"]["conditions"].update(
        {"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]}
    )
    description = " ".join((kind_model.__doc__ or kind).split())
    schema = {
        "type": "object",
        "description": description,
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string", "description": "API version of this object."},
            "kind": {"type": "string", "description": "Kind of this object."},
            "metadata": {"type": "object"},
            "spec": spec_schema,
            "status": status_schema,
        },
    }
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{plural}.{GROUP}",
            "labels": {"app.kubernetes.io/part-of": "switchboard"},
        },
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": kind,
                "listKind": f"{kind}List",
                "plural": plural,
                "singular": kind.lower(),
                "shortNames": list(kind_model.short_names),  # type: ignore[attr-defined]
                "categories": [CATEGORY],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": PRINTER_COLUMNS[kind],
                    "schema": {"openAPIV3Schema": schema},
                }
            ],
        },
    }


def crd_documents() -> Iterator[tuple[str, str]]:
    """(file name, YAML text) for every CRD, in a stable order."""
    for model in KINDS:
        doc = crd(model)
        header = "# Generated by `switchboard crds` from operator/api; do not edit.\n"
        text = yamlio.dump(doc)
        yield f"{doc['metadata']['name']}.yaml", header + text


def write_crds(out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in crd_documents():
        path = out_dir / name
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written


def stale_crds(out_dir: Path) -> list[str]:
    """Names of CRD files that are missing or differ from what the models generate."""
    return [
        name
        for name, text in crd_documents()
        if not (out_dir / name).is_file() or (out_dir / name).read_text(encoding="utf-8") != text
    ]
