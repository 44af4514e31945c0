"""The write path: insert records exactly once, telling a resend from a conflicting reuse of an id.

The unique index on the id field does the deciding: an insert either lands or
fails with a duplicate-key error, after which the stored document is compared
with the new one (server-added fields and nulls aside) to answer duplicate or
conflict. The stored document is never modified.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from pymongo.collection import Collection
from pymongo.errors import BulkWriteError, DuplicateKeyError

import bench_contract as contract

from . import db, metrics

log = logging.getLogger(__name__)

DUPLICATE_KEY = 11000

CREATED = "created"
DUPLICATE = "duplicate"
CONFLICT = "conflict"


@dataclass(frozen=True)
class Outcome:
    """What became of one record: created, duplicate, or conflict (with the differing fields)."""

    status: str
    record_id: str
    differing: tuple[str, ...] = field(default=())
    # Results only: stored in the public collection, or (False) in the probe collection,
    # and then why, when the model gate withheld it (docs/contract.md section 5).
    published: bool | None = None
    withheld_reason: str | None = None


def now() -> datetime:
    """The current UTC time at the millisecond precision a BSON date keeps."""
    moment = datetime.now(UTC)
    return moment.replace(microsecond=moment.microsecond // 1000 * 1000)


def canonical(document: dict[str, Any], fields: Iterable[str]) -> dict[str, Any]:
    """The content that identity is judged on: the contract's fields, nulls left out."""
    return {name: document[name] for name in fields if document.get(name) is not None}


def same(a: Any, b: Any) -> bool:
    """Equal as JSON values: Python's True == 1 would let `true` pass for `1` in misc."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def _duplicate_or_conflict(new: dict[str, Any], stored: dict[str, Any] | None, id_field: str,
                           fields: Sequence[str]) -> Outcome:
    # The id is taken: the same content is a duplicate, anything else a conflict.
    record_id = new[id_field]
    if stored is None:
        # Only possible if the stored document was deleted between insert and read.
        raise db.DatabaseUnavailable()
    mine, theirs = canonical(new, fields), canonical(stored, fields)
    differing = sorted(k for k in set(mine) | set(theirs) if not same(mine.get(k), theirs.get(k)))
    withheld = stored.get("withheld_reason")
    if not differing:
        return Outcome(DUPLICATE, record_id, withheld_reason=withheld)
    log.info("conflict on %s=%s fields=%s", id_field, record_id, ",".join(differing))
    return Outcome(CONFLICT, record_id, tuple(differing), withheld_reason=withheld)


def insert_one(collection: Collection, id_field: str, document: dict[str, Any],
               fields: Sequence[str]) -> Outcome:
    """Store one document unless its id is taken; acknowledged by the database before returning."""
    with db.bounded():
        db.require_indexes()
        try:
            with metrics.WRITE_LATENCY.time():
                collection.insert_one(dict(document))
            return Outcome(CREATED, document[id_field])
        except DuplicateKeyError:
            stored = collection.find_one({id_field: document[id_field]}, {"_id": False})
    return _duplicate_or_conflict(document, stored, id_field, fields)


def insert_many(collection: Collection, id_field: str, documents: Sequence[dict[str, Any]],
                fields: Sequence[str]) -> list[Outcome]:
    """Store each document unless its id is taken; one outcome per document, in order."""
    if not documents:
        return []
    taken: set[int] = set()
    with db.bounded():
        db.require_indexes()
        try:
            with metrics.WRITE_LATENCY.time():
                collection.insert_many([dict(d) for d in documents], ordered=False)
        except BulkWriteError as exc:
            details = exc.details or {}
            others = [e for e in details.get("writeErrors", []) if e.get("code") != DUPLICATE_KEY]
            if others or details.get("writeConcernErrors"):
                raise
            taken = {e["index"] for e in details.get("writeErrors", [])}
        stored_by_id: dict[str, dict[str, Any]] = {}
        if taken:
            ids = list({documents[i][id_field] for i in taken})
            for stored in collection.find({id_field: {"$in": ids}}, {"_id": False}):
                stored_by_id[stored[id_field]] = stored
    outcomes = []
    for i, document in enumerate(documents):
        if i in taken:
            outcomes.append(_duplicate_or_conflict(
                document, stored_by_id.get(document[id_field]), id_field, fields))
        else:
            outcomes.append(Outcome(CREATED, document[id_field]))
    return outcomes


def route(document: dict[str, Any]) -> Collection:
    """The collection a result belongs in: the one place that decides (docs/contract.md).

    Published samples go to the results collection the charts read; shadow and
    probe samples, and published ones the model gate withheld (they carry
    `withheld_reason`), to the probe collection. A result without sample_role (an
    older runner) is published, as every result was before the field existed.
    """
    if _published_role(document) and "withheld_reason" not in document:
        return db.results()
    return db.probes()


def _published_role(document: dict[str, Any]) -> bool:
    return document.get("sample_role", contract.PUBLISHED) == contract.PUBLISHED


def insert_result(document: dict[str, Any], withheld_reason: str | None = None) -> Outcome:
    """Store one result exactly once in the collection route() names."""
    return insert_results([document], [withheld_reason])[0]


def insert_results(documents: Sequence[dict[str, Any]],
                   withheld: Sequence[str | None] | None = None) -> list[Outcome]:
    """Store each result exactly once in the collection route() names; outcomes in order.

    `withheld` holds, per document, the gate's reason to keep it off the public
    collection (None: publish). Whether a published-role result is withheld can
    change between a send and its resend (an operator enables the model), so such a
    result is first looked for in the other collection: stored there, it is a
    duplicate (or a conflict), never a second copy.
    """
    reasons = list(withheld) if withheld is not None else [None] * len(documents)
    documents = [d if r is None else {**d, "withheld_reason": r}
                 for d, r in zip(documents, reasons, strict=True)]
    results, probes = db.results(), db.probes()
    outcomes: list[Outcome | None] = [None] * len(documents)
    movable = [i for i, d in enumerate(documents) if _published_role(d)]
    for target, other in ((results, probes), (probes, results)):
        ids = [documents[i]["result_id"] for i in movable
               if route(documents[i]).name == target.name]
        if not ids:
            continue
        with db.bounded():
            stored = {d["result_id"]: d for d in other.find({"result_id": {"$in": ids}},
                                                             {"_id": False})}
        for i in movable:
            found = stored.get(documents[i]["result_id"])
            if found is not None and route(documents[i]).name == target.name:
                outcomes[i] = replace(_duplicate_or_conflict(documents[i], found, "result_id",
                                                             contract.RESULT_FIELDS),
                                      published=other.name == results.name)
    groups: dict[str, tuple[Collection, list[int]]] = {}
    for i, document in enumerate(documents):
        if outcomes[i] is None:
            target = route(document)
            groups.setdefault(target.name, (target, []))[1].append(i)
    for target, positions in groups.values():
        found = insert_many(target, "result_id", [documents[i] for i in positions],
                            contract.RESULT_FIELDS)
        for i, outcome in zip(positions, found, strict=True):
            if outcome.status == CREATED:
                outcome = replace(outcome, withheld_reason=reasons[i])
            outcomes[i] = replace(outcome, published=target.name == results.name)
    return [o for o in outcomes if o is not None]
