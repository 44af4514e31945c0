"""Rate limiting of the write routes: a token bucket per key name, in each worker process.

Each key name (the runner_id) may make INGEST_RATE_LIMIT requests a minute: its
bucket holds that many tokens, refills steadily at limit/60 a second, and a
request with no token left gets 429 with Retry-After (the whole seconds until
the next token). The buckets live in the process, so under gunicorn each worker
counts on its own and the effective limit is workers x the setting. That is
acceptable here: the limit guards the database against a runaway runner (a
loop resending), not a quota to meter exactly; a runner sends a few requests a
minute, so being off by the worker count changes nothing that matters, and a
shared counter (Redis, or MongoDB itself) would add a dependency and a failure
mode on every write.
"""

from __future__ import annotations

import functools
import math
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from flask import Flask, current_app, g

from . import settings
from .errors import ApiError

F = TypeVar("F", bound=Callable[..., Any])

EXTENSION = "bench_ingest.limiter"
AUTH_FAILURES = "bench_ingest.auth_failures"
# Addresses are the client's to choose (IPv6 gives each plenty): the table is emptied past
# this many, which at worst forgives a guesser early, never grows without bound.
MAX_ADDRESSES = 10_000


class RateLimiter:
    """Token buckets by key name: `limit_per_minute` tokens each, refilled evenly (0: no limit)."""

    def __init__(self, limit_per_minute: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.capacity = float(limit_per_minute)
        self.rate = limit_per_minute / 60.0
        self.clock = clock
        self._lock = threading.Lock()
        # name -> (tokens, when counted). Names come from the configured keys: bounded.
        self._buckets: dict[str, tuple[float, float]] = {}

    def take(self, name: str) -> int:
        """Spend one of `name`'s tokens and return 0, or return the seconds until one is due."""
        if self.capacity <= 0:
            return 0
        now = self.clock()
        with self._lock:
            tokens = self._tokens(name, now)
            if tokens >= 1:
                self._buckets[name] = (tokens - 1, now)
                return 0
            self._buckets[name] = (tokens, now)
        return self._seconds_until_one(tokens)

    def wait(self, name: str) -> int:
        """The seconds until `name` has a token again (0: it has one now); spends nothing."""
        if self.capacity <= 0:
            return 0
        with self._lock:
            tokens = self._tokens(name, self.clock())
        return 0 if tokens >= 1 else self._seconds_until_one(tokens)

    def _tokens(self, name: str, now: float) -> float:
        # What the bucket holds now: what was left, refilled since, never above capacity.
        tokens, then = self._buckets.get(name, (self.capacity, now))
        return min(self.capacity, tokens + (now - then) * self.rate)

    def _seconds_until_one(self, tokens: float) -> int:
        return max(1, math.ceil((1 - tokens) / self.rate))

    def forget_all_past(self, size: int) -> None:
        """Empty the table once it holds more than `size` names."""
        if len(self._buckets) > size:
            with self._lock:
                self._buckets.clear()


def too_many(wait: int, limit: int, what: str) -> ApiError:
    """The 429 answer: retry after `wait` seconds."""
    return ApiError(
        429,
        "rate_limited",
        f"{what}; retry after the delay in Retry-After.",
        details={"limit_per_minute": limit, "retry_after_seconds": wait},
        headers={"Retry-After": str(wait)},
    )


def check_auth_failures(address: str) -> None:
    """Refuse (429) an address that has spent its budget of wrong keys, before any comparison."""
    wait = current_app.extensions[AUTH_FAILURES].wait(address)
    if wait:
        raise too_many(wait, settings.current().auth_failure_limit_per_minute,
                       "Too many requests with a missing or wrong key from this address")


def count_auth_failure(address: str) -> None:
    """Spend one of the address's tokens for a request with a missing or wrong key."""
    failures = current_app.extensions[AUTH_FAILURES]
    failures.forget_all_past(MAX_ADDRESSES)
    failures.take(address)


def limit_rate(view: F) -> F:
    """Decorate a write route (inside require_key): refuse with 429 past the key's rate."""

    @functools.wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        wait = current_app.extensions[EXTENSION].take(g.runner_id)
        if wait:
            raise too_many(wait, settings.current().rate_limit_per_minute,
                           "Too many requests for this key")
        return view(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def init_app(app: Flask) -> None:
    """Give this app (in this process) its own buckets."""
    cfg = app.extensions[settings.EXTENSION]
    app.extensions[EXTENSION] = RateLimiter(cfg.rate_limit_per_minute)
    app.extensions[AUTH_FAILURES] = RateLimiter(cfg.auth_failure_limit_per_minute)
