"""GET /runner-config: each runner's worklist, read from `models`, with an ETag."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from ingest_app.timestamps import parse_rfc3339
from tests.support.ingest import TEST_KEYS, TEST_READ_KEYS

MODELS = "models"
RUNNER_A = {"X-API-Key": TEST_KEYS["runner-a"]}
RUNNER_B = {"X-API-Key": TEST_KEYS["runner-b"]}


def listed(mongo_db, model_id: str, provider: str = "bedrock", **fields) -> None:
    mongo_db[MODELS].insert_one({"provider": provider, "model_id": model_id,
                                 "display_name": model_id, **fields})


def config(client, headers=RUNNER_A, **params):
    return client.get("/runner-config", query_string=params, headers=headers)


def test_the_worklist_holds_the_enabled_models_of_the_provider_in_id_order(client, mongo_db):
    listed(mongo_db, "sim.zeta-v1", enabled=True, deprecated=False)
    listed(mongo_db, "sim.alpha-v1")  # enabled and deprecated missing: enabled, as the dashboard
    listed(mongo_db, "sim.null-v1", enabled=None, deprecated=None)
    listed(mongo_db, "sim.off-v1", enabled=False)
    listed(mongo_db, "sim.old-v1", enabled=True, deprecated=True)
    listed(mongo_db, "gpt-x", provider="openai", enabled=True)
    before = datetime.now(UTC).replace(microsecond=0)
    answer = config(client)
    assert answer.status_code == 200
    body = answer.get_json()
    assert body["models"] == ["sim.alpha-v1", "sim.null-v1", "sim.zeta-v1"]
    assert list(body) == ["schema_version", "provider", "runner", "interval_minutes", "models",
                          "model_metadata", "generated_at"]
    assert (body["schema_version"], body["provider"], body["runner"], body["interval_minutes"]) \
        == (1, "bedrock", "runner-a", 60)
    assert set(body["model_metadata"]) == set(body["models"])
    assert body["model_metadata"]["sim.alpha-v1"] == {
        "omit_temperature": False, "additional_model_request_fields": None, "region": None,
        "profiles": None}
    assert before <= parse_rfc3339(body["generated_at"]) <= datetime.now(UTC)
    assert answer.headers["Cache-Control"] == "private, no-cache"


def test_the_provider_defaults_to_bedrock_and_an_unknown_one_is_a_422(client, mongo_db):
    listed(mongo_db, "sim.alpha-v1")
    assert config(client, provider="bedrock").get_json()["models"] == ["sim.alpha-v1"]
    for params in ({"provider": "nowhere"}, {"provider": ""}, {"models": "x"}):
        answer = config(client, **params)
        assert answer.status_code == 422, params
        error = answer.get_json()["error"]
        assert error["code"] == "validation_error"
        assert set(error["details"]["fields"]) == set(params)


def test_a_runners_list_keeps_a_model_to_the_runners_it_names(client, mongo_db):
    listed(mongo_db, "sim.everyone-v1")
    listed(mongo_db, "sim.only-b-v1", runners=["runner-b"])
    listed(mongo_db, "sim.both-v1", runners=["runner-a", "runner-b"])
    listed(mongo_db, "sim.nobody-v1", runners=[])
    listed(mongo_db, "sim.all-v1", runners=None)
    listed(mongo_db, "sim.garbled-v1", runners="runner-a")  # not a list: nobody
    assert config(client).get_json()["models"] == ["sim.all-v1", "sim.both-v1",
                                                   "sim.everyone-v1"]
    answer = config(client, RUNNER_B).get_json()
    assert answer["runner"] == "runner-b"
    assert answer["models"] == ["sim.all-v1", "sim.both-v1", "sim.everyone-v1",
                                "sim.only-b-v1"]


def test_model_metadata_says_how_to_ask_and_passes_unknown_settings_on(client, mongo_db):
    thinking = {"thinking": {"type": "enabled", "budget_tokens": 1024}}
    listed(mongo_db, "sim.think-v1", request={
        "omit_temperature": True, "additional_model_request_fields": thinking,
        "region": "us-west-2", "profiles": ["cloud-reasoning-v1"],
        "top_k": 5, "stop": ["END"], "since": datetime(2026, 1, 2, tzinfo=UTC)})
    # Hand edits gone wrong fall back to what an unset setting means.
    listed(mongo_db, "sim.garbled-v1", request={
        "omit_temperature": "yes", "additional_model_request_fields": "x", "region": 7,
        "profiles": "cloud-default-v1"})
    listed(mongo_db, "sim.flat-v1", request="not an object")
    meta = config(client).get_json()["model_metadata"]
    assert meta["sim.think-v1"] == {
        "omit_temperature": True, "additional_model_request_fields": thinking,
        "region": "us-west-2", "profiles": ["cloud-reasoning-v1"],
        "top_k": 5, "stop": ["END"], "since": "2026-01-02T00:00:00.000Z"}
    unset = {"omit_temperature": False, "additional_model_request_fields": None,
             "region": None, "profiles": None}
    assert meta["sim.garbled-v1"] == {**unset, "omit_temperature": False}
    assert meta["sim.flat-v1"] == unset


def test_an_unchanged_worklist_keeps_its_etag_and_if_none_match_gets_a_304(client, mongo_db):
    listed(mongo_db, "sim.alpha-v1")
    first = config(client)
    tag = first.headers["ETag"]
    assert tag.startswith('"') and len(tag) > 10
    second = config(client)
    assert second.headers["ETag"] == tag
    assert second.get_json()["generated_at"] >= first.get_json()["generated_at"]

    unchanged = config(client, {**RUNNER_A, "If-None-Match": tag})
    assert (unchanged.status_code, unchanged.get_data()) == (304, b"")
    assert unchanged.headers["ETag"] == tag
    weak = config(client, {**RUNNER_A, "If-None-Match": f'"other", W/{tag}'})
    assert weak.status_code == 304

    # Another runner's list differs (it names the runner), and so does a changed one.
    assert config(client, RUNNER_B).headers["ETag"] != tag
    mongo_db[MODELS].update_one({"model_id": "sim.alpha-v1"},
                                {"$set": {"request": {"omit_temperature": True}}})
    changed = config(client, {**RUNNER_A, "If-None-Match": tag})
    assert changed.status_code == 200
    assert changed.headers["ETag"] != tag
    assert changed.get_json()["model_metadata"]["sim.alpha-v1"]["omit_temperature"] is True


@pytest.mark.parametrize("headers", [
    {}, {"X-API-Key": "x" * 40}, {"X-API-Key": TEST_READ_KEYS["dashboard"]}])
def test_the_worklist_needs_a_write_key(client, mongo_db, headers):
    listed(mongo_db, "sim.alpha-v1")
    answer = config(client, headers)
    assert answer.status_code == 401
    assert answer.get_json()["error"]["code"] == "unauthorized"
    assert "sim.alpha-v1" not in answer.get_data(as_text=True)
    assert mongo_db["bench_runners"].count_documents({}) == 0


def test_a_fetch_is_noted_per_runner_a_304_included(client, mongo_db):
    listed(mongo_db, "sim.alpha-v1")
    tag = config(client).headers["ETag"]
    first = mongo_db["bench_runners"].find_one({"runner": "runner-a", "what": "config"})
    assert (first["provider"], first["models"], f'"{first["etag"]}"') == ("bedrock", 1, tag)
    assert config(client, {**RUNNER_A, "If-None-Match": tag}).status_code == 304
    again = mongo_db["bench_runners"].find_one({"runner": "runner-a", "what": "config"})
    assert isinstance(again["at"], datetime) and again["at"] >= first["at"]
    config(client, RUNNER_B)
    assert sorted(d["_id"] for d in mongo_db["bench_runners"].find()) == \
        ["runner-a:config", "runner-b:config"]


def test_the_interval_comes_from_the_setting(ingest_settings, mongo_db):
    from dataclasses import replace

    from ingest_app import create_app
    from ingest_app import health as model_health

    app = create_app(replace(ingest_settings, runner_interval_minutes=15))
    try:
        with app.test_client() as client:
            assert config(client).get_json()["interval_minutes"] == 15
    finally:
        model_health.close(app, timeout=5)
        app.extensions["bench_ingest.db"].close()


def test_an_empty_list_is_an_answer_not_an_error(client):
    answer = config(client)
    assert answer.status_code == 200
    assert (answer.get_json()["models"], answer.get_json()["model_metadata"]) == ([], {})
