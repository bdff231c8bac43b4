"""The tool gateway: the ToolAdapter's operations as `POST /v1/ops/{name}`, in front of one
business system, with input validation, credentials, timeouts, retries, a circuit breaker and a
rate limit. See docs/tool-gateway.md for the HTTP contract.

`ToolGateway` is the call pipeline; `create_app` puts it behind Starlette routes.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import random
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urlsplit

import aiohttp
import jsonschema
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from yarl import URL

from ..config import (
    AGENT_TOKEN_HEADER,
    GATEWAY_CONFIG_ENV,
    GatewayOperation,
    ToolGatewayConfig,
)
from .caller_auth import Caller, CallerAuth, Refusal, Review, ReviewUnavailable, TokenReviewer
from .credentials import Credentials, CredentialsUnavailable
from .grants import grants_of
from .logs import LOGGER_NAME
from .metrics import GatewayMetrics, Outcome
from .openapi import openapi_document
from .resilience import Backoff, CircuitBreaker, Clock, TokenBucket, parse_retry_after
from .templating import InputError, PathTemplate, TemplateError, build_request

DEFAULT_MAX_BODY_BYTES = 64 * 1024
DEFAULT_MAX_RESPONSE_BYTES = 4 * 1024 * 1024
# The header a caller passes its own idempotency key in; the gateway forwards the key upstream in
# the configured `idempotency_header`.
CALLER_IDEMPOTENCY_HEADER = "Idempotency-Key"
MAX_IDEMPOTENCY_KEY_LENGTH = 255
MAX_REPORTED_VIOLATIONS = 20
MAX_VIOLATION_MESSAGE = 300

_HEADER_NAME = re.compile(r"[A-Za-z0-9-]+\Z")
_IDEMPOTENCY_KEY = re.compile(r"[\x21-\x7e]+\Z")

Sleep = Callable[[float], Awaitable[None]]


class ConfigError(Exception):
    """The gateway configuration is missing or unusable; the message is one line."""


def load_config(environ: Mapping[str, str]) -> ToolGatewayConfig:
    raw = environ.get(GATEWAY_CONFIG_ENV, "")
    if not raw.strip():
        raise ConfigError(f"{GATEWAY_CONFIG_ENV} is not set (the ToolGatewayConfig as JSON)")
    try:
        return ToolGatewayConfig.model_validate_json(raw)
    except ValidationError as exc:
        # Locations and messages only: echoing input values could print a secret someone
        # pasted into the wrong field.
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(root)'}: {err['msg']}"
            for err in exc.errors(include_url=False)
        )
        raise ConfigError(
            f"{GATEWAY_CONFIG_ENV} is not a valid ToolGatewayConfig: {problems}"
        ) from None


@dataclass(frozen=True)
class Operation:
    spec: GatewayOperation
    template: PathTemplate
    validator: Any
    """A jsonschema validator of the operation's input (jsonschema is untyped)."""

    @property
    def name(self) -> str:
        return self.spec.name


def compile_operations(config: ToolGatewayConfig) -> dict[str, Operation]:
    """Checks what pydantic cannot (templates, schemas, header names) and prepares each
    operation; every problem found is reported in one ConfigError."""
    problems: list[str] = []
    base = urlsplit(config.base_url)
    if base.scheme not in {"http", "https"} or not base.netloc:
        problems.append(f"base_url {config.base_url!r} must be an http(s) URL with a host")
    if base.query or base.fragment:
        problems.append("base_url must not carry a query or fragment")
    if config.auth.type == "header" and not config.auth.header_name:
        problems.append("auth type 'header' needs auth.header_name")
    for label, header in (
        ("auth.header_name", config.auth.header_name),
        ("idempotency_header", config.idempotency_header),
    ):
        if header is not None and not _HEADER_NAME.match(header):
            problems.append(f"{label} {header!r} is not a valid header name")
    operations: dict[str, Operation] = {}
    for spec in config.operations:
        if spec.name in operations:
            problems.append(f"operation {spec.name!r} is declared twice")
            continue
        try:
            template = PathTemplate.parse(spec.path)
        except TemplateError as exc:
            problems.append(f"operation {spec.name!r}: {exc}")
            continue
        validator_cls = jsonschema.validators.validator_for(spec.input_schema)
        try:
            validator_cls.check_schema(spec.input_schema)
        except jsonschema.SchemaError as exc:
            problems.append(f"operation {spec.name!r}: invalid input_schema: {exc.message}")
            continue
        validator = validator_cls(spec.input_schema, format_checker=validator_cls.FORMAT_CHECKER)
        operations[spec.name] = Operation(spec, template, validator)
    if not config.operations:
        problems.append("no operations declared")
    if problems:
        raise ConfigError("; ".join(problems))
    return operations


def error_body(code: str, message: str, **extra: Any) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, **extra}}


def retry_after_header(seconds: float) -> dict[str, str]:
    # Retry-After takes whole seconds; rounding up never invites a caller back too early.
    return {"Retry-After": str(max(1, math.ceil(seconds)))}


@dataclass
class Reply:
    """What the gateway answers one call with, and what it logs and counts about it."""

    status: int
    body: dict[str, Any]
    outcome: Outcome
    attempts: int = 0
    upstream_status: int | None = None
    headers: dict[str, str] = field(default_factory=dict)
    reached_upstream: bool = False


@dataclass(frozen=True)
class Attempt:
    """One upstream request's result."""

    kind: Literal["response", "timeout", "connection", "too_large"]
    status: int | None = None
    result: Any = None
    retry_after: float | None = None
    detail: str = ""

    @property
    def retryable(self) -> bool:
        if self.kind in {"timeout", "connection"}:
            return True
        return (
            self.kind == "response"
            and self.status is not None
            and (self.status == 429 or self.status >= 500)
        )


class BodyTooLarge(Exception):
    pass


class ResponseTooLarge(Exception):
    pass


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused as soon as it exceeds `limit` bytes (never buffered whole)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise BodyTooLarge
    return bytes(body)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def parse_json(raw: bytes) -> Any:
    """JSON as RFC 8259 has it: NaN and Infinity are refused (they cannot be sent on)."""
    if not raw.strip():
        return {}
    try:
        return json.loads(raw, parse_constant=_reject_constant)
    except RecursionError:
        raise ValueError("nested too deeply") from None


def schema_violations(validator: Any, payload: Any) -> list[dict[str, str]]:
    errors = sorted(validator.iter_errors(payload), key=lambda e: (e.json_path, e.message))
    return [
        {"path": err.json_path, "message": err.message[:MAX_VIOLATION_MESSAGE]}
        for err in errors[:MAX_REPORTED_VIOLATIONS]
    ]


class ToolGateway:
    """The call pipeline of one ToolAdapter: validate → authenticate → breaker → rate limit →
    upstream with timeout and retries → reply, with a metric and a log line per call."""

    def __init__(
        self,
        config: ToolGatewayConfig,
        *,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        clock: Clock = time.monotonic,
        rng: Callable[[], float] = random.random,
        sleep: Sleep = asyncio.sleep,
        review: Review | None = None,
    ) -> None:
        """`review`: how caller tokens are reviewed (`caller_auth: tokenreview`); by default a
        TokenReview against the API server with the pod's own ServiceAccount."""
        self.config = config
        self.operations = compile_operations(config)
        self.caller_auth: CallerAuth | None = None
        if config.caller_auth == "tokenreview":
            if review is None:
                try:
                    review = TokenReviewer.in_cluster(os.environ).review
                except ReviewUnavailable as exc:
                    raise ConfigError(f"caller_auth 'tokenreview': {exc}") from None
            self.caller_auth = CallerAuth(config.namespace, grants_of(config), review)
        self.max_body_bytes = max_body_bytes
        self.max_response_bytes = max_response_bytes
        self.credentials = Credentials(config.auth)
        self.breaker = CircuitBreaker.from_policy(config.circuit_breaker, clock)
        self.bucket = TokenBucket.from_policy(config.rate_limit, clock)
        self.backoff = Backoff.from_policy(config.retries, rng)
        self.metrics = GatewayMetrics(
            config.adapter, self.operations, lambda: float(self.breaker.state)
        )
        self._clock = clock
        self._sleep = sleep
        self._session: aiohttp.ClientSession | None = None
        self._openapi: dict[str, Any] | None = None
        self._log = logging.getLogger(LOGGER_NAME)

    async def start(self) -> None:
        # No session-wide timeout: each attempt runs under its own `timeout_seconds`.
        # trust_env stays off: proxies come from configuration, not ambient variables.
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None))

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    # --- HTTP endpoints ---------------------------------------------------------------------

    async def handle_call(self, request: Request) -> Response:
        started = self._clock()
        name = str(request.path_params["name"])
        op = self.operations.get(name)
        agent: str | None = None
        refused = False
        if op is None:
            reply = Reply(
                404,
                error_body(
                    "unknown_operation",
                    f"adapter {self.config.adapter!r} has no operation {name[:64]!r}",
                    operations=sorted(self.operations),
                ),
                Outcome.INVALID_INPUT,
            )
        else:
            caller: Caller | Refusal | None = None
            if self.caller_auth is not None:
                # Before the body is read: an unknown or ungranted caller gets nothing parsed.
                caller = await self.caller_auth.check(
                    request.headers.get(AGENT_TOKEN_HEADER), op.name
                )
            if isinstance(caller, Refusal):
                self.metrics.caller_refused(caller.reason)
                agent, refused = caller.agent, True
                reply = Reply(
                    caller.status,
                    error_body(caller.code, caller.message),
                    Outcome.INVALID_INPUT,
                    headers={"WWW-Authenticate": "Bearer"} if caller.status == 401 else {},
                )
            else:
                agent = caller.agent if caller is not None else None
                reply = await self._read_and_call(request, op, started)
        # A refused call is counted by `tool_gateway_caller_refusals_total`, not `tool_call`.
        self._account(name, None if refused else op, reply, started, agent=agent, refused=refused)
        return JSONResponse(reply.body, reply.status, headers=reply.headers)

    async def _read_and_call(self, request: Request, op: Operation, started: float) -> Reply:
        try:
            raw = await read_body(request, self.max_body_bytes)
        except BodyTooLarge:
            return Reply(
                413,
                error_body(
                    "payload_too_large", f"request body exceeds {self.max_body_bytes} bytes"
                ),
                Outcome.INVALID_INPUT,
            )
        return await self.call(op, raw, request.headers.get(CALLER_IDEMPOTENCY_HEADER), started)

    async def handle_ready(self, request: Request) -> Response:
        circuit = self.breaker.state.label
        problem = self.credentials.problem()
        if problem is None and self.caller_auth is not None:
            problem = self.caller_auth.grants.problem()
        # An open breaker does not make the pod unready, on purpose: it means the *upstream* is
        # failing, and taking gateway pods out of the Service (or restarting them) cannot fix
        # that; it would only turn fast, explained 503s into connection errors for the agents
        # and lose the breaker's state. Only what a pod itself lacks (credentials, any grants
        # table at all) makes it unready.
        if problem is not None:
            return JSONResponse(
                {**error_body("not_ready", problem), "circuit": circuit}, status_code=503
            )
        return JSONResponse({"status": "ready", "adapter": self.config.adapter, "circuit": circuit})

    async def handle_health(self, request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def handle_openapi(self, request: Request) -> Response:
        if self._openapi is None:
            self._openapi = openapi_document(self.config)
        return JSONResponse(self._openapi)

    async def handle_metrics(self, request: Request) -> Response:
        return Response(self.metrics.exposition(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    # --- the pipeline -----------------------------------------------------------------------

    async def call(
        self, op: Operation, raw: bytes, caller_key: str | None, started: float
    ) -> Reply:
        try:
            payload = parse_json(raw)
        except ValueError as exc:
            return self._invalid("invalid_json", f"request body is not valid JSON: {exc}")
        if not isinstance(payload, dict):
            return self._invalid("invalid_input", "request body must be a JSON object")
        violations = schema_violations(op.validator, payload)
        if violations:
            return self._invalid(
                "invalid_input",
                f"input does not match the schema of operation {op.name!r}",
                violations=violations,
            )
        try:
            upstream = build_request(self.config.base_url, op.spec.method, op.template, payload)
        except InputError as exc:
            return self._invalid("invalid_input", str(exc))
        try:
            key = self._idempotency_key(op, caller_key)
        except InputError as exc:
            return self._invalid("invalid_idempotency_key", str(exc))
        try:
            auth = self.credentials.headers()
        except CredentialsUnavailable as exc:
            return Reply(
                503,
                error_body("credentials_unavailable", str(exc)),
                Outcome.UNAVAILABLE,
                headers=retry_after_header(10),
            )
        permit = self.breaker.acquire()
        if permit is None:
            wait = self.breaker.retry_after()
            why = f"calls are refused for {wait:.1f} s" if wait else "a trial call is under way"
            return Reply(
                503,
                error_body(
                    "circuit_open",
                    f"{self.config.system} system {self.config.adapter!r} is failing: {why}",
                ),
                Outcome.REJECTED_BREAKER,
                headers=retry_after_header(wait),
            )
        wait = self.bucket.try_acquire()
        if wait > 0:
            self.breaker.release(permit)
            return Reply(
                429,
                error_body(
                    "rate_limited",
                    f"more than {self.config.rate_limit.requests_per_second:g} calls/s "
                    f"(burst {self.config.rate_limit.burst}) to {self.config.adapter!r}",
                ),
                Outcome.REJECTED_RATE_LIMIT,
                headers=retry_after_header(wait),
            )
        done = False
        try:
            reply = await self._execute(op, upstream.method, upstream.url, upstream.body, auth, key)
            self.breaker.record(permit, reply.outcome in {Outcome.SUCCESS, Outcome.CLIENT_ERROR})
            done = True
        finally:
            if not done:
                # Cancelled (or a bug): the call proved nothing about the upstream.
                self.breaker.release(permit)
        reply.body["duration_ms"] = round((self._clock() - started) * 1000, 1)
        return reply

    def _invalid(self, code: str, message: str, **extra: Any) -> Reply:
        return Reply(400, error_body(code, message, **extra), Outcome.INVALID_INPUT)

    def _idempotency_key(self, op: Operation, caller_key: str | None) -> str | None:
        # Keys only matter where a repeat could do harm, and only if the upstream reads them.
        if not op.spec.mutating or self.config.idempotency_header is None:
            return None
        if caller_key is None:
            return str(uuid.uuid4())
        if len(caller_key) > MAX_IDEMPOTENCY_KEY_LENGTH or not _IDEMPOTENCY_KEY.match(caller_key):
            raise InputError(
                f"{CALLER_IDEMPOTENCY_HEADER} must be 1-{MAX_IDEMPOTENCY_KEY_LENGTH} "
                "printable ASCII characters without spaces"
            )
        return caller_key

    async def _execute(
        self,
        op: Operation,
        method: str,
        url: str,
        body: dict[str, Any] | None,
        auth: Mapping[str, str],
        key: str | None,
    ) -> Reply:
        headers = {"Accept": "application/json", **auth}
        if key is not None and self.config.idempotency_header is not None:
            headers[self.config.idempotency_header] = key
        # A mutating call without a key may have taken effect even though it failed (a timeout
        # after the write): it is never repeated.
        retry = not op.spec.mutating or key is not None
        max_attempts = self.config.retries.attempts if retry else 1
        attempts = 0
        while True:
            attempts += 1
            result = await self._attempt(method, url, body, headers)
            if not result.retryable or attempts >= max_attempts:
                break
            self.metrics.retry(op.name)
            await self._sleep(self.backoff.delay(attempts, result.retry_after))
        return self._reply(op, result, attempts, key)

    async def _attempt(
        self, method: str, url: str, body: dict[str, Any] | None, headers: Mapping[str, str]
    ) -> Attempt:
        if self._session is None:
            raise RuntimeError("the gateway is not started")
        status: int | None = None
        try:
            async with asyncio.timeout(self.config.timeout_seconds):
                async with self._session.request(
                    method,
                    URL(url, encoded=True),
                    json=body,
                    headers=headers,
                    # A redirect could carry the credentials to another host: passed back instead.
                    allow_redirects=False,
                ) as resp:
                    status = resp.status
                    raw = await self._read_response(resp)
                    retry_after = parse_retry_after(resp.headers.get("Retry-After"))
                    return Attempt(
                        "response", status, _decode_result(raw, resp.content_type), retry_after
                    )
        except TimeoutError:
            return Attempt("timeout")
        except ResponseTooLarge:
            return Attempt("too_large", status)
        except aiohttp.ClientError as exc:
            # The class name only: messages carry the URL, whose path may hold customer data.
            return Attempt("connection", detail=type(exc).__name__)

    async def _read_response(self, resp: aiohttp.ClientResponse) -> bytes:
        if resp.content_length is not None and resp.content_length > self.max_response_bytes:
            raise ResponseTooLarge
        data = bytearray()
        async for chunk in resp.content.iter_chunked(64 * 1024):
            data += chunk
            if len(data) > self.max_response_bytes:
                raise ResponseTooLarge
        return bytes(data)

    def _reply(self, op: Operation, result: Attempt, attempts: int, key: str | None) -> Reply:
        status = result.status
        if result.kind == "response" and status is not None and status != 429 and status < 500:
            # 4xx is the system saying no (unknown order, bad state): the system is up, so it is
            # passed back as is and counts as a success for the breaker.
            return Reply(
                200 if status < 400 else status,
                {
                    "operation": op.name,
                    "status": status,
                    "result": result.result,
                    "attempts": attempts,
                    "idempotency_key": key,
                },
                Outcome.SUCCESS if status < 400 else Outcome.CLIENT_ERROR,
                attempts,
                status,
                reached_upstream=True,
            )
        headers: dict[str, str] = {}
        extra: dict[str, Any] = {}
        after = f"after {attempts} attempt{'s' if attempts > 1 else ''}"
        outcome = Outcome.UPSTREAM_ERROR
        if result.kind == "timeout":
            gateway_status, code, outcome = 504, "upstream_timeout", Outcome.TIMEOUT
            message = f"upstream did not answer within {self.config.timeout_seconds:g} s, {after}"
        elif result.kind == "connection":
            gateway_status, code = 502, "upstream_unreachable"
            message = f"cannot reach upstream ({result.detail}), {after}"
        elif result.kind == "too_large":
            gateway_status, code = 502, "upstream_response_too_large"
            message = f"upstream response exceeds {self.max_response_bytes} bytes"
            extra["upstream_status"] = status
        elif status == 429:
            gateway_status, code = 429, "upstream_rate_limited"
            message = f"upstream answered 429, {after}"
            extra["upstream_status"] = status
            if result.retry_after is not None:
                headers = retry_after_header(result.retry_after)
        else:
            gateway_status, code = 502, "upstream_error"
            message = f"upstream answered {status}, {after}"
            extra["upstream_status"] = status
        return Reply(
            gateway_status,
            {
                **error_body(code, message, **extra),
                "operation": op.name,
                "attempts": attempts,
                "idempotency_key": key,
            },
            outcome,
            attempts,
            status,
            headers,
            reached_upstream=True,
        )

    def _account(
        self,
        name: str,
        op: Operation | None,
        reply: Reply,
        started: float,
        *,
        agent: str | None = None,
        refused: bool = False,
    ) -> None:
        duration = self._clock() - started
        if op is not None:
            # Unknown names are not counted: they come from the caller, and as a label value
            # they would make the series count unbounded.
            self.metrics.call(op.name, reply.outcome)
            if reply.reached_upstream:
                self.metrics.observe_latency(op.name, duration)
        # Never the body, the query or the headers: they carry customer data and credentials.
        fields = {
            "event": "tool_call",
            "adapter": self.config.adapter,
            "operation": name[:64],
            "outcome": reply.outcome.value,
            "status": reply.status,
            "upstream_status": reply.upstream_status,
            "attempts": reply.attempts,
            "duration_ms": round(duration * 1000, 1),
            "circuit": self.breaker.state.label,
        }
        if self.caller_auth is not None:
            fields["agent"] = agent
        if refused:
            fields["outcome"] = "refused_caller"
        if "error" in reply.body:
            fields["error"] = reply.body["error"]["code"]
        quiet = not refused and reply.outcome in {
            Outcome.SUCCESS,
            Outcome.CLIENT_ERROR,
            Outcome.INVALID_INPUT,
        }
        level = logging.INFO if quiet else logging.WARNING
        self._log.log(level, "tool call", extra={"fields": fields})


def _decode_result(raw: bytes, content_type: str) -> Any:
    if not raw:
        return None
    if content_type == "application/json" or content_type.endswith("+json"):
        try:
            return json.loads(raw)
        except ValueError:
            pass
    return raw.decode("utf-8", errors="replace")


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    codes = {404: "not_found", 405: "method_not_allowed"}
    return JSONResponse(
        error_body(codes.get(exc.status_code, "http_error"), str(exc.detail)),
        status_code=exc.status_code,
        headers=dict(exc.headers or {}),
    )


async def _internal_error(request: Request, exc: Exception) -> Response:
    # The traceback goes to the log (uvicorn's error logger); the caller gets no internals.
    return JSONResponse(error_body("internal", "internal gateway error"), status_code=500)


def create_app(config: ToolGatewayConfig, **options: Any) -> Starlette:
    """The ASGI app; `options` go to `ToolGateway`. Raises ConfigError."""
    gateway = ToolGateway(config, **options)

    @asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        await gateway.start()
        try:
            yield
        finally:
            await gateway.close()

    app = Starlette(
        routes=[
            Route("/v1/ops/{name}", gateway.handle_call, methods=["POST"]),
            Route("/readyz", gateway.handle_ready, methods=["GET"]),
            Route("/healthz", gateway.handle_health, methods=["GET"]),
            Route("/metrics", gateway.handle_metrics, methods=["GET"]),
            Route("/openapi.json", gateway.handle_openapi, methods=["GET"]),
        ],
        exception_handlers={HTTPException: _http_error, Exception: _internal_error},
        lifespan=lifespan,
    )
    app.state.gateway = gateway
    return app
