"""Calls to business systems, always through the ToolAdapter gateways (which hold the
credentials and apply timeouts, retries and the circuit breaker)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import aiohttp

from ..config import ToolConfig

# The gateway retries upstream itself; this bound only protects the turn from a gateway that
# does not answer at all.
GATEWAY_TIMEOUT_SECONDS = 30.0


@dataclass(frozen=True)
class ToolResult:
    ok: bool
    status: int
    result: Any = None
    error: str | None = None
    attempts: int = 0


class ToolCaller(Protocol):
    async def call(
        self, adapter: str, operation: str, payload: dict[str, Any], idempotency_key: str | None
    ) -> ToolResult: ...


class HttpToolCaller:
    """`POST {gateway}/v1/ops/{operation}` for each call."""

    def __init__(self, tools: list[ToolConfig]) -> None:
        self._urls = {t.adapter: t.url.rstrip("/") for t in tools}
        self._session: aiohttp.ClientSession | None = None

    async def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            timeout = aiohttp.ClientTimeout(total=GATEWAY_TIMEOUT_SECONDS)
            self._session = aiohttp.ClientSession(timeout=timeout)
        return self._session

    async def call(
        self, adapter: str, operation: str, payload: dict[str, Any], idempotency_key: str | None
    ) -> ToolResult:
        url = f"{self._urls[adapter]}/v1/ops/{operation}"
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        try:
            client = await self._client()
            async with client.post(url, json=payload, headers=headers) as response:
                body = await response.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            return ToolResult(False, 0, error=f"gateway unreachable: {type(exc).__name__}")
        body = body if isinstance(body, dict) else {}
        if response.status >= 400:
            error = (body.get("error") or {}).get("message") or f"HTTP {response.status}"
            return ToolResult(False, response.status, error=error, attempts=body.get("attempts", 0))
        upstream = int(body.get("status", response.status))
        return ToolResult(
            upstream < 400,
            upstream,
            result=body.get("result"),
            error=None if upstream < 400 else f"system answered {upstream}",
            attempts=int(body.get("attempts", 1)),
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


TaskDone = Callable[[str, ToolResult], Awaitable[None]]


class TaskRunner(Protocol):
    def start(
        self, adapter: str, operation: str, payload: dict[str, Any], on_done: TaskDone
    ) -> str: ...


@dataclass
class AsyncioTaskRunner:
    """Runs long operations as background tasks of this process (local serving and tests);
    the Serve app uses Ray tasks instead (`app.RayTaskRunner`)."""

    caller: ToolCaller
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    def start(
        self, adapter: str, operation: str, payload: dict[str, Any], on_done: TaskDone
    ) -> str:
        task_id = f"task-{uuid.uuid4().hex[:12]}"

        async def run() -> None:
            result = await self.caller.call(adapter, operation, payload, task_id)
            await on_done(task_id, result)

        task = asyncio.get_running_loop().create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task_id
