"""Resilience primitives of the tool gateway: backoff schedule, circuit breaker, token bucket.

Each takes its clock (the backoff its random source) as an argument, so tests drive time by
hand and nothing here sleeps. None is thread-safe: the gateway uses them from its one event loop.
"""

from __future__ import annotations

import email.utils
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum

from ..config import CircuitBreakerPolicy, RateLimitPolicy, RetryPolicy

Clock = Callable[[], float]
"""Seconds from an arbitrary origin; `time.monotonic` in production."""


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with jitter: the wait before retry `n` (1 = first retry) is drawn from
    `[c/2, c]` where `c = min(max, initial * multiplier ** (n - 1))`.

    "Equal jitter" rather than full jitter: replicas retrying after one upstream blip still
    spread out, yet no retry comes back at once on an upstream that just failed."""

    initial_s: float
    max_s: float
    multiplier: float
    rng: Callable[[], float] = random.random
    """Uniform in [0, 1)."""

    @classmethod
    def from_policy(cls, policy: RetryPolicy, rng: Callable[[], float] = random.random) -> Backoff:
        return cls(
            initial_s=policy.initial_backoff_ms / 1000,
            max_s=policy.max_backoff_ms / 1000,
            multiplier=policy.multiplier,
            rng=rng,
        )

    def ceiling(self, retry: int) -> float:
        """Upper bound of the wait before retry number `retry`."""
        if retry < 1:
            raise ValueError("retries are numbered from 1")
        try:
            grown = self.initial_s * self.multiplier ** (retry - 1)
        except OverflowError:
            grown = math.inf
        return min(self.max_s, grown)

    def delay(self, retry: int, retry_after: float | None = None) -> float:
        """The wait before retry `retry`; an upstream's `Retry-After` wins, up to `max_s`."""
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.max_s)
        ceiling = self.ceiling(retry)
        return ceiling / 2 + ceiling / 2 * self.rng()


def parse_retry_after(value: str | None, now: Clock = time.time) -> float | None:
    """Seconds to wait from a `Retry-After` header (delta-seconds or HTTP-date), None when
    absent or unreadable. `now` is wall-clock time: an HTTP-date is absolute."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - now())


class BreakerState(IntEnum):
    """Values are those of the `tool_gateway_circuit_state` gauge."""

    CLOSED = 0
    HALF_OPEN = 1
    OPEN = 2

    @property
    def label(self) -> str:
        return self.name.lower().replace("_", "-")


@dataclass(frozen=True)
class Permit:
    """Admission of one call by the breaker; hand it back with `record` or `release`."""

    generation: int
    trial: bool


class CircuitBreaker:
    """Consecutive failed calls up to `failure_threshold` open the breaker: calls are refused
    for `open_seconds`, then up to `half_open_max_calls` trial calls are let through; the first
    trial to succeed closes it, the first to fail opens it again.

    Every state change starts a new generation; an outcome reported on a permit of an older
    generation is ignored, so a slow call admitted before the breaker opened cannot close it."""

    def __init__(
        self,
        failure_threshold: int,
        open_seconds: float,
        half_open_max_calls: int = 1,
        clock: Clock = time.monotonic,
    ) -> None:
        if failure_threshold < 1 or half_open_max_calls < 1 or open_seconds <= 0:
            raise ValueError("invalid circuit breaker policy")
        self.failure_threshold = failure_threshold
        self.open_seconds = open_seconds
        self.half_open_max_calls = half_open_max_calls
        self._clock = clock
        self._state = BreakerState.CLOSED
        self._generation = 0
        self._failures = 0
        self._opened_at = 0.0
        self._trials = 0

    @classmethod
    def from_policy(
        cls, policy: CircuitBreakerPolicy, clock: Clock = time.monotonic
    ) -> CircuitBreaker:
        return cls(policy.failure_threshold, policy.open_seconds, policy.half_open_max_calls, clock)

    @property
    def state(self) -> BreakerState:
        self._refresh()
        return self._state

    @property
    def consecutive_failures(self) -> int:
        return self._failures

    def retry_after(self) -> float:
        """Seconds until the breaker lets a trial call through (0 unless open)."""
        self._refresh()
        if self._state is not BreakerState.OPEN:
            return 0.0
        return max(0.0, self._opened_at + self.open_seconds - self._clock())

    def acquire(self) -> Permit | None:
        """A permit to call upstream, or None when the call must be refused."""
        self._refresh()
        if self._state is BreakerState.CLOSED:
            return Permit(self._generation, trial=False)
        if self._state is BreakerState.HALF_OPEN and self._trials < self.half_open_max_calls:
            self._trials += 1
            return Permit(self._generation, trial=True)
        return None

    def record(self, permit: Permit, success: bool) -> None:
        self._refresh()
        if permit.generation != self._generation:
            return
        if self._state is BreakerState.HALF_OPEN:
            self._trials -= 1
            if success:
                self._transition(BreakerState.CLOSED)
            else:
                self._transition(BreakerState.OPEN)
        elif self._state is BreakerState.CLOSED:
            if success:
                self._failures = 0
            else:
                self._failures += 1
                if self._failures >= self.failure_threshold:
                    self._transition(BreakerState.OPEN)

    def release(self, permit: Permit) -> None:
        """Hand back a permit whose call never reached upstream (rate-limited, cancelled), so a
        half-open trial slot is not lost."""
        self._refresh()
        if permit.trial and permit.generation == self._generation:
            self._trials -= 1

    def _refresh(self) -> None:
        if (
            self._state is BreakerState.OPEN
            and self._clock() - self._opened_at >= self.open_seconds
        ):
            self._transition(BreakerState.HALF_OPEN)

    def _transition(self, state: BreakerState) -> None:
        self._state = state
        self._generation += 1
        self._trials = 0
        self._failures = 0
        if state is BreakerState.OPEN:
            self._opened_at = self._clock()


class TokenBucket:
    """Admits `rate` calls per second on average and up to `burst` at once. Starts full, so a
    freshly started replica takes a burst at once."""

    def __init__(self, rate: float, burst: int, clock: Clock = time.monotonic) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("invalid rate limit policy")
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._tokens = float(burst)
        self._updated = clock()

    @classmethod
    def from_policy(cls, policy: RateLimitPolicy, clock: Clock = time.monotonic) -> TokenBucket:
        return cls(policy.requests_per_second, policy.burst, clock)

    @property
    def tokens(self) -> float:
        self._refill()
        return self._tokens

    def try_acquire(self) -> float:
        """Takes one token: 0.0 when taken, else the seconds until one is available."""
        self._refill()
        if self._tokens >= 1:
            self._tokens -= 1
            return 0.0
        return (1 - self._tokens) / self.rate

    def _refill(self) -> None:
        now = self._clock()
        elapsed = max(0.0, now - self._updated)
        self._tokens = min(float(self.burst), self._tokens + elapsed * self.rate)
        self._updated = now
