"""Conversation state between turns: in memory (one replica) or in Redis (shared by replicas,
survives restarts). Results of long-running operations are kept apart from the session document,
so a task finishing mid-turn cannot be overwritten by that turn's write."""

from __future__ import annotations

import os
import time
from typing import Any, Protocol

from ..config import SessionConfig
from .types import Session, TaskRecord


class SessionStore(Protocol):
    async def get(self, session_id: str) -> Session | None: ...
    async def put(self, session: Session) -> None: ...
    async def put_task(self, session_id: str, task: TaskRecord) -> None: ...
    async def tasks(self, session_id: str) -> dict[str, TaskRecord]: ...
    async def close(self) -> None: ...


class MemorySessionStore:
    """Per-process dict with idle expiry. Only correct with a single orchestrator replica."""

    def __init__(self, ttl_seconds: int) -> None:
        self.ttl = ttl_seconds
        self._sessions: dict[str, tuple[float, str]] = {}
        self._tasks: dict[str, dict[str, str]] = {}

    def _expire(self) -> None:
        now = time.monotonic()
        for key in [k for k, (t, _) in self._sessions.items() if now - t > self.ttl]:
            self._sessions.pop(key, None)
            self._tasks.pop(key, None)

    async def get(self, session_id: str) -> Session | None:
        self._expire()
        found = self._sessions.get(session_id)
        return Session.model_validate_json(found[1]) if found else None

    async def put(self, session: Session) -> None:
        # Stored as JSON so both stores behave alike (no aliasing of mutable state).
        self._sessions[session.session_id] = (time.monotonic(), session.model_dump_json())

    async def put_task(self, session_id: str, task: TaskRecord) -> None:
        self._tasks.setdefault(session_id, {})[task.task_id] = task.model_dump_json()

    async def tasks(self, session_id: str) -> dict[str, TaskRecord]:
        raw = self._tasks.get(session_id, {})
        return {k: TaskRecord.model_validate_json(v) for k, v in raw.items()}

    async def close(self) -> None:
        return None


class RedisSessionStore:
    """Sessions as JSON strings with a TTL; task results in a hash beside them."""

    def __init__(self, url: str, namespace: str, ttl_seconds: int) -> None:
        import redis.asyncio as redis

        self._redis: Any = redis.from_url(url, decode_responses=True)
        self._prefix = f"switchboard:{namespace}"
        self.ttl = ttl_seconds

    def _key(self, session_id: str) -> str:
        return f"{self._prefix}:session:{session_id}"

    def _tasks_key(self, session_id: str) -> str:
        return f"{self._prefix}:tasks:{session_id}"

    async def get(self, session_id: str) -> Session | None:
        raw = await self._redis.get(self._key(session_id))
        return Session.model_validate_json(raw) if raw else None

    async def put(self, session: Session) -> None:
        await self._redis.set(self._key(session.session_id), session.model_dump_json(), ex=self.ttl)

    async def put_task(self, session_id: str, task: TaskRecord) -> None:
        key = self._tasks_key(session_id)
        await self._redis.hset(key, task.task_id, task.model_dump_json())
        await self._redis.expire(key, self.ttl)

    async def tasks(self, session_id: str) -> dict[str, TaskRecord]:
        raw: dict[str, str] = await self._redis.hgetall(self._tasks_key(session_id))
        return {k: TaskRecord.model_validate_json(v) for k, v in raw.items()}

    async def close(self) -> None:
        await self._redis.aclose()


def open_store(config: SessionConfig, namespace: str) -> SessionStore:
    """The store the agent's config asks for; Redis reads its URL from the environment variable
    the operator fills from the Secret."""
    if config.store == "memory":
        return MemorySessionStore(config.ttl_seconds)
    env = config.redis_url_env or ""
    url = os.environ.get(env)
    if not url:
        raise RuntimeError(f"session store redis: environment variable {env or '(unset)'} is empty")
    return RedisSessionStore(url, namespace, config.ttl_seconds)
