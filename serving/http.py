"""The agent's HTTP surface, shared by the Serve router and the single-process server: request
parsing with JSON errors (never a stack trace), and the OpenAPI description of `/v1/chat`."""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError

from .config import RETRY_AFTER_SECONDS
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


def overloaded() -> JSONResponse:
    return error(
        503,
        "overloaded",
        "the agent is busy; retry shortly",
        headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
    )


async def parse_chat_request(request: Request) -> ChatRequest | JSONResponse:
    """The validated body, or the 4xx response explaining what is wrong with it."""
    return await parse_body(request, ChatRequest)


async def parse_body(request: Request, model: type[Body]) -> Body | JSONResponse:
    """A JSON body validated as `model`, or the 4xx response explaining what is wrong with it.
    A request id may come as the `Idempotency-Key` header (the body's own wins)."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        return error(413, "payload_too_large", f"body exceeds {MAX_BODY_BYTES} bytes")
    body = await request.body()
    if len(body) > MAX_BODY_BYTES:
        return error(413, "payload_too_large", f"body exceeds {MAX_BODY_BYTES} bytes")
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
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
    except Exception:
        log.exception("chat turn failed")
        return error(500, "internal_error", "the agent could not complete this turn")
    return JSONResponse(result)


CHAT_OPENAPI: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": ChatRequest.model_json_schema()}},
    },
    "responses": {
        "200": {
            "description": "The agent's reply",
            "content": {"application/json": {"schema": ChatResponse.model_json_schema()}},
        },
        "400": {"description": "Malformed JSON"},
        "413": {"description": "Body too large"},
        "422": {"description": "Body does not match the schema"},
    },
}


def new_api(title: str) -> FastAPI:
    api = FastAPI(title=title, version="v1")

    @api.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return api
