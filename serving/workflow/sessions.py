"""Conversation state between turns: in memory (one replica) or in Redis (shared by replicas,
survives restarts). Results of long-running operations and handoffs are kept apart from the
session document, so a task finishing or a human replying mid-turn cannot be overwritten by
that turn's write. The feedback log (corrections, escalations) is kept without expiry: it is
training data."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from ..config import SessionConfig
from .handoffs import HandoffRecord
from .limits import Bucket, bucket_ttl, take
from .types import Session, TaskRecord

# A resolved handoff stays readable (console history, a late correction) this long at least.
HANDOFF_RETENTION_SECONDS = 30 * 86400
UPDATE_ATTEMPTS = 20

HandoffChange = Callable[[HandoffRecord], HandoffRecord]


class Conflict(Exception):
    """A handoff kept changing under an update (more than UPDATE_ATTEMPTS writers at once)."""


class SessionStore(Protocol):
    async def get(self, session_id: str) -> Session | None: ...
    async def put(self, session: Session) -> None: ...
    async def put_task(self, session_id: str, task: TaskRecord) -> None: ...
    async def tasks(self, session_id: str) -> dict[str, TaskRecord]: ...
    async def create_handoff(self, record: HandoffRecord) -> HandoffRecord:
        """Store a new handoff; one that exists already (a retried turn) is returned as is."""
        ...

    async def get_handoff(self, handoff_id: str) -> HandoffRecord | None: ...
    async def update_handoff(self, handoff_id: str, change: HandoffChange) -> HandoffRecord:
        """Apply `change` to the stored record atomically (a concurrent change is re-read and
        `change` applied again); KeyError when there is none. `change` may raise."""
        ...

    async def handoffs(self, open_only: bool) -> list[HandoffRecord]:
        """Open handoffs oldest first (the queue), or all that are kept."""
        ...

    async def rate(self, session_id: str, request_id: str, rating: int) -> bool:
        """Keep a customer's rating of a conversation without a handoff; False when this
        request id was counted already."""
        ...

    async def add_feedback(self, record: dict[str, Any]) -> None: ...
    async def feedback(self) -> list[dict[str, Any]]: ...
    # Rate limits and budgets (serving.workflow.limits.LimitStore).
    async def take_token(self, key: str, now: float, rate: float, burst: float) -> float: ...
    async def add_usage(self, key: str, amount: int, ttl_seconds: int) -> int: ...
    async def usage(self, key: str) -> int: ...
    async def close(self) -> None: ...


class MemorySessionStore:
    """Per-process dict with idle expiry. Only correct with a single orchestrator replica."""

    def __init__(self, ttl_seconds: int, feedback_path: str | None = None) -> None:
        self.ttl = ttl_seconds
        self._sessions: dict[str, tuple[float, str]] = {}
        self._tasks: dict[str, dict[str, str]] = {}
        self._handoffs: dict[str, str] = {}
        self._ratings: dict[str, dict[str, int]] = {}
        self._feedback: list[str] = []
        self._feedback_path = Path(feedback_path) if feedback_path else None
        self._buckets: dict[str, Bucket] = {}
        self._counters: dict[str, tuple[int, float]] = {}

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

    # No await between a read and its write below: each method is atomic in the event loop.

    async def create_handoff(self, record: HandoffRecord) -> HandoffRecord:
        found = self._handoffs.get(record.id)
        if found is not None:
            return HandoffRecord.model_validate_json(found)
        self._handoffs[record.id] = record.model_dump_json()
        return record

    async def get_handoff(self, handoff_id: str) -> HandoffRecord | None:
        found = self._handoffs.get(handoff_id)
        return HandoffRecord.model_validate_json(found) if found else None

    async def update_handoff(self, handoff_id: str, change: HandoffChange) -> HandoffRecord:
        found = self._handoffs.get(handoff_id)
        if found is None:
            raise KeyError(handoff_id)
        changed = change(HandoffRecord.model_validate_json(found))
        self._handoffs[handoff_id] = changed.model_dump_json()
        return changed

    async def handoffs(self, open_only: bool) -> list[HandoffRecord]:
        records = [HandoffRecord.model_validate_json(v) for v in self._handoffs.values()]
        return sorted(
            (r for r in records if r.is_open or not open_only), key=lambda r: r.created_at
        )

    async def rate(self, session_id: str, request_id: str, rating: int) -> bool:
        ratings = self._ratings.setdefault(session_id, {})
        new = request_id not in ratings
        ratings.setdefault(request_id, rating)
        return new

    async def add_feedback(self, record: dict[str, Any]) -> None:
        line = json.dumps(record, ensure_ascii=False, sort_keys=True)
        if self._feedback_path is None:
            self._feedback.append(line)
            return
        self._feedback_path.parent.mkdir(parents=True, exist_ok=True)
        with self._feedback_path.open("a", encoding="utf-8") as out:
            out.write(line + "\n")

    async def feedback(self) -> list[dict[str, Any]]:
        lines = self._feedback
        if self._feedback_path is not None and self._feedback_path.exists():
            lines = self._feedback_path.read_text(encoding="utf-8").splitlines()
        return [json.loads(line) for line in lines if line.strip()]

    async def take_token(self, key: str, now: float, rate: float, burst: float) -> float:
        self._buckets[key], wait = take(self._buckets.get(key), now, rate, burst)
        return wait

    async def add_usage(self, key: str, amount: int, ttl_seconds: int) -> int:
        now = time.monotonic()
        for gone in [k for k, (_, until) in self._counters.items() if until < now]:
            del self._counters[gone]
        value = self._counters.get(key, (0, 0.0))[0] + amount
        self._counters[key] = (value, now + ttl_seconds)
        return value

    async def usage(self, key: str) -> int:
        value, until = self._counters.get(key, (0, 0.0))
        return value if until >= time.monotonic() else 0

    async def close(self) -> None:
        return None


# `take` in Redis, atomically: KEYS[1] the bucket (a hash), ARGV now, rate, burst, ttl. Floats
# go back as a string (a Lua number returned to Redis is cut to an integer).
TAKE_TOKEN_SCRIPT = """
local now, rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens, at = tonumber(state[1]), tonumber(state[2])
if tokens == nil or at == nil then
  tokens, at = burst, now
else
  tokens = math.min(burst, tokens + math.max(0, now - at) * rate)
  at = math.max(now, at)
end
local wait = 0
if tokens >= 1 then tokens = tokens - 1 else wait = (1 - tokens) / rate end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(at))
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[4]))
return tostring(wait)
"""


class RedisSessionStore:
    """Sessions as JSON strings with a TTL; task results in a hash beside them."""

    def __init__(self, url: str, namespace: str, ttl_seconds: int) -> None:
        import redis.asyncio as redis

        self._redis: Any = redis.from_url(url, decode_responses=True)
        self._prefix = f"switchboard:{namespace}"
        self.ttl = ttl_seconds
        self._take_token: Any = None

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

    def _handoff_key(self, handoff_id: str) -> str:
        return f"{self._prefix}:handoff:{handoff_id}"

    @property
    def _queue_key(self) -> str:
        """Sorted set of open handoff ids, scored by creation time: the queue."""
        return f"{self._prefix}:handoffs:open"

    @property
    def _all_key(self) -> str:
        return f"{self._prefix}:handoffs:all"

    @property
    def feedback_key(self) -> str:
        return f"{self._prefix}:feedback"

    @property
    def _retention(self) -> int:
        return max(self.ttl, HANDOFF_RETENTION_SECONDS)

    async def create_handoff(self, record: HandoffRecord) -> HandoffRecord:
        key = self._handoff_key(record.id)
        created = await self._redis.set(key, record.model_dump_json(), nx=True, ex=self._retention)
        if not created:
            found = await self.get_handoff(record.id)
            if found is not None:
                return found
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.zadd(self._queue_key, {record.id: record.created_at})
            pipe.zadd(self._all_key, {record.id: record.created_at})
            await pipe.execute()
        return record

    async def get_handoff(self, handoff_id: str) -> HandoffRecord | None:
        raw = await self._redis.get(self._handoff_key(handoff_id))
        return HandoffRecord.model_validate_json(raw) if raw else None

    async def update_handoff(self, handoff_id: str, change: HandoffChange) -> HandoffRecord:
        from redis.exceptions import WatchError

        key = self._handoff_key(handoff_id)
        for _ in range(UPDATE_ATTEMPTS):
            async with self._redis.pipeline(transaction=True) as pipe:
                try:
                    await pipe.watch(key)
                    raw = await pipe.get(key)
                    if not raw:
                        raise KeyError(handoff_id)
                    record = HandoffRecord.model_validate_json(raw)
                    changed = change(record)
                    if changed is record:
                        return record  # nothing to write (a retried request)
                    pipe.multi()
                    pipe.set(key, changed.model_dump_json(), ex=self._retention)
                    if changed.is_open:
                        pipe.zadd(self._queue_key, {handoff_id: changed.created_at})
                    else:
                        pipe.zrem(self._queue_key, handoff_id)
                    await pipe.execute()
                    return changed
                except WatchError:
                    continue
        raise Conflict(handoff_id)

    async def handoffs(self, open_only: bool) -> list[HandoffRecord]:
        ids: list[str] = await self._redis.zrange(
            self._queue_key if open_only else self._all_key, 0, -1
        )
        if not ids:
            return []
        raws = await self._redis.mget([self._handoff_key(i) for i in ids])
        records = [HandoffRecord.model_validate_json(r) for r in raws if r]
        gone = [i for i, r in zip(ids, raws, strict=True) if not r]
        if gone:  # expired records leave their ids behind
            await self._redis.zrem(self._queue_key, *gone)
            await self._redis.zrem(self._all_key, *gone)
        return [r for r in records if r.is_open or not open_only]

    async def rate(self, session_id: str, request_id: str, rating: int) -> bool:
        key = f"{self._prefix}:ratings:{session_id}"
        new = bool(await self._redis.hsetnx(key, request_id, rating))
        await self._redis.expire(key, self.ttl)
        return new

    async def add_feedback(self, record: dict[str, Any]) -> None:
        line = json.dumps(record, ensure_ascii=False, sort_keys=True)
        await self._redis.rpush(self.feedback_key, line)

    async def feedback(self) -> list[dict[str, Any]]:
        lines: list[str] = await self._redis.lrange(self.feedback_key, 0, -1)
        return [json.loads(line) for line in lines]

    def _limit_key(self, key: str) -> str:
        return f"{self._prefix}:limit:{key}"

    async def take_token(self, key: str, now: float, rate: float, burst: float) -> float:
        if self._take_token is None:
            self._take_token = self._redis.register_script(TAKE_TOKEN_SCRIPT)
        ttl = bucket_ttl(rate, burst)
        wait = await self._take_token(keys=[self._limit_key(key)], args=[now, rate, burst, ttl])
        return float(wait)

    async def add_usage(self, key: str, amount: int, ttl_seconds: int) -> int:
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.incrby(self._limit_key(key), amount)
            pipe.expire(self._limit_key(key), ttl_seconds)
            value, _ = await pipe.execute()
        return int(value)

    async def usage(self, key: str) -> int:
        return int(await self._redis.get(self._limit_key(key)) or 0)

    async def close(self) -> None:
        await self._redis.aclose()


def open_store(config: SessionConfig, namespace: str) -> SessionStore:
    """The store the agent's config asks for; Redis reads its URL from the environment variable
    the operator fills from the Secret."""
    if config.store == "memory":
        return MemorySessionStore(config.ttl_seconds, config.feedback_path)
    env = config.redis_url_env or ""
    url = os.environ.get(env)
    if not url:
        raise RuntimeError(f"session store redis: environment variable {env or '(unset)'} is empty")
    return RedisSessionStore(url, namespace, config.ttl_seconds)
