"""A per-process circuit breaker in front of the database, so a hung database fails fast.

Without it every request to a hung database holds a worker thread for the whole
database time cap; with more requests than threads, the later ones queue behind
them and get their 503 long after the 5 s the contract allows. After a database
call times out or cannot connect, the breaker is open: for a short cool-down
every request is answered 503 at once without touching the database. Then one
request is let through as a probe (half-open) while the others are still
refused; its success closes the breaker, its failure opens it again.

Each gunicorn worker has its own breaker: a worker learns of an outage from its
own first failed call, which costs at most one time cap per worker.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)


class Breaker:
    """Closed, open (refusing until the cool-down ends) or half-open (one probe in flight)."""

    def __init__(self, cooldown_seconds: float, probe_limit_seconds: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.cooldown = cooldown_seconds
        # A probe that never reports back (it cannot, but a bug might) must not keep the
        # breaker half-open for ever: after this long another request may probe.
        self.probe_limit = probe_limit_seconds
        self.clock = clock
        self._lock = threading.Lock()
        self._open_until: float | None = None
        self._probe_started: float | None = None
        self._closed_at = float("-inf")

    @property
    def enabled(self) -> bool:
        """False when the cool-down is 0: every request goes to the database."""
        return self.cooldown > 0

    def admit(self) -> float | None:
        """The start time of an allowed database call, or None when the call must be refused."""
        now = self.clock()
        if self._open_until is None or not self.enabled:
            return now
        with self._lock:
            if self._open_until is None:
                return now
            if now < self._open_until:
                return None
            if self._probe_started is not None and now - self._probe_started < self.probe_limit:
                return None
            self._probe_started = now
            log.debug("database circuit half-open: probing with one request")
            return now

    def succeed(self) -> None:
        """The database answered: close the breaker."""
        if self._open_until is None:
            return
        with self._lock:
            if self._open_until is not None:
                log.info("database circuit closed: the database answers again")
            self._open_until = None
            self._probe_started = None
            self._closed_at = self.clock()

    def fail(self, started: float) -> None:
        """A call begun at `started` timed out or could not connect: open for the cool-down."""
        if not self.enabled:
            return
        with self._lock:
            # A call begun before the database was last seen answering says nothing about
            # it now: a recovered database is never refused because of a stale timeout.
            if started < self._closed_at:
                return
            if self._open_until is None:
                log.warning("database circuit open: refusing database calls for %.1f s",
                            self.cooldown)
            self._open_until = self.clock() + self.cooldown
            self._probe_started = None
