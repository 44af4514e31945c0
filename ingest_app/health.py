"""bench_model_health: per model, the freshness and last outcome the dashboard's status page shows.

Kept current on every stored published result and every stored failure, never on
a duplicate or a conflict, and safe under concurrent workers and out-of-order
resends (docs/contract.md section 5). Each write for a model is one
compare-and-swap of its document: read it, recount, compute the next state, and
replace it only if nobody changed it since (`revision` and `updated_at` as they
were read; the other writers always set `updated_at`); otherwise read again.
The next state is computed so that order does not matter:

- timestamps only move forward: `last_attempt_at`, `last_success_at` and
  `updated_at` are the later of the stored one and the new one; the last error
  (`last_error_at`, `_kind`, `_message`, always together) is the newest failure
  seen, kept only while it is newer than the last success, so a late resend of
  an old failure changes nothing and a newer success clears it (as the other
  writers do);
- the counts (`successes_24h`, `failures_24h`, `deadline_misses_24h`,
  `consecutive_failures`: failures after the newest published result) and
  `freshness_status` are never incremented: each write recounts them from the
  stored collections with indexed queries after reading the document. The
  write that swaps last read after every other write for the model had
  swapped, so after their records were stored: once writes stop, the counts
  are exact. A duplicate is never counted twice because it is not stored twice.

A health update that fails (the database went away after the write) is logged
and leaves the write's answer alone: the next write for the model, or
`flask --app ingest_app models refresh`, recounts everything.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pymongo
from pymongo.collection import Collection
from pymongo.database import Database
from pymongo.errors import DuplicateKeyError, OperationFailure, PyMongoError

import bench_contract as contract

from . import catalog, db, metrics, settings, store
from .settings import Settings

log = logging.getLogger(__name__)

HEALTH_INDEXES = (
    # The other writers make the same unique index; it keeps one document per model.
    ([("provider", 1), ("model_id", 1)], {"unique": True}),
    ([("freshness_status", 1), ("updated_at", -1)], {}),
)
MESSAGE_CHARS = 2000
WINDOW = timedelta(hours=24)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# The error_kind of a failure that counts as a missed deadline.
DEADLINE_KIND = "timeout"

NEVER_RUN, FRESH, STALE, CRITICAL, DISABLED = "never_run", "fresh", "stale", "critical", "disabled"
FRESHNESS = (FRESH, STALE, CRITICAL, NEVER_RUN, DISABLED)

Key = tuple[str, str]


@dataclass(frozen=True)
class Event:
    """A stored record that bears on a model's health: a published result, or a failure."""

    provider: str
    model_id: str
    at: datetime  # run_ts of a result, ts of a failure
    error_kind: str | None = None  # None for a result
    message: str | None = None


def health() -> Collection:
    """The bench_model_health collection."""
    return db.collection(settings.current().health_collection)


def document_id(provider: str, model_id: str) -> str:
    """The _id the other writers give a model's health document: provider:model_id."""
    return f"{provider}:{model_id}"


def freshness(*, enabled: bool, cadence_seconds: int, last_success_at: datetime | None,
              now: datetime) -> tuple[str, int | None]:
    """freshness_status and staleness_seconds, derived as the other writers derive them.

    disabled (not enabled, or deprecated) > never_run (no success) > critical (last
    success more than 3 cadences ago) > stale (more than 1.5) > fresh.
    """
    if not enabled:
        return DISABLED, None
    if last_success_at is None:
        return NEVER_RUN, None
    staleness = max(0, int((now - last_success_at).total_seconds()))
    if staleness > cadence_seconds * 3:
        return CRITICAL, staleness
    if staleness > cadence_seconds * 1.5:
        return STALE, staleness
    return FRESH, staleness


def ensure_indexes(database: Database, cfg: Settings) -> str | None:
    """Make the health and models indexes; a line saying what failed, or None.

    Not a condition of any write (health is secondary to storing results), so a
    failure here is reported, not raised.
    """
    try:
        database[cfg.health_collection].create_indexes(
            [pymongo.IndexModel(keys, **options) for keys, options in HEALTH_INDEXES])
        keys, options = catalog.MODEL_INDEX
        database[cfg.models_collection].create_indexes([pymongo.IndexModel(keys, **options)])
    except OperationFailure as exc:
        return (f"cannot make the indexes of {cfg.mongodb_db}.{cfg.health_collection} and "
                f"{cfg.mongodb_db}.{cfg.models_collection}: {exc.details or exc}; "
                f"drop the clashing index, then run flask --app ingest_app ensure-indexes")
    return None


def record(events: Iterable[Event]) -> None:
    """Bring each model's health up to date after these records were stored; never raises."""
    by_model: dict[Key, list[Event]] = {}
    for event in events:
        by_model.setdefault((event.provider, event.model_id), []).append(event)
    if not by_model:
        return
    cfg = settings.current()
    try:
        # A bounded budget of its own: the write is already stored and must be answered in time.
        with pymongo.timeout(cfg.db_timeout_seconds / 2):
            _ensure_once(cfg)
            entries = catalog.lookup(by_model)
            for (provider, model_id), found in by_model.items():
                enabled = catalog.standing(entries[(provider, model_id)]) is None
                _apply(provider, model_id, found, enabled, cfg)
    except PyMongoError as exc:
        metrics.observe_health_error()
        log.warning("health not updated for %d model(s): %s (the next write recounts)",
                    len(by_model), type(exc).__name__)


def refresh(provider: str, model_id: str) -> dict[str, Any] | None:
    """Recount one model's health now (after a change to `models`); the stored document."""
    cfg = settings.current()
    _ensure_once(cfg)
    entry = catalog.lookup([(provider, model_id)])[(provider, model_id)]
    _apply(provider, model_id, (), catalog.standing(entry) is None, cfg)
    return health().find_one({"provider": provider, "model_id": model_id}, {"_id": False})


def refresh_all() -> int:
    """Recount every listed model of our providers, and every health document of theirs."""
    keys: set[Key] = set()
    query = {"provider": {"$in": list(contract.PROVIDERS)}}
    for collection in (catalog.models(), health()):
        for doc in collection.find(query, {"_id": False, "provider": True, "model_id": True}):
            if isinstance(doc.get("model_id"), str):
                keys.add((doc["provider"], doc["model_id"]))
    for provider, model_id in sorted(keys):
        refresh(provider, model_id)
    return len(keys)


def _ensure_once(cfg: Settings) -> None:
    handle = db.handle()
    handle.get()
    if handle.health_indexes_pid == handle.pid:
        return
    problem = ensure_indexes(db.get_db(), cfg)
    if problem:
        log.error("%s", problem)
    handle.health_indexes_pid = handle.pid


# Compare-and-swap rounds before giving up (logged; the next write recounts). Writes for one
# model are rare (one runner, each model once a cycle), so a second round is already unusual.
SWAP_ROUNDS = 25


class Contended(PyMongoError):
    """The health document kept changing under us for SWAP_ROUNDS rounds."""


def _apply(provider: str, model_id: str, events: Sequence[Event], enabled: bool,
           cfg: Settings) -> None:
    key = {"provider": provider, "model_id": model_id}
    for _ in range(SWAP_ROUNDS):
        current = health().find_one(key)
        following = _next(current, provider, model_id, events, enabled, cfg, store.now())
        if current is None:
            try:
                health().insert_one(following)
                return
            except DuplicateKeyError:
                continue  # another worker made it first: swap against theirs
        swap = {"_id": current["_id"], "revision": current.get("revision"),
                "updated_at": current.get("updated_at")}
        if health().replace_one(swap, following).matched_count:
            return
    raise Contended(f"health of {provider}/{model_id} changed {SWAP_ROUNDS} times while updating")


def _time(value: Any) -> datetime | None:
    # Another writer's document may hold anything; only a date is a time.
    if not isinstance(value, datetime):
        return None
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _later(*values: Any) -> datetime | None:
    times = [t for t in map(_time, values) if t is not None]
    return max(times) if times else None


def _next(current: dict[str, Any] | None, provider: str, model_id: str,
          events: Sequence[Event], enabled: bool, cfg: Settings,
          started: datetime) -> dict[str, Any]:
    """The document after `events`, recounted at `started`, whatever order events came in."""
    doc: dict[str, Any] = dict(current) if current is not None else {
        "_id": document_id(provider, model_id), "provider": provider, "model_id": model_id,
    }
    results, errors = db.results(), db.failures()
    model = {"provider": provider, "model_name": model_id}
    since = started - WINDOW
    # A comparison with a date matches dates only: a writer's string run_ts is never "latest".
    latest = results.find_one({**model, "run_ts": {"$gt": EPOCH}},
                              {"_id": False, "run_ts": True},
                              sort=[("run_ts", pymongo.DESCENDING)])
    successes = [e.at for e in events if e.error_kind is None]
    last_success = _later(doc.get("last_success_at"), latest["run_ts"] if latest else None,
                          *successes)
    after_success = {**model, "ts": {"$gt": last_success}} if last_success else model
    counts = {
        "successes_24h": results.count_documents({**model, "run_ts": {"$gte": since}}),
        "failures_24h": errors.count_documents({**model, "ts": {"$gte": since}}),
        "deadline_misses_24h": errors.count_documents(
            {**model, "ts": {"$gte": since}, "error_kind": DEADLINE_KIND}),
        "consecutive_failures": errors.count_documents(after_success),
    }
    error = (_time(doc.get("last_error_at")), doc.get("last_error_kind"),
             doc.get("last_error_message"))
    for event in events:
        if event.error_kind is not None and (error[0] is None or event.at > error[0]):
            error = (event.at, event.error_kind, (event.message or "")[:MESSAGE_CHARS])
    if error[0] is None or (last_success is not None and error[0] <= last_success):
        error = (None, None, None)
    status, staleness = freshness(enabled=enabled, cadence_seconds=cfg.cadence_seconds,
                                  last_success_at=last_success, now=started)
    revision = doc.get("revision")
    doc.update(counts)
    doc.update({
        "enabled": enabled, "cadence_seconds": cfg.cadence_seconds,
        "last_success_at": last_success,
        "last_attempt_at": _later(doc.get("last_attempt_at"), *(e.at for e in events)),
        "last_error_at": error[0], "last_error_kind": error[1], "last_error_message": error[2],
        "staleness_seconds": staleness, "freshness_status": status,
        "updated_at": _later(doc.get("updated_at"), started),
        "revision": (revision if isinstance(revision, int) else 0) + 1,
    })
    return doc
