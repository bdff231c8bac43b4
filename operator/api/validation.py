"""Validate a custom resource's spec exactly as a current API server would: pydantic for types,
bounds and enums, then the CRD's own CEL rules (evaluated with cel-python).

Servers older than 1.25 (the 1.20 test server among them) ignore `x-kubernetes-validations`, so
the operator runs the very same rules: one definition, two enforcers, no drift between them.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from functools import cache, lru_cache
from typing import Any, TypeVar

import celpy
from celpy import celtypes
from pydantic import BaseModel, ValidationError

from .base import ApiModel
from .crdgen import openapi_schema

SpecT = TypeVar("SpecT", bound=BaseModel)


class SpecError(Exception):
    """A spec the operator cannot act on; `message` names the field at fault."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def _is_sorted(values: celtypes.ListType) -> celtypes.BoolType:
    return celtypes.BoolType(all(a <= b for a, b in itertools.pairwise(values)))


# Functions of the Kubernetes CEL libraries that the rules use beyond standard CEL.
_K8S_FUNCTIONS = {"isSorted": _is_sorted}
_ENV = celpy.Environment()


@cache
def _program(rule: str) -> celpy.Runner:
    return _ENV.program(_ENV.compile(rule), functions=_K8S_FUNCTIONS)


def _to_cel(value: Any, schema: dict[str, Any]) -> Any:
    """JSON → CEL value, typed by the schema (a `number` is a double even when written `1`)."""
    if schema.get("type") == "number" and isinstance(value, int | float):
        return celtypes.DoubleType(value)
    if isinstance(value, dict) and "properties" in schema:
        props = schema["properties"]
        return celtypes.MapType(
            {
                celtypes.StringType(k): _to_cel(
                    v, props.get(k, {"x-kubernetes-preserve-unknown-fields": True})
                )
                for k, v in value.items()
            }
        )
    if isinstance(value, dict) and isinstance(schema.get("additionalProperties"), dict):
        extra = schema["additionalProperties"]
        return celtypes.MapType(
            {celtypes.StringType(k): _to_cel(v, extra) for k, v in value.items()}
        )
    if isinstance(value, list) and "items" in schema:
        return celtypes.ListType([_to_cel(v, schema["items"]) for v in value])
    return celpy.json_to_cel(value)


def _walk(
    value: Any, schema: dict[str, Any], path: str
) -> Iterator[tuple[str, Any, dict[str, Any]]]:
    yield path, value, schema
    if isinstance(value, dict):
        for key, sub in schema.get("properties", {}).items():
            if key in value:
                yield from _walk(value[key], sub, f"{path}.{key}")
    elif isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            yield from _walk(item, schema["items"], f"{path}[{i}]")


def cel_violations(value: Any, schema: dict[str, Any], path: str = "spec") -> list[str]:
    """Every failing `x-kubernetes-validations` rule in `value`, as `path: message`."""
    failures = []
    for where, node, node_schema in _walk(value, schema, path):
        for rule in node_schema.get("x-kubernetes-validations", ()):
            try:
                ok = _program(rule["rule"]).evaluate({"self": _to_cel(node, node_schema)})
            except celpy.CELEvalError as exc:  # a rule that cannot evaluate is a failed rule
                ok = False
                rule = {**rule, "message": f"{rule['message']} ({exc.args[0]})"}
            if not ok:
                failures.append(f"{where}: {rule['message']}")
    return failures


@cache
def _spec_schema(spec_model: type[BaseModel]) -> dict[str, Any]:
    return openapi_schema(spec_model)


def _format_pydantic(exc: ValidationError, root: str) -> str:
    parts = []
    for err in exc.errors():
        where = root + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in err["loc"])
        parts.append(f"{where}: {err['msg']}")
    return "; ".join(parts)


def validate_spec(spec_model: type[SpecT], spec: dict[str, Any] | None) -> SpecT:
    """Parse and check a spec; raise `SpecError` naming every violation.

    Memoised by the spec's JSON: reconciles re-validate unchanged specs all the time,
    and the CEL evaluation dominates. The models are frozen, so sharing them is safe."""
    # Key order kept: it is the order the user wrote, and rendered objects preserve it.
    key = json.dumps(spec or {}, separators=(",", ":"), default=str)
    result = _validated(spec_model, key)
    if isinstance(result, SpecError):
        raise SpecError(result.message)
    validated: SpecT = result
    return validated


@lru_cache(maxsize=4096)
def _validated(spec_model: type[SpecT], key: str) -> SpecT | SpecError:
    try:
        return _validate(spec_model, json.loads(key))
    except SpecError as exc:
        return exc


def _validate(spec_model: type[SpecT], spec: dict[str, Any]) -> SpecT:
    try:
        parsed = spec_model.model_validate(spec or {})
    except ValidationError as exc:
        raise SpecError(_format_pydantic(exc, "spec")) from None
    wire = parsed.to_wire() if isinstance(parsed, ApiModel) else parsed.model_dump(by_alias=True)
    failures = cel_violations(wire, _spec_schema(spec_model))
    if failures:
        raise SpecError("; ".join(failures))
    return parsed
