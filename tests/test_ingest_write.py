"""The write routes store each result and failure exactly once, in the contract's shape."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

import bench_contract as contract
from ingest_app import db
from ingest_app.schemas import fingerprint
from tests.support.ingest import TEST_KEYS, TEST_READ_KEYS, failure_payload, result_payload


def test_result_is_stored_with_bson_dates_runner_id_and_received_at(client, auth_headers,
                                                                     mongo_db):
    payload = result_payload(run_ts="2026-03-01T10:00:00.123456+02:00")
    answer = client.post("/ingest", json=payload, headers=auth_headers)
    assert answer.status_code == 201
    assert answer.get_json() == {"status": "created", "duplicate": False,
                                 "result_id": payload["result_id"]}
    stored = mongo_db["metrics_cloud_v2"].find_one({"result_id": payload["result_id"]})
    assert stored["run_ts"] == datetime(2026, 3, 1, 8, 0, 0, 123000)  # UTC, milliseconds
    assert isinstance(stored["gen_ts"], datetime)
    assert isinstance(stored["received_at"], datetime)
    assert stored["runner_id"] == "runner-a"
    assert stored["time_to_first_token"] == payload["time_to_first_token"]
    assert stored["model_name"] == payload["model_name"]


def test_explicit_null_ttft_is_stored_as_null_not_zero(client, auth_headers, mongo_db):
    payload = result_payload(time_to_first_token=None, output_tokens=0)
    assert client.post("/ingest", json=payload, headers=auth_headers).status_code == 201
    stored = mongo_db["metrics_cloud_v2"].find_one({"result_id": payload["result_id"]})
    assert "time_to_first_token" in stored and stored["time_to_first_token"] is None


def test_duplicate_result_is_stored_once(client, auth_headers, mongo_db):
    payload = result_payload()
    first = client.post("/ingest", json=payload, headers=auth_headers)
    second = client.post("/ingest", json=payload, headers=auth_headers)
    assert (first.status_code, second.status_code) == (201, 200)
    assert second.get_json()["duplicate"] is True
    assert mongo_db["metrics_cloud_v2"].count_documents({"result_id": payload["result_id"]}) == 1


def test_resend_with_another_key_is_still_a_duplicate(client, mongo_db):
    payload = result_payload()
    client.post("/ingest", json=payload, headers={"X-API-Key": TEST_KEYS["runner-a"]})
    again = client.post("/ingest", json=payload, headers={"X-API-Key": TEST_KEYS["runner-b"]})
    assert again.status_code == 200
    stored = mongo_db["metrics_cloud_v2"].find_one({"result_id": payload["result_id"]})
    assert stored["runner_id"] == "runner-a"


def test_resend_with_same_instant_in_another_offset_is_a_duplicate(client, auth_headers):
    payload = result_payload(run_ts="2026-03-01T10:00:00.5+00:00")
    client.post("/ingest", json=payload, headers=auth_headers)
    same_instant = {**payload, "run_ts": "2026-03-01T12:00:00.500+02:00"}
    assert client.post("/ingest", json=same_instant, headers=auth_headers).status_code == 200


def test_same_id_different_content_is_a_conflict_and_leaves_the_stored_document(
        client, auth_headers, mongo_db):
    payload = result_payload()
    client.post("/ingest", json=payload, headers=auth_headers)
    before = mongo_db["metrics_cloud_v2"].find_one({"result_id": payload["result_id"]})
    answer = client.post("/ingest", json={**payload, "output_tokens": 1}, headers=auth_headers)
    assert answer.status_code == 409
    error = answer.get_json()["error"]
    assert error["code"] == "conflict"
    assert error["details"]["differing_fields"] == ["output_tokens"]
    after = mongo_db["metrics_cloud_v2"].find_one({"result_id": payload["result_id"]})
    assert after == before
    assert mongo_db["metrics_cloud_v2"].count_documents({}) == 1


def test_true_in_place_of_1_in_misc_is_a_conflict_not_a_duplicate(client, auth_headers,
                                                                    mongo_db):
    payload = result_payload(misc={"cache_hit": 1, "tags": [0, {"warm": 1}]})
    assert client.post("/ingest", json=payload, headers=auth_headers).status_code == 201
    resend = client.post("/ingest", json=payload, headers=auth_headers)
    assert resend.status_code == 200
    changed = {**payload, "misc": {"cache_hit": 1, "tags": [0, {"warm": True}]}}
    answer = client.post("/ingest", json=changed, headers=auth_headers)
    assert answer.status_code == 409
    assert answer.get_json()["error"]["details"]["differing_fields"] == ["misc"]
    stored = mongo_db["metrics_cloud_v2"].find_one({"result_id": payload["result_id"]})
    assert stored["misc"]["tags"][1]["warm"] == 1 and stored["misc"]["tags"][1]["warm"] is not True


def test_failure_is_stored_with_a_fingerprint_shared_by_repeats(client, auth_headers, mongo_db):
    first = failure_payload(message="Throttled request 1f2e3d4c5b6a7f8e9d0c after 3 tries")
    second = failure_payload(message="Throttled request 0a9b8c7d6e5f4a3b2c1d after 4 tries")
    for payload in (first, second):
        answer = client.post("/ingest/error", json=payload, headers=auth_headers)
        assert answer.status_code == 201
        assert answer.get_json()["error_id"] == payload["error_id"]
    stored = list(mongo_db["errors_cloud"].find())
    assert len(stored) == 2
    assert stored[0]["fingerprint"] == stored[1]["fingerprint"]
    assert all(isinstance(doc["ts"], datetime) and doc["runner_id"] == "runner-a"
               for doc in stored)


def test_fingerprint_tells_different_models_apart():
    one = failure_payload()
    assert fingerprint(one) != fingerprint({**one, "model_name": "sim.other-v1"})
    assert fingerprint(one) != fingerprint({**one, "error_kind": "auth"})


def test_duplicate_failure_is_stored_once_and_conflict_answers_409(client, auth_headers,
                                                                    mongo_db):
    payload = failure_payload()
    codes = [client.post("/ingest/error", json=p, headers=auth_headers).status_code
             for p in (payload, payload, {**payload, "stage": "stream"})]
    assert codes == [201, 200, 409]
    assert mongo_db["errors_cloud"].count_documents({}) == 1
    assert mongo_db["errors_cloud"].find_one()["stage"] == payload["stage"]


def test_batch_answers_one_status_per_item_in_order(client, auth_headers, mongo_db):
    stored = result_payload()
    client.post("/ingest", json=stored, headers=auth_headers)
    fresh = result_payload()
    items = [fresh, stored, {**stored, "output_tokens": 2}, {**result_payload(), "bogus": 1},
             "not an object", {**fresh}]
    answer = client.post("/ingest/batch", json={"results": items}, headers=auth_headers)
    assert answer.status_code == 200
    statuses = [item["status"] for item in answer.get_json()["results"]]
    assert statuses == ["created", "duplicate", "conflict", "rejected", "rejected", "duplicate"]
    assert answer.get_json()["results"][3]["errors"] == {"bogus": ["Unknown field."]}
    assert mongo_db["metrics_cloud_v2"].count_documents({}) == 2
    assert mongo_db["metrics_cloud_v2"].find_one({"result_id": stored["result_id"]})[
        "output_tokens"] == stored["output_tokens"]


def test_batch_resend_finds_every_item_already_stored(client, auth_headers, mongo_db):
    items = [result_payload() for _ in range(50)]
    first = client.post("/ingest/batch", json={"results": items}, headers=auth_headers)
    again = client.post("/ingest/batch", json={"results": items}, headers=auth_headers)
    assert {i["status"] for i in first.get_json()["results"]} == {"created"}
    assert {i["status"] for i in again.get_json()["results"]} == {"duplicate"}
    assert mongo_db["metrics_cloud_v2"].count_documents({}) == 50


def test_batch_of_the_maximum_size_is_accepted(client, auth_headers, mongo_db):
    items = [result_payload() for _ in range(contract.MAX_BATCH_ITEMS)]
    answer = client.post("/ingest/batch", json={"results": items}, headers=auth_headers)
    assert answer.status_code == 200
    assert mongo_db["metrics_cloud_v2"].count_documents({}) == contract.MAX_BATCH_ITEMS


@pytest.mark.parametrize(
    ("envelope", "named"),
    [
        ({"results": [result_payload()] * (contract.MAX_BATCH_ITEMS + 1)}, "results"),
        ({"results": {"a": 1}}, "results"),
        ({}, "results"),
        ({"results": [], "extra": True}, "extra"),
    ],
)
def test_bad_batch_envelope_is_refused_whole(client, auth_headers, mongo_db, envelope, named):
    answer = client.post("/ingest/batch", json=envelope, headers=auth_headers)
    assert answer.status_code == 422
    assert named in answer.get_json()["error"]["details"]["fields"]
    assert mongo_db["metrics_cloud_v2"].count_documents({}) == 0


def test_indexes_exist_before_the_first_write_is_acknowledged(client, auth_headers, mongo_db):
    assert client.post("/ingest", json=result_payload(), headers=auth_headers).status_code == 201
    results = {tuple(k for k, _ in ix["key"].items()): ix.get("unique", False)
               for ix in mongo_db["metrics_cloud_v2"].list_indexes()}
    errors = {tuple(k for k, _ in ix["key"].items()): ix.get("unique", False)
              for ix in mongo_db["errors_cloud"].list_indexes()}
    # Field order and uniqueness; the test server does not report a key's direction.
    assert results[("result_id",)] is True
    assert ("provider", "model_name", "run_ts") in results and ("run_ts",) in results
    assert errors[("error_id",)] is True
    assert {("provider", "model_name", "ts"), ("ts",), ("fingerprint", "ts")} <= set(errors)


def test_ensure_indexes_is_idempotent(app, mongo_db):
    cfg = app.extensions["bench_ingest.settings"]
    db.ensure_indexes(mongo_db, cfg)
    db.ensure_indexes(mongo_db, cfg)
    assert len(list(mongo_db["metrics_cloud_v2"].list_indexes())) == 4
    assert len(list(mongo_db["errors_cloud"].list_indexes())) == 5


def test_ensure_indexes_command_creates_them(app, mongo_db):
    outcome = app.test_cli_runner().invoke(args=["ensure-indexes"])
    assert outcome.exit_code == 0, outcome.output
    assert "metrics_cloud_v2" in outcome.output
    assert any(ix.get("unique") for ix in mongo_db["errors_cloud"].list_indexes())


def test_received_at_is_close_to_now(client, auth_headers, mongo_db):
    payload = result_payload()
    client.post("/ingest", json=payload, headers=auth_headers)
    stored = mongo_db["metrics_cloud_v2"].find_one({"result_id": payload["result_id"]})
    age = datetime.now(UTC).replace(tzinfo=None) - stored["received_at"]
    assert 0 <= age.total_seconds() < 60


def test_writes_are_acknowledged_even_when_the_uri_asks_for_w0(ingest_settings, mongo_db):
    from dataclasses import replace

    from ingest_app import create_app

    unacknowledged = replace(ingest_settings, mongodb_uri=ingest_settings.mongodb_uri + "?w=0")
    app = create_app(unacknowledged)
    payload = result_payload()
    try:
        with app.test_client() as client:
            headers = {"X-API-Key": TEST_KEYS["runner-a"]}
            first = client.post("/ingest", json=payload, headers=headers)
            # With w=0 the duplicate-key error would never come back and this would say 201.
            second = client.post("/ingest", json=payload, headers=headers)
    finally:
        app.extensions["bench_ingest.db"].close()
    assert (first.status_code, second.status_code) == (201, 200)
    assert mongo_db["metrics_cloud_v2"].count_documents({}) == 1


def test_a_bug_answers_500_in_the_one_shape_without_a_traceback(app, caplog):
    def broken():
        raise KeyError("internal detail")

    app.add_url_rule("/broken", view_func=broken)
    with app.test_client() as client:
        answer = client.get("/broken")
    assert answer.status_code == 500
    error = answer.get_json()["error"]
    assert error["code"] == "internal_error"
    assert "internal detail" not in answer.get_data(as_text=True)
    assert any(error["request_id"] in record.getMessage() for record in caplog.records)


def test_a_dropped_collection_gets_its_unique_index_back(client, auth_headers, mongo_db,
                                                         monkeypatch):
    assert client.post("/ingest", json=result_payload(), headers=auth_headers).status_code == 201
    mongo_db.drop_collection("metrics_cloud_v2")
    monkeypatch.setattr(db, "INDEX_RECHECK_SECONDS", 0.0)
    payload = result_payload()
    codes = [client.post("/ingest", json=payload, headers=auth_headers).status_code
             for _ in range(2)]
    assert codes == [201, 200]
    assert mongo_db["metrics_cloud_v2"].count_documents({}) == 1


def test_stored_duplicates_that_block_the_unique_index_hold_writes_with_503(client, auth_headers,
                                                                            mongo_db):
    # A collection filled by some older tool: two documents share one result_id.
    twin = {"result_id": "5d7e9f0a-1b2c-4d3e-8f4a-5b6c7d8e9f0a", "provider": "bedrock"}
    mongo_db["metrics_cloud_v2"].insert_many([dict(twin), dict(twin)])
    answer = client.post("/ingest", json=result_payload(), headers=auth_headers)
    assert answer.status_code == 503
    assert answer.headers["Retry-After"]
    assert mongo_db["metrics_cloud_v2"].count_documents({}) == 2


@pytest.mark.parametrize(("one", "other"), [
    ("Timed out, trace 1-5f8a2b3c-4d5e6f7a8b9c0d1e2f3a4b5c",
     "Timed out, trace 1-6e0d1c2b-9a8b7c6d5e4f3a2b1c0d9e8f"),
    ("Throttled (request req_1a2b3c, retry in 3s)", "Throttled (request req_9f8e7d, retry in 12s)"),
    ("Stream ended at chunk 0x7fa3 of call c4f2", "Stream ended at chunk 0x1b2e of call a9d1"),
])
def test_fingerprint_is_shared_by_messages_that_differ_only_in_ids_and_numbers(one, other):
    base = failure_payload()
    assert fingerprint({**base, "message": one}) == fingerprint({**base, "message": other})
    assert fingerprint({**base, "message": one}) != fingerprint({**base, "message": "Other"})


def test_credentials_in_a_failure_message_are_redacted_before_storing(client, auth_headers,
                                                                      mongo_db):
    secrets = [TEST_KEYS["runner-b"], TEST_READ_KEYS["dashboard"], "AKIAABCDEFGHIJKLMNOP",
               "ASIAABCDEFGHIJKLMNOP", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"]
    digest = "da39a3ee5e6b4b0d3255bfef95601890afd80709"
    message = ("denied: key " + secrets[0] + ", read " + secrets[1] + ", id " + secrets[2]
               + ", session " + secrets[3] + ", aws_secret_access_key=" + secrets[4]
               + ", commit " + digest)
    payload = failure_payload(message=message)
    answer = client.post("/ingest/error", json=payload, headers=auth_headers)
    assert answer.status_code == 201
    stored = mongo_db["errors_cloud"].find_one({"error_id": payload["error_id"]})
    for secret in secrets:
        assert secret not in stored["message"]
    assert stored["message"].startswith("denied: key [redacted]")
    # What only looks long is kept: a hex digest is no credential.
    assert stored["message"].endswith(f"commit {digest}")
    # A resend of the same record is still a duplicate, not a conflict.
    again = client.post("/ingest/error", json=payload, headers=auth_headers)
    assert again.status_code == 200 and again.get_json()["duplicate"] is True
