"""The model gate: results of models `models` does not list as enabled are kept, never published."""

from __future__ import annotations

from dataclasses import replace

import pytest

from ingest_app import create_app
from ingest_app.settings import Settings
from runner.ingest_client import IngestClient
from runner.outbox import Outbox
from tests.support.ingest import TEST_KEYS, gunicorn_env, keys_env, result_payload, start_gunicorn
from tests.support.runner import make_result

PUBLIC, PROBE, MODELS = "metrics_cloud_v2", "metrics_cloud_probe", "models"
MODEL = "sim.fast-v1"


@pytest.fixture
def gated(ingest_settings, mongo_db):
    app = create_app(replace(ingest_settings, model_gate=True))
    with app.test_client() as client:
        yield client
    app.extensions["bench_ingest.db"].close()


def listed(mongo_db, model: str = MODEL, **fields) -> None:
    mongo_db[MODELS].insert_one({"provider": "bedrock", "model_id": model, "display_name": model,
                                 "enabled": True, "deprecated": False, **fields})


@pytest.mark.parametrize(("entry", "reason"), [
    (None, "model_not_listed"),
    ({"enabled": False}, "model_disabled"),
    ({"deprecated": True}, "model_deprecated"),
])
def test_a_result_of_a_model_not_enabled_is_stored_in_the_probe_collection_with_the_reason(
        gated, auth_headers, mongo_db, entry, reason):
    if entry is not None:
        listed(mongo_db, **entry)
    payload = result_payload()
    answer = gated.post("/ingest", json=payload, headers=auth_headers)
    assert answer.status_code == 201
    assert answer.get_json() == {"status": "created", "duplicate": False,
                                 "result_id": payload["result_id"], "published": False,
                                 "withheld_reason": reason}
    stored = mongo_db[PROBE].find_one({"result_id": payload["result_id"]})
    assert stored["withheld_reason"] == reason
    assert stored["sample_role"] == payload["sample_role"]
    assert mongo_db[PUBLIC].count_documents({}) == 0


def test_a_result_of_an_enabled_model_is_published(gated, auth_headers, mongo_db):
    listed(mongo_db)
    payload = result_payload()
    answer = gated.post("/ingest", json=payload, headers=auth_headers)
    assert answer.get_json() == {"status": "created", "duplicate": False,
                                 "result_id": payload["result_id"]}
    assert "withheld_reason" not in mongo_db[PUBLIC].find_one({"result_id": payload["result_id"]})
    assert mongo_db[PROBE].count_documents({}) == 0


def test_a_batch_answers_per_item_where_it_went(gated, auth_headers, mongo_db):
    listed(mongo_db)
    listed(mongo_db, "sim.old-v1", deprecated=True)
    items = [result_payload(), result_payload(model_name="sim.old-v1"),
             result_payload(model_name="sim.unknown-v1"), result_payload(sample_role="shadow")]
    answer = gated.post("/ingest/batch", json={"results": items}, headers=auth_headers)
    assert answer.get_json()["results"] == [
        {"status": "created", "result_id": items[0]["result_id"]},
        {"status": "created", "result_id": items[1]["result_id"], "published": False,
         "withheld_reason": "model_deprecated"},
        {"status": "created", "result_id": items[2]["result_id"], "published": False,
         "withheld_reason": "model_not_listed"},
        {"status": "created", "result_id": items[3]["result_id"], "published": False},
    ]
    assert [d["result_id"] for d in mongo_db[PUBLIC].find()] == [items[0]["result_id"]]
    assert mongo_db[PROBE].count_documents({}) == 3


def test_a_resend_after_the_model_is_enabled_stays_where_it_was_stored(gated, auth_headers,
                                                                       mongo_db):
    listed(mongo_db, enabled=False)
    payload = result_payload()
    assert gated.post("/ingest", json=payload, headers=auth_headers).status_code == 201
    mongo_db[MODELS].update_one({"model_id": MODEL}, {"$set": {"enabled": True}})
    again = gated.post("/ingest", json=payload, headers=auth_headers)
    assert again.status_code == 200
    assert again.get_json() == {"status": "duplicate", "duplicate": True,
                                "result_id": payload["result_id"], "published": False,
                                "withheld_reason": "model_disabled"}
    batch = gated.post("/ingest/batch", json={"results": [payload]}, headers=auth_headers)
    assert batch.get_json()["results"][0]["status"] == "duplicate"
    assert mongo_db[PUBLIC].count_documents({}) == 0
    assert mongo_db[PROBE].count_documents({}) == 1
    # And the other way: published first, then disabled, then resent.
    second = result_payload()
    gated.post("/ingest", json=second, headers=auth_headers)
    mongo_db[MODELS].update_one({"model_id": MODEL}, {"$set": {"enabled": False}})
    assert gated.post("/ingest", json=second, headers=auth_headers).get_json() == {
        "status": "duplicate", "duplicate": True, "result_id": second["result_id"]}
    assert mongo_db[PUBLIC].count_documents({"result_id": second["result_id"]}) == 1
    assert mongo_db[PROBE].count_documents({"result_id": second["result_id"]}) == 0


def test_with_the_gate_off_an_unlisted_model_is_published(client, auth_headers, mongo_db):
    payload = result_payload()
    assert client.post("/ingest", json=payload, headers=auth_headers).get_json() == {
        "status": "created", "duplicate": False, "result_id": payload["result_id"]}
    assert mongo_db[PUBLIC].count_documents({}) == 1


def test_a_client_cannot_send_withheld_reason(gated, auth_headers, mongo_db):
    listed(mongo_db)
    answer = gated.post("/ingest", json=result_payload(withheld_reason="model_disabled"),
                        headers=auth_headers)
    assert answer.status_code == 422
    assert mongo_db[PUBLIC].count_documents({}) + mongo_db[PROBE].count_documents({}) == 0


def test_the_gate_setting_is_read_from_the_environment():
    env = {"MONGODB_URI": "mongodb://db.example:27017/", "INGEST_API_KEYS": keys_env(TEST_KEYS)}
    assert Settings.from_env(env).model_gate is False
    assert Settings.from_env({**env, "INGEST_MODEL_GATE": "true"}).model_gate is True


def test_the_runner_counts_a_withheld_result_as_delivered(mongo_uri, mongo_db_name, mongo_db,
                                                          make_settings):
    env = gunicorn_env(mongo_uri, mongo_db_name, INGEST_MODEL_GATE="true")
    with start_gunicorn(env, workers=1) as server:
        settings = make_settings(ingest_url=f"{server.url}/ingest",
                                 api_key=TEST_KEYS["runner-a"])
        outbox = Outbox(settings.state_dir)
        outbox.put(make_result("sim.unlisted-v1"))
        with IngestClient(settings) as client:
            report = outbox.drain(client)
    assert (report.delivered, report.dead, report.retry_later) == (1, 0, 0)
    assert report.withheld == 1
    assert outbox.status().pending == 0
    assert mongo_db[PROBE].find_one()["withheld_reason"] == "model_not_listed"
