"""POST /ingest/catalog: the runners' catalogue, stored once per model, one record per post."""

from __future__ import annotations

import os
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from ingest_app import create_app
from ingest_app import health as model_health
from ingest_app.timestamps import parse_rfc3339
from tests.support.ingest import TEST_KEYS, TEST_READ_KEYS, gunicorn_env, start_gunicorn

CATALOG, RUNS, RUNNERS = "provider_catalog", "bench_discovery_runs", "bench_runners"
RUNNER_A = {"X-API-Key": TEST_KEYS["runner-a"]}


def entry(model_id: str, **overrides) -> dict:
    profile = model_id.startswith(("us.", "global."))
    found = {
        "model_id": model_id, "name": model_id.split(".")[-1], "provider_name": "Sim",
        "kind": "inference-profile" if profile else "foundation",
        "input_modalities": ["TEXT"], "output_modalities": ["TEXT"],
        "inference_types": ["INFERENCE_PROFILE"] if profile else ["ON_DEMAND"],
        "lifecycle_status": "ACTIVE", "needs_profile": False, "streaming": True,
    }
    found.update(overrides)
    return found


def listing(*models: dict, **overrides) -> dict:
    body = {"provider": "bedrock", "region": "us-east-1",
            "started_at": (datetime.now(UTC) - timedelta(seconds=3)).isoformat(),
            "pagination_complete": True, "models": list(models)}
    body.update(overrides)
    return body


def stored_time(value) -> datetime:
    """A stored time: a BSON date. The test server (nx-27017) keeps a date that $set writes
    into an existing document as its text; asserted against TEST_MONGODB_URI as a date."""
    if isinstance(value, datetime):
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value
    assert not os.environ.get("TEST_MONGODB_URI"), f"a time stored as {value!r}"
    return datetime.fromisoformat(value).replace(tzinfo=UTC)


def stored_bool(value) -> bool:
    """A stored flag: MongoDB keeps the boolean; the test server stores one $set writes as
    0 or 1 (asserted against TEST_MONGODB_URI as a boolean)."""
    if isinstance(value, bool):
        return value
    assert not os.environ.get("TEST_MONGODB_URI"), f"a flag stored as {value!r}"
    assert value in (0, 1), value
    return bool(value)


def test_a_catalogue_is_stored_one_entry_per_model_with_a_discovery_record(client, mongo_db):
    body = listing(entry("sim.fast-v1"), entry("us.sim.fast-v1", needs_profile=False),
                   entry("sim.think-v1", streaming=None, lifecycle_status="LEGACY"))
    answer = client.post("/ingest/catalog", json=body, headers=RUNNER_A)
    assert answer.status_code == 201
    assert answer.get_json() == {"status": "stored",
                                 "counts": {"models": 3, "new": 3, "seen": 0}}
    stored = {d["model_id"]: d for d in mongo_db[CATALOG].find({}, {"_id": False})}
    assert set(stored) == {"sim.fast-v1", "us.sim.fast-v1", "sim.think-v1"}
    think = stored["sim.think-v1"]
    assert {k: think[k] for k in ("provider", "region", "kind", "lifecycle_status",
                                  "streaming", "input_modalities", "last_runner")} == {
        "provider": "bedrock", "region": "us-east-1", "kind": "foundation",
        "lifecycle_status": "LEGACY", "streaming": None, "input_modalities": ["TEXT"],
        "last_runner": "runner-a"}
    assert stored_time(think["first_seen_at"]) == stored_time(think["last_seen_at"])
    run = mongo_db[RUNS].find_one({}, {"_id": False})
    assert {k: run[k] for k in ("provider", "region", "runner", "status",
                                "pagination_complete", "counts")} == {
        "provider": "bedrock", "region": "us-east-1", "runner": "runner-a",
        "status": "complete", "pagination_complete": True,
        "counts": {"models": 3, "new": 3, "seen": 0}}
    sent = parse_rfc3339(body["started_at"])
    assert stored_time(run["started_at"]) == sent
    assert stored_time(run["received_at"]) >= sent
    noted = mongo_db[RUNNERS].find_one({"_id": "runner-a:catalog"})
    assert (noted["provider"], noted["status"]) == ("bedrock", "complete")


def test_reposting_the_catalogue_updates_the_entries_and_appends_a_run(client, mongo_db):
    first = listing(entry("sim.fast-v1"), entry("sim.steady-v1"))
    client.post("/ingest/catalog", json=first, headers=RUNNER_A)
    seen_first = mongo_db[CATALOG].find_one({"model_id": "sim.fast-v1"})["first_seen_at"]
    again = client.post("/ingest/catalog", json=first, headers=RUNNER_A)
    assert again.get_json()["counts"] == {"models": 2, "new": 0, "seen": 2}
    assert mongo_db[CATALOG].count_documents({}) == 2
    # One model gone end-of-life, one new, and a partial listing this time.
    later = listing(entry("sim.fast-v1", lifecycle_status="LEGACY"), entry("sim.new-v1"),
                    pagination_complete=False)
    answer = client.post("/ingest/catalog", json=later,
                         headers={"X-API-Key": TEST_KEYS["runner-b"]})
    assert answer.get_json()["counts"] == {"models": 2, "new": 1, "seen": 1}
    assert mongo_db[CATALOG].count_documents({}) == 3
    fast = mongo_db[CATALOG].find_one({"model_id": "sim.fast-v1"})
    assert (fast["lifecycle_status"], fast["last_runner"]) == ("LEGACY", "runner-b")
    assert fast["first_seen_at"] == seen_first
    assert stored_time(fast["last_seen_at"]) >= stored_time(seen_first)
    runs = list(mongo_db[RUNS].find({}, {"_id": False}).sort("received_at", 1))
    assert [(r["runner"], r["status"], r["counts"]["new"]) for r in runs] == [
        ("runner-a", "complete", 2), ("runner-a", "complete", 0), ("runner-b", "partial", 1)]


def test_a_model_posted_twice_in_one_listing_is_one_entry_its_last_copy_kept(client, mongo_db):
    body = listing(entry("sim.fast-v1", name="first"), entry("sim.fast-v1", name="last"))
    answer = client.post("/ingest/catalog", json=body, headers=RUNNER_A)
    assert answer.get_json()["counts"] == {"models": 1, "new": 1, "seen": 0}
    assert [d["name"] for d in mongo_db[CATALOG].find()] == ["last"]


def test_each_region_keeps_its_own_entry_and_unknown_entry_keys_are_ignored(client, mongo_db):
    client.post("/ingest/catalog", json=listing(entry("sim.fast-v1")), headers=RUNNER_A)
    newer = entry("sim.fast-v1", price={"in": 1}, **{"$where": "x", "a.b": 1})
    answer = client.post("/ingest/catalog", json=listing(newer, region="eu-west-1"),
                         headers=RUNNER_A)
    assert answer.status_code == 201
    assert sorted(d["region"] for d in mongo_db[CATALOG].find()) == ["eu-west-1", "us-east-1"]
    assert all("price" not in d for d in mongo_db[CATALOG].find())
    # A listing without a region (and only the required entry fields) is a third entry.
    bare = {"model_id": "sim.fast-v1", "kind": "foundation"}
    assert client.post("/ingest/catalog", json=listing(bare, region=None),
                       headers=RUNNER_A).status_code == 201
    stored = mongo_db[CATALOG].find_one({"region": None})
    assert (stored_bool(stored["needs_profile"]), stored["input_modalities"], stored["name"]) \
        == (False, [], None)


@pytest.mark.parametrize(("body", "fields"), [
    (listing(entry("sim.fast-v1"), provider="nowhere"), {"provider"}),
    (listing(entry("sim.fast-v1", kind="model")), {"models"}),
    (listing(entry("sim.fast-v1", needs_profile="yes")), {"models"}),
    (listing(entry("")), {"models"}),
    (listing(entry("sim.fast-v1", input_modalities="TEXT")), {"models"}),
    (listing(entry("sim.fast-v1"), pagination_complete=None), {"pagination_complete"}),
    (listing(entry("sim.fast-v1"), started_at="yesterday"), {"started_at"}),
    (listing(entry("sim.fast-v1"), started_at="2026-01-01T00:00:00"), {"started_at"}),
    (listing(entry("sim.fast-v1"), surprise=1), {"surprise"}),
    (listing(entry("sim.fast-v1"), models={"model_id": "x"}), {"models"}),
    ({"provider": "bedrock"}, {"started_at", "pagination_complete", "models"}),
    (listing(*[{"model_id": f"m{i}", "kind": "foundation"} for i in range(5001)]), {"models"}),
    (listing("sim.fast-v1"), {"models"}),
])
def test_a_bad_catalogue_is_a_422_naming_the_fields_and_stores_nothing(client, mongo_db, body,
                                                                       fields):
    answer = client.post("/ingest/catalog", json=body, headers=RUNNER_A)
    assert answer.status_code == 422
    error = answer.get_json()["error"]
    assert error["code"] == "validation_error"
    assert set(error["details"]["fields"]) == fields
    for name in (CATALOG, RUNS, RUNNERS):
        assert mongo_db[name].count_documents({}) == 0, name


@pytest.mark.parametrize(("data", "headers", "status"), [
    (b"[1, 2]", {"Content-Type": "application/json"}, 400),
    (b'{"provider": "bedrock", "provider": "x"}', {"Content-Type": "application/json"}, 400),
    (b"{not json", {"Content-Type": "application/json"}, 400),
    (b"{}", {"Content-Type": "text/plain"}, 415),
])
def test_a_body_that_is_not_a_json_object_is_refused_and_stores_nothing(client, mongo_db, data,
                                                                        headers, status):
    answer = client.post("/ingest/catalog", data=data, headers={**RUNNER_A, **headers})
    assert answer.status_code == status
    assert "error" in answer.get_json()
    assert mongo_db[CATALOG].count_documents({}) == mongo_db[RUNS].count_documents({}) == 0


@pytest.mark.parametrize("headers", [{}, {"X-API-Key": TEST_READ_KEYS["dashboard"]}])
def test_a_catalogue_needs_a_write_key(client, mongo_db, headers):
    answer = client.post("/ingest/catalog", json=listing(entry("sim.fast-v1")), headers=headers)
    assert answer.status_code == 401
    assert mongo_db[CATALOG].count_documents({}) == 0


def test_a_body_over_the_size_limit_is_a_413(ingest_settings, mongo_db):
    app = create_app(replace(ingest_settings, max_body_bytes=4096))
    try:
        with app.test_client() as client:
            body = listing(*[entry(f"sim.m{i}-v1") for i in range(40)])
            assert client.post("/ingest/catalog", json=body,
                               headers=RUNNER_A).status_code == 413
    finally:
        model_health.close(app, timeout=5)
        app.extensions["bench_ingest.db"].close()
    assert mongo_db[CATALOG].count_documents({}) == 0


def test_a_database_that_is_down_answers_503_and_the_next_post_stores(killable_mongo, tmp_path):
    env = gunicorn_env(killable_mongo.uri, "t_catalog_outage", MONGODB_TIMEOUT_SECONDS="1",
                       INGEST_DB_COOLDOWN_SECONDS="0")
    import requests

    with start_gunicorn(env, workers=1) as server:
        url = f"{server.url}/ingest/catalog"
        body = listing(entry("sim.fast-v1"))
        assert requests.post(url, json=body, headers=RUNNER_A, timeout=10).status_code == 201
        killable_mongo.stop()
        try:
            down = requests.post(url, json=body, headers=RUNNER_A, timeout=10)
            assert down.status_code == 503
            assert down.json()["error"]["code"] == "database_unavailable"
            assert int(down.headers["Retry-After"]) >= 1
            config = requests.get(f"{server.url}/runner-config", headers=RUNNER_A, timeout=10)
            assert config.status_code == 503
            assert config.json()["error"]["code"] == "database_unavailable"
        finally:
            killable_mongo.start()
        again = requests.post(url, json=body, headers=RUNNER_A, timeout=10)
        assert again.status_code == 201
        assert again.json()["counts"] == {"models": 1, "new": 0, "seen": 1}


def test_concurrent_posts_of_one_catalogue_leave_one_entry_per_model(mongo_uri, mongo_db_name,
                                                                      mongo_db):
    import threading

    import requests

    env = gunicorn_env(mongo_uri, mongo_db_name)
    body = listing(*[entry(f"sim.m{i:02d}-v1") for i in range(20)])
    answers: list[dict] = []
    with start_gunicorn(env, workers=2, threads=4) as server:
        gate = threading.Barrier(8)

        def post() -> None:
            gate.wait()
            answer = requests.post(f"{server.url}/ingest/catalog", json=body, headers=RUNNER_A,
                                   timeout=30)
            answers.append({**answer.json(), "code": answer.status_code})

        threads = [threading.Thread(target=post) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert [a["code"] for a in answers] == [201] * 8, answers
    assert mongo_db[CATALOG].count_documents({}) == 20
    assert mongo_db[RUNS].count_documents({}) == 8
    # Each entry was first seen by exactly one of the posts.
    assert sum(a["counts"]["new"] for a in answers) == 20
    assert all(a["counts"]["models"] == 20 for a in answers)
