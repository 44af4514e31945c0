"""The app starts from its settings, answers health and readiness, and errs in one shape."""

from __future__ import annotations

import pytest
import requests

from ingest_app import create_app
from ingest_app.settings import Settings, SettingsError
from tests.support.ingest import TEST_KEYS, gunicorn_env, keys_env, run_gunicorn

GOOD_ENV = {"MONGODB_URI": "mongodb://db.example:27017/", "INGEST_API_KEYS": keys_env(TEST_KEYS)}


def test_settings_default_to_the_dashboard_collections():
    cfg = Settings.from_env(GOOD_ENV)
    assert (cfg.mongodb_db, cfg.results_collection, cfg.errors_collection) == (
        "llm-bench", "metrics_cloud_v2", "errors_cloud")
    assert dict(cfg.api_keys) == TEST_KEYS
    assert cfg.public_read is False


def test_settings_of_the_runners_side_channel_default_and_are_checked():
    cfg = Settings.from_env(GOOD_ENV)
    assert (cfg.runners_collection, cfg.catalog_collection, cfg.discovery_collection,
            cfg.runner_interval_minutes) == (
        "bench_runners", "provider_catalog", "bench_discovery_runs", 60)
    assert Settings.from_env({**GOOD_ENV, "INGEST_RUNNER_INTERVAL_MINUTES": "15"}
                             ).runner_interval_minutes == 15
    for env, words in (
            ({"INGEST_RUNNER_INTERVAL_MINUTES": "0"}, "INGEST_RUNNER_INTERVAL_MINUTES"),
            ({"MONGODB_CATALOG_COLLECTION": "$bad"}, "MONGODB_CATALOG_COLLECTION must be"),
            ({"MONGODB_RUNNERS_COLLECTION": "models"}, "different collections")):
        with pytest.raises(SettingsError, match=words):
            Settings.from_env({**GOOD_ENV, **env})


def test_settings_name_every_bad_variable_in_one_line():
    env = {"INGEST_API_KEYS": "runner-a:short,broken", "INGEST_PUBLIC_READ": "maybe",
           "INGEST_MAX_BODY_BYTES": "lots"}
    with pytest.raises(SettingsError) as caught:
        Settings.from_env(env)
    message = str(caught.value)
    assert "\n" not in message
    for name in ("MONGODB_URI", "INGEST_API_KEYS", "INGEST_PUBLIC_READ", "INGEST_MAX_BODY_BYTES"):
        assert name in message
    assert "shorter than 32" in message
    assert "short," not in message and ":short" not in message


def test_settings_never_echo_a_key_that_is_too_short():
    secret = "s3cr3t-but-too-short"
    with pytest.raises(SettingsError) as caught:
        Settings.from_env({**GOOD_ENV, "INGEST_API_KEYS": f"ops:{secret}"})
    assert secret not in str(caught.value)
    assert "'ops'" in str(caught.value)


def test_settings_never_echo_a_key_whose_name_was_forgotten():
    # "key" where "name:key" was meant: the entry is the secret itself.
    secret = "Zq3v_Xb8-k2LmN4pQ7rS9tU1wY5aC6dE8fG0hJ2kL4m"
    with pytest.raises(SettingsError) as caught:
        Settings.from_env({**GOOD_ENV, "INGEST_API_KEYS": f"ops:{'k' * 40},{secret}"})
    assert secret not in str(caught.value)
    assert "entry 2 is not name:key" in str(caught.value)


def test_settings_refuse_a_missing_key_list():
    with pytest.raises(SettingsError, match="INGEST_API_KEYS is missing"):
        Settings.from_env({"MONGODB_URI": "mongodb://db.example/"})


def test_settings_repr_shows_no_key_and_no_uri():
    cfg = Settings.from_env({**GOOD_ENV, "MONGODB_URI": "mongodb://user:pw-secret@db/"})
    text = repr(cfg)
    assert "pw-secret" not in text
    assert all(key not in text for key in TEST_KEYS.values())


def test_settings_refuse_a_db_timeout_that_breaks_the_five_second_promise():
    with pytest.raises(SettingsError, match="MONGODB_TIMEOUT_SECONDS"):
        Settings.from_env({**GOOD_ENV, "MONGODB_TIMEOUT_SECONDS": "30"})


def test_create_app_reads_the_environment_when_given_no_settings(monkeypatch):
    monkeypatch.setenv("MONGODB_URI", "mongodb://127.0.0.1:9/")
    monkeypatch.setenv("INGEST_API_KEYS", keys_env(TEST_KEYS))
    monkeypatch.setenv("MONGODB_DB", "from-env")
    app = create_app()
    assert app.extensions["bench_ingest.settings"].mongodb_db == "from-env"


def test_create_app_fails_at_start_without_settings(monkeypatch):
    monkeypatch.delenv("MONGODB_URI", raising=False)
    monkeypatch.delenv("INGEST_API_KEYS", raising=False)
    with pytest.raises(SettingsError):
        create_app()


def test_health_answers_without_the_database(client):
    answer = client.get("/health")
    assert answer.status_code == 200
    assert answer.get_json() == {"status": "ok"}


def test_ready_answers_when_the_database_pings(client):
    assert client.get("/ready").status_code == 200


def test_unknown_route_answers_the_one_error_shape(client):
    answer = client.get("/nope")
    assert answer.status_code == 404
    body = answer.get_json()["error"]
    assert body["code"] == "not_found"
    assert set(body) == {"code", "message", "details", "request_id"}
    assert body["request_id"] == answer.headers["X-Request-Id"]


def test_real_gunicorn_serves_ready(mongo_uri, mongo_db_name):
    with run_gunicorn(gunicorn_env(mongo_uri, mongo_db_name)) as url, \
            requests.get(f"{url}/ready", timeout=10) as answer:
        assert answer.status_code == 200


def test_a_safe_request_id_from_the_caller_is_echoed(client):
    answer = client.get("/nope", headers={"X-Request-Id": "run-42.batch-7"})
    assert answer.headers["X-Request-Id"] == "run-42.batch-7"
    assert answer.get_json()["error"]["request_id"] == "run-42.batch-7"


def test_a_key_sent_as_request_id_is_never_echoed(client):
    key = TEST_KEYS["runner-a"]
    answer = client.get("/nope", headers={"X-Request-Id": key})
    assert key not in answer.headers["X-Request-Id"]
    assert key not in answer.get_data(as_text=True)


@pytest.mark.parametrize("uri", [
    "mongodb://ingest:pw-secret@db.example:notaport/",
    "mongodb://ingest:pw-secret@/",
    "mongodb://ingest:pw@secret@db.example/",
])
def test_a_malformed_mongodb_uri_fails_at_start_without_echoing_it(uri):
    # Accepted at start, it answered 500 on every request, /ready included, until fixed.
    with pytest.raises(SettingsError) as caught:
        Settings.from_env({**GOOD_ENV, "MONGODB_URI": uri})
    message = str(caught.value)
    assert "MONGODB_URI" in message and "\n" not in message
    assert "secret" not in message and "pw" not in message


def test_a_request_id_that_holds_a_key_is_never_echoed(client):
    # A request id is echoed and written to the access log: none may carry a key inside it.
    key = TEST_KEYS["runner-a"]
    answer = client.get("/nope", headers={"X-Request-Id": f"run-{key}"})
    assert key not in answer.headers["X-Request-Id"]
    assert key not in answer.get_data(as_text=True)
