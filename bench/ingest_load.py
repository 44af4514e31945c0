"""Load the ingest app beside a bare JSON-parsing Flask route and raw pymongo; print the figures.

    .venv/bin/python bench/ingest_load.py [--clients 8] [--seconds 5] [--rounds 3]
        [--mongodb-uri mongodb://...]   (default: a private nx-27017 on a free port)

Both apps run under real gunicorn with the repo's gunicorn.conf.py (same workers and
threads), driven by the same keep-alive HTTP clients. Rounds alternate between the
targets so that machine noise falls on both; the medians over rounds are printed:

  single   POST /ingest (one result)    vs  the bare route    target >= 0.8x, p99 <= 3x p50
           and beside insert_one from as many threads (what the database alone allows)
  batch    POST /ingest/batch (100)     vs  insert_many(100)  target >= 0.7x results/s
  RSS of each gunicorn worker after the load.

With the default database (nx-27017, itself a Python process on the same cores) one
insert costs more CPU than the bare route's whole request, so the single-result ratio
is bounded well below 0.8 on a 2-core machine; the "vs raw insert_one" line shows how
close the app comes to what the database alone allows. Point --mongodb-uri at a real
MongoDB on another host to measure the app against the target itself.
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import pymongo  # noqa: E402

from ingest_app.schemas import RESULT_SCHEMA  # noqa: E402
from tests.support.ingest import (  # noqa: E402
    TEST_KEYS,
    Gunicorn,
    gunicorn_env,
    result_payload,
    start_gunicorn,
)
from tests.support.mongo import MongoServer  # noqa: E402

KEY = TEST_KEYS["runner-a"]
BATCH = 100


@contextmanager
def database(uri: str | None) -> Iterator[str]:
    """The given MongoDB, or a private nx-27017 for the run."""
    if uri:
        yield uri
        return
    with tempfile.TemporaryDirectory(prefix="ingest-load-") as tmp:
        server = MongoServer(Path(tmp))
        server.start()
        try:
            yield server.uri
        finally:
            server.stop()


# One realistic result as JSON text; each request swaps in a new id (cheap, so the clients'
# own cost stays small beside the server's).
_TEMPLATE = json.dumps(result_payload(result_id="00000000-0000-4000-8000-000000000000"))


def _one() -> str:
    return _TEMPLATE.replace("00000000-0000-4000-8000-000000000000", str(uuid.uuid4()))


def fresh_body() -> bytes:
    return _one().encode()


def fresh_batch() -> bytes:
    return ('{"results": [' + ",".join(_one() for _ in range(BATCH)) + "]}").encode()


class Round:
    """What the clients of one timed round saw."""

    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.records = 0
        self.failures = 0
        self.seconds = 0.0

    def per_second(self) -> float:
        return self.records / self.seconds if self.seconds else 0.0

    def quantile(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def drive(clients: int, seconds: float, make_call: Callable[[], Callable[[], int]]) -> Round:
    """Run `clients` threads calling their own call() for `seconds`; each returns records done."""
    outcome = Round()
    lock = threading.Lock()
    start = threading.Barrier(clients + 1)
    stop_at = [0.0]

    def worker() -> None:
        call = make_call()
        mine: list[float] = []
        records = failures = 0
        start.wait()
        while time.perf_counter() < stop_at[0]:
            began = time.perf_counter()
            try:
                records += call()
                mine.append(time.perf_counter() - began)
            except Exception:  # noqa: BLE001 - counted and reported, never hidden
                failures += 1
        with lock:
            outcome.latencies.extend(mine)
            outcome.records += records
            outcome.failures += failures

    threads = [threading.Thread(target=worker) for _ in range(clients)]
    for t in threads:
        t.start()
    began = time.perf_counter()
    stop_at[0] = began + seconds
    start.wait()
    for t in threads:
        t.join()
    outcome.seconds = time.perf_counter() - began
    return outcome


def http_caller(url: str, path: str, bodies: Callable[[], bytes], per_call: int,
                expect: tuple[int, ...]) -> Callable[[], Callable[[], int]]:
    """A factory of per-thread callers POSTing fresh bodies over one keep-alive connection."""
    parts = urlsplit(url)
    headers = {"Content-Type": "application/json", "X-API-Key": KEY}

    def make() -> Callable[[], int]:
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
        pending = [bodies() for _ in range(64)]

        def call() -> int:
            body = pending.pop() if pending else bodies()
            conn.request("POST", path, body=body, headers=headers)
            answer = conn.getresponse()
            answer.read()
            if answer.status not in expect:
                raise RuntimeError(f"status {answer.status}")
            return per_call

        return call

    return make


def pymongo_caller(uri: str, db_name: str, batch: int) -> Callable[[], Callable[[], int]]:
    """A factory of per-thread callers inserting `batch` ready-made documents (insert_one for 1)."""
    client = pymongo.MongoClient(uri)
    collection = client[db_name]["raw_insert_many"]
    collection.create_index("result_id", unique=True)
    # The very document the app stores, made once: this side pays for no validation at all.
    template = {**RESULT_SCHEMA.load(result_payload()), "runner_id": "runner-a"}

    def make() -> Callable[[], int]:
        def call() -> int:
            received = datetime.now(UTC)
            docs = [{**template, "result_id": str(uuid.uuid4()), "received_at": received}
                    for _ in range(batch)]
            if batch == 1:
                collection.insert_one(docs[0])
            else:
                collection.insert_many(docs, ordered=False)
            return batch

        return call

    make.client = client  # type: ignore[attr-defined]
    return make


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--mongodb-uri")
    args = parser.parse_args()

    db_name = f"bench_{uuid.uuid4().hex[:8]}"
    with ExitStack() as stack:
        uri = stack.enter_context(database(args.mongodb_uri))
        env = gunicorn_env(uri, db_name)
        ingest: Gunicorn = stack.enter_context(start_gunicorn(
            env, workers=args.workers, threads=args.threads))
        bare: Gunicorn = stack.enter_context(start_gunicorn(
            {**env, "PYTHONPATH": str(REPO / "bench")}, workers=args.workers,
            threads=args.threads, app="bare_json_app:create_app()"))
        raw = pymongo_caller(uri, db_name, BATCH)
        raw_one = pymongo_caller(uri, db_name, 1)
        for made in (raw, raw_one):
            stack.callback(made.client.close)  # type: ignore[attr-defined]
        stack.callback(lambda: raw.client.drop_database(db_name))  # type: ignore[attr-defined]

        targets = {
            "ingest single": http_caller(ingest.url, "/ingest", fresh_body, 1, (201,)),
            "bare single": http_caller(bare.url, "/ingest", fresh_body, 1, (201,)),
            "raw insert_one": raw_one,
            "ingest batch": http_caller(ingest.url, "/ingest/batch", fresh_batch, BATCH, (200,)),
            "raw insert_many": raw,
        }
        # Warm-up: connections, indexes, imports.
        for make in targets.values():
            drive(2, 0.5, make)
        rounds: dict[str, list[Round]] = {name: [] for name in targets}
        for _ in range(args.rounds):
            for name, make in targets.items():
                rounds[name].append(drive(args.clients, args.seconds, make))
        worker_rss = {"ingest": [rss_kib(p) for p in sorted(ingest.worker_pids())],
                      "bare": [rss_kib(p) for p in sorted(bare.worker_pids())]}

    def med(name: str, figure: Callable[[Round], float]) -> float:
        return statistics.median(figure(r) for r in rounds[name])

    print(f"ingest load: {args.clients} clients, {args.rounds} rounds x {args.seconds:.0f} s, "
          f"{args.workers} gunicorn workers x {args.threads} threads, medians over rounds")
    print(f"{'target':<18}{'results/s':>12}{'p50 ms':>10}{'p99 ms':>10}{'p99/p50':>9}"
          f"{'failed':>8}")
    for name in targets:
        rps = med(name, Round.per_second)
        p50 = med(name, lambda r: r.quantile(0.50)) * 1000
        p99 = med(name, lambda r: r.quantile(0.99)) * 1000
        failed = sum(r.failures for r in rounds[name])
        print(f"{name:<18}{rps:>12.1f}{p50:>10.2f}{p99:>10.2f}{p99 / p50:>9.2f}{failed:>8}")

    single = med("ingest single", Round.per_second) / med("bare single", Round.per_second)
    tail = (med("ingest single", lambda r: r.quantile(0.99))
            / med("ingest single", lambda r: r.quantile(0.50)))
    batch = med("ingest batch", Round.per_second) / med("raw insert_many", Round.per_second)
    print(f"single POST /ingest vs bare route: {single:.2f}x (target >= 0.80) "
          f"{'ok' if single >= 0.8 else 'MISSED'}")
    print(f"single POST /ingest p99/p50: {tail:.2f} (target <= 3.00) "
          f"{'ok' if tail <= 3 else 'MISSED'}")
    floor = med("ingest single", Round.per_second) / med("raw insert_one", Round.per_second)
    print(f"single POST /ingest vs raw insert_one (the database's own ceiling): {floor:.2f}x")
    print(f"POST /ingest/batch ({BATCH}) vs insert_many: {batch:.2f}x (target >= 0.70) "
          f"{'ok' if batch >= 0.7 else 'MISSED'}")
    for name, sizes in worker_rss.items():
        print(f"RSS per worker, {name}: " + ", ".join(f"{kib / 1024:.1f} MiB" for kib in sizes))


if __name__ == "__main__":
    main()
