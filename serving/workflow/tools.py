"""Calls to business systems, always through the ToolAdapter gateways (which hold the
credentials and apply timeouts, retries and the circuit breaker)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import aiohttp

from ..config import AGENT_TOKEN_HEADER, AGENT_TOKEN_PATH, ToolConfig

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


def read_agent_token(path: str) -> str | None:
    """The agent's projected ServiceAccount token, or None where there is none (local runs)."""
    try:
        token = Path(path).read_text().strip()
    except OSError:
        return None
    return token or None


class HttpToolCaller:
    """`POST {gateway}/v1/ops/{operation}` for each call, with the agent's ServiceAccount token
    (re-read per call: the kubelet rotates it) so the gateway knows which agent calls."""

    def __init__(self, tools: list[ToolConfig], token_path: str = AGENT_TOKEN_PATH) -> None:
        self._urls = {t.adapter: t.url.rstrip("/") for t in tools}
        self._token_path = token_path
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
        token = read_agent_token(self._token_path)
        if token is not None:
            headers[AGENT_TOKEN_HEADER] = token
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
