"""The read side: GET /results, /summary, /metrics and the status page at /."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from datetime import datetime
from typing import Any

from flask import Blueprint, Flask, Response, jsonify, render_template, request
from flask.typing import ResponseReturnValue
from marshmallow import EXCLUDE, Schema, ValidationError

from . import auth, credentials, db, metrics, runners, settings
from .errors import ApiError, invalid
from .history import CursorError, Position, list_results, rfc3339, to_json
from .limits import DEFAULT_WINDOW
from .schemas import RESULTS_QUERY, SUMMARY_ANSWER, WINDOW_QUERY
from .summary import (
    ModelSummary,
    Summary,
    WindowError,
    parse_window,
    summarize,
)

bp = Blueprint("read", __name__)

RESULTS_PARAMS = frozenset(RESULTS_QUERY.fields)
SUMMARY_PARAMS = frozenset(WINDOW_QUERY.fields)
PAGE_WINDOWS = ("1h", "24h", "7d")

SPARK_WIDTH, SPARK_HEIGHT, SPARK_PAD = 240, 48, 3


def _invalid(problems: dict[str, Any]) -> ApiError:
    return invalid(problems, "The query parameters are not valid; see details for each one.")


def _authorize(*, page: bool = False) -> None:
    """Let the caller read, or raise the 401; a public board skips the key."""
    # A key in the query string was refused (401) before any route ran, public board or not.
    if settings.current().public_read:
        return
    auth.authenticate(allow_read=True, allow_basic=page)


def _query(schema: Schema, problems: dict[str, Any], **options: Any) -> dict[str, Any]:
    # The schema the OpenAPI document shows is the one that reads the query string.
    try:
        return schema.load(request.args, **options)
    except ValidationError as exc:
        problems.update(exc.messages)  # type: ignore[arg-type]
        return exc.valid_data or {}  # type: ignore[return-value]


def _cursor_secret() -> bytes:
    # Every worker derives the same secret from the keys it holds, so any worker reads a
    # cursor another handed out; a key rotation ends the walks in progress (422: start over).
    cfg = settings.current()
    keys = sorted(key for _, key in cfg.api_keys + cfg.read_keys)
    return hashlib.sha256("\0".join(["bench-ingest results cursor", *keys]).encode()).digest()


@bp.get("/results")
def results() -> ResponseReturnValue:
    """Stored results newest first, filtered, a page at a time."""
    _authorize()
    problems: dict[str, Any] = {}
    query = _query(RESULTS_QUERY, problems)
    match = {name: query[name] for name in ("provider", "model_name") if name in query}
    after = None
    if (cursor := query.get("cursor")) is not None:
        try:
            after = Position.decode(cursor, _cursor_secret())
        except CursorError as exc:
            problems["cursor"] = [str(exc)]
    if problems:
        raise _invalid(problems)
    with db.bounded(read=True):
        docs, position = list_results(db.results(), match, since=query.get("since"),
                                      until=query.get("until"), after=after,
                                      limit=query["limit"])
    return jsonify({
        "results": [to_json(doc) for doc in docs],
        "next": position.encode(_cursor_secret()) if position else None,
    })


def _summary(*, strict: bool) -> Summary:
    # /summary refuses parameters it does not take; the status page ignores them.
    problems: dict[str, Any] = {}
    window = _query(WINDOW_QUERY, problems, **({} if strict else {"unknown": EXCLUDE}))
    window = window.get("window", DEFAULT_WINDOW)
    try:
        # Judged before the database is asked: a bad window is a 422 even during an outage.
        parse_window(window)
    except WindowError as exc:
        problems["window"] = [str(exc)]
    if problems:
        raise _invalid(problems)
    with db.bounded(read=True):
        return replace(summarize(db.results(), db.failures(), window), runners=runners.seen())


def _model_json(row: ModelSummary) -> dict[str, Any]:
    return {
        "provider": row.provider,
        "model_name": row.model_name,
        "last_run": row.last_run,
        "last_outcome": row.last_outcome,
        "last_result_at": row.last_result_at,
        "last_failure_at": row.last_failure_at,
        "runs": row.runs,
        "failures": row.failures,
        "success_rate": row.success_rate,
        "time_to_first_token": {"median": row.ttft_median, "p90": row.ttft_p90},
        "tokens_per_second": {"median": row.tokens_per_second_median,
                              "p90": row.tokens_per_second_p90},
    }


@bp.get("/summary")
def summary() -> ResponseReturnValue:
    """One row per provider and model over the window (default 24h)."""
    _authorize()
    result = _summary(strict=True)
    return jsonify(SUMMARY_ANSWER.dump({
        "window": result.window,
        "since": result.since,
        "until": result.until,
        "models": [_model_json(row) for row in result.models],
        "runners": [asdict(seen) for seen in result.runners],
    }))


@dataclass(frozen=True)
class Sparkline:
    """An SVG polyline of tok/s over the window and the range its height spans."""

    points: str
    low: float | None
    high: float | None


def sparkline(series: Sequence[tuple[datetime, float]], since: datetime,
              until: datetime) -> Sparkline:
    """Scale tok/s over the window into the chart's box, lowest to highest value."""
    span = (until - since).total_seconds() or 1.0
    values = [v for _, v in series]
    if not values:
        return Sparkline("", None, None)
    low, high = min(values), max(values)
    inner_w, inner_h = SPARK_WIDTH - 2 * SPARK_PAD, SPARK_HEIGHT - 2 * SPARK_PAD
    points = []
    for ts, value in series:
        x = SPARK_PAD + inner_w * min(1.0, max(0.0, (ts - since).total_seconds() / span))
        # A flat series sits mid-height rather than on an edge.
        share = (value - low) / (high - low) if high > low else 0.5
        points.append(f"{x:.1f},{SPARK_PAD + inner_h * (1 - share):.1f}")
    return Sparkline(" ".join(points), low, high)


def _age(ts: datetime | None, now: datetime) -> str:
    if ts is None:
        return "never"
    seconds = max(0, int((now - ts).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit} ago"
    return f"{seconds}s ago"


def _fmt(value: float | None, unit: str = "", digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}{unit}"


@bp.get("/")
def status_page() -> ResponseReturnValue:
    """The status page: a table and a tok/s sparkline per model, and the window's failures."""
    _authorize(page=True)
    result = _summary(strict=False)
    cfg = settings.current()
    secrets = [key for _, key in cfg.api_keys + cfg.read_keys]
    html = render_template(
        "status.html",
        summary=result,
        windows=PAGE_WINDOWS,
        spark=dict(width=SPARK_WIDTH, height=SPARK_HEIGHT),
        sparkline=lambda row: sparkline(row.series, result.since, result.until),
        age=lambda ts: _age(ts, result.until),
        rfc3339=rfc3339,
        fmt=_fmt,
        # Messages are redacted before they are stored; this second pass covers documents
        # stored before that, and keys added since.
        redact=lambda message: credentials.redact(message, secrets),
    )
    return Response(html, mimetype="text/html")


@bp.get("/metrics")
def metrics_text() -> ResponseReturnValue:
    """Prometheus text of every worker (read or write key; never public)."""
    auth.authenticate(allow_read=True)
    body, content_type = metrics.render()
    return Response(body, content_type=content_type)


@bp.after_request
def _private(response: Response) -> Response:
    # Read answers carry measurements a key unlocked: never kept by a shared cache.
    response.headers["Cache-Control"] = "no-store"
    return response


def init_app(app: Flask) -> None:
    """Register the read routes."""
    app.register_blueprint(bp)
