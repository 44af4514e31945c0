"""bench_model_health: per model, the freshness and last outcome the dashboard's status page shows.

Kept current after every stored published result and every stored failure,
never on a duplicate or a conflict, and safe under concurrent workers and
out-of-order resends (docs/contract.md section 5). A write only marks its
model; the process's updater thread recounts it after the write is answered
(`Updater`), so a write never waits on health. A recount is one
compare-and-swap of the model's document: read it, recount from the stored
collections, and replace it only if nobody changed it since (`revision` and
`updated_at` as they were read; the other writers always set `updated_at`);
otherwise read again. Everything is recounted from what is stored, so order
does not matter:

- timestamps only move forward: `last_attempt_at`, `last_success_at` and
  `updated_at` are the later of the stored one and the newest stored
  `run_ts`/`ts`; the last error (`last_error_at`, `_kind`, `_message`, always
  together) is the newest stored failure, kept only while it is newer than the
  last success, so a newer success clears it (as the other writers do);
- the counts (`successes_24h`, `failures_24h`, `deadline_misses_24h`,
  `consecutive_failures`: failures after the newest published result) and
  `freshness_status` are never incremented: each recount counts them with
  indexed queries after reading the document. The recount that swaps last read
  after every other recount of the model had swapped, and each recount starts
  after the writes that marked it were stored: once writes stop, the health is
  exact. A duplicate is never counted twice because it is not stored twice.

A recount that fails (the database went away) is logged, counted, and tried
again shortly; `flask --app ingest_app models refresh` recounts everything.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

import pymongo
from flask import Flask, current_app
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


def record(models: Iterable[Key]) -> None:
    """Mark the models of these stored records for a recount; returns at once, never raises.

    The recount runs on this process's updater thread (`Updater`), after the write
    was answered: a write never waits on health, and many writes for one model
    that arrive while a recount runs cost one more recount, not one each.
    """
    keys = set(models)
    if keys:
        Updater.of(current_app._get_current_object()).mark(keys)


def settle(timeout: float = 30.0, *, database: str | None = None) -> bool:
    """Wait until this process's updaters (of apps on `database`, or all) are idle; True if so."""
    deadline = time.monotonic() + timeout
    with Updater.registry_lock:
        updaters = [u for (pid, _), u in Updater.registry.items() if pid == os.getpid()
                    and database in (None, u.app.extensions[settings.EXTENSION].mongodb_db)]
    return all(u.wait_idle(max(0.0, deadline - time.monotonic())) for u in updaters)


def close(app: Flask, timeout: float) -> None:
    """Finish and end this app's updater in this process (an app being shut down)."""
    with Updater.registry_lock:
        updater = Updater.registry.pop((os.getpid(), id(app)), None)
    if updater is not None:
        updater.stop(timeout)


class Updater:
    """One thread per app and process that recounts the health of models marked dirty.

    A model is taken off the dirty set before its recount starts, so a write
    stored during a recount marks it again and gets a recount that starts after
    it: once writes stop, the last recount of every model read everything
    stored. Passes start at most every INGEST_HEALTH_PASS_SECONDS (0.5 s by
    default): the first write after a quiet spell is recounted at once, and a
    stream of writes costs at most one recount of each of its models a pass,
    whatever its rate, and at most a fifth of the time (a pass rests 4 times as
    long as it took). A recount that
    fails (the database went away) puts its models back and is tried again
    after RETRY_SECONDS, so an outage delays health and loses none of it. The
    thread ends after IDLE_SECONDS with nothing to do and starts again on the
    next mark; a fork gets an updater of its own. On a clean exit (gunicorn
    stops a worker) what is still dirty is recounted first, within the
    database time cap; a killed worker leaves it to the next write of the
    model or `flask --app ingest_app models refresh`.
    """

    RETRY_SECONDS = 1.0
    REST_FACTOR = 4  # after a pass, rest at least 4 times as long as it took
    IDLE_SECONDS = 30.0
    registry: dict[tuple[int, int], Updater] = {}
    registry_lock = threading.Lock()

    def __init__(self, app: Flask) -> None:
        self.app = app
        self.dirty: set[Key] = set()
        self.busy = False
        self.cond = threading.Condition()
        self.thread: threading.Thread | None = None
        self.stopping = False
        with app.app_context():
            self.pass_seconds = settings.current().health_pass_seconds

    @classmethod
    def of(cls, app: Flask) -> Updater:
        key = (os.getpid(), id(app))
        with cls.registry_lock:
            found = cls.registry.get(key)
            if found is None:
                found = cls.registry[key] = cls(app)
                if len(cls.registry) == 1:
                    atexit.register(cls.finish_all)
        return found

    def mark(self, keys: Iterable[Key]) -> None:
        with self.cond:
            self.dirty.update(keys)
            if self.thread is None or not self.thread.is_alive():
                self.thread = threading.Thread(target=self._run, name="model-health",
                                               daemon=True)
                self.thread.start()
            self.cond.notify_all()

    def wait_idle(self, timeout: float) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: not self.dirty and not self.busy, timeout)

    def _run(self) -> None:
        next_pass = 0.0
        while True:
            with self.cond:
                if not self.cond.wait_for(lambda: self.dirty or self.stopping,
                                          self.IDLE_SECONDS) or (self.stopping and not self.dirty):
                    self.thread = None
                    self.cond.notify_all()
                    return
                # Under a stream of writes, one pass every pass_seconds takes all they marked.
                self.cond.wait_for(lambda: self.stopping,
                                   max(0.0, next_pass - time.monotonic()))
                keys, self.dirty, self.busy = self.dirty, set(), True
            started = time.monotonic()
            failed = self._recount(keys)
            took = time.monotonic() - started
            # A slow database (a long 24 h window to count) gets passes spread out further.
            next_pass = started + max(self.pass_seconds, took * (1 + self.REST_FACTOR))
            with self.cond:
                self.dirty.update(failed)
                self.busy = False
                self.cond.notify_all()
            if failed:
                if self.stopping:
                    return  # exiting: the next write of the model or `models refresh` recounts
                time.sleep(self.RETRY_SECONDS)

    def _recount(self, keys: set[Key]) -> set[Key]:
        """Recount these models; the ones that could not be recounted."""
        with self.app.app_context():
            cfg = settings.current()
            try:
                with pymongo.timeout(cfg.db_timeout_seconds):
                    _ensure_once(cfg)
            except PyMongoError as exc:
                _failed(len(keys), exc)
                return keys
            failed = set()
            for key in sorted(keys):
                try:
                    with pymongo.timeout(cfg.db_timeout_seconds):
                        _apply(*key, cfg)
                except PyMongoError as exc:
                    _failed(1, exc)
                    failed.add(key)
            return failed

    def stop(self, timeout: float) -> None:
        """Recount what is still dirty (one try), then end the thread; wait up to `timeout`."""
        with self.cond:
            self.stopping = True
            self.cond.notify_all()
            thread = self.thread
        if thread is not None:
            thread.join(timeout)

    @classmethod
    def finish_all(cls) -> None:
        """At exit: recount what is still dirty, within the database time cap."""
        with cls.registry_lock:
            mine = [u for (pid, _), u in cls.registry.items() if pid == os.getpid()]
        for updater in mine:
            with updater.app.app_context():
                limit = settings.current().db_timeout_seconds
            updater.stop(limit * 2)


def _failed(count: int, exc: Exception) -> None:
    metrics.observe_health_error()
    log.warning("health not updated for %d model(s): %s (tried again shortly)", count,
                type(exc).__name__)


def refresh(provider: str, model_id: str) -> dict[str, Any] | None:
    """Recount one model's health now (after a change to `models`); the stored document."""
    cfg = settings.current()
    _ensure_once(cfg)
    _apply(provider, model_id, cfg)
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


def _apply(provider: str, model_id: str, cfg: Settings) -> None:
    key = {"provider": provider, "model_id": model_id}
    for _ in range(SWAP_ROUNDS):
        current = health().find_one(key)
        # Read after the document, so a change to `models` that swapped since is seen.
        entry = catalog.lookup([(provider, model_id)])[(provider, model_id)]
        enabled = catalog.standing(entry) is None
        following = _next(current, provider, model_id, enabled, cfg, store.now())
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


def _next(current: dict[str, Any] | None, provider: str, model_id: str, enabled: bool,
          cfg: Settings, started: datetime) -> dict[str, Any]:
    """The document recounted at `started` from what is stored, whatever order it came in."""
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
    newest_failure = errors.find_one({**model, "ts": {"$gt": EPOCH}},
                                     {"_id": False, "ts": True, "error_kind": True,
                                      "message": True},
                                     sort=[("ts", pymongo.DESCENDING)])
    last_success = _later(doc.get("last_success_at"), latest["run_ts"] if latest else None)
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
    failed_at = _time(newest_failure["ts"]) if newest_failure else None
    if failed_at is not None and (error[0] is None or failed_at > error[0]):
        message = newest_failure.get("message")
        error = (failed_at, newest_failure.get("error_kind"),
                 message[:MESSAGE_CHARS] if isinstance(message, str) else None)
    if error[0] is None or (last_success is not None and error[0] <= last_success):
        error = (None, None, None)
    status, staleness = freshness(enabled=enabled, cadence_seconds=cfg.cadence_seconds,
                                  last_success_at=last_success, now=started)
    revision = doc.get("revision")
    doc.update(counts)
    doc.update({
        "enabled": enabled, "cadence_seconds": cfg.cadence_seconds,
        "last_success_at": last_success,
        "last_attempt_at": _later(doc.get("last_attempt_at"), last_success, failed_at),
        "last_error_at": error[0], "last_error_kind": error[1], "last_error_message": error[2],
        "staleness_seconds": staleness, "freshness_status": status,
        "updated_at": _later(doc.get("updated_at"), started),
        "revision": (revision if isinstance(revision, int) else 0) + 1,
    })
    return doc
