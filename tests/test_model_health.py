"""bench_model_health: what the dashboard's status page reads, kept current by every write."""

from __future__ import annotations

import json
import random
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import pytest

from ingest_app import health as model_health
from tests.support.ingest import (
    TEST_KEYS,
    failure_payload,
    gunicorn_env,
    result_payload,
    start_gunicorn,
)

HEALTH, MODELS = "bench_model_health", "models"
MODEL = "sim.fast-v1"
# Every field of the dashboard's BenchModelHealth schema but endpoint_tag (a model-level
# document has none), plus revision, which the compare-and-swap of each update checks.
FIELDS = {
    "_id", "provider", "model_id", "enabled", "cadence_seconds", "last_success_at",
    "last_attempt_at", "last_error_at", "last_error_kind", "last_error_message",
    "consecutive_failures", "successes_24h", "failures_24h", "deadline_misses_24h",
    "staleness_seconds", "freshness_status", "updated_at", "revision",
}


TIME_FIELDS = ("last_success_at", "last_attempt_at", "last_error_at", "updated_at")


def ms(moment: datetime) -> datetime:
    """A time as a BSON date keeps it (milliseconds), naive UTC as pymongo returns it."""
    moment = moment.astimezone(UTC).replace(tzinfo=None)
    return moment.replace(microsecond=moment.microsecond // 1000 * 1000)


def stored_time(value):
    """A stored health timestamp: a BSON date (naive UTC here) or null, never a string."""
    assert value is None or isinstance(value, datetime), f"a health time stored as {value!r}"
    return value


def iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def listed(mongo_db, model: str = MODEL, **fields) -> None:
    mongo_db[MODELS].insert_one({"provider": "bedrock", "model_id": model,
                                 "display_name": model, "enabled": True, "deprecated": False,
                                 **fields})


def state(mongo_db, model: str = MODEL) -> dict | None:
    """The model's health once this process's updater has recounted every write so far."""
    assert model_health.settle(timeout=30, database=mongo_db.name), "health still recounting"
    doc = mongo_db[HEALTH].find_one({"provider": "bedrock", "model_id": model})
    if doc is not None:
        for name in TIME_FIELDS:
            if name in doc:
                doc[name] = stored_time(doc[name])
    return doc


def test_a_stored_result_writes_every_field_the_dashboard_reads(client, auth_headers, mongo_db):
    listed(mongo_db)
    run_ts = datetime.now(UTC) - timedelta(minutes=3)
    answer = client.post("/ingest", json=result_payload(run_ts=iso(run_ts)), headers=auth_headers)
    assert answer.status_code == 201
    doc = state(mongo_db)
    assert set(doc) == FIELDS
    assert doc["_id"] == f"bedrock:{MODEL}"
    assert (doc["enabled"], doc["cadence_seconds"]) == (True, 3600)
    assert doc["last_success_at"] == doc["last_attempt_at"] == ms(run_ts)
    assert (doc["last_error_at"], doc["last_error_kind"], doc["last_error_message"]) == \
        (None, None, None)
    assert (doc["successes_24h"], doc["failures_24h"], doc["deadline_misses_24h"],
            doc["consecutive_failures"]) == (1, 0, 0, 0)
    assert doc["freshness_status"] == "fresh"
    assert 170 <= doc["staleness_seconds"] <= 240
    assert doc["updated_at"] >= ms(run_ts)


def test_failures_count_until_a_newer_success_clears_them(client, auth_headers, mongo_db):
    listed(mongo_db)
    now = datetime.now(UTC)
    for minutes, kind in ((50, "throttled"), (40, "timeout")):
        answer = client.post("/ingest/error", headers=auth_headers, json=failure_payload(
            model_name=MODEL, ts=iso(now - timedelta(minutes=minutes)), error_kind=kind,
            message=f"{kind} while streaming"))
        assert answer.status_code == 201
    doc = state(mongo_db)
    assert (doc["consecutive_failures"], doc["failures_24h"], doc["deadline_misses_24h"]) == \
        (2, 2, 1)
    assert (doc["last_error_kind"], doc["last_error_message"]) == \
        ("timeout", "timeout while streaming")
    assert doc["last_error_at"] == ms(now - timedelta(minutes=40))
    assert (doc["last_success_at"], doc["freshness_status"]) == (None, "never_run")

    client.post("/ingest", headers=auth_headers,
                json=result_payload(run_ts=iso(now - timedelta(minutes=30))))
    doc = state(mongo_db)
    assert (doc["consecutive_failures"], doc["successes_24h"], doc["failures_24h"]) == (0, 1, 2)
    assert (doc["last_error_at"], doc["last_error_kind"]) == (None, None)
    assert doc["freshness_status"] == "fresh"


def test_late_resends_never_move_a_timestamp_back_or_replace_a_newer_error(
        client, auth_headers, mongo_db):
    listed(mongo_db)
    now = datetime.now(UTC)
    client.post("/ingest", headers=auth_headers,
                json=result_payload(run_ts=iso(now - timedelta(minutes=20))))
    client.post("/ingest/error", headers=auth_headers, json=failure_payload(
        model_name=MODEL, ts=iso(now - timedelta(minutes=10)), error_kind="throttled",
        message="newest"))
    # From an outbox: an older result and two older failures, one before the success.
    client.post("/ingest", headers=auth_headers,
                json=result_payload(run_ts=iso(now - timedelta(hours=2))))
    client.post("/ingest/error", headers=auth_headers, json=failure_payload(
        model_name=MODEL, ts=iso(now - timedelta(minutes=15)), error_kind="auth",
        message="older, after the success"))
    client.post("/ingest/error", headers=auth_headers, json=failure_payload(
        model_name=MODEL, ts=iso(now - timedelta(hours=3)), error_kind="transient",
        message="older than every success"))
    doc = state(mongo_db)
    assert doc["last_success_at"] == ms(now - timedelta(minutes=20))
    assert doc["last_attempt_at"] == ms(now - timedelta(minutes=10))
    assert (doc["last_error_at"], doc["last_error_kind"], doc["last_error_message"]) == \
        (ms(now - timedelta(minutes=10)), "throttled", "newest")
    # Failures after the newest success only: the one 3 h ago came before it.
    assert (doc["consecutive_failures"], doc["successes_24h"], doc["failures_24h"]) == (2, 2, 3)


def test_a_duplicate_or_a_conflict_does_not_touch_health(client, auth_headers, mongo_db):
    listed(mongo_db)
    result, failure = result_payload(), failure_payload(model_name=MODEL)
    client.post("/ingest", json=result, headers=auth_headers)
    client.post("/ingest/error", json=failure, headers=auth_headers)
    before = state(mongo_db)
    assert client.post("/ingest", json=result, headers=auth_headers).status_code == 200
    assert client.post("/ingest/batch", json={"results": [result]},
                       headers=auth_headers).get_json()["results"][0]["status"] == "duplicate"
    assert client.post("/ingest/error", json=failure, headers=auth_headers).status_code == 200
    changed = {**result, "tokens_per_second": 1.0}
    assert client.post("/ingest", json=changed, headers=auth_headers).status_code == 409
    assert state(mongo_db) == before


def test_results_off_the_public_collection_do_not_count_as_successes(client, auth_headers,
                                                                     mongo_db):
    listed(mongo_db)
    for role in ("shadow", "probe"):
        assert client.post("/ingest", json=result_payload(sample_role=role),
                           headers=auth_headers).status_code == 201
    assert state(mongo_db) is None


@pytest.mark.parametrize(("hours_ago", "status"), [(0.5, "fresh"), (2, "stale"), (4, "critical")])
def test_freshness_is_judged_against_the_cadence(client, auth_headers, mongo_db, hours_ago,
                                                  status):
    listed(mongo_db)
    run_ts = datetime.now(UTC) - timedelta(hours=hours_ago)
    client.post("/ingest", json=result_payload(run_ts=iso(run_ts)), headers=auth_headers)
    assert state(mongo_db)["freshness_status"] == status


@pytest.mark.parametrize("entry", [None, {"enabled": False}, {"deprecated": True}])
def test_a_model_not_listed_disabled_or_deprecated_is_disabled_in_health(
        client, auth_headers, mongo_db, entry):
    if entry is not None:
        listed(mongo_db, **entry)
    client.post("/ingest", json=result_payload(), headers=auth_headers)
    doc = state(mongo_db)
    assert (doc["enabled"], doc["freshness_status"], doc["staleness_seconds"]) == \
        (False, "disabled", None)
    assert doc["successes_24h"] == 1


def test_a_health_document_of_another_writer_is_updated_in_place(client, auth_headers, mongo_db):
    listed(mongo_db)
    mongo_db[HEALTH].insert_one({"_id": f"bedrock:{MODEL}", "provider": "bedrock",
                                 "model_id": MODEL, "consecutive_failures": 7,
                                 "freshness_status": "critical", "deadline_misses_24h": 3})
    client.post("/ingest", json=result_payload(), headers=auth_headers)
    assert mongo_db[HEALTH].count_documents({}) == 1
    doc = state(mongo_db)
    assert (doc["consecutive_failures"], doc["freshness_status"], doc["deadline_misses_24h"]) == \
        (0, "fresh", 0)


def _post(url: str, path: str, body: dict) -> int:
    request = urllib.request.Request(
        url + path, data=json.dumps(body).encode(), method="POST",
        headers={"Content-Type": "application/json", "X-API-Key": TEST_KEYS["runner-a"]})
    with urllib.request.urlopen(request, timeout=30) as answer:
        return answer.status


def test_concurrent_workers_and_shuffled_resends_leave_exact_health(mongo_uri, mongo_db_name,
                                                                    mongo_db):
    listed(mongo_db)
    rng = random.Random(11)
    now = datetime.now(UTC)
    results = [result_payload(run_ts=iso(now - timedelta(minutes=rng.randint(60, 600))))
               for _ in range(30)]
    failures = [failure_payload(model_name=MODEL, ts=iso(now - timedelta(minutes=m)),
                                error_kind=rng.choice(["throttled", "timeout", "transient"]),
                                message=f"failure {m} minutes ago")
                for m in rng.sample(range(1, 600), 20)]
    # An old failure outside the 24 h window: stored, never counted in it.
    failures.append(failure_payload(model_name=MODEL, ts=iso(now - timedelta(hours=30))))
    sends = [("/ingest", r) for r in results] + [("/ingest/error", f) for f in failures]
    sends = sends + sends  # every record twice: the outbox's resends
    rng.shuffle(sends)
    with start_gunicorn(gunicorn_env(mongo_uri, mongo_db_name), workers=2) as server, \
            ThreadPoolExecutor(max_workers=8) as pool:
        codes = list(pool.map(lambda send: _post(server.url, *send), sends))
    assert sorted(set(codes)) == [200, 201]
    assert codes.count(201) == len(results) + len(failures)

    doc = state(mongo_db)
    run_times = [ms(datetime.fromisoformat(r["run_ts"])) for r in results]
    failed = sorted(failures, key=lambda f: f["ts"])
    newest_failure = failed[-1]
    last_success = max(run_times)
    assert doc["last_success_at"] == last_success
    assert doc["last_attempt_at"] == max(last_success,
                                         ms(datetime.fromisoformat(newest_failure["ts"])))
    assert doc["successes_24h"] == 30
    assert doc["failures_24h"] == 20
    assert doc["deadline_misses_24h"] == sum(
        f["error_kind"] == "timeout" for f in failures[:20])
    after = [f for f in failures if ms(datetime.fromisoformat(f["ts"])) > last_success]
    assert doc["consecutive_failures"] == len(after)
    if after:
        assert (doc["last_error_at"], doc["last_error_message"]) == (
            ms(datetime.fromisoformat(newest_failure["ts"])), newest_failure["message"])
    else:
        assert doc["last_error_at"] is None
    assert mongo_db[HEALTH].count_documents({}) == 1


def test_a_recount_that_fails_is_tried_again_until_the_health_is_exact(client, auth_headers,
                                                                       mongo_db, monkeypatch,
                                                                       caplog):
    from pymongo.errors import AutoReconnect

    listed(mongo_db)
    real_apply, calls = model_health._apply, []

    def flaky_apply(provider, model_id, cfg):
        if cfg.mongodb_db != mongo_db.name:  # another test's app, still recounting its own
            return real_apply(provider, model_id, cfg)
        calls.append((provider, model_id))
        if len(calls) <= 2:  # the database goes away for the first two recounts
            raise AutoReconnect("connection reset")
        return real_apply(provider, model_id, cfg)

    monkeypatch.setattr(model_health, "_apply", flaky_apply)
    monkeypatch.setattr(model_health.Updater, "RETRY_SECONDS", 0.05)
    run_ts = datetime.now(UTC) - timedelta(minutes=5)
    assert client.post("/ingest", json=result_payload(run_ts=iso(run_ts)),
                       headers=auth_headers).status_code == 201
    doc = state(mongo_db)
    assert calls == [("bedrock", MODEL)] * 3
    assert (doc["last_success_at"], doc["successes_24h"], doc["freshness_status"]) == \
        (ms(run_ts), 1, "fresh")
    warned = [r.getMessage() for r in caplog.records
              if r.name == "ingest_app.health" and "AutoReconnect" in r.getMessage()]
    assert warned == ["health not updated for 1 model(s): AutoReconnect (tried again shortly)"] * 2


def test_a_write_is_answered_while_its_models_recount_is_still_running(client, auth_headers,
                                                                       mongo_db, monkeypatch):
    import threading

    listed(mongo_db)
    real_apply, release = model_health._apply, threading.Event()

    def slow_apply(*args, **kwargs):
        release.wait(30)
        return real_apply(*args, **kwargs)

    monkeypatch.setattr(model_health, "_apply", slow_apply)
    answer = client.post("/ingest", json=result_payload(), headers=auth_headers)
    # Answered with the recount held back: health is not on the write's path.
    assert answer.status_code == 201
    assert mongo_db[HEALTH].find_one({"model_id": MODEL}) is None
    release.set()
    assert state(mongo_db)["successes_24h"] == 1


def test_a_worker_stopped_cleanly_recounts_what_its_writes_marked(mongo_uri, mongo_db_name,
                                                                  mongo_db):
    import time

    listed(mongo_db)
    now = datetime.now(UTC)
    first, second = (result_payload(run_ts=iso(now - timedelta(minutes=m))) for m in (20, 10))
    # Passes 30 s apart: the second write's recount is still waiting when the worker stops.
    env = gunicorn_env(mongo_uri, mongo_db_name, INGEST_HEALTH_PASS_SECONDS="30")
    with start_gunicorn(env, workers=1) as server:
        assert _post(server.url, "/ingest", first) == 201
        give_up = time.monotonic() + 20
        while (mongo_db[HEALTH].find_one({"model_id": MODEL}) is None
               and time.monotonic() < give_up):
            time.sleep(0.05)
        assert state(mongo_db)["last_success_at"] == ms(datetime.fromisoformat(first["run_ts"]))
        assert _post(server.url, "/ingest", second) == 201
    # gunicorn stopped (SIGTERM): the worker ran the marked recount on its way out.
    doc = state(mongo_db)
    assert doc["last_success_at"] == ms(datetime.fromisoformat(second["run_ts"]))
    assert doc["successes_24h"] == 2
