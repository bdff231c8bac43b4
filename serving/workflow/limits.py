"""Inbound rate limits and budgets on model use and tool calls (`policy.rateLimit`,
`policy.budgets`).

- **Rate limit**: a token bucket per session and per customer (the request's `customer_id`):
  `burst` turns at once, refilled at `per_minute`. A turn over the limit is refused before it
  runs (`RateLimited`: HTTP 429 with `Retry-After`).
- **Budgets**: LLM tokens and tool calls per fixed window (`window_seconds`, aligned to the
  epoch so that every replica agrees on the window), per agent and per customer. A tool call
  is charged before it runs, atomically (the counter's increment says whether it still fits);
  the LLM is asked only while the budget has tokens left and its tokens are charged after the
  answer, so the last generation of a window may overshoot by its own size.

The state lives in the session store (`LimitStore`): in process for the memory store, in Redis
(an atomic Lua script for the bucket, INCRBY with an expiry for the counters) when replicas
share it. The arithmetic is here, pure, with the clock injected (`take`, `window_start`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol

from ..config import BudgetsConfig, PolicyConfig, RateLimitConfig

Budget = Literal["llm_tokens", "tool_calls"]
Scope = Literal["agent", "customer"]


@dataclass(frozen=True)
class Bucket:
    """A token bucket's state: tokens left at time `at`."""

    tokens: float
    at: float


def take(state: Bucket | None, now: float, rate: float, burst: float) -> tuple[Bucket, float]:
    """Take one token from a bucket refilled at `rate` per second up to `burst` (a new bucket is
    full): the new state and 0.0, or the unchanged tokens and the seconds until one is there.
    A clock behind the stored one (another replica's) refills nothing."""
    if state is None:
        tokens, at = burst, now
    else:
        at = max(now, state.at)
        tokens = min(burst, state.tokens + max(0.0, now - state.at) * rate)
    if tokens >= 1:
        return Bucket(tokens - 1, at), 0.0
    return Bucket(tokens, at), (1 - tokens) / rate


def bucket_ttl(rate: float, burst: float) -> int:
    """Seconds after which an untouched bucket is full again, so it may be forgotten."""
    return math.ceil(burst / rate) + 1


def window_start(now: float, window_seconds: int) -> int:
    """The start of the fixed window `now` falls in (epoch-aligned: the same on every replica)."""
    return int(now // window_seconds) * window_seconds


def retry_after_header(seconds: float) -> str:
    """`Retry-After` in whole seconds, at least 1."""
    return str(max(1, math.ceil(seconds)))


def estimate_tokens(text: str) -> int:
    """Tokens of `text` estimated from its words: the generators answer with text only, not
    token counts, and the orchestrator does not hold the LLM's tokenizer (an endpoint's model
    may not even be local). Subword tokenizers give about 4 tokens per 3 English words; the
    estimate rounds up and counts at least one token for non-empty text."""
    words = len(text.split())
    return math.ceil(words * 4 / 3) if words else 0


class RateLimited(Exception):
    """The turn is over the inbound rate limit of its session or customer: refused, not run."""

    def __init__(self, scope: str, retry_after: float) -> None:
        super().__init__(scope, retry_after)  # args round-trip through pickling (Ray handles)
        self.scope = scope
        self.retry_after = retry_after


class BudgetExhausted(Exception):
    """A budget has nothing left for what the turn was about to do (an LLM call, a tool call)."""

    def __init__(self, budget: Budget, scope: Scope) -> None:
        super().__init__(budget, scope)
        self.budget: Budget = budget
        self.scope: Scope = scope


class LimitStore(Protocol):
    """What the limits need of the session store (shared by replicas when it is Redis)."""

    async def take_token(self, key: str, now: float, rate: float, burst: float) -> float:
        """Take one token from bucket `key` (`take`): 0.0, or the seconds to wait for one."""
        ...

    async def add_usage(self, key: str, amount: int, ttl_seconds: int) -> int:
        """Add `amount` (may be negative) to counter `key`; its new value."""
        ...

    async def usage(self, key: str) -> int:
        """Counter `key`'s value (0 when there is none)."""
        ...


class LimitMetrics(Protocol):
    def llm_tokens(self, prompt: int, completion: int) -> None: ...
    def budget_remaining(self, budget: str, remaining: int, limit: int) -> None: ...
    def budget_exhausted(self, budget: str, scope: str) -> None: ...
    def rate_limited(self, scope: str) -> None: ...


class Limits:
    """The policy's rate limits and budgets over a `LimitStore`, with an injected clock."""

    def __init__(
        self,
        policy: PolicyConfig,
        store: LimitStore,
        metrics: LimitMetrics,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.rate_limit = policy.rate_limit
        self.budgets = policy.budgets
        self.store = store
        self.metrics = metrics
        self.clock = clock

    # --- rate limit ----------------------------------------------------------------------

    async def admit(self, session_id: str, customer_id: str | None) -> None:
        """Take a turn from the session's and the customer's buckets; `RateLimited` when one is
        empty (the session's is taken first: a refused session costs its customer nothing)."""
        limits = self.rate_limit
        if limits is None:
            return
        checks: list[tuple[str, str, RateLimitConfig | None]] = [
            ("session", session_id, limits.session),
            ("customer", customer_id or "", limits.customer if customer_id else None),
        ]
        for scope, subject, limit in checks:
            if limit is None:
                continue
            rate = limit.per_minute / 60
            wait = await self.store.take_token(
                f"rate:{scope}:{subject}", self.clock(), rate, limit.burst
            )
            if wait > 0:
                self.metrics.rate_limited(scope)
                raise RateLimited(scope, wait)

    # --- budgets -------------------------------------------------------------------------

    def _scopes(
        self, budget: Budget, customer_id: str | None
    ) -> list[tuple[Scope, str, int, BudgetsConfig]]:
        """(scope, counter key, limit) of every scope that limits `budget` now."""
        config = self.budgets
        if config is None:
            return []
        window = window_start(self.clock(), config.window_seconds)
        found: list[tuple[Scope, str, int, BudgetsConfig]] = []
        agent_limit = getattr(config.agent, budget)
        if agent_limit is not None:
            found.append(("agent", f"budget:agent:{budget}:{window}", agent_limit, config))
        customer_limit = getattr(config.customer, budget)
        if customer_limit is not None and customer_id:
            key = f"budget:customer:{customer_id}:{budget}:{window}"
            found.append(("customer", key, customer_limit, config))
        return found

    def _ttl(self, config: BudgetsConfig) -> int:
        return config.window_seconds + 60  # outlives its window on every replica's clock

    def _exhausted(self, budget: Budget, scope: Scope) -> BudgetExhausted:
        self.metrics.budget_exhausted(budget, scope)
        return BudgetExhausted(budget, scope)

    async def spend_tool_call(self, customer_id: str | None) -> None:
        """Charge one tool call to every budget on it before the call; `BudgetExhausted` (and
        nothing charged) when one has none left."""
        charged: list[tuple[str, BudgetsConfig]] = []
        for scope, key, limit, config in self._scopes("tool_calls", customer_id):
            used = await self.store.add_usage(key, 1, self._ttl(config))
            charged.append((key, config))
            if scope == "agent":
                self.metrics.budget_remaining("tool_calls", max(0, limit - used), limit)
            if used > limit:
                for back, back_config in charged:  # the call is not made: give it back
                    await self.store.add_usage(back, -1, self._ttl(back_config))
                raise self._exhausted("tool_calls", scope)

    async def check_llm(self, customer_id: str | None) -> None:
        """`BudgetExhausted` when a budget on LLM tokens has none left: the LLM is not asked."""
        for scope, key, limit, _ in self._scopes("llm_tokens", customer_id):
            used = await self.store.usage(key)
            if scope == "agent":
                self.metrics.budget_remaining("llm_tokens", max(0, limit - used), limit)
            if used >= limit:
                raise self._exhausted("llm_tokens", scope)

    async def charge_llm(self, customer_id: str | None, prompt: int, completion: int) -> None:
        """Count one generation's tokens (metrics and every budget on them)."""
        self.metrics.llm_tokens(prompt, completion)
        for scope, key, limit, config in self._scopes("llm_tokens", customer_id):
            used = await self.store.add_usage(key, prompt + completion, self._ttl(config))
            if scope == "agent":
                self.metrics.budget_remaining("llm_tokens", max(0, limit - used), limit)
