"""The agent's HTTP surface for people: the customer's side of a handoff (messages, a live
stream, a rating), the human agents' API (list, claim, reply, transfer, resolve, correct, rate)
and the two pages, beside `/v1/chat` (docs/handoffs.md).

One FastAPI app is built per replica (`agent_http_app`) around a `HandoffService` that holds
the session store: the revision's ingress and, during a rollout, the router build the same app,
so that the console keeps working whichever of them is the agent's entry. State is only in the
store (Redis on clusters), so any replica answers any call and live streams poll the store
rather than a replica's memory.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from fastapi import Depends, FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from fastapi.security import HTTPBearer
from pydantic import BaseModel, ConfigDict, Field

from .auth import Authenticator, AuthError
from .config import AuthConfig, HandoffConfig
from .http import (
    CHAT_OPENAPI,
    CHAT_RESPONSES,
    ChatDispatch,
    Refused,
    error,
    errors,
    handle_chat,
    json_body,
    new_api,
    parse_body,
)
from .session_tokens import TOKEN_HEADER, TOKEN_QUERY, SessionRefused, SessionTokens
from .workflow import handoffs as transitions
from .workflow.handoffs import (
    OUT_OF_SCOPE,
    HandoffError,
    HandoffMessage,
    HandoffRecord,
    HandoffStatus,
    feedback_record,
    handoff_id,
    queue_position,
)
from .workflow.sessions import Conflict, SessionStore
from .workflow.types import MAX_MESSAGE_CHARS, REQUEST_ID, ChatRequest

log = logging.getLogger("switchboard.agent_api")

POLL_SECONDS = 0.5
"""How often a live stream looks at the store for changes."""
KEEPALIVE_SECONDS = 15.0
STREAM_SECONDS = 300.0
"""A stream ends after this long and the browser reconnects (EventSource does so by itself):
no connection outlives a replica's drain for long."""
TOKENS_RECHECK_SECONDS = 10.0
LIST_LIMIT = 200


# --- who is calling ------------------------------------------------------------------------


class ConsoleTokens:
    """The human agents' bearer tokens: one file per person in a mounted Secret (file name =
    their name). Re-read every few seconds, so a rotated Secret takes effect without a restart
    (the kubelet swaps the files in place)."""

    def __init__(self, directory: str | None, clock: Callable[[], float] = time.monotonic):
        self.directory = Path(directory) if directory else None
        self.clock = clock
        self._by_name: dict[str, str] = {}
        self._read_at: float | None = None

    def _tokens(self) -> dict[str, str]:
        now = self.clock()
        if self.directory is None:
            return {}
        if self._read_at is None or now - self._read_at >= TOKENS_RECHECK_SECONDS:
            self._read_at = now
            found: dict[str, str] = {}
            try:
                for path in sorted(self.directory.iterdir()):
                    # Skip the kubelet's `..data` links and anything that is not a plain file.
                    if path.name.startswith(".") or not path.is_file():
                        continue
                    token = path.read_text(encoding="utf-8").strip()
                    if token:
                        found[path.name] = token
            except OSError as exc:
                log.warning("console tokens: cannot read %s: %s", self.directory, exc)
            self._by_name = found
        return self._by_name

    def who(self, token: str) -> str | None:
        """The person a token belongs to (compared in constant time)."""
        match = None
        for name, known in self._tokens().items():
            if hmac.compare_digest(known.encode(), token.encode()):
                match = name
        return match

    def names(self) -> set[str]:
        return set(self._tokens())


def bearer(request: Request) -> str | None:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


# --- bodies -------------------------------------------------------------------------------


class _Mutation(BaseModel):
    model_config = ConfigDict(extra="forbid")

    request_id: str = Field(min_length=1, max_length=128, pattern=REQUEST_ID)
    """The client's id for this call (or its `Idempotency-Key` header): a retry changes
    nothing."""


class ClaimBody(_Mutation):
    pass


class ReplyBody(_Mutation):
    text: str = Field(min_length=1, max_length=MAX_MESSAGE_CHARS)


class TransferBody(_Mutation):
    to: str = Field(min_length=1, max_length=128)


class CorrectionBody(_Mutation):
    intent: str = Field(min_length=1, max_length=128)
    """The right intent of the message, or `oos` (out of scope)."""
    text: str | None = Field(default=None, max_length=MAX_MESSAGE_CHARS)
    """The customer message corrected; the message that caused the handoff by default."""


class RatingBody(_Mutation):
    rating: int = Field(ge=1, le=5)


# --- answers (documentation of the JSON the routes build; see the OpenAPI document) --------


class HandoffState(BaseModel):
    id: str
    status: HandoffStatus
    assignee: str | None
    queue_position: int | None


class CustomerFeed(BaseModel):
    """The human side of a conversation after the cursor `after`."""

    messages: list[HandoffMessage]
    cursor: int
    """Pass it as `after` next time."""
    handoff: HandoffState | None
    """The latest handoff's state; null when the conversation was never handed off."""


class RatingResult(BaseModel):
    rating: int
    handled_by: Literal["bot", "human"]


class ListedHandoff(HandoffRecord):
    queue_position: int | None


class HandoffListing(BaseModel):
    handoffs: list[ListedHandoff]
    intents: list[str]
    """What a correction may pick, `oos` (out of scope) last."""
    me: str
    """The human agent the bearer token belongs to."""


# --- the service --------------------------------------------------------------------------


class HandoffMetrics(Protocol):
    def first_human_reply(self, seconds: float) -> None: ...
    def handoff_handled(self, seconds: float) -> None: ...
    def rating(self, rating: int, handled_by: str) -> None: ...


class NoHandoffMetrics:
    def first_human_reply(self, seconds: float) -> None:
        return None

    def handoff_handled(self, seconds: float) -> None:
        return None

    def rating(self, rating: int, handled_by: str) -> None:
        return None


Intents = Callable[[], Awaitable[list[str]]]


@dataclass
class HandoffService:
    """What the human side of the API does, over the session store."""

    store: SessionStore
    tokens: ConsoleTokens
    namespace: str
    intents: Intents
    """The labels the agent's model predicts (what a correction may pick)."""
    metrics: HandoffMetrics = field(default_factory=NoHandoffMetrics)
    clock: Callable[[], float] = time.time
    session_tokens: SessionTokens | None = None
    """Binds each conversation to whoever started it; None: a session id alone suffices."""
    authenticator: Authenticator | None = None
    """Who the customer is (`spec.auth`: a JWT the agent or Istio verified); None: anyone."""

    @classmethod
    def of(
        cls,
        store: SessionStore,
        handoff: HandoffConfig,
        namespace: str,
        intents: Intents,
        metrics: HandoffMetrics | None = None,
        token_keys_dir: str | None = None,
        auth: AuthConfig | None = None,
    ) -> HandoffService:
        return cls(
            store,
            ConsoleTokens(handoff.console_tokens_dir),
            namespace,
            intents,
            metrics or NoHandoffMetrics(),
            session_tokens=SessionTokens(token_keys_dir) if token_keys_dir else None,
            authenticator=Authenticator(auth) if auth else None,
        )

    # --- whose conversation ---

    async def customer(self, headers: Mapping[str, str]) -> str | None:
        """The verified customer of a chat request (None: anonymous, where allowed); a refusal
        is a 401 with the reason and `WWW-Authenticate`, never the token."""
        if self.authenticator is None:
            return None
        try:
            if self.authenticator.config.mode == "istio":  # a header Istio set: nothing to wait on
                return self.authenticator.customer(headers)
            # A key-set fetch (cold cache, unknown kid) must not block the replica's event loop.
            return await asyncio.to_thread(self.authenticator.customer, headers)
        except AuthError as exc:
            raise Refused(
                401, exc.reason, exc.message, {"WWW-Authenticate": exc.www_authenticate}
            ) from None

    async def admit(self, session_id: str, token: str | None, request_id: str | None) -> None:
        """Raises `SessionRefused` when the conversation exists and `token` is not its own. A
        new session id starts a new conversation. The one tokenless request let through is a
        retry of the conversation's first turn (by its request id), whose answer — and token —
        the client never received."""
        if self.session_tokens is None:
            return
        session = await self.store.get(session_id)
        if session is None:
            return
        first_retry = (
            token is None
            and request_id is not None
            and session.turns == 1
            and [r.request_id for r in session.replays[:1]] == [request_id]
        )
        if not first_retry:
            self.session_tokens.check(session_id, token)

    def sign(self, session_id: str) -> str | None:
        return self.session_tokens.issue(session_id) if self.session_tokens else None

    # --- the customer's side ---

    async def customer_feed(self, session_id: str, after: int) -> dict[str, Any] | None:
        """The human side of a conversation after cursor `after`: humans' messages and notices
        (the customer's own messages are on their page already), and the latest handoff's
        state. None when there is no such conversation."""
        session = await self.store.get(session_id)
        if session is None:
            return None
        records = []
        for number in range(1, session.handoffs + 1):
            record = await self.store.get_handoff(handoff_id(session_id, number))
            if record is not None:
                records.append(record)
        messages, position = [], 0
        for record in records:
            for message in record.messages:
                position += 1  # the cursor counts every message of every handoff, in order
                if position > after and message.role != "customer":
                    messages.append({**message.model_dump(), "seq": position})
        latest = records[-1] if records else None
        return {
            "messages": messages,
            "cursor": position,
            "handoff": await self._state(latest) if latest else None,
        }

    async def _state(self, record: HandoffRecord) -> dict[str, Any]:
        return {
            "id": record.id,
            "status": record.status,
            "assignee": record.assignee,
            "queue_position": await self._position(record),
        }

    async def _position(self, record: HandoffRecord) -> int | None:
        if record.status != "waiting":
            return None
        return queue_position(record, await self.store.handoffs(open_only=True))

    async def rate_conversation(self, session_id: str, body: RatingBody) -> dict[str, Any] | None:
        """The customer's 1-5 rating at the end; None when there is no such conversation."""
        session = await self.store.get(session_id)
        if session is None:
            return None
        handled_by = "human" if session.handoffs else "bot"
        if session.handoffs:
            latest = handoff_id(session_id, session.handoffs)
            changed = await self._apply(
                latest, lambda r: transitions.rate_by_customer(r, body.rating, body.request_id)
            )
            counted = changed is not None
        else:
            counted = await self.store.rate(session_id, body.request_id, body.rating)
        if counted:
            self.metrics.rating(body.rating, handled_by)
        return {"rating": body.rating, "handled_by": handled_by}

    # --- the human agents' side ---

    async def listing(self, status: str, limit: int) -> dict[str, Any]:
        records = await self.store.handoffs(open_only=status == "open")
        if status == "resolved":
            records = [r for r in records if not r.is_open]
        records = records[-limit:]
        waiting = [r for r in records if r.status == "waiting"]
        listed = [{**r.model_dump(), "queue_position": queue_position(r, waiting)} for r in records]
        return {"handoffs": listed, "intents": await self._correctable()}

    async def _correctable(self) -> list[str]:
        labels = sorted(set(await self.intents()) - {OUT_OF_SCOPE})
        return [*labels, OUT_OF_SCOPE]

    async def _apply(
        self, record_id: str, change: Callable[[HandoffRecord], HandoffRecord]
    ) -> HandoffRecord | None:
        """The changed record, or None when `change` left it as it was (a retried call)."""
        before: list[int] = []

        def tracked(record: HandoffRecord) -> HandoffRecord:
            before[:] = [record.version]
            return change(record)

        changed = await self.store.update_handoff(record_id, tracked)
        return changed if changed.version != before[0] else None

    async def claim(self, record_id: str, human: str, body: ClaimBody) -> HandoffRecord:
        now = self.clock()
        await self._apply(record_id, lambda r: transitions.claim(r, human, body.request_id, now))
        return await self._get(record_id)

    async def reply(self, record_id: str, human: str, body: ReplyBody) -> HandoffRecord:
        now = self.clock()
        first: list[bool] = []

        def change(record: HandoffRecord) -> HandoffRecord:
            first[:] = [record.first_reply_at is None]
            return transitions.reply(record, human, body.text, body.request_id, now)

        changed = await self._apply(record_id, change)
        if changed is not None and first[0] and changed.first_reply_at is not None:
            self.metrics.first_human_reply(changed.first_reply_at - changed.created_at)
        return changed or await self._get(record_id)

    async def transfer(self, record_id: str, human: str, body: TransferBody) -> HandoffRecord:
        if body.to not in self.tokens.names():
            raise HandoffError(422, "unknown_agent", f"no human agent is called {body.to}")
        now = self.clock()
        changed = await self._apply(
            record_id, lambda r: transitions.transfer(r, human, body.to, body.request_id, now)
        )
        return changed or await self._get(record_id)

    async def resolve(self, record_id: str, human: str, body: ClaimBody) -> HandoffRecord:
        now = self.clock()
        changed = await self._apply(
            record_id, lambda r: transitions.resolve(r, human, body.request_id, now)
        )
        if changed is not None and changed.resolved_at is not None:
            self.metrics.handoff_handled(changed.resolved_at - changed.created_at)
        return changed or await self._get(record_id)

    async def correct(self, record_id: str, human: str, body: CorrectionBody) -> HandoffRecord:
        if body.intent not in await self._correctable():
            raise HandoffError(
                422, "unknown_intent", f"{body.intent} is not an intent of this agent's model"
            )
        now = self.clock()
        changed = await self._apply(
            record_id,
            lambda r: transitions.correct(r, human, body.intent, body.request_id, now, body.text),
        )
        if changed is None:
            return await self._get(record_id)
        correction = changed.corrections[-1]
        await self.store.add_feedback(
            feedback_record(
                changed,
                correction.text,
                correction.corrected_intent,
                "correction",
                human,
                now,
                self.namespace,
            )
        )
        return changed

    async def rate_bot(self, record_id: str, human: str, body: RatingBody) -> HandoffRecord:
        now = self.clock()
        changed = await self._apply(
            record_id, lambda r: transitions.rate_bot(r, human, body.rating, body.request_id, now)
        )
        return changed or await self._get(record_id)

    async def _get(self, record_id: str) -> HandoffRecord:
        record = await self.store.get_handoff(record_id)
        if record is None:
            raise KeyError(record_id)
        return record


# --- HTTP ---------------------------------------------------------------------------------


def _unauthenticated() -> JSONResponse:
    return error(
        401,
        "unauthenticated",
        "a human agent's bearer token is required",
        headers={"WWW-Authenticate": 'Bearer realm="switchboard-console"'},
    )


def _not_found(what: str) -> JSONResponse:
    return error(404, "not_found", f"no {what}")


def _int_query(request: Request, name: str, default: int) -> int | JSONResponse:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    # ASCII digits only: str.isdigit() also holds for '²' (which int() refuses) and '٣'.
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 9:
        return error(422, "invalid_request", f"query parameter {name} must be a whole number")
    return int(raw)


async def _sse(
    request: Request, poll: Callable[[], Awaitable[list[tuple[str, dict[str, Any]]]]]
) -> StreamingResponse:
    """Server-Sent Events from a poll of the store: `event: NAME` + JSON `data`, a comment now
    and then so that proxies keep the connection, closed after STREAM_SECONDS."""

    async def events() -> AsyncIterator[str]:
        started = last = time.monotonic()
        yield "retry: 2000\n\n"
        while time.monotonic() - started < STREAM_SECONDS:
            if await request.is_disconnected():
                return
            sent = False
            for name, data in await poll():
                yield f"event: {name}\ndata: {json.dumps(data, default=str)}\n\n"
                sent = True
            if not sent and time.monotonic() - last >= KEEPALIVE_SECONDS:
                yield ": keep-alive\n\n"
                sent = True
            if sent:
                last = time.monotonic()
            await asyncio.sleep(POLL_SECONDS)

    return StreamingResponse(
        events(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


def _page(name: str) -> HTMLResponse:
    from .web import page

    return HTMLResponse(page(name), headers={"Cache-Control": "no-cache"})


# --- the OpenAPI description (serving/http.py says how the hand-parsed bodies get in) -------

CONSOLE_AUTH = HTTPBearer(
    scheme_name="consoleToken",
    description="A human agent's token: a file of the console tokens Secret.",
    auto_error=False,
)
"""Declares the console's bearer scheme in the OpenAPI document. It never refuses a call: the
routes check the token themselves (`caller`) and answer a JSON 401."""


def _param(name: str, where: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": where,
        "required": False,
        "schema": schema,
        "description": description,
    }


_WHOLE_NUMBER = {"type": "integer", "minimum": 0, "maximum": 999_999_999}  # see _int_query
_AFTER = _param("after", "query", _WHOLE_NUMBER, "Only what came after this cursor.")
_IDEMPOTENCY = _param(
    "Idempotency-Key",
    "header",
    {"type": "string", "minLength": 1, "maxLength": 128, "pattern": REQUEST_ID},
    "The request id, when the body has none: a retry changes nothing.",
)
_SESSION_TOKEN = [
    _param(TOKEN_HEADER, "header", {"type": "string"}, "The conversation's session token."),
    _param(TOKEN_QUERY, "query", {"type": "string"}, "The session token (for EventSource)."),
]
_EVENTS: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "Server-Sent Events (`event: NAME` and a JSON `data` line each)",
        "content": {"text/event-stream": {"schema": {"type": "string"}}},
    }
}


def _answers(model: type[BaseModel], *statuses: int) -> dict[int | str, dict[str, Any]]:
    return {200: {"model": model, "description": "OK"}, **errors(*statuses)}


def agent_http_app(title: str, dispatch: ChatDispatch, service: HandoffService) -> FastAPI:
    """The agent's whole HTTP app: `/v1/chat` (answered by `dispatch`), the handoff API and
    the pages."""
    api = new_api(title)

    async def guarded(request: ChatRequest, headers: Mapping[str, str]) -> dict[str, Any]:
        customer = await service.customer(headers)
        if customer is not None:  # a verified identity, not what the body claims
            request = request.model_copy(update={"customer_id": customer})
        await service.admit(request.session_id, headers.get(TOKEN_HEADER), request.request_id)
        answer = await dispatch(request, headers)
        return {**answer, "session_token": service.sign(request.session_id)}

    @api.post(
        "/v1/chat",
        responses=CHAT_RESPONSES,
        openapi_extra={**CHAT_OPENAPI, "parameters": [_SESSION_TOKEN[0], _IDEMPOTENCY]},
    )
    async def chat(request: Request) -> JSONResponse:
        return await handle_chat(request, guarded)

    @api.get("/widget", include_in_schema=False)
    async def widget() -> HTMLResponse:
        return _page("widget.html")

    @api.get("/console", include_in_schema=False)
    async def console() -> HTMLResponse:
        return _page("console.html")

    add_customer_routes(api, service)
    add_console_routes(api, service)
    return api


def add_customer_routes(api: FastAPI, service: HandoffService) -> None:
    async def refused(session_id: str, request: Request) -> JSONResponse | None:
        """Reading a conversation takes the customer's JWT where `spec.auth` asks for one, and
        the conversation's token (header, or `?token=` for EventSource), asked before anything
        else: a stranger learns not even whether the session exists."""
        try:
            await service.customer(request.headers)
        except Refused as exc:
            return exc.response()
        if service.session_tokens is None:
            return None
        token = request.headers.get(TOKEN_HEADER) or request.query_params.get(TOKEN_QUERY)
        try:
            service.session_tokens.check(session_id, token)
        except SessionRefused as exc:
            return exc.response()
        return None

    async def readable_after(session_id: str, request: Request) -> int | JSONResponse:
        """The `after` cursor of a read of the conversation, or why it is refused."""
        if (no := await refused(session_id, request)) is not None:
            return no
        return _int_query(request, "after", 0)

    @api.get(
        "/v1/sessions/{session_id}/messages",
        responses=_answers(CustomerFeed, 401, 403, 404, 422),
        openapi_extra={"parameters": [_AFTER, *_SESSION_TOKEN]},
    )
    async def session_messages(session_id: str, request: Request) -> JSONResponse:
        after = await readable_after(session_id, request)
        if isinstance(after, JSONResponse):
            return after
        feed = await service.customer_feed(session_id, after)
        return JSONResponse(feed) if feed is not None else _not_found("such conversation")

    @api.get(
        "/v1/sessions/{session_id}/events",
        response_class=StreamingResponse,
        response_model=None,
        responses={**_EVENTS, **errors(401, 403, 404, 422)},
        openapi_extra={"parameters": [_AFTER, *_SESSION_TOKEN]},
    )
    async def session_events(session_id: str, request: Request) -> Any:
        after = await readable_after(session_id, request)
        if isinstance(after, JSONResponse):
            return after
        if await service.customer_feed(session_id, after) is None:
            return _not_found("such conversation")
        cursor, state = after, [None]

        async def poll() -> list[tuple[str, dict[str, Any]]]:
            nonlocal cursor
            feed = await service.customer_feed(session_id, cursor)
            if feed is None:
                return []
            out: list[tuple[str, dict[str, Any]]] = [("message", m) for m in feed["messages"]]
            cursor = feed["cursor"]
            if feed["handoff"] is not None and feed["handoff"] != state[0]:
                state[0] = feed["handoff"]
                out.append(("handoff", feed["handoff"]))
            return out

        return await _sse(request, poll)

    @api.post(
        "/v1/sessions/{session_id}/rating",
        responses=_answers(RatingResult, 400, 401, 403, 404, 413, 422),
        openapi_extra={**json_body(RatingBody), "parameters": [_IDEMPOTENCY, *_SESSION_TOKEN]},
    )
    async def session_rating(session_id: str, request: Request) -> JSONResponse:
        if (no := await refused(session_id, request)) is not None:
            return no
        body = await parse_body(request, RatingBody)
        if isinstance(body, JSONResponse):
            return body
        rated = await service.rate_conversation(session_id, body)
        return JSONResponse(rated) if rated is not None else _not_found("such conversation")


# One route per transition: (path suffix, body model, service method).
_TRANSITIONS: list[tuple[str, type[_Mutation], str]] = [
    ("claim", ClaimBody, "claim"),
    ("reply", ReplyBody, "reply"),
    ("transfer", TransferBody, "transfer"),
    ("resolve", ClaimBody, "resolve"),
    ("correction", CorrectionBody, "correct"),
    ("rating", RatingBody, "rate_bot"),
]


def add_console_routes(api: FastAPI, service: HandoffService) -> None:
    def caller(request: Request) -> str | None:
        token = bearer(request)
        return service.tokens.who(token) if token else None

    console = [Depends(CONSOLE_AUTH)]
    listing_parameters = [
        _param("status", "query", {"type": "string", "enum": ["open", "resolved", "all"]}, ""),
        _param("limit", "query", _WHOLE_NUMBER, f"At most this many (up to {LIST_LIMIT})."),
    ]

    @api.get(
        "/v1/handoffs",
        dependencies=console,
        responses=_answers(HandoffListing, 401, 422),
        openapi_extra={"parameters": listing_parameters},
    )
    async def list_handoffs(request: Request) -> JSONResponse:
        human = caller(request)
        if human is None:
            return _unauthenticated()
        status = request.query_params.get("status", "open")
        if status not in ("open", "resolved", "all"):
            return error(422, "invalid_request", "status must be open, resolved or all")
        limit = _int_query(request, "limit", LIST_LIMIT)
        if isinstance(limit, JSONResponse):
            return limit
        listed = await service.listing(status, max(1, min(limit, LIST_LIMIT)))
        return JSONResponse({**listed, "me": human})

    @api.get(
        "/v1/handoffs/events",
        dependencies=console,
        response_class=StreamingResponse,
        response_model=None,
        responses={**_EVENTS, **errors(401)},
    )
    async def handoff_events(request: Request) -> Any:
        if caller(request) is None:
            return _unauthenticated()
        seen: dict[str, int] = {}

        async def poll() -> list[tuple[str, dict[str, Any]]]:
            records = {r.id: r for r in await service.store.handoffs(open_only=True)}
            for gone in set(seen) - set(records):  # resolved since: send its final state
                record = await service.store.get_handoff(gone)
                if record is not None:
                    records[gone] = record
            out = []
            for record in records.values():
                if seen.get(record.id) != record.version:
                    out.append(("handoff", record.model_dump()))
                if record.is_open:
                    seen[record.id] = record.version
                else:
                    seen.pop(record.id, None)
            return out

        return await _sse(request, poll)

    @api.get(
        "/v1/handoffs/{record_id}",
        dependencies=console,
        responses=_answers(HandoffRecord, 401, 404, 422),
    )
    async def get_handoff(record_id: str, request: Request) -> JSONResponse:
        if caller(request) is None:
            return _unauthenticated()
        record = await service.store.get_handoff(record_id)
        return JSONResponse(record.model_dump()) if record else _not_found(f"handoff {record_id}")

    for suffix, model, method in _TRANSITIONS:
        api.add_api_route(
            f"/v1/handoffs/{{record_id}}/{suffix}",
            _transition_route(service, caller, model, method),
            methods=["POST"],
            name=f"handoff_{suffix}",
            response_model=None,
            dependencies=console,
            responses=_answers(HandoffRecord, 400, 401, 403, 404, 409, 413, 422, 503),
            openapi_extra={**json_body(model), "parameters": [_IDEMPOTENCY]},
        )


def _transition_route(
    service: HandoffService,
    caller: Callable[[Request], str | None],
    model: type[_Mutation],
    method: str,
) -> Callable[[str, Request], Awaitable[JSONResponse]]:
    async def route(record_id: str, request: Request) -> JSONResponse:
        human = caller(request)
        if human is None:
            return _unauthenticated()
        body = await parse_body(request, model)
        if isinstance(body, JSONResponse):
            return body
        try:
            record = await getattr(service, method)(record_id, human, body)
        except KeyError:
            return _not_found(f"handoff {record_id}")
        except HandoffError as exc:
            return error(exc.status, exc.code, exc.message)
        except Conflict:
            return error(
                503, "busy", f"handoff {record_id} is changing; retry", headers={"Retry-After": "1"}
            )
        return JSONResponse(record.model_dump())

    return route
