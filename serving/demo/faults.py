"""Fault injection, off by default: makes a demo system slow or failing on demand so tests and
benchmarks can exercise the gateway's timeouts, retries and circuit breaker against a real
HTTP service."""

from __future__ import annotations

import asyncio
import threading

from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from .store import JSONObject


class FaultSettings(BaseModel):
    """Body of `POST /_faults`; posting replaces the previous settings."""

    # Forbidden extras: a misspelt field would otherwise silently inject nothing.
    model_config = ConfigDict(extra="forbid")

    delay_seconds: float = Field(default=0.0, ge=0, le=300)
    """Added before answering a request."""
    delay_next: int | None = Field(default=None, ge=0)
    """How many of the next requests are delayed; None delays every request."""
    fail_next: int = Field(default=0, ge=0)
    """How many of the next requests fail with `status` (after the delay, if any)."""
    status: int = Field(default=503, ge=400, le=599)


class FaultInjector:
    """Thread-safe: configured from the test's thread, consulted on the server's loop."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._settings = FaultSettings()
        self._delays_left: int | None = None
        self._failures_left = 0
        self._requests_seen = 0
        self._delayed = 0
        self._failed = 0

    def configure(self, settings: FaultSettings | None = None, **fields: object) -> None:
        """`configure(FaultSettings(...))` or `configure(fail_next=2, status=500)`."""
        new = settings if settings is not None else FaultSettings.model_validate(fields)
        with self._lock:
            self._settings = new
            self._delays_left = new.delay_next
            self._failures_left = new.fail_next

    def clear(self) -> None:
        """Back to healthy, counters reset."""
        with self._lock:
            self._settings = FaultSettings()
            self._delays_left = None
            self._failures_left = 0
            self._requests_seen = self._delayed = self._failed = 0

    def snapshot(self) -> JSONObject:
        with self._lock:
            return {
                "delay_seconds": self._settings.delay_seconds,
                "delay_next": self._delays_left,
                "fail_next": self._failures_left,
                "status": self._settings.status,
                "requests_seen": self._requests_seen,
                "requests_delayed": self._delayed,
                "requests_failed": self._failed,
            }

    def next_request(self) -> tuple[float, int | None]:
        """Counts one business request; returns (delay, failure status or None) for it."""
        with self._lock:
            self._requests_seen += 1
            delay = 0.0
            if self._settings.delay_seconds > 0 and self._delays_left != 0:
                delay = self._settings.delay_seconds
                self._delayed += 1
                if self._delays_left is not None:
                    self._delays_left -= 1
            status = None
            if self._failures_left > 0:
                self._failures_left -= 1
                self._failed += 1
                status = self._settings.status
            return delay, status


class FaultMiddleware:
    """Applies the injector to every request except the admin paths (health, fault control)."""

    def __init__(self, app: ASGIApp, injector: FaultInjector, exempt: frozenset[str]) -> None:
        self.app = app
        self.injector = injector
        self.exempt = exempt

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.exempt:
            await self.app(scope, receive, send)
            return
        delay, status = self.injector.next_request()
        if delay:
            await asyncio.sleep(delay)
        if status is not None:
            response = JSONResponse({"error": f"injected fault: HTTP {status}"}, status_code=status)
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)
