"""GET /summary latency over 10k and 1M stored results.

Seeds each size into its own database on the test MongoDB-protocol server
(nx-27017, started here; or the server named by BENCH_MONGODB_URI), with the
production indexes, then times GET /summary (24h and 7d windows), GET / and the
first page of GET /results through the Flask app in-process, and prints the
median of several calls per size and the ratio between sizes.

The data is a steady schedule: 20 models measured every 5 minutes (5,760
results a day), plus one failed attempt for every 50 runs, going back as far
as the size needs (10k: about 1.7 days; 1M: about 174 days). The 24h window therefore
holds the same ~5.8k results at both sizes, as it would in service: a query
served by an index costs what the window holds, not what the collection holds.

The app's database time cap (at most 4 s in service, where a slower answer is a
503) is raised to --db-timeout here, so a slow test server is measured rather
than cut off; pass --db-timeout 4 to see what the service would answer.

Usage: python bench/summary_latency.py [--sizes 10000,1000000] [--calls 7] [--db-timeout 120]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pymongo
from pymongo import monitoring

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ingest_app import create_app, db, summary  # noqa: E402
from ingest_app.settings import Settings  # noqa: E402
from tests.support.mongo import MongoServer  # noqa: E402

MODELS = 20
EVERY = timedelta(minutes=5)
FAILURE_EVERY = 50
BATCH = 10_000
KEY = "bench-" + "0" * 40


def _result(model: int, run_ts: datetime, n: int) -> dict:
    tps = 40.0 + 8 * model + (n % 17)
    return {
        "result_id": str(uuid.uuid4()),
        "provider": "bedrock",
        "model_name": f"bench.model-{model:02d}",
        "region": "us-east-1",
        "run_ts": run_ts,
        "gen_ts": run_ts + timedelta(seconds=64 / tps),
        "benchmark_profile_id": "cloud-default-v1",
        "requested_tokens": 64,
        "input_tokens": 20,
        "output_tokens": 64,
        "token_source": "provider_usage",
        "time_to_first_token": 0.2 + (n % 11) / 100,
        "generate_time": 64 / tps,
        "tokens_per_second": tps,
        "attempts": 1,
        "metric_version": 1,
        "received_at": run_ts + timedelta(seconds=3),
        "runner_id": "bench",
    }


def _failure(model: int, ts: datetime, n: int) -> dict:
    return {
        "error_id": str(uuid.uuid4()),
        "provider": "bedrock",
        "model_name": f"bench.model-{model:02d}",
        "ts": ts,
        "stage": "call",
        "error_kind": "throttled",
        "message": "Too many requests, please wait before trying again.",
        "attempts": 3,
        "received_at": ts + timedelta(seconds=3),
        "runner_id": "bench",
        "fingerprint": f"fp-{model:02d}-{n % 3}",
    }


def seed(database: pymongo.database.Database, settings: Settings, size: int,
         now: datetime) -> tuple[int, float]:
    """Insert `size` results (and the failures of the same schedule); return failures, seconds."""
    started = time.perf_counter()
    db.ensure_indexes(database, settings)
    results, errors = database[settings.results_collection], database[settings.errors_collection]
    batch: list[dict] = []
    failures: list[dict] = []
    n_failures = 0
    n = 0
    slot = 0
    while n < size:
        run_ts = now - EVERY * slot - timedelta(seconds=30)
        for model in range(MODELS):
            if n >= size:
                break
            ts = run_ts + timedelta(milliseconds=137 * model)
            if (slot * MODELS + model) % FAILURE_EVERY == 0:
                failures.append(_failure(model, ts, slot))
            batch.append(_result(model, ts, n))
            n += 1
            if len(batch) >= BATCH:
                results.insert_many(batch, ordered=False)
                batch = []
        if len(failures) >= BATCH:
            errors.insert_many(failures, ordered=False)
            n_failures += len(failures)
            failures = []
        slot += 1
        if n % 100_000 < MODELS:
            print(f"  seeded {n:,} results ({time.perf_counter() - started:.0f} s)", flush=True)
    if batch:
        results.insert_many(batch, ordered=False)
    if failures:
        errors.insert_many(failures, ordered=False)
        n_failures += len(failures)
    return n_failures, time.perf_counter() - started


def time_calls(client, path: str, calls: int) -> tuple[float, int]:
    """Median seconds of `calls` GETs of path (after one warm-up), and the status seen."""
    headers = {"X-API-Key": KEY}
    with client.get(path, headers=headers) as warm:
        status = warm.status_code
    samples = []
    for _ in range(calls):
        started = time.perf_counter()
        with client.get(path, headers=headers) as answer:
            answer.get_data()
            status = answer.status_code
        samples.append(time.perf_counter() - started)
    return statistics.median(samples), status


class _Reads(monitoring.CommandListener):
    """Counts the commands sent and the documents the server sent back."""

    def __init__(self) -> None:
        self.commands = 0
        self.documents = 0

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        self.commands += 1

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        cursor = event.reply.get("cursor") or {}
        self.documents += len(cursor.get("firstBatch") or cursor.get("nextBatch") or [])
        self.documents += len(event.reply.get("values") or [])  # distinct

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


def count_reads(uri: str, settings: Settings) -> _Reads:
    """What one 24h summary asks of the server: commands, and documents sent back."""
    reads = _Reads()
    with pymongo.MongoClient(uri, tz_aware=True, event_listeners=[reads]) as client:
        database = client[settings.mongodb_db]
        reads.commands = reads.documents = 0
        summary.summarize(database[settings.results_collection],
                          database[settings.errors_collection], "24h")
    return reads


def time_parts(database: pymongo.database.Database, settings: Settings, calls: int) -> None:
    """Print what the summary's two kinds of query cost on their own, to show which one grows."""
    results = database[settings.results_collection]
    errors = database[settings.errors_collection]
    since = datetime.now(UTC) - timedelta(hours=24)
    parts = {
        "known models (distinct)": lambda: summary.known_models(results, errors),
        "24h window read (run_ts)": lambda: list(results.find(
            {"run_ts": {"$gte": since}},
            projection={"_id": 0, "provider": 1, "model_name": 1, "run_ts": 1,
                        "time_to_first_token": 1, "tokens_per_second": 1})),
    }
    for name, call in parts.items():
        samples = []
        for _ in range(calls):
            started = time.perf_counter()
            call()
            samples.append(time.perf_counter() - started)
        print(f"      of which {name:<26} median {statistics.median(samples) * 1000:8.1f} ms")


def main() -> None:
    """Seed each size, time the read routes, print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,1000000")
    parser.add_argument("--calls", type=int, default=7)
    parser.add_argument("--db-timeout", type=float, default=120.0)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    paths = ("/summary?window=24h", "/summary?window=7d", "/?window=24h", "/results?limit=100")

    uri = os.environ.get("BENCH_MONGODB_URI")
    server = None
    tmp = tempfile.TemporaryDirectory(prefix="summary-bench-")
    if not uri:
        server = MongoServer(Path(tmp.name) / "mongo")
        server.start()
        uri = server.uri
    print(f"server: {'nx-27017 (test server)' if server else 'BENCH_MONGODB_URI'}; "
          f"{MODELS} models every {EVERY.seconds // 60} min, a failure per {FAILURE_EVERY} runs; "
          f"database time cap {args.db_timeout:g} s")
    table: dict[int, dict[str, float]] = {}
    try:
        for size in sizes:
            name = f"bench_summary_{size}"
            settings = Settings(mongodb_uri=uri, mongodb_db=name, api_keys=(("bench", KEY),),
                                db_timeout_seconds=args.db_timeout)
            with pymongo.MongoClient(uri) as mongo:
                mongo.drop_database(name)
                now = datetime.now(UTC)
                n_failures, seconds = seed(mongo[name], settings, size, now)
                print(f"{size:>9,} results, {n_failures:,} failures seeded in {seconds:.1f} s "
                      f"({size / seconds:,.0f} results/s)")
                app = create_app(settings)
                try:
                    with app.test_client() as client:
                        table[size] = {}
                        for path in paths:
                            median, status = time_calls(client, path, args.calls)
                            table[size][path] = median
                            print(f"    GET {path:<22} median {median * 1000:8.1f} ms "
                                  f"(status {status}, {args.calls} calls)")
                            if path == paths[0]:
                                time_parts(mongo[name], settings, args.calls)
                                reads = count_reads(uri, settings)
                                print(f"      the server sent back {reads.documents:,} documents "
                                      f"for {reads.commands} commands")
                finally:
                    app.extensions["bench_ingest.db"].close()
                mongo.drop_database(name)
        if len(sizes) > 1:
            small, large = sizes[0], sizes[-1]
            print(f"ratio {large:,} / {small:,} results:")
            for path in paths:
                ratio = table[large][path] / table[small][path]
                print(f"    GET {path:<22} x{ratio:.2f}")
    finally:
        if server is not None:
            server.stop()
        tmp.cleanup()


if __name__ == "__main__":
    main()
