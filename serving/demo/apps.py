"""The two demo business systems as ASGI apps: an orders API (bearer auth) and a ticketing API
(basic auth, under a path prefix like a real helpdesk's `/api`).

They sit behind the tool gateways in `make demo` and in tests, so they check credentials the way
real systems do: a request that reaches them without the gateway's injected credentials gets 401.
The store calls are synchronous SQLite work of well under a millisecond, so handlers run them on
the event loop rather than paying a thread hop.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
from collections.abc import Callable
from typing import Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictStr, ValidationError
from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from .faults import FaultInjector, FaultMiddleware, FaultSettings
from .store import DemoError, DemoStore, JSONObject

HEALTH_PATH = "/healthz"
FAULTS_PATH = "/_faults"
# Health and fault control bypass auth and faults: tests and `make demo` call them directly,
# never through a gateway, and the servers only listen on loopback.
ADMIN_PATHS = frozenset({HEALTH_PATH, FAULTS_PATH})
IDEMPOTENCY_HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"
MAX_BODY_BYTES = 1 << 20
MAX_IDEMPOTENCY_KEY = 255
DEFAULT_TICKETING_PREFIX = "/api"

_M = TypeVar("_M", bound=BaseModel)


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore", str_strip_whitespace=True)


class AddressChange(_Body):
    address: StrictStr = Field(min_length=5, max_length=500)


class RefundRequest(_Body):
    amount: StrictFloat | None = Field(default=None, gt=0, allow_inf_nan=False)
    """Omitted: the whole refundable balance."""


class CancellationRequest(_Body):
    reason: StrictStr | None = Field(default=None, max_length=500)


class ChangeRequest(_Body):
    request: StrictStr = Field(min_length=3, max_length=1000)


class IssueReport(_Body):
    kind: Literal["damaged", "wrong_item"]
    description: StrictStr | None = Field(default=None, max_length=1000)


class TicketRequest(_Body):
    # Extra fields (the handoff's context, say) are kept as the ticket's metadata.
    model_config = ConfigDict(extra="allow", str_strip_whitespace=True)

    subject: StrictStr = Field(min_length=1, max_length=300)
    body: StrictStr = Field(min_length=1, max_length=100_000)
    priority: Literal["low", "normal", "high"] = "normal"


class _BadRequest(DemoError):
    status = 400


class _TooLarge(DemoError):
    status = 413


def _error(status: int, message: str, **extra: object) -> JSONResponse:
    return JSONResponse({"error": message, **extra}, status_code=status)


async def _json_object(request: Request, *, allow_empty: bool = False) -> JSONObject:
    raw = await request.body()
    if len(raw) > MAX_BODY_BYTES:
        raise _TooLarge(f"request body exceeds {MAX_BODY_BYTES} bytes")
    if not raw.strip():
        if allow_empty:
            return {}
        raise _BadRequest("request body must be a JSON object")
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise _BadRequest("request body is not valid JSON") from exc
    if not isinstance(data, dict):
        raise _BadRequest("request body must be a JSON object")
    return data


class _Invalid(DemoError):
    status = 422

    def __init__(self, message: str, details: object) -> None:
        super().__init__(message)
        self.details = details


def _validate(model: type[_M], data: JSONObject) -> _M:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        # No input values in the details: they may be customer data.
        details = exc.errors(include_url=False, include_input=False, include_context=False)
        first = details[0]
        where = ".".join(str(part) for part in first["loc"]) or "body"
        raise _Invalid(f"{where}: {first['msg']}", details) from exc


def _idempotency_key(request: Request) -> str | None:
    key = request.headers.get(IDEMPOTENCY_HEADER)
    if key is None:
        return None
    key = key.strip()
    if not key or len(key) > MAX_IDEMPOTENCY_KEY:
        raise _BadRequest(f"{IDEMPOTENCY_HEADER} must be 1-{MAX_IDEMPOTENCY_KEY} characters")
    return key


def _created(body: JSONObject, replayed: bool, location: str) -> JSONResponse:
    headers = {"Location": location, REPLAYED_HEADER: "true" if replayed else "false"}
    return JSONResponse(body, status_code=201, headers=headers)


def _changed(body: JSONObject, replayed: bool) -> JSONResponse:
    """200 for a keyed write that changes an existing resource rather than creating one."""
    return JSONResponse(body, headers={REPLAYED_HEADER: "true" if replayed else "false"})


async def _on_demo_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, DemoError)
    if isinstance(exc, _Invalid):
        return _error(exc.status, exc.message, details=exc.details)
    return _error(exc.status, exc.message)


async def _on_http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return JSONResponse({"error": exc.detail}, status_code=exc.status_code, headers=exc.headers)


async def _on_unexpected(request: Request, exc: Exception) -> Response:
    return _error(500, f"internal error: {type(exc).__name__}")


class _AuthMiddleware:
    """401 with a JSON body and a challenge unless `check(Authorization header)` holds."""

    def __init__(self, app: ASGIApp, check: Callable[[str], bool], challenge: str) -> None:
        self.app = app
        self.check = check
        self.challenge = challenge

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] not in ADMIN_PATHS:
            authorization = Headers(scope=scope).get("authorization", "")
            if not self.check(authorization):
                response = JSONResponse(
                    {"error": "missing or invalid credentials"},
                    status_code=401,
                    headers={"WWW-Authenticate": self.challenge},
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _bearer_check(token: str) -> Callable[[str], bool]:
    expected = token.encode()

    def check(authorization: str) -> bool:
        scheme, _, credential = authorization.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(
            credential.strip().encode(), expected
        )

    return check


def _basic_check(username: str, password: str) -> Callable[[str], bool]:
    expected_user, expected_password = username.encode(), password.encode()

    def check(authorization: str) -> bool:
        scheme, _, credential = authorization.partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            decoded = base64.b64decode(credential.strip(), validate=True)
        except (binascii.Error, ValueError):
            return False
        user, sep, secret = decoded.partition(b":")
        # Both comparisons always run, so timing does not tell which half was wrong.
        user_ok = hmac.compare_digest(user, expected_user)
        password_ok = hmac.compare_digest(secret, expected_password)
        return bool(sep) and user_ok and password_ok

    return check


def _admin_routes(faults: FaultInjector) -> list[Route]:
    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def get_faults(request: Request) -> Response:
        return JSONResponse(faults.snapshot())

    async def set_faults(request: Request) -> Response:
        faults.configure(_validate(FaultSettings, await _json_object(request, allow_empty=True)))
        return JSONResponse(faults.snapshot())

    async def clear_faults(request: Request) -> Response:
        faults.clear()
        return JSONResponse(faults.snapshot())

    return [
        Route(HEALTH_PATH, health, methods=["GET"]),
        Route(FAULTS_PATH, get_faults, methods=["GET"]),
        Route(FAULTS_PATH, set_faults, methods=["POST"]),
        Route(FAULTS_PATH, clear_faults, methods=["DELETE"]),
    ]


def _app(
    routes: list[Route], faults: FaultInjector, check: Callable[[str], bool], challenge: str
) -> Starlette:
    return Starlette(
        routes=_admin_routes(faults) + routes,
        # Auth before faults: an unauthenticated request neither waits nor uses up a failure.
        middleware=[
            Middleware(_AuthMiddleware, check=check, challenge=challenge),
            Middleware(FaultMiddleware, injector=faults, exempt=ADMIN_PATHS),
        ],
        exception_handlers={
            DemoError: _on_demo_error,
            HTTPException: _on_http_error,
            Exception: _on_unexpected,
        },
    )


def build_orders_app(
    store: DemoStore, *, token: str, faults: FaultInjector | None = None
) -> Starlette:
    """Orders API: `GET /orders/{id}`, `PATCH /orders/{id}/shipping-address`,
    `POST|GET /orders/{id}/refunds`, `GET /refunds/{id}`, `POST /orders/{id}/cancellation`,
    `POST|GET /orders/{id}/change-requests`, `GET /change-requests/{id}`,
    `POST|GET /orders/{id}/issues`, `GET /issues/{id}`; `Authorization: Bearer <token>`."""
    if not token:
        raise ValueError("the orders token must not be empty")

    async def get_order(request: Request) -> Response:
        return JSONResponse(store.get_order(request.path_params["order_id"]))

    async def change_address(request: Request) -> Response:
        change = _validate(AddressChange, await _json_object(request))
        order = store.update_shipping_address(request.path_params["order_id"], change.address)
        return JSONResponse(order)

    async def refund(request: Request) -> Response:
        key = _idempotency_key(request)
        ask = _validate(RefundRequest, await _json_object(request, allow_empty=True))
        created, replayed = store.create_refund(request.path_params["order_id"], ask.amount, key)
        return _created(created, replayed, f"/refunds/{created['refund_id']}")

    async def list_refunds(request: Request) -> Response:
        return JSONResponse({"refunds": store.list_refunds(request.path_params["order_id"])})

    async def get_refund(request: Request) -> Response:
        return JSONResponse(store.get_refund(request.path_params["refund_id"]))

    async def cancel(request: Request) -> Response:
        key = _idempotency_key(request)
        ask = _validate(CancellationRequest, await _json_object(request, allow_empty=True))
        order, replayed = store.cancel_order(request.path_params["order_id"], ask.reason, key)
        return _changed(order, replayed)

    async def request_change(request: Request) -> Response:
        key = _idempotency_key(request)
        ask = _validate(ChangeRequest, await _json_object(request))
        created, replayed = store.create_change_request(
            request.path_params["order_id"], ask.request, key
        )
        return _created(created, replayed, f"/change-requests/{created['change_id']}")

    async def list_change_requests(request: Request) -> Response:
        changes = store.list_change_requests(request.path_params["order_id"])
        return JSONResponse({"change_requests": changes})

    async def get_change_request(request: Request) -> Response:
        return JSONResponse(store.get_change_request(request.path_params["change_id"]))

    async def report_issue(request: Request) -> Response:
        key = _idempotency_key(request)
        ask = _validate(IssueReport, await _json_object(request))
        created, replayed = store.create_issue(
            request.path_params["order_id"], ask.kind, ask.description, key
        )
        return _created(created, replayed, f"/issues/{created['issue_id']}")

    async def list_issues(request: Request) -> Response:
        return JSONResponse({"issues": store.list_issues(request.path_params["order_id"])})

    async def get_issue(request: Request) -> Response:
        return JSONResponse(store.get_issue(request.path_params["issue_id"]))

    routes = [
        Route("/orders/{order_id}", get_order, methods=["GET"]),
        Route("/orders/{order_id}/shipping-address", change_address, methods=["PATCH"]),
        Route("/orders/{order_id}/refunds", refund, methods=["POST"]),
        Route("/orders/{order_id}/refunds", list_refunds, methods=["GET"]),
        Route("/refunds/{refund_id}", get_refund, methods=["GET"]),
        Route("/orders/{order_id}/cancellation", cancel, methods=["POST"]),
        Route("/orders/{order_id}/change-requests", request_change, methods=["POST"]),
        Route("/orders/{order_id}/change-requests", list_change_requests, methods=["GET"]),
        Route("/change-requests/{change_id}", get_change_request, methods=["GET"]),
        Route("/orders/{order_id}/issues", report_issue, methods=["POST"]),
        Route("/orders/{order_id}/issues", list_issues, methods=["GET"]),
        Route("/issues/{issue_id}", get_issue, methods=["GET"]),
    ]
    return _app(routes, faults or FaultInjector(), _bearer_check(token), 'Bearer realm="orders"')


def normalize_prefix(prefix: str) -> str:
    """`api`, `/api/` → `/api`; `` or `/` → `` (routes at the root)."""
    stripped = prefix.strip().strip("/")
    return f"/{stripped}" if stripped else ""


def build_ticketing_app(
    store: DemoStore,
    *,
    username: str,
    password: str,
    prefix: str = DEFAULT_TICKETING_PREFIX,
    faults: FaultInjector | None = None,
) -> Starlette:
    """Ticketing API under `prefix`: `POST|GET {prefix}/tickets`, `GET {prefix}/tickets/{id}`;
    HTTP basic auth."""
    if not username or not password:
        raise ValueError("the ticketing username and password must not be empty")
    base = normalize_prefix(prefix)

    async def create_ticket(request: Request) -> Response:
        key = _idempotency_key(request)
        ask = _validate(TicketRequest, await _json_object(request))
        ticket, replayed = store.create_ticket(
            ask.subject, ask.body, ask.priority, dict(ask.model_extra or {}), key
        )
        return _created(ticket, replayed, f"{base}/tickets/{ticket['ticket_id']}")

    async def list_tickets(request: Request) -> Response:
        raw = request.query_params.get("limit", "20")
        if not raw.isdigit() or not 1 <= int(raw) <= 100:
            raise _BadRequest("limit must be an integer between 1 and 100")
        return JSONResponse({"tickets": store.list_tickets(int(raw))})

    async def get_ticket(request: Request) -> Response:
        return JSONResponse(store.get_ticket(request.path_params["ticket_id"]))

    routes = [
        Route(f"{base}/tickets", create_ticket, methods=["POST"]),
        Route(f"{base}/tickets", list_tickets, methods=["GET"]),
        Route(f"{base}/tickets/{{ticket_id}}", get_ticket, methods=["GET"]),
    ]
    check = _basic_check(username, password)
    return _app(routes, faults or FaultInjector(), check, 'Basic realm="ticketing"')
