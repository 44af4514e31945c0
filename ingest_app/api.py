"""The write API: POST /ingest, /ingest/batch, /ingest/error, and /health, /ready, /openapi.json."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Flask, g, jsonify
from flask.typing import ResponseReturnValue
from marshmallow import Schema, ValidationError

import bench_contract as contract

from . import catalog, db, jsonbody, metrics, openapi, settings, store
from . import health as model_health
from .auth import require_key
from .credentials import redact
from .errors import ApiError, invalid
from .limiter import limit_rate
from .schemas import (
    BATCH_ANSWER,
    BATCH_SCHEMA,
    FAILURE_SCHEMA,
    RESULT_SCHEMA,
    STATUS_ANSWER,
    WRITE_ANSWER,
    fingerprint,
)

bp = Blueprint("api", __name__)


def _invalid(messages: Any, what: str) -> ApiError:
    return invalid(messages, f"The {what} has invalid or unknown fields; see details for each one.")


def _load(schema: Schema, payload: dict[str, Any], what: str) -> dict[str, Any]:
    try:
        return schema.load(payload)
    except ValidationError as exc:
        raise _invalid(exc.messages, what) from exc


def _body() -> dict[str, Any]:
    cfg = settings.current()
    return jsonbody.read_object(cfg.max_body_bytes, cfg.body_timeout_seconds)


def _stamp(record: dict[str, Any], received_at: Any) -> dict[str, Any]:
    return {**record, "received_at": received_at, "runner_id": g.runner_id}


def _answer(kind: str, outcome: store.Outcome, id_field: str) -> ResponseReturnValue:
    metrics.observe_write(kind, outcome.status)
    if outcome.status == store.CONFLICT:
        raise ApiError(
            409,
            "conflict",
            f"A different {kind} with this {id_field} is already stored; it was left unchanged.",
            details={id_field: outcome.record_id, "differing_fields": list(outcome.differing)},
        )
    if outcome.status == store.CREATED and kind == "result":
        metrics.observe_stored(g.runner_id)
    created = outcome.status == store.CREATED
    body = {"status": outcome.status, "duplicate": not created, id_field: outcome.record_id}
    body.update(_placement(outcome))
    return jsonify(WRITE_ANSWER.dump(body)), 201 if created else 200


def _placement(outcome: store.Outcome) -> dict[str, Any]:
    """Off the public collection: `published: false`, with `withheld_reason` if the gate did it.

    A result that went to the public collection gets neither (the answer older
    runners know); docs/contract.md section 2.
    """
    if outcome.published is not False:
        return {}
    placed: dict[str, Any] = {"published": False}
    if outcome.withheld_reason is not None:
        placed["withheld_reason"] = outcome.withheld_reason
    return placed


def _withheld(records: list[dict[str, Any]]) -> list[str | None]:
    """Per result, why the model gate keeps it off the public collection (None: it may go there).

    With INGEST_MODEL_GATE off, nothing is withheld (docs/contract.md section 5).
    """
    if not settings.current().model_gate or not records:
        return [None] * len(records)
    with db.bounded():
        entries = catalog.lookup((r["provider"], r["model_name"]) for r in records)
    return [catalog.standing(entries[(r["provider"], r["model_name"])]) for r in records]


def _record_health(documents: list[dict[str, Any]], outcomes: list[store.Outcome]) -> None:
    # Only a result newly stored in the public collection is a success the dashboard shows.
    model_health.record(
        (d["provider"], d["model_name"])
        for d, o in zip(documents, outcomes, strict=True)
        if o.status == store.CREATED and o.published
    )


@bp.post("/ingest")
@require_key
@limit_rate
def ingest_result() -> ResponseReturnValue:
    """Store one benchmark result exactly once."""
    record = _load(RESULT_SCHEMA, _body(), "result")
    document = _stamp(record, store.now())
    outcome = store.insert_result(document, _withheld([record])[0])
    _record_health([document], [outcome])
    return _answer("result", outcome, "result_id")


@bp.post("/ingest/error")
@require_key
@limit_rate
def ingest_error() -> ResponseReturnValue:
    """Store one failed attempt exactly once, with its fingerprint."""
    record = _load(FAILURE_SCHEMA, _body(), "error record")
    # Stored redacted, so neither the database nor the page ever holds a quoted credential.
    cfg = settings.current()
    record["message"] = redact(record["message"], [k for _, k in cfg.api_keys + cfg.read_keys])
    document = {**_stamp(record, store.now()), "fingerprint": fingerprint(record)}
    outcome = store.insert_one(db.failures(), "error_id", document, contract.ERROR_FIELDS)
    if outcome.status == store.CREATED:
        model_health.record([(document["provider"], document["model_name"])])
    return _answer("error", outcome, "error_id")


@bp.post("/ingest/batch")
@require_key
@limit_rate
def ingest_batch() -> ResponseReturnValue:
    """Store up to MAX_BATCH_ITEMS results; one status per item, in the order sent."""
    items = _load(BATCH_SCHEMA, _body(), "batch")["results"]
    answers: list[dict[str, Any]] = [{} for _ in items]
    valid: list[tuple[int, dict[str, Any]]] = []
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            answers[i] = {"status": "rejected", "errors": {"_schema": ["Not a JSON object."]}}
            metrics.observe_rejection("validation_error")
            continue
        try:
            valid.append((i, RESULT_SCHEMA.load(item)))
        except ValidationError as exc:
            answers[i] = {"status": "rejected", "errors": exc.messages}
            if isinstance(item.get("result_id"), str):
                answers[i]["result_id"] = item["result_id"]
            metrics.observe_rejection("validation_error")
    received_at = store.now()
    documents = [_stamp(record, received_at) for _, record in valid]
    outcomes = store.insert_results(documents, _withheld([record for _, record in valid]))
    _record_health(documents, outcomes)
    counts: dict[str, int] = {}
    for (i, _), outcome in zip(valid, outcomes, strict=True):
        answers[i] = {"status": outcome.status, "result_id": outcome.record_id,
                      **_placement(outcome)}
        if outcome.differing:
            answers[i]["differing_fields"] = list(outcome.differing)
        counts[outcome.status] = counts.get(outcome.status, 0) + 1
    for status, n in counts.items():
        metrics.observe_write("result", status, n)
    if counts.get(store.CREATED):
        metrics.observe_stored(g.runner_id)
    return jsonify(BATCH_ANSWER.dump({"results": answers})), 200


@bp.get("/health")
def health() -> ResponseReturnValue:
    """The process is up (no database call)."""
    return jsonify(STATUS_ANSWER.dump({"status": "ok"}))


@bp.get("/ready")
def ready() -> ResponseReturnValue:
    """The database answers a ping within the time cap, else 503."""
    db.ping()
    return jsonify(STATUS_ANSWER.dump({"status": "ready"}))


@bp.get("/openapi.json")
def openapi_document() -> ResponseReturnValue:
    """The OpenAPI document, generated from the schemas."""
    return jsonify(openapi.document())


def init_app(app: Flask) -> None:
    """Register the write routes."""
    app.register_blueprint(bp)
