"""Stored documents for the read-side tests, shaped as the ingest API stores them."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from pymongo.database import Database

import bench_contract as contract
from ingest_app.schemas import fingerprint

RESULTS = "metrics_cloud_v2"
ERRORS = "errors_cloud"

# A fixed clock for the tests, a whole millisecond (BSON dates keep milliseconds).
NOW = datetime(2026, 3, 10, 12, 0, 0, tzinfo=UTC)


def result_doc(model_name: str, run_ts: datetime, *, tokens_per_second: float = 50.0,
               ttft: float | None = 0.3, provider: str = "bedrock",
               runner_id: str = "runner-a") -> dict[str, Any]:
    """A result document as POST /ingest stores it."""
    output_tokens = 64
    return {
        "result_id": str(uuid.uuid4()),
        "provider": provider,
        "model_name": model_name,
        "region": "us-east-1",
        "run_ts": run_ts,
        "gen_ts": run_ts + timedelta(seconds=output_tokens / tokens_per_second),
        "benchmark_profile_id": "cloud-default-v1",
        "requested_tokens": 64,
        "temperature": 0.1,
        "input_tokens": 20,
        "output_tokens": output_tokens,
        "token_source": "provider_usage",
        "time_to_first_token": ttft,
        "time_to_first_any_token": ttft,
        "generate_time": output_tokens / tokens_per_second,
        "tokens_per_second": tokens_per_second,
        "attempts": 1,
        "metric_version": contract.METRIC_VERSION,
        "received_at": run_ts + timedelta(seconds=5),
        "runner_id": runner_id,
    }


def failure_doc(model_name: str, ts: datetime, *, error_kind: str = "throttled",
                stage: str = "call", message: str = "Too many requests, please wait.",
                provider: str = "bedrock", runner_id: str = "runner-a") -> dict[str, Any]:
    """A failure document as POST /ingest/error stores it, with the app's own fingerprint."""
    doc = {
        "error_id": str(uuid.uuid4()),
        "provider": provider,
        "model_name": model_name,
        "region": "us-east-1",
        "ts": ts,
        "stage": stage,
        "error_kind": error_kind,
        "message": message,
        "attempts": 1,
        "received_at": ts + timedelta(seconds=5),
        "runner_id": runner_id,
    }
    return {**doc, "fingerprint": fingerprint(doc)}


def seed(db: Database, results: Sequence[dict[str, Any]] = (),
         failures: Sequence[dict[str, Any]] = ()) -> None:
    """Insert the documents into the default collections."""
    if results:
        db[RESULTS].insert_many([dict(d) for d in results])
    if failures:
        db[ERRORS].insert_many([dict(d) for d in failures])
