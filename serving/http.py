"""The agent's HTTP surface, shared by the Serve router and the single-process server: request
parsing with JSON errors (never a stack trace), and the OpenAPI description of `/v1/chat`."""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, ValidationError
from pydantic.json_schema import models_json_schema

from .config import RETRY_AFTER_SECONDS
from .workflow.limits import RateLimited, retry_after_header
from .workflow.types import ChatRequest, ChatResponse

MAX_BODY_BYTES = 16 * 1024
log = logging.getLogger("switchboard.http")

IDEMPOTENCY_HEADER = "idempotency-key"
Body = TypeVar("Body", bound=BaseModel)
# (request, HTTP headers) -> response dict
ChatDispatch = Callable[[ChatRequest, Mapping[str, str]], Awaitable[dict[str, Any]]]


def error(
    status: int, code: str, message: str, headers: Mapping[str, str] | None = None, **extra: Any
) -> JSONResponse:
    return JSONResponse(
        {"error": {"code": code, "message": message, **extra}}, status_code=status, headers=headers
    )


class Overloaded(Exception):
    """A replica already runs as many turns as it may: the turn is refused, not queued."""


class Refused(Exception):
    """A request the agent refuses with a 4xx JSON error (and headers such as Retry-After)."""

    def __init__(
        self, status: int, code: str, message: str, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.headers = dict(headers or {})

    def response(self) -> JSONResponse:
        return error(self.status, self.code, self.message, headers=self.headers or None)


def overloaded() -> JSONResponse:
    return error(
        503,
        "overloaded",
        "the agent is busy; retry shortly",
        headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
    )


def rate_limited(limited: RateLimited) -> JSONResponse:
    """429 for a turn over its session's or customer's rate limit (`policy.rateLimit`)."""
    wait = retry_after_header(limited.retry_after)
    return error(
        429,
        "rate_limited",
        f"too many messages from this {limited.scope}; retry in {wait} s",
        headers={"Retry-After": wait},
        scope=limited.scope,
        retry_after=int(wait),
    )


async def parse_chat_request(request: Request) -> ChatRequest | JSONResponse:
    """The validated body, or the 4xx response explaining what is wrong with it."""
    return await parse_body(request, ChatRequest)


async def parse_body(request: Request, model: type[Body]) -> Body | JSONResponse:
    """A JSON body validated as `model`, or the 4xx response explaining what is wrong with it.
    A request id may come as the `Idempotency-Key` header (the body's own wins)."""
    declared = request.headers.get("content-length")
    if declared and declared.isascii() and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        return error(413, "payload_too_large", f"body exceeds {MAX_BODY_BYTES} bytes")
    body = await request.body()
    if len(body) > MAX_BODY_BYTES:
        return error(413, "payload_too_large", f"body exceeds {MAX_BODY_BYTES} bytes")
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):  # RecursionError: nested too deeply
        return error(400, "malformed_json", "the body is not valid JSON")
    if not isinstance(data, dict):
        return error(400, "malformed_request", "the body must be a JSON object")
    # The usual HTTP way to name a retry; the body's own request_id wins.
    if "request_id" not in data and IDEMPOTENCY_HEADER in request.headers:
        data["request_id"] = request.headers[IDEMPOTENCY_HEADER]
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = [
            {"field": ".".join(str(p) for p in e["loc"]), "message": e["msg"]} for e in exc.errors()
        ]
        return error(
            422, "invalid_request", "the request does not match the schema", problems=problems
        )


async def handle_chat(request: Request, dispatch: ChatDispatch) -> JSONResponse:
    parsed = await parse_chat_request(request)
    if isinstance(parsed, JSONResponse):
        return parsed
    try:
        result = await dispatch(parsed, request.headers)
    except Overloaded:
        return overloaded()
    except RateLimited as limited:
        return rate_limited(limited)
    except Refused as refused:
        return refused.response()
    except Exception:
        log.exception("chat turn failed")
        return error(500, "internal_error", "the agent could not complete this turn")
    return JSONResponse(result)


# --- the OpenAPI description ----------------------------------------------------------------
# The routes read their bodies by hand (`parse_body`: JSON errors, the Idempotency-Key header),
# so FastAPI does not see their models. Responses are declared with FastAPI's `responses=`
# (`{"model": ...}`), which puts the models in `components/schemas`; request bodies are declared
# with `json_body` (a `$ref` in `openapi_extra`), and `new_api` adds those models' schemas to the
# document's components once, when it is first built. Every schema comes from a pydantic model:
# a field added to a model is in the document with no other change.

SCHEMA_REF = "#/components/schemas/{model}"


class ErrorDetail(BaseModel):
    model_config = ConfigDict(extra="allow")

    code: str
    """A stable, machine-readable reason (`invalid_request`, `not_found`, ...)."""
    message: str
    """For people; never a stack trace."""


class ErrorBody(BaseModel):
    """Every 4xx and 5xx the agent answers itself."""

    error: ErrorDetail


_BODY_MODELS: dict[str, type[BaseModel]] = {}


def json_body(model: type[BaseModel]) -> dict[str, Any]:
    """`openapi_extra` of a route that parses a JSON body of `model` by hand (with `parse_body`)."""
    known = _BODY_MODELS.setdefault(model.__name__, model)
    if known is not model:
        raise ValueError(f"two request body models are named {model.__name__}")
    schema = {"$ref": SCHEMA_REF.format(model=model.__name__)}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """FastAPI `responses` for error statuses, each with the JSON error body."""
    return {s: {"model": ErrorBody, "description": _REASONS[s]} for s in sorted(statuses)}


_REASONS = {
    400: "Malformed JSON",
    401: "No valid credential",
    403: "The credential does not grant this",
    404: "No such resource",
    409: "Conflicts with the resource's state",
    413: "Body too large",
    422: "Does not match the schema",
    429: "Too many requests; retry after Retry-After",
    500: "The turn failed (no internals are returned)",
    503: "Busy; retry after Retry-After",
}

CHAT_OPENAPI: dict[str, Any] = json_body(ChatRequest)
CHAT_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"model": ChatResponse, "description": "The agent's reply"},
    **errors(400, 401, 403, 413, 422, 429, 500, 503),
}


def _refs(node: Any) -> set[str]:
    if isinstance(node, dict):
        found = {node["$ref"]} if isinstance(node.get("$ref"), str) else set()
        return found.union(*(_refs(v) for v in node.values()))
    if isinstance(node, list):
        return set().union(*(_refs(v) for v in node))
    return set()


def with_body_schemas(document: dict[str, Any]) -> dict[str, Any]:
    """`document` with the schemas of the request bodies its operations name (`json_body`) and
    of the models those refer to, in `components/schemas`."""
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    prefix = SCHEMA_REF.format(model="")
    wanted = sorted(
        ref.removeprefix(prefix)
        for ref in _refs(document["paths"])
        if ref.startswith(prefix) and ref.removeprefix(prefix) not in schemas
    )
    models = [(_BODY_MODELS[name], "validation") for name in wanted if name in _BODY_MODELS]
    if not models:
        return document
    _, defs = models_json_schema(models, ref_template=SCHEMA_REF)  # type: ignore[arg-type]
    for name, schema in defs.get("$defs", {}).items():
        if schemas.setdefault(name, schema) != schema:
            # A response model of the same name with another schema: the document would lie.
            raise ValueError(f"OpenAPI component {name} has two different schemas")
    document["components"]["schemas"] = dict(sorted(schemas.items()))
    return document


def new_api(title: str) -> FastAPI:
    api = FastAPI(title=title, version="v1")
    generate = api.openapi

    def openapi() -> dict[str, Any]:
        if api.openapi_schema is None:
            api.openapi_schema = with_body_schemas(generate())
        return api.openapi_schema

    api.openapi = openapi  # type: ignore[method-assign]

    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        # A bug: the traceback goes to the log (uvicorn's), the caller gets the JSON error.
        return error(500, "internal_error", "the agent could not answer this request")

    api.add_exception_handler(Exception, internal_error)

    @api.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return api
