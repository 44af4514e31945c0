"""The runners' side channel: GET /runner-config (their worklist) and POST /ingest/catalog.

Both take a runner's write key, as every write does: the key's name says which
runner asks, so a worklist can differ per runner (docs/contract.md section 7).
"""

from __future__ import annotations

from flask import Blueprint, Flask, Response, g, jsonify, request
from flask.typing import ResponseReturnValue
from marshmallow import ValidationError

from . import db, discovery, jsonbody, runners, settings, store, worklist
from .auth import require_key
from .errors import invalid
from .limiter import limit_rate
from .schemas import CATALOG_ANSWER, CATALOG_SCHEMA, RUNNER_CONFIG_ANSWER, RUNNER_CONFIG_QUERY

bp = Blueprint("steer", __name__)

# The runner keeps its own copy and asks again with If-None-Match; nothing shared may keep it.
CACHE_CONTROL = "private, no-cache"


@bp.get("/runner-config")
@require_key
@limit_rate
def runner_config() -> ResponseReturnValue:
    """The calling runner's worklist for a provider, with an ETag; 304 when unchanged."""
    try:
        query = RUNNER_CONFIG_QUERY.load(request.args)
    except ValidationError as exc:
        raise invalid(exc.messages,  # type: ignore[arg-type]
                      "The query parameters are not valid; see details for each one.") from exc
    cfg = settings.current()
    with db.bounded():
        answer = worklist.build(query["provider"], g.runner_id, cfg.runner_interval_minutes)
    tag = worklist.etag(answer)
    now = store.now()
    runners.note(g.runner_id, runners.CONFIG, query["provider"], now,
                 models=len(answer["models"]), etag=tag)
    if request.if_none_match.contains_weak(tag):
        response = Response(status=304)
    else:
        response = jsonify(RUNNER_CONFIG_ANSWER.dump({**answer, "generated_at": now}))
    response.set_etag(tag)
    response.headers["Cache-Control"] = CACHE_CONTROL
    return response


@bp.post("/ingest/catalog")
@require_key
@limit_rate
def ingest_catalog() -> ResponseReturnValue:
    """Store one listing of the provider's catalogue: upsert each entry, record the run."""
    cfg = settings.current()
    body = jsonbody.read_object(cfg.max_body_bytes, cfg.body_timeout_seconds)
    try:
        posted = CATALOG_SCHEMA.load(body)
    except ValidationError as exc:
        raise invalid(exc.messages,  # type: ignore[arg-type]
                      "The catalogue has invalid or unknown fields; see details for each one."
                      ) from exc
    received_at = store.now()
    counts = discovery.store_catalog(posted, g.runner_id, received_at)
    runners.note(g.runner_id, runners.CATALOG, posted["provider"], received_at,
                 status=discovery.COMPLETE if posted["pagination_complete"]
                 else discovery.PARTIAL)
    return jsonify(CATALOG_ANSWER.dump({"status": "stored", "counts": counts})), 201


def init_app(app: Flask) -> None:
    """Register the runners' routes."""
    app.register_blueprint(bp)
