"""Prometheus metrics, correct under several gunicorn workers.

With PROMETHEUS_MULTIPROC_DIR set (gunicorn.conf.py sets it before workers
start), every worker writes its samples to files there and GET /metrics adds
them up; without it (tests, `flask run`) the process's own registry is served.
"""

from __future__ import annotations

import os

from flask import Flask, Response, request
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client import multiprocess as _mp

REQUESTS = Counter(
    "bench_ingest_http_requests_total", "HTTP requests answered", ["route", "status"]
)
WRITES = Counter(
    "bench_ingest_records_total",
    "Records handled by the write routes, by kind (result/error) and outcome",
    ["kind", "outcome"],
)
REJECTIONS = Counter(
    "bench_ingest_rejections_total", "Requests or batch items refused, by error code", ["reason"]
)
DB_ERRORS = Counter("bench_ingest_db_errors_total", "Database calls that failed or timed out")
DB_REFUSED = Counter(
    "bench_ingest_db_refused_total",
    "Requests answered 503 at once, without a database call, while the circuit breaker was open",
)
HEALTH_ERRORS = Counter(
    "bench_ingest_health_errors_total",
    "bench_model_health updates that failed after the record was stored (the next write recounts)",
)
WRITE_LATENCY = Histogram(
    "bench_ingest_write_seconds",
    "Time spent in the database write of one request",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
LAST_RESULT = Gauge(
    "bench_ingest_last_result_timestamp_seconds",
    "Unix time of the last result stored, per runner",
    ["runner_id"],
    multiprocess_mode="max",
)


def observe_write(kind: str, outcome: str, n: int = 1) -> None:
    """Count records by kind (result, error) and outcome (created, duplicate, conflict)."""
    if n:
        WRITES.labels(kind, outcome).inc(n)


def observe_health_error() -> None:
    """Count a health update that failed after its record was stored."""
    HEALTH_ERRORS.inc()


def observe_stored(runner_id: str) -> None:
    """Note that a result from this runner was just stored."""
    LAST_RESULT.labels(runner_id).set_to_current_time()


def observe_rejection(reason: str) -> None:
    """Count a refused request or batch item by its error code."""
    REJECTIONS.labels(reason).inc()


def observe_db_error() -> None:
    """Count a database failure or timeout."""
    DB_ERRORS.inc()


def observe_db_refused() -> None:
    """Count a request the circuit breaker answered 503 without asking the database."""
    DB_REFUSED.inc()


def _route_label() -> str:
    rule = request.url_rule
    return rule.rule if rule is not None else "unmatched"


def _after_request(response: Response) -> Response:
    REQUESTS.labels(_route_label(), str(response.status_code)).inc()
    return response


def render() -> tuple[bytes, str]:
    """The metrics text of every worker, and its content type."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        _mp.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(), CONTENT_TYPE_LATEST


def init_app(app: Flask) -> None:
    """Count every answered request by route and status."""
    app.after_request(_after_request)
