"""bench_runners: per runner (its key's name), when it last fetched its worklist and posted
its catalogue, so the status page can show a runner that went quiet.

One document per runner and channel (docs/contract.md section 7). Noting a
visit is secondary to answering it: a failed note is logged, never the caller's
problem, and the next visit notes again.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pymongo
from pymongo.collection import Collection
from pymongo.errors import PyMongoError

from . import db, settings
from .timestamps import as_utc

log = logging.getLogger(__name__)

# The two things a runner is seen doing.
CONFIG, CATALOG = "config", "catalog"


@dataclass(frozen=True)
class RunnerSeen:
    """What the status page shows of one runner."""

    runner: str
    last_config_at: datetime | None
    last_config_provider: str | None
    last_catalog_at: datetime | None
    last_catalog_provider: str | None


def runners() -> Collection:
    """The bench_runners collection (MONGODB_RUNNERS_COLLECTION)."""
    return db.collection(settings.current().runners_collection)


def note(runner: str, what: str, provider: str, at: datetime, **extra: Any) -> None:
    """Record that `runner` fetched its worklist (what=CONFIG) or posted its catalogue
    (what=CATALOG) at `at`; never raises.

    Each runner has one document per channel, `_id` runner:what, replaced whole: the two
    channels never write the same document, so neither needs to read before writing.
    """
    key = f"{runner}:{what}"
    document = {"_id": key, "runner": runner, "what": what, "at": at, "provider": provider,
                **extra}
    try:
        # A budget of its own: the answer is ready and must not wait long on this.
        with pymongo.timeout(settings.current().db_timeout_seconds / 2):
            runners().replace_one({"_id": key}, document, upsert=True)
    except PyMongoError as exc:
        log.warning("runner %s: last %s time not noted: %s", runner, what, type(exc).__name__)


def _time(value: Any) -> datetime | None:
    return as_utc(value) if isinstance(value, datetime) else None


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def seen() -> tuple[RunnerSeen, ...]:
    """Every runner that ever fetched a worklist or posted a catalogue, by name."""
    found: dict[str, dict[str, Any]] = {}
    for doc in runners().find({"what": {"$in": [CONFIG, CATALOG]}}, {"_id": False}):
        if isinstance(doc.get("runner"), str):
            found.setdefault(doc["runner"], {})[doc["what"]] = doc
    return tuple(
        RunnerSeen(
            runner=name,
            last_config_at=_time(found[name].get(CONFIG, {}).get("at")),
            last_config_provider=_text(found[name].get(CONFIG, {}).get("provider")),
            last_catalog_at=_time(found[name].get(CATALOG, {}).get("at")),
            last_catalog_provider=_text(found[name].get(CATALOG, {}).get("provider")),
        )
        for name in sorted(found)
    )
