"""Each key's write rate is limited: past it, 429 with Retry-After, and nothing is stored."""

from __future__ import annotations

from dataclasses import replace

import pytest
import requests
from prometheus_client import REGISTRY

from ingest_app import create_app
from ingest_app.limiter import RateLimiter
from ingest_app.settings import Settings, SettingsError
from tests.support.ingest import (
    TEST_KEYS,
    failure_payload,
    gunicorn_env,
    keys_env,
    result_payload,
    start_gunicorn,
)

A = {"X-API-Key": TEST_KEYS["runner-a"]}
B = {"X-API-Key": TEST_KEYS["runner-b"]}


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 50.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def limited_client(ingest_settings, mongo_db):
    """An app allowing 3 write requests a minute per key."""
    application = create_app(replace(ingest_settings, rate_limit_per_minute=3))
    try:
        with application.test_client() as test_client:
            yield test_client
    finally:
        application.extensions["bench_ingest.db"].close()


def test_bucket_allows_a_minute_of_requests_then_says_when_the_next_is_due():
    clock = Clock()
    limiter = RateLimiter(6, clock=clock)
    assert [limiter.take("runner-a") for _ in range(6)] == [0] * 6
    assert limiter.take("runner-a") == 10  # 6 a minute: one token every 10 s
    clock.now += 4
    assert limiter.take("runner-a") == 6
    clock.now += 6
    assert limiter.take("runner-a") == 0


def test_bucket_refills_evenly_and_never_beyond_its_capacity():
    clock = Clock()
    limiter = RateLimiter(60, clock=clock)
    for _ in range(60):
        limiter.take("runner-a")
    clock.now += 3600
    assert [limiter.take("runner-a") for _ in range(61)].count(0) == 60


def test_buckets_are_per_key_name():
    limiter = RateLimiter(1, clock=Clock())
    assert limiter.take("runner-a") == 0
    assert limiter.take("runner-a") == 60
    assert limiter.take("runner-b") == 0


def test_zero_turns_the_limit_off():
    limiter = RateLimiter(0, clock=Clock())
    assert all(limiter.take("runner-a") == 0 for _ in range(1000))


def test_rate_limit_is_read_from_the_environment():
    env = {"MONGODB_URI": "mongodb://db.example/", "INGEST_API_KEYS": keys_env(TEST_KEYS)}
    assert Settings.from_env(env).rate_limit_per_minute == 600
    assert Settings.from_env({**env, "INGEST_RATE_LIMIT": "0"}).rate_limit_per_minute == 0
    with pytest.raises(SettingsError, match="INGEST_RATE_LIMIT"):
        Settings.from_env({**env, "INGEST_RATE_LIMIT": "-1"})


def test_past_the_limit_a_write_gets_429_with_retry_after_and_is_not_stored(
        limited_client, mongo_db):
    refused_before = REGISTRY.get_sample_value(
        "bench_ingest_rejections_total", {"reason": "rate_limited"}) or 0.0
    assert limited_client.post("/ingest", json=result_payload(), headers=A).status_code == 201
    assert limited_client.post("/ingest/error", json=failure_payload(),
                               headers=A).status_code == 201
    assert limited_client.post("/ingest/batch", json={"results": [result_payload()]},
                               headers=A).status_code == 200
    payload = result_payload()
    answer = limited_client.post("/ingest", json=payload, headers=A)
    assert answer.status_code == 429
    # 3 a minute: the next token is due in 20 s at most.
    assert 1 <= int(answer.headers["Retry-After"]) <= 20
    error = answer.get_json()["error"]
    assert error["code"] == "rate_limited"
    assert set(error) == {"code", "message", "details", "request_id"}
    assert mongo_db["metrics_cloud_v2"].count_documents({"result_id": payload["result_id"]}) == 0
    assert REGISTRY.get_sample_value(
        "bench_ingest_rejections_total", {"reason": "rate_limited"}) == refused_before + 1


def test_another_key_is_not_limited_by_the_first(limited_client, mongo_db):
    for _ in range(3):
        assert limited_client.post("/ingest", json=result_payload(), headers=A).status_code == 201
    assert limited_client.post("/ingest", json=result_payload(), headers=A).status_code == 429
    payload = result_payload()
    assert limited_client.post("/ingest", json=payload, headers=B).status_code == 201
    stored = mongo_db["metrics_cloud_v2"].find_one({"result_id": payload["result_id"]})
    assert stored["runner_id"] == "runner-b"


def test_refused_keys_are_answered_401_not_429(limited_client):
    # Strangers spend no runner's tokens: authentication comes first.
    for _ in range(5):
        answer = limited_client.post("/ingest", json=result_payload(),
                                     headers={"X-API-Key": "x" * 40})
        assert answer.status_code == 401
    assert limited_client.post("/ingest", json=result_payload(), headers=A).status_code == 201


def test_real_gunicorn_limits_each_worker_on_its_own(mongo_uri, mongo_db_name, mongo_db):
    env = gunicorn_env(mongo_uri, mongo_db_name, INGEST_RATE_LIMIT="2")
    statuses: list[int] = []
    with start_gunicorn(env, workers=2) as server:
        for _ in range(12):
            with requests.Session() as session, session.post(
                    f"{server.url}/ingest", json=result_payload(), headers=A,
                    timeout=10) as answer:
                statuses.append(answer.status_code)
                if answer.status_code == 429:
                    assert 1 <= int(answer.headers["Retry-After"]) <= 30
                    assert answer.json()["error"]["code"] == "rate_limited"
    # Two a minute in each of two workers: 2 to 4 stored, however connections were spread.
    assert set(statuses) == {201, 429}
    assert 2 <= statuses.count(201) <= 4
    assert mongo_db["metrics_cloud_v2"].count_documents({}) == statuses.count(201)
