"""The provider's catalogue as the runners see it: provider_catalog and bench_discovery_runs.

POST /ingest/catalog upserts one provider_catalog entry per (provider, model_id,
region), so a catalogue posted twice leaves one entry per model with its first
and last sighting, and appends one bench_discovery_runs record per post
(docs/contract.md section 7). Each entry names the post that last listed it
(`last_run_id`), so an entry the latest complete listing of its provider and
region did not hold has left the provider's catalogue.

It also names the spellings of one model that the dashboard would show as two:
a bare id beside its geographic inference-profile ids (us., eu., global., ...)
and ids that differ only in case.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import datetime
from typing import Any

import pymongo
from bson import ObjectId
from pymongo import UpdateOne
from pymongo.collection import Collection
from pymongo.database import Database
from pymongo.errors import BulkWriteError, OperationFailure

from . import db, settings, store
from .settings import Settings

log = logging.getLogger(__name__)

CATALOG_KEY = ("provider", "model_id", "region")
CATALOG_INDEXES = (
    # One entry per model and region: a re-post updates it, never adds a second.
    ([(name, 1) for name in CATALOG_KEY], {"unique": True}),
    ([("provider", 1), ("last_seen_at", -1)], {}),
)
DISCOVERY_INDEXES = (([("provider", 1), ("received_at", -1)], {}),)
# The catalogue entry's fields as posted (besides the key).
ENTRY_FIELDS = ("name", "provider_name", "kind", "input_modalities", "output_modalities",
                "inference_types", "lifecycle_status", "needs_profile", "streaming")
# Bedrock's cross-region inference profiles put one of these before the model id.
PROFILE_PREFIXES = ("us.", "us-gov.", "eu.", "apac.", "jp.", "au.", "ca.", "global.")

COMPLETE, PARTIAL = "complete", "partial"


def catalog() -> Collection:
    """The provider_catalog collection (MONGODB_CATALOG_COLLECTION)."""
    return db.collection(settings.current().catalog_collection)


def discovery_runs() -> Collection:
    """The bench_discovery_runs collection (MONGODB_DISCOVERY_COLLECTION)."""
    return db.collection(settings.current().discovery_collection)


def ensure_indexes(database: Database, cfg: Settings) -> str | None:
    """Make the catalogue's indexes; a line saying what failed, or None."""
    try:
        for name, specs in ((cfg.catalog_collection, CATALOG_INDEXES),
                            (cfg.discovery_collection, DISCOVERY_INDEXES)):
            database[name].create_indexes(
                [pymongo.IndexModel(keys, **options) for keys, options in specs])
    except OperationFailure as exc:
        if db.is_outage(exc):
            raise
        return (f"cannot make the indexes of {cfg.mongodb_db}.{cfg.catalog_collection}: "
                f"{exc.details or exc}; drop the clashing index, then run "
                f"flask --app ingest_app ensure-indexes")
    return None


def _ensure_once(cfg: Settings) -> None:
    # Best effort, once a process: the upserts are keyed, so a missing index only leaves
    # two concurrent first posts of one model free to race.
    handle = db.handle()
    handle.get()
    if handle.catalog_indexes_pid == handle.pid:
        return
    problem = ensure_indexes(db.get_db(), cfg)
    if problem:
        log.error("%s", problem)
    handle.catalog_indexes_pid = handle.pid


def store_catalog(posted: dict[str, Any], runner: str, received_at: datetime) -> dict[str, int]:
    """Upsert every posted entry, append the discovery record; the counts stored in it.

    `models` counts the distinct entries posted (a model posted twice counts once, its
    last copy kept), `new` those first seen now, `seen` those already known.
    """
    cfg = settings.current()
    provider, region = posted["provider"], posted["region"]
    run_id = ObjectId()
    entries: dict[str, dict[str, Any]] = {}
    for entry in posted["models"]:
        entries[entry["model_id"]] = entry
    operations = [
        UpdateOne(
            {"provider": provider, "model_id": model_id, "region": region},
            {"$set": {**{name: entry.get(name) for name in ENTRY_FIELDS},
                      "last_seen_at": received_at, "last_started_at": posted["started_at"],
                      "last_runner": runner, "last_run_id": run_id},
             "$setOnInsert": {"first_seen_at": received_at}},
            upsert=True,
        )
        for model_id, entry in entries.items()
    ]
    new = 0
    with db.bounded():
        _ensure_once(cfg)
        if operations:
            new = _upsert(catalog(), operations)
        counts = {"models": len(operations), "new": new, "seen": len(operations) - new}
        discovery_runs().insert_one({
            "_id": run_id, "provider": provider, "region": region, "runner": runner,
            "started_at": posted["started_at"], "received_at": received_at,
            "status": COMPLETE if posted["pagination_complete"] else PARTIAL,
            "pagination_complete": posted["pagination_complete"], "counts": counts,
        })
    return counts


def _upsert(collection: Collection, operations: list[UpdateOne]) -> int:
    """Run the upserts; how many inserted. A duplicate key is a concurrent first upsert of
    the same entry (MongoDB retries only some of those): run those once more, now updates."""
    try:
        return collection.bulk_write(operations, ordered=False).upserted_count
    except BulkWriteError as exc:
        details = exc.details or {}
        errors = details.get("writeErrors", [])
        if details.get("writeConcernErrors") or any(
                e.get("code") != store.DUPLICATE_KEY for e in errors):
            raise
        inserted = int(details.get("nUpserted", 0))
        collection.bulk_write([operations[e["index"]] for e in errors], ordered=False)
        return inserted


def spelling(model_id: str) -> str:
    """The one spelling of a model its variants share: lower case, no profile prefix."""
    lowered = model_id.lower()
    for prefix in PROFILE_PREFIXES:
        if lowered.startswith(prefix):
            return lowered[len(prefix):]
    return lowered


def duplicate_spellings(ids: Iterable[str]) -> list[list[str]]:
    """Groups of two or more ids that spell one model, each sorted, in spelling order."""
    groups: dict[str, set[str]] = {}
    for model_id in ids:
        groups.setdefault(spelling(model_id), set()).add(model_id)
    return [sorted(found) for _, found in sorted(groups.items()) if len(found) > 1]


def departed(entries: Iterable[dict[str, Any]], runs: Iterable[dict[str, Any]]
             ) -> list[dict[str, Any]]:
    """The entries the latest complete listing of their provider and region did not hold.

    `runs` are discovery records newest first. An entry last listed by that complete
    listing, or by a later (partial) one, is still there; a partial listing proves
    nothing missing, and a provider and region never listed completely has no verdict.
    """
    age: dict[Any, int] = {}
    latest: dict[tuple[Any, Any], int] = {}
    for n, run in enumerate(runs):
        age[run.get("_id")] = n
        if run.get("status") == COMPLETE:
            latest.setdefault((run.get("provider"), run.get("region")), n)
    return [e for e in entries
            if (key := (e.get("provider"), e.get("region"))) in latest
            and age.get(e.get("last_run_id"), len(age)) > latest[key]]
