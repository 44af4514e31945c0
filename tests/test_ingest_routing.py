"""Results are stored where their sample_role says: published on the charts, the rest off them."""

from __future__ import annotations

from dataclasses import replace

import pytest

from ingest_app import create_app
from ingest_app.settings import Settings, SettingsError
from tests.support.ingest import TEST_KEYS, keys_env, result_payload

PUBLIC, PROBE = "metrics_cloud_v2", "metrics_cloud_probe"


def test_a_published_result_is_stored_in_the_public_collection(client, auth_headers, mongo_db):
    payload = result_payload(sample_role="published")
    assert client.post("/ingest", json=payload, headers=auth_headers).status_code == 201
    assert mongo_db[PUBLIC].find_one({"result_id": payload["result_id"]})["sample_role"] == \
        "published"
    assert mongo_db[PROBE].count_documents({}) == 0


@pytest.mark.parametrize("role", ["shadow", "probe"])
def test_shadow_and_probe_results_go_to_the_probe_collection_only(client, auth_headers,
                                                                  mongo_db, role):
    payload = result_payload(sample_role=role, benchmark_profile_id="cloud-reasoning-v1")
    first = client.post("/ingest", json=payload, headers=auth_headers)
    again = client.post("/ingest", json=payload, headers=auth_headers)
    assert (first.status_code, again.status_code) == (201, 200)
    assert mongo_db[PROBE].count_documents({"result_id": payload["result_id"]}) == 1
    assert mongo_db[PUBLIC].count_documents({}) == 0
    # The read API and the charts only see the public collection.
    reader = {"X-API-Key": "kr-0123456789abcdefghijklmnopqrstuvwxyzAB"}
    assert client.get("/results", headers=reader).get_json()["results"] == []


def test_a_result_without_sample_role_is_published(client, auth_headers, mongo_db):
    payload = result_payload()
    payload.pop("sample_role", None)
    assert client.post("/ingest", json=payload, headers=auth_headers).status_code == 201
    assert mongo_db[PUBLIC].count_documents({"result_id": payload["result_id"]}) == 1
    assert mongo_db[PROBE].count_documents({}) == 0


def test_an_unknown_sample_role_is_refused_and_nothing_is_stored(client, auth_headers, mongo_db):
    answer = client.post("/ingest", json=result_payload(sample_role="public"),
                         headers=auth_headers)
    assert answer.status_code == 422
    assert "sample_role" in answer.get_json()["error"]["details"]["fields"]
    assert mongo_db[PUBLIC].count_documents({}) + mongo_db[PROBE].count_documents({}) == 0


def test_a_mixed_batch_is_split_by_role_and_answered_in_order(client, auth_headers, mongo_db):
    items = [result_payload(sample_role=role)
             for role in ("published", "shadow", "published", "probe")]
    items.append(dict(items[1]))  # a resend of the shadow item inside the same batch
    answer = client.post("/ingest/batch", json={"results": items}, headers=auth_headers)
    assert answer.status_code == 200
    statuses = [(a["result_id"], a["status"]) for a in answer.get_json()["results"]]
    assert statuses == [(item["result_id"], status) for item, status in
                        zip(items, ["created"] * 4 + ["duplicate"], strict=True)]
    assert {d["result_id"] for d in mongo_db[PUBLIC].find()} == \
        {items[0]["result_id"], items[2]["result_id"]}
    assert {d["result_id"] for d in mongo_db[PROBE].find()} == \
        {items[1]["result_id"], items[3]["result_id"]}


def test_the_probe_collection_has_the_unique_result_id_index(client, auth_headers, mongo_db):
    client.post("/ingest", json=result_payload(sample_role="probe"), headers=auth_headers)
    unique = [ix for ix in mongo_db[PROBE].list_indexes() if ix.get("unique")]
    assert [list(ix["key"]) for ix in unique] == [["result_id"]]


def test_the_probe_collection_is_configurable(ingest_settings, mongo_db):
    app = create_app(replace(ingest_settings, probe_collection="bedrock_probes"))
    try:
        with app.test_client() as client:
            answer = client.post("/ingest", json=result_payload(sample_role="shadow"),
                                 headers={"X-API-Key": TEST_KEYS["runner-a"]})
    finally:
        app.extensions["bench_ingest.db"].close()
    assert answer.status_code == 201
    assert mongo_db["bedrock_probes"].count_documents({}) == 1
    assert mongo_db[PROBE].count_documents({}) + mongo_db[PUBLIC].count_documents({}) == 0


def test_settings_read_the_probe_collection_and_refuse_one_shared_with_results():
    env = {"MONGODB_URI": "mongodb://db.example:27017/", "INGEST_API_KEYS": keys_env(TEST_KEYS)}
    assert Settings.from_env(env).probe_collection == PROBE
    assert Settings.from_env({**env, "MONGODB_PROBE_COLLECTION": "p2"}).probe_collection == "p2"
    with pytest.raises(SettingsError, match="MONGODB_PROBE_COLLECTION"):
        Settings.from_env({**env, "MONGODB_PROBE_COLLECTION": PUBLIC})
