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
            tokens, then = self._buckets.get(name, (self.capacity, now))
            tokens = min(self.capacity, tokens + (now - then) * self.rate)
            if tokens >= 1:
                self._buckets[name] = (tokens - 1, now)
                return 0
            self._buckets[name] = (tokens, now)
        return max(1, math.ceil((1 - tokens) / self.rate))


def limit_rate(view: F) -> F:
    """Decorate a write route (inside require_key): refuse with 429 past the key's rate."""

    @functools.wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        wait = current_app.extensions[EXTENSION].take(g.runner_id)
        if wait:
            limit = settings.current().rate_limit_per_minute
            raise ApiError(
                429,
                "rate_limited",
                "Too many requests for this key; retry after the delay in Retry-After.",
                details={"limit_per_minute": limit, "retry_after_seconds": wait},
                headers={"Retry-After": str(wait)},
            )
        return view(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def init_app(app: Flask) -> None:
    """Give this app (in this process) its own buckets."""
    cfg = app.extensions[settings.EXTENSION]
    app.extensions[EXTENSION] = RateLimiter(cfg.rate_limit_per_minute)
