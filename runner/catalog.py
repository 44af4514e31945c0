"""The catalogue, home: read the provider's whole listing and POST it to /ingest/catalog.

`bench-runner models --post` does it once; the daemon, and `once` after its
measurements, whenever the last success is older than BENCH_RUNNER_CATALOG_HOURS. A
post that fails is reported and tried again at the next cycle or run; it never touches
the outbox, so no measurement waits for it.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import Any

from .settings import Settings

log = logging.getLogger(__name__)

STATE_NAME = "catalog-posted.json"


@dataclass(frozen=True)
class PostOutcome:
    """What one catalogue post did: the listing's size, and the server's answer or the problem."""

    entries: int
    pagination_complete: bool
    counts: dict[str, Any] | None = None
    problem: str | None = None
    status: int | None = None  # the server's HTTP status, when it answered

    @property
    def ok(self) -> bool:
        """Stored by the server."""
        return self.problem is None

    def describe(self) -> str:
        """One line for the terminal and the log."""
        complete = "" if self.pagination_complete else " (listing incomplete)"
        if self.ok:
            counts = ", ".join(f"{k} {v}" for k, v in (self.counts or {}).items())
            return (f"catalogue posted: {self.entries} entries{complete}"
                    + (f"; server counts: {counts}" if counts else ""))
        return f"catalogue not posted ({self.entries} entries{complete}): {self.problem}"


def post(settings: Settings, provider: Any, client: Any) -> PostOutcome:
    """List the catalogue and POST it; never raises for the listing, the network or the answer."""
    from .provider import SetupError

    if not hasattr(provider, "listing"):
        return PostOutcome(entries=0, pagination_complete=False,
                           problem=f"the {settings.provider} provider has no catalogue to post")
    try:
        listing = provider.listing()
    except SetupError as exc:
        return PostOutcome(entries=0, pagination_complete=False,
                           problem=f"could not list the catalogue: {exc}")
    except Exception as exc:  # noqa: BLE001 - an SDK fault is one line, not a crash
        return PostOutcome(entries=0, pagination_complete=False,
                           problem=f"could not list the catalogue: {type(exc).__name__}: {exc}")
    if listing.problem:
        log.warning("catalogue listing incomplete: %s", listing.problem)
    try:
        answer = client.post(settings.catalog_url, listing.to_wire())
    except ValueError as exc:  # the body over the contract's limit
        return PostOutcome(entries=len(listing.entries),
                           pagination_complete=listing.pagination_complete,
                           problem=f"not sendable: {exc}")
    if answer.status in (200, 201) and isinstance(answer.body, dict) \
            and answer.body.get("status") == "stored":
        counts = answer.body.get("counts")
        mark_posted(settings)
        return PostOutcome(entries=len(listing.entries),
                           pagination_complete=listing.pagination_complete,
                           counts=counts if isinstance(counts, dict) else None,
                           status=answer.status)
    problem = answer.describe()
    if answer.hint:
        problem += f" ({answer.hint})"
    return PostOutcome(entries=len(listing.entries),
                       pagination_complete=listing.pagination_complete, problem=problem,
                       status=answer.status)


def last_posted(settings: Settings) -> float | None:
    """Wall-clock time of the last stored post, or None."""
    try:
        doc = json.loads((settings.state_dir / STATE_NAME).read_text(encoding="utf-8"))
        value = doc["posted_at"]
        return float(value) if isinstance(value, int | float) else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def mark_posted(settings: Settings) -> None:
    """Remember that a post was stored now (best effort: at worst the daemon posts again)."""
    from .worklist import write_atomically

    try:
        write_atomically(settings.state_dir / STATE_NAME,
                         json.dumps({"posted_at": time.time()}).encode("utf-8"))
    except OSError as exc:
        log.warning("catalogue post time not kept in %s: %s", settings.state_dir,
                    exc.strerror or exc)


def due(settings: Settings, every_hours: float, now: float | None = None) -> bool:
    """Whether the daemon should post the catalogue now (every_hours 0: never)."""
    if every_hours <= 0:
        return False
    last = last_posted(settings)
    now = time.time() if now is None else now
    return last is None or now - last >= every_hours * 3600
