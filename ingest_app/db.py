"""MongoDB access: one client per process, bounded calls, and the indexes exactly-once rests on."""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC
from typing import Any

import click
import pymongo
from flask import Flask, current_app, g
from pymongo.collection import Collection
from pymongo.database import Database
from pymongo.errors import (
    BulkWriteError,
    ConnectionFailure,
    ExecutionTimeout,
    OperationFailure,
    PyMongoError,
    WriteConcernError,
    WTimeoutError,
)

from . import metrics, settings
from .breaker import Breaker
from .settings import Settings

log = logging.getLogger(__name__)

EXTENSION = "bench_ingest.db"
# A collection dropped by hand loses its unique index; look again this often (a no-op if present).
INDEX_RECHECK_SECONDS = 60.0
# How long a read waits for one of its worker's read slots before a 503.
READ_SLOT_WAIT_SECONDS = 0.5

# MongoDB's default index names (result_id_1, ...), so an index someone already made by
# hand with the same keys is recognised instead of clashing by name.
#
# The unique indexes are partial (docs/contract.md section 3): they hold only documents whose
# id is a string. The collections are shared with other writers whose documents carry no
# result_id or error_id; a plain unique index could not be built over them (every missing
# id counts as the same null) and, once built, would refuse their second id-less insert.
# $type is among the operators MongoDB accepts in a partial filter; it also leaves out an
# explicit null, which $exists would index.
RESULT_ID_FILTER = {"result_id": {"$type": "string"}}
ERROR_ID_FILTER = {"error_id": {"$type": "string"}}
RESULT_INDEXES = (
    ([("result_id", 1)], {"unique": True, "partialFilterExpression": RESULT_ID_FILTER}),
    ([("provider", 1), ("model_name", 1), ("run_ts", -1)], {}),
    ([("run_ts", -1)], {}),
)
ERROR_INDEXES = (
    ([("error_id", 1)], {"unique": True, "partialFilterExpression": ERROR_ID_FILTER}),
    ([("provider", 1), ("model_name", 1), ("ts", -1)], {}),
    ([("ts", -1)], {}),
    ([("fingerprint", 1), ("ts", -1)], {}),
)
# createIndexes refuses an index whose name or keys are taken by one with other options.
_INDEX_CLASH_CODES = frozenset({85, 86})  # IndexOptionsConflict, IndexKeySpecsConflict


class DatabaseUnavailable(Exception):
    """The database cannot serve this call now (down, slow, refusing us): retry later.

    The database layer knows no HTTP; the app's error handler answers it 503 with
    Retry-After (errors.py), in the one JSON shape.
    """

    code = "database_unavailable"
    message = "The database is unavailable or slow; retry after the delay in Retry-After."


class ReadCapacityExhausted(DatabaseUnavailable):
    """Every read slot of this worker is taken: the read is sent away without a database call."""

    code = "read_capacity_exhausted"
    message = "Too many reads are in progress; retry after the delay in Retry-After."


class IndexMismatch(Exception):
    """An existing index has the name or keys of one we need but another spec; says the fix."""


class _Guards:
    """One process's circuit breakers and its read slots (docs/reliability.md).

    Reads have a breaker and a concurrency limit of their own: a burst of heavy
    reads (GET /summary?window=31d) that times out opens the read breaker only,
    and beyond the limit a read is answered 503 at once instead of holding a
    worker thread, so writes keep both their threads and their breaker.
    """

    def __init__(self, cfg: Settings) -> None:
        self.pid = os.getpid()
        probe_limit = cfg.db_timeout_seconds + 1.0
        self.write = Breaker(cfg.db_cooldown_seconds, probe_limit_seconds=probe_limit)
        self.read = Breaker(cfg.db_cooldown_seconds, probe_limit_seconds=probe_limit)
        self.read_slots = threading.BoundedSemaphore(cfg.max_concurrent_reads)


class _Handle:
    """The process's client, made on first use so a client made before a fork is never shared."""

    def __init__(self, cfg: Settings) -> None:
        self.cfg = cfg
        self.lock = threading.Lock()
        self.client: pymongo.MongoClient | None = None
        self.pid = 0
        self.indexes_checked_at: float | None = None
        self.collections: dict[str, Collection] = {}
        self._guards: _Guards | None = None
        # The pid that last made the health and models indexes (best effort, once a process).
        self.health_indexes_pid = 0
        # Likewise for the catalogue's indexes (discovery.py).
        self.catalog_indexes_pid = 0

    def guards(self) -> _Guards:
        # Per process, like the client: a forked worker starts closed, with its own locks.
        guards = self._guards
        if guards is None or guards.pid != os.getpid():
            with self.lock:
                if self._guards is None or self._guards.pid != os.getpid():
                    self._guards = _Guards(self.cfg)
                guards = self._guards
        return guards

    def breaker(self) -> Breaker:
        """The write side's breaker (the readiness ping reports to it too)."""
        return self.guards().write

    def get(self) -> pymongo.MongoClient:
        with self.lock:
            if self.client is None or self.pid != os.getpid():
                self.client = make_client(self.cfg)
                self.pid = os.getpid()
                self.indexes_checked_at = None
                self.collections = {}
            return self.client

    def collection(self, name: str) -> Collection:
        # Made once per process: building Database and Collection objects costs on every write.
        client = self.get()
        found = self.collections.get(name)
        if found is None:
            found = self.collections[name] = client[self.cfg.mongodb_db][name]
        return found

    def close(self) -> None:
        with self.lock:
            if self.client is not None and self.pid == os.getpid():
                self.client.close()
            self.client = None
            self.collections = {}


def make_client(cfg: Settings) -> pymongo.MongoClient:
    """A client that opens no socket until used and never waits on the database for long."""
    timeout_ms = int(cfg.db_timeout_seconds * 1000)
    options: dict = {}
    probe = pymongo.MongoClient(cfg.mongodb_uri, connect=False)
    if not probe.write_concern.acknowledged:
        # A 201 promises the database has the result: never with unacknowledged writes.
        log.warning("MONGODB_URI asks for unacknowledged writes (w=0); using w=1")
        options["w"] = 1
    probe.close()
    return pymongo.MongoClient(
        cfg.mongodb_uri,
        **options,
        connect=False,
        appname="bench-ingest",
        tz_aware=True,
        tzinfo=UTC,
        serverSelectionTimeoutMS=timeout_ms,
        connectTimeoutMS=cfg.connect_timeout_ms,
        # Outside a pymongo.timeout() block (the CLI), a hung server still cannot hold a call.
        socketTimeoutMS=timeout_ms,
    )


def _handle() -> _Handle:
    return current_app.extensions[EXTENSION]


def handle() -> _Handle:
    """This app's client holder (its pid tells whether the process forked since)."""
    return _handle()


def get_db() -> Database:
    """The app's database on this process's client."""
    return _handle().get()[settings.current().mongodb_db]


def results() -> Collection:
    """The results collection."""
    return _handle().collection(settings.current().results_collection)


def probes() -> Collection:
    """The probe collection: results whose sample_role keeps them off the public charts."""
    return _handle().collection(settings.current().probe_collection)


def failures() -> Collection:
    """The failed-attempts collection (MONGODB_ERRORS_COLLECTION)."""
    return _handle().collection(settings.current().errors_collection)


def collection(name: str) -> Collection:
    """Any collection of the app's database, on this process's client."""
    return _handle().collection(name)


def ensure_indexes(db: Database, cfg: Settings) -> None:
    """Create the contract's indexes if missing (idempotent; the unique ones give exactly-once).

    Raises IndexMismatch when an index already there has the name or keys of one of
    ours with another spec (an older plain unique index on result_id, say).
    """
    for collection, specs in (
        (db[cfg.results_collection], RESULT_INDEXES),
        (db[cfg.probe_collection], RESULT_INDEXES),
        (db[cfg.errors_collection], ERROR_INDEXES),
    ):
        models = [pymongo.IndexModel(keys, **options) for keys, options in specs]
        try:
            collection.create_indexes(models)
        except OperationFailure as exc:
            if exc.code in _INDEX_CLASH_CODES:
                listing = list(collection.list_indexes())
                problem = index_mismatch(collection.full_name, listing, specs)
                raise IndexMismatch(problem or _fix_line(collection.full_name, None,
                                                         str(exc.details or exc))) from exc
            raise
        problem = index_mismatch(collection.full_name, list(collection.list_indexes()), specs)
        if problem:
            raise IndexMismatch(problem)


def index_name(keys: list[tuple[str, int]]) -> str:
    """MongoDB's default name for an index on `keys`: result_id_1, provider_1_model_name_1_..."""
    return "_".join(f"{field}_{direction}" for field, direction in keys)


def _shape(index: dict[str, Any]) -> tuple[tuple[tuple[str, Any], ...], bool, Any]:
    keys = tuple((name, int(direction) if isinstance(direction, int | float) else direction)
                 for name, direction in dict(index.get("key") or {}).items())
    return keys, bool(index.get("unique", False)), index.get("partialFilterExpression")


def _describe(keys: Any, unique: bool, partial: Any) -> str:
    spec = {"key": dict(keys), "unique": unique}
    if partial is not None:
        spec["partialFilterExpression"] = partial
    return json.dumps(spec, default=str, separators=(", ", ": "))


def _fix_line(full_name: str, name: str | None, what: str) -> str:
    database, _, collection = full_name.partition(".")
    drop = (f'db.getSiblingDB("{database}").getCollection("{collection}")'
            f'.dropIndex("{name}")') if name else "drop the clashing index"
    return (f"index clash on {full_name}: {what}; fix: {drop}, then run "
            f"flask --app 'ingest_app:create_app()' ensure-indexes")


def index_mismatch(full_name: str, listing: list[dict[str, Any]],
                   specs: tuple[tuple[list[tuple[str, int]], dict[str, Any]], ...]) -> str | None:
    """One line naming an index in `listing` that clashes with `specs`, and its fix; else None.

    An index clashes when it has the name of one of ours with other keys or options,
    or, beside ours, the same keys with another uniqueness or partial filter (MongoDB
    keeps both, and the other one still decides what is refused).
    """
    for keys, options in specs:
        wanted = (tuple(keys), bool(options.get("unique", False)),
                  options.get("partialFilterExpression"))
        name = index_name(keys)
        by_name = next((ix for ix in listing if ix.get("name") == name), None)
        clashing = []
        if by_name is not None and _shape(by_name) != wanted:
            clashing.append(by_name)
        elif by_name is not None:
            clashing += [ix for ix in listing if ix.get("name") != name
                         and _shape(ix)[0] == wanted[0] and _shape(ix)[1:] != wanted[1:]
                         and (ix.get("unique") or wanted[1])]
        if clashing:
            found = clashing[0]
            what = (f"index {found.get('name')} is {_describe(*_shape(found))} but "
                    f"bench-ingest needs {_describe(*wanted)}")
            return _fix_line(full_name, found.get("name"), what)
    return None


def require_indexes() -> None:
    """Make sure this process has seen the unique indexes before it acknowledges a write."""
    handle = _handle()
    handle.get()
    checked = handle.indexes_checked_at
    if checked is not None and time.monotonic() - checked < INDEX_RECHECK_SECONDS:
        return
    try:
        ensure_indexes(get_db(), settings.current())
    except IndexMismatch as exc:
        # Writes wait (503, the runner keeps them) until an operator applies the fix.
        log.error("cannot create the indexes writes depend on: %s", exc)
        raise unavailable(exc) from exc
    except OperationFailure as exc:
        if is_outage(exc):
            raise
        # E.g. a non-unique index on the id already exists, or stored duplicates block the
        # unique one: writes must wait (503, the runner keeps them) until an operator fixes it.
        log.error("cannot create the indexes writes depend on: %s", exc.details or exc)
        raise unavailable(exc) from exc
    handle.indexes_checked_at = time.monotonic()


def unavailable(exc: Exception) -> DatabaseUnavailable:
    """What a database failure or timeout is raised as; logged and counted."""
    metrics.observe_db_error()
    log.warning("request_id=%s database unavailable: %s", g.get("request_id"), type(exc).__name__)
    return DatabaseUnavailable()


# The database refused us, not the payload: our credentials or role (18
# AuthenticationFailed, 13 Unauthorized). Like an outage, the runner should keep
# the record and try again, never dead-letter it as a bug.
_REFUSAL_CODES = frozenset({13, 18})


def is_outage(exc: BaseException) -> bool:
    """True when a database error means "unreachable, too slow or refusing us" rather than a bug.

    A write-concern failure (the write was not confirmed by the replicas asked
    for) is one too: the write may or may not survive, so the client resends and
    the unique index turns the resend into a duplicate.
    """
    if isinstance(exc, ConnectionFailure | ExecutionTimeout | WTimeoutError | WriteConcernError):
        return True
    if isinstance(exc, BulkWriteError):
        return bool((exc.details or {}).get("writeConcernErrors"))
    if isinstance(exc, OperationFailure) and exc.code in _REFUSAL_CODES:
        return True
    return isinstance(exc, PyMongoError) and bool(getattr(exc, "timeout", False))


@contextmanager
def bounded(*, guarded: bool = True, read: bool = False) -> Iterator[None]:
    """Run database calls under the app's time cap; an outage raises DatabaseUnavailable.

    Guarded calls are refused at once (DatabaseUnavailable, counted, not logged) while
    the circuit breaker is open; an unguarded call (the readiness ping) always asks the
    database, and its outcome still opens or closes the breaker. A read takes one of the
    worker's read slots (ReadCapacityExhausted at once when none is free) and answers to
    the read breaker.
    """
    guards = _handle().guards()
    if not read:
        with _bounded(guards.write, guarded):
            yield
        return
    # A short wait lets light reads (milliseconds each) queue, while a heavy reader's
    # excess is sent away before it holds a thread long enough to cost a write.
    if not guards.read_slots.acquire(timeout=READ_SLOT_WAIT_SECONDS):
        metrics.observe_db_refused()
        raise ReadCapacityExhausted()
    try:
        with _bounded(guards.read, guarded):
            yield
    finally:
        guards.read_slots.release()


@contextmanager
def _bounded(breaker: Breaker, guarded: bool) -> Iterator[None]:
    started = breaker.admit() if guarded else breaker.clock()
    if started is None:
        metrics.observe_db_refused()
        raise DatabaseUnavailable()
    outage = False
    try:
        with pymongo.timeout(settings.current().db_timeout_seconds):
            yield
    except PyMongoError as exc:
        if is_outage(exc):
            outage = True
            breaker.fail(started)
            raise unavailable(exc) from exc
        raise
    finally:
        # Anything but an outage means the database answered (an error of its own, a
        # duplicate key, a conflict): the breaker closes, and a probe's slot is freed.
        if not outage:
            breaker.succeed()


def ping() -> None:
    """Ask the database to answer within the time cap (else DatabaseUnavailable), breaker or not."""
    with bounded(guarded=False):
        get_db().command("ping")


def init_app(app: Flask) -> None:
    """Attach the lazily-made client to the app and add the `ensure-indexes` command."""
    app.extensions[EXTENSION] = _Handle(app.extensions[settings.EXTENSION])

    @app.cli.command("ensure-indexes")
    def ensure_indexes_command() -> None:
        """Create the results and errors indexes now (they are also made on first write)."""
        cfg = settings.current()
        from . import discovery, health

        try:
            ensure_indexes(get_db(), cfg)
        except IndexMismatch as exc:
            raise click.ClickException(str(exc)) from exc
        problem = health.ensure_indexes(get_db(), cfg) or discovery.ensure_indexes(get_db(), cfg)
        if problem:
            raise click.ClickException(problem)
        click.echo(f"indexes present on {cfg.mongodb_db}.{cfg.results_collection}, "
                   f"{cfg.mongodb_db}.{cfg.probe_collection}, "
                   f"{cfg.mongodb_db}.{cfg.errors_collection}, "
                   f"{cfg.mongodb_db}.{cfg.models_collection}, "
                   f"{cfg.mongodb_db}.{cfg.health_collection}, "
                   f"{cfg.mongodb_db}.{cfg.catalog_collection} "
                   f"and {cfg.mongodb_db}.{cfg.discovery_collection}")
