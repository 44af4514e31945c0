"""A hung database piles no requests up: the circuit breaker answers 503 at once.

docs/reliability.md scenario 3.

The breaker's states are checked on its own with a hand-driven clock (a seam we own);
the promise itself (every 503 within 5 s, no worker killed) on real gunicorn against
a frozen nx-27017, with more concurrent requests than the workers have threads.
"""

from __future__ import annotations

import threading
import time

import pymongo
import requests

from ingest_app.breaker import Breaker
from ingest_app.settings import Settings
from tests.support.ingest import (
    TEST_KEYS,
    TEST_READ_KEYS,
    gunicorn_env,
    result_payload,
    start_gunicorn,
)

HEADERS = {"X-API-Key": TEST_KEYS["runner-a"]}
PROMISED_SECONDS = 5.0


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def make_breaker(cooldown: float = 1.5) -> tuple[Breaker, Clock]:
    clock = Clock()
    return Breaker(cooldown, probe_limit_seconds=4.0, clock=clock), clock


def closed(breaker: Breaker) -> bool:
    """Admits call after call: neither open nor half-open (which admits one probe only)."""
    return all(breaker.admit() is not None for _ in range(3))


def test_closed_breaker_admits_every_call():
    breaker, _ = make_breaker()
    assert all(breaker.admit() is not None for _ in range(5))
    assert closed(breaker)


def test_failure_refuses_calls_until_the_cooldown_ends():
    breaker, clock = make_breaker(cooldown=1.5)
    breaker.fail(breaker.admit())
    assert breaker.admit() is None
    clock.now += 1.4
    assert breaker.admit() is None


def test_after_the_cooldown_one_probe_goes_and_the_rest_are_refused():
    breaker, clock = make_breaker(cooldown=1.5)
    breaker.fail(breaker.admit())
    clock.now += 1.6
    assert breaker.admit() is not None
    assert [breaker.admit() for _ in range(3)] == [None, None, None]


def test_a_successful_probe_closes_the_breaker():
    breaker, clock = make_breaker()
    breaker.fail(breaker.admit())
    clock.now += 2
    breaker.admit()
    breaker.succeed()
    assert closed(breaker)
    assert breaker.admit() is not None


def test_a_failed_probe_opens_the_breaker_for_another_cooldown():
    breaker, clock = make_breaker(cooldown=1.5)
    breaker.fail(breaker.admit())
    clock.now += 2
    probe = breaker.admit()
    clock.now += 3  # the probe waited out the database time cap
    breaker.fail(probe)
    clock.now += 1
    assert breaker.admit() is None
    clock.now += 1
    assert breaker.admit() is not None


def test_a_stale_timeout_does_not_reopen_a_recovered_database():
    breaker, clock = make_breaker()
    slow = breaker.admit()  # begun while the database hung
    breaker.fail(breaker.admit())
    clock.now += 2
    breaker.admit()
    breaker.succeed()  # the probe found the database back
    clock.now += 1
    breaker.fail(slow)
    assert closed(breaker)
    assert breaker.admit() is not None


def test_a_lost_probe_does_not_hold_the_breaker_half_open_for_ever():
    breaker, clock = make_breaker(cooldown=1.5)
    breaker.fail(breaker.admit())
    clock.now += 2
    assert breaker.admit() is not None  # this probe never reports back
    clock.now += 3
    assert breaker.admit() is None
    clock.now += 2
    assert breaker.admit() is not None


def test_a_zero_cooldown_never_refuses():
    breaker, _ = make_breaker(cooldown=0)
    breaker.fail(breaker.admit())
    assert breaker.admit() is not None


def test_cooldown_is_read_from_the_environment():
    env = {"MONGODB_URI": "mongodb://db.example/",
           "INGEST_API_KEYS": f"runner-a:{TEST_KEYS['runner-a']}"}
    assert Settings.from_env(env).db_cooldown_seconds == 1.5
    assert Settings.from_env({**env, "INGEST_DB_COOLDOWN_SECONDS": "0.5"}
                             ).db_cooldown_seconds == 0.5


def _post(url: str) -> tuple[int, float, dict[str, str], dict]:
    started = time.monotonic()
    with requests.Session() as session, session.post(
            f"{url}/ingest", json=result_payload(), headers=HEADERS, timeout=10) as answer:
        return (answer.status_code, time.monotonic() - started, dict(answer.headers),
                answer.json())


def _refused_count(url: str) -> float:
    with requests.get(f"{url}/metrics", timeout=10,
                      headers={"X-API-Key": TEST_READ_KEYS["dashboard"]}) as answer:
        for line in answer.text.splitlines():
            if line.startswith("bench_ingest_db_refused_total "):
                return float(line.split()[1])
    return 0.0


def test_requests_piling_up_on_a_hung_database_all_get_503_within_five_seconds(
        killable_mongo, mongo_db_name):
    n = 24  # three times the threads of two workers with four threads each
    answers: list[tuple[int, float, dict[str, str], dict] | BaseException] = []
    lock = threading.Lock()
    barrier = threading.Barrier(n)

    def send() -> None:
        barrier.wait()
        try:
            outcome: tuple | BaseException = _post(server.url)
        except requests.RequestException as exc:
            outcome = exc
        with lock:
            answers.append(outcome)

    env = gunicorn_env(killable_mongo.uri, mongo_db_name)
    # A worker timeout close above the database cap: a worker stuck on the database dies.
    with start_gunicorn(env, workers=2, threads=4, timeout=8) as server:
        for _ in range(4):  # both workers have their client, indexes checked and a warm pool
            assert _post(server.url)[0] == 201
        workers = server.worker_pids()
        killable_mongo.freeze()
        try:
            threads = [threading.Thread(target=send) for _ in range(n)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(20)
            assert len(answers) == n
            for outcome in answers:
                assert not isinstance(outcome, BaseException), outcome
                status, took, headers, body = outcome
                assert status == 503, body
                assert body["error"]["code"] == "database_unavailable"
                assert int(headers["Retry-After"]) > 0
                assert took < PROMISED_SECONDS, f"answered after {took:.1f} s"
            # More requests than threads: some were answered by the breaker, not the database.
            assert _refused_count(server.url) > 0
            with requests.get(f"{server.url}/ready", timeout=10) as ready:
                assert ready.status_code == 503
        finally:
            killable_mongo.thaw()
        thawed = time.monotonic()
        payload = result_payload()
        while (status := _post_one(server.url, payload)) == 503:
            assert time.monotonic() - thawed < 15, "writes never came back"
            time.sleep(0.2)
        assert status == 201
        assert server.worker_pids() == workers
        assert "WORKER TIMEOUT" not in server.log()
    with pymongo.MongoClient(killable_mongo.uri, serverSelectionTimeoutMS=5000) as client:
        stored = client[mongo_db_name]["metrics_cloud_v2"]
        assert stored.count_documents({"result_id": payload["result_id"]}) == 1


def _post_one(url: str, payload: dict) -> int:
    with requests.post(f"{url}/ingest", json=payload, headers=HEADERS, timeout=10) as answer:
        return answer.status_code


def test_ready_asks_the_database_even_while_the_breaker_refuses(killable_mongo, mongo_db_name):
    from ingest_app import create_app

    app = create_app(Settings(mongodb_uri=killable_mongo.uri, mongodb_db=mongo_db_name,
                              api_keys=tuple(TEST_KEYS.items()), db_timeout_seconds=1.0,
                              db_cooldown_seconds=30))
    try:
        with app.test_client() as client:
            assert client.post("/ingest", json=result_payload(), headers=HEADERS
                               ).status_code == 201
            killable_mongo.stop()
            assert client.post("/ingest", json=result_payload(), headers=HEADERS
                               ).status_code == 503
            started = time.monotonic()
            refused = client.post("/ingest", json=result_payload(), headers=HEADERS)
            assert refused.status_code == 503 and time.monotonic() - started < 0.5
            assert refused.headers["Retry-After"]
            killable_mongo.start()
            # Within the 30 s cool-down, /ready still pings, finds the database and closes
            # the breaker: the next write goes through at once.
            deadline = time.monotonic() + 15
            while client.get("/ready").status_code != 200:
                assert time.monotonic() < deadline
                time.sleep(0.2)
            assert client.post("/ingest", json=result_payload(), headers=HEADERS
                               ).status_code == 201
    finally:
        app.extensions["bench_ingest.db"].close()


def test_sixteen_heavy_readers_never_cost_a_write_a_503_or_more_than_5_s(
        mongo_uri, mongo_db_name, mongo_db):
    from datetime import UTC, datetime, timedelta

    from ingest_app import db as app_db
    from tests.support.seed import result_doc

    # 25 days of results for 20 models: GET /summary?window=31d reads every one of them.
    now = datetime.now(UTC)
    docs = [result_doc(f"sim.m{i % 20}-v1", now - timedelta(minutes=3 * i)) for i in range(12000)]
    mongo_db["metrics_cloud_v2"].insert_many(docs)
    app_db.ensure_indexes(mongo_db, Settings(mongodb_uri=mongo_uri, mongodb_db=mongo_db_name))
    read_headers = {"X-API-Key": TEST_READ_KEYS["dashboard"]}
    env = gunicorn_env(mongo_uri, mongo_db_name, MONGODB_TIMEOUT_SECONDS="3")
    with start_gunicorn(env) as server:
        stop = threading.Event()
        read_statuses: list[int] = []

        def read() -> None:
            with requests.Session() as session:
                while not stop.is_set():
                    try:
                        with session.get(f"{server.url}/summary?window=31d",
                                         headers=read_headers, timeout=30) as answer:
                            read_statuses.append(answer.status_code)
                        if answer.status_code == 503:
                            # A dashboard told to come back later does, if sooner than asked.
                            time.sleep(0.5)
                    except requests.RequestException:
                        read_statuses.append(0)

        readers = [threading.Thread(target=read) for _ in range(16)]
        for reader in readers:
            reader.start()
        writes: list[tuple[int, float]] = []
        try:
            time.sleep(1.0)
            deadline = time.monotonic() + 10.0
            while time.monotonic() < deadline:
                started = time.monotonic()
                with requests.post(f"{server.url}/ingest", json=result_payload(),
                                   headers=HEADERS, timeout=30) as answer:
                    writes.append((answer.status_code, time.monotonic() - started))
                time.sleep(0.2)
        finally:
            stop.set()
            for reader in readers:
                reader.join(timeout=60)
    # The readers were answered (a summary, or a 503 that sends the excess away at once;
    # how many summaries finish within the database cap depends on the machine's load)...
    assert read_statuses and set(read_statuses) <= {200, 503}, set(read_statuses)
    assert [status for status, _ in writes] == [201] * len(writes)  # ...and no write paid
    assert max(seconds for _, seconds in writes) < PROMISED_SECONDS, writes
    assert mongo_db["metrics_cloud_v2"].count_documents({}) == len(docs) + len(writes)
