"""The gateway's OpenAPI document (`GET /openapi.json`): one path per operation, its request
body the operation's `input_schema` from the configuration, its answers the gateway's own JSON
(docs/tool-gateway.md). OpenAPI 3.1, whose schemas are JSON Schema 2020-12 like the inputs."""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

from pydantic import BaseModel, ConfigDict
from pydantic.json_schema import models_json_schema

from ..config import (
    AGENT_TOKEN_AUDIENCE,
    AGENT_TOKEN_HEADER,
    GatewayOperation,
    ToolGatewayConfig,
)

SCHEMA_REF = "#/components/schemas/{model}"
IDEMPOTENCY_KEY_PATTERN = r"^[!-~]{1,255}$"  # printable ASCII without spaces (app.py)


class OperationResult(BaseModel):
    """The system answered (2xx, 3xx, or a 4xx other than 429, passed back with its status)."""

    operation: str
    status: int
    """The system's HTTP status."""
    result: Any
    """Its body: JSON, text, or null when empty."""
    attempts: int
    idempotency_key: str | None
    duration_ms: float


class GatewayErrorDetail(BaseModel):
    model_config = ConfigDict(extra="allow")

    code: str
    message: str


class GatewayError(BaseModel):
    """The gateway refused the call or the system failed it."""

    error: GatewayErrorDetail
    operation: str | None = None
    attempts: int | None = None
    idempotency_key: str | None = None
    duration_ms: float | None = None


def _component_name(name: str, taken: set[str]) -> str:
    base = re.sub(r"[^A-Za-z0-9._-]", "_", name) + ".input"
    key, n = base, 1
    while key in taken:
        n += 1
        key = f"{base}{n}"
    return key


def _rebased(schema: Any, pointer: str) -> Any:
    """`schema` moved to `pointer` in the document: its local references (`#/$defs/...`, `#`)
    follow it."""
    if isinstance(schema, dict):
        out = {k: _rebased(v, pointer) for k, v in schema.items()}
        ref = schema.get("$ref")
        if isinstance(ref, str) and (ref == "#" or ref.startswith("#/")):
            out["$ref"] = pointer + ref[1:]
        return out
    if isinstance(schema, list):
        return [_rebased(v, pointer) for v in schema]
    return schema


def _operation(op: GatewayOperation, input_ref: str) -> dict[str, Any]:
    def ref(model: type[BaseModel]) -> dict[str, str]:
        return {"$ref": SCHEMA_REF.format(model=model.__name__)}

    def json(schema: Mapping[str, Any]) -> dict[str, Any]:
        return {"application/json": {"schema": dict(schema)}}

    return {
        "operationId": op.name,
        "summary": f"{op.method} {op.path} on the system" + (" (mutating)" if op.mutating else ""),
        "parameters": [
            {
                "name": "Idempotency-Key",
                "in": "header",
                "required": False,
                "schema": {"type": "string", "pattern": IDEMPOTENCY_KEY_PATTERN},
                "description": "Passed upstream as the configured idempotency header "
                "(mutating operations; one is made up when absent).",
            }
        ],
        "requestBody": {
            "required": False,
            "description": "The operation's input; an empty body is the empty object.",
            "content": json({"$ref": input_ref}),
        },
        "responses": {
            "200": {"description": "The system answered", "content": json(ref(OperationResult))},
            "4XX": {
                "description": "Refused by the gateway (400 input, 401 no valid agent token, "
                "403 operation not granted to the agent, 413 size, 429 rate limit), "
                "or the system's own 4xx passed back",
                "content": json({"anyOf": [ref(OperationResult), ref(GatewayError)]}),
            },
            "5XX": {
                "description": "The system failed, timed out or is cut off (circuit open)",
                "content": json(ref(GatewayError)),
            },
        },
    }


def openapi_document(config: ToolGatewayConfig) -> dict[str, Any]:
    _, defs = models_json_schema(
        [(OperationResult, "serialization"), (GatewayError, "serialization")],
        ref_template=SCHEMA_REF,
    )
    schemas: dict[str, Any] = dict(defs["$defs"])
    paths: dict[str, Any] = {}
    for op in config.operations:
        key = _component_name(op.name, set(schemas))
        pointer = SCHEMA_REF.format(model=key)
        schemas[key] = _rebased(copy.deepcopy(op.input_schema), pointer)
        paths[f"/v1/ops/{quote(op.name, safe='')}"] = {"post": _operation(op, pointer)}
    components: dict[str, Any] = {"schemas": dict(sorted(schemas.items()))}
    document: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {
            "title": f"Switchboard tool gateway {config.adapter} ({config.system})",
            "version": "v1",
        },
        "paths": paths,
        "components": components,
    }
    if config.caller_auth == "tokenreview":
        components["securitySchemes"] = {
            "agentToken": {
                "type": "apiKey",
                "in": "header",
                "name": AGENT_TOKEN_HEADER,
                "description": "The calling agent's projected ServiceAccount token (audience "
                f"{AGENT_TOKEN_AUDIENCE!r}), verified with a TokenReview",
            }
        }
        document["security"] = [{"agentToken": []}]
    return document
