"""Beside other writers: their id-less documents neither block our indexes nor get refused by them.

The collections the app writes to are shared with writers of other providers' benchmarks
that put no result_id or error_id in their documents. The unique indexes must be partial
(only documents carrying the id) or the first of our writes fails (the index cannot be
built) or their second id-less insert fails (a duplicate null).

The test server (nx-27017) treats missing values as distinct and keeps no partial filter,
so it cannot tell a partial index from a plain one: the stored-document tests below pass
on it either way. That is why the createIndexes command the app sends is asserted too,
through pymongo's command monitoring. With TEST_MONGODB_URI pointing at a real MongoDB the
same tests check the server's own behaviour, and the clash tests run.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta

import pymongo
import pytest
from pymongo import monitoring

from ingest_app import create_app, db
from ingest_app import health as model_health
from tests.support.ingest import TEST_KEYS, failure_payload, result_payload

HEADERS = {"X-API-Key": TEST_KEYS["runner-a"]}
REAL_MONGODB = bool(os.environ.get("TEST_MONGODB_URI"))


def legacy_results(n: int, provider: str = "openai") -> list[dict]:
    """Rows as another writer stores them: no result_id, its own fields."""
    start = datetime(2025, 6, 1, tzinfo=UTC)
    return [{"provider": provider, "model_name": f"legacy-model-{i % 3}",
             "run_ts": start + timedelta(minutes=i),
             "gen_ts": start + timedelta(minutes=i, seconds=2),
             "requested_tokens": 64, "output_tokens": 64, "generate_time": 1.9,
             "tokens_per_second": 33.7, "time_to_first_token": 0.4, "temperature": 0.1,
             "streaming": True, "metrics_schema_version": 2, "transport_provider": "direct"}
            for i in range(n)]


def legacy_errors(n: int) -> list[dict]:
    """Failures as another writer stores them: no error_id."""
    return [{"provider": "anthropic", "model_name": "legacy-model", "ts": datetime.now(UTC),
             "error_type": "RateLimitError", "message": f"429 number {i}"} for i in range(n)]


class CreateIndexesSpy(monitoring.CommandListener):
    """Keeps every createIndexes command a client sends."""

    def __init__(self) -> None:
        self.commands: list[dict] = []

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if event.command_name == "createIndexes":
            self.commands.append(dict(event.command))

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


@pytest.fixture
def seeded(mongo_db):
    """The shared collections as the real database has them, before the app starts."""
    mongo_db["metrics_cloud_v2"].insert_many(legacy_results(6))
    mongo_db["metrics_cloud_probe"].insert_many(legacy_results(3, provider="together"))
    mongo_db["errors_cloud"].insert_many(legacy_errors(4))
    return mongo_db


@pytest.fixture
def spy(monkeypatch):
    """Every createIndexes command the app's own clients send during the test."""
    listener = CreateIndexesSpy()
    real = pymongo.MongoClient

    def listening(*args, **kwargs):
        return real(*args, event_listeners=[listener], **kwargs)

    monkeypatch.setattr(db.pymongo, "MongoClient", listening)
    return listener


@pytest.fixture
def seeded_client(seeded, ingest_settings):
    application = create_app(ingest_settings)
    with application.test_client() as test_client:
        yield test_client
    application.extensions["bench_ingest.db"].close()


def test_results_are_stored_exactly_once_beside_id_less_documents(seeded_client, seeded):
    payload = result_payload()
    first = seeded_client.post("/ingest", json=payload, headers=HEADERS)
    again = seeded_client.post("/ingest", json=payload, headers=HEADERS)
    assert (first.status_code, again.status_code) == (201, 200)
    assert seeded["metrics_cloud_v2"].count_documents({"result_id": payload["result_id"]}) == 1
    assert seeded["metrics_cloud_v2"].count_documents({}) == 7


def test_a_batch_and_a_probe_result_are_stored_once_beside_id_less_documents(seeded_client,
                                                                             seeded):
    items = [result_payload() for _ in range(3)]
    probe = result_payload(sample_role="probe")
    for _ in range(2):
        answer = seeded_client.post("/ingest/batch", json={"results": items}, headers=HEADERS)
        assert answer.status_code == 200
        seeded_client.post("/ingest", json=probe, headers=HEADERS)
    assert [a["status"] for a in answer.get_json()["results"]] == ["duplicate"] * 3
    assert seeded["metrics_cloud_v2"].count_documents({"result_id": {"$exists": True}}) == 3
    assert seeded["metrics_cloud_probe"].count_documents({"result_id": probe["result_id"]}) == 1


def test_failures_are_stored_exactly_once_beside_id_less_documents(seeded_client, seeded):
    payload = failure_payload()
    codes = [seeded_client.post("/ingest/error", json=payload, headers=HEADERS).status_code
             for _ in range(2)]
    assert codes == [201, 200]
    assert seeded["errors_cloud"].count_documents({"error_id": payload["error_id"]}) == 1
    assert seeded["errors_cloud"].count_documents({}) == 5


def test_a_legacy_writer_still_inserts_id_less_documents_after_the_app_wrote(seeded_client,
                                                                             seeded):
    assert seeded_client.post("/ingest", json=result_payload(), headers=HEADERS).status_code == 201
    assert seeded_client.post("/ingest/error", json=failure_payload(),
                              headers=HEADERS).status_code == 201
    # The other writers go on exactly as before: one at a time and in bulk.
    seeded["metrics_cloud_v2"].insert_one(legacy_results(1)[0])
    seeded["metrics_cloud_v2"].insert_many(legacy_results(5))
    seeded["metrics_cloud_v2"].insert_one({**legacy_results(1)[0], "result_id": None})
    seeded["metrics_cloud_v2"].insert_one({**legacy_results(1)[0], "result_id": None})
    seeded["errors_cloud"].insert_many(legacy_errors(3))
    seeded["metrics_cloud_probe"].insert_many(legacy_results(2))
    assert seeded["metrics_cloud_v2"].count_documents({}) == 6 + 1 + 1 + 5 + 2
    assert seeded["errors_cloud"].count_documents({}) == 4 + 1 + 3
    assert seeded["metrics_cloud_probe"].count_documents({}) == 5


def test_the_app_asks_for_partial_unique_indexes(spy, seeded_client, seeded):
    # nx-27017 cannot tell partial from plain (see the module docstring): assert the request.
    assert seeded_client.post("/ingest", json=result_payload(), headers=HEADERS).status_code == 201
    # The health indexes come with the first recount.
    assert model_health.settle(timeout=30, database=seeded.name)
    sent = {command["createIndexes"]: {ix["name"]: ix for ix in command["indexes"]}
            for command in spy.commands}
    assert set(sent) == {"metrics_cloud_v2", "metrics_cloud_probe", "errors_cloud",
                         "bench_model_health", "models"}
    # One health document a model, as the other writers index it (docs/contract.md section 5).
    assert [ix for ix in sent["bench_model_health"].values() if ix.get("unique")] == \
        [{"key": {"provider": 1, "model_id": 1}, "name": "provider_1_model_id_1", "unique": True}]
    assert not [ix for ix in sent["models"].values() if ix.get("unique")]
    for collection, field in (("metrics_cloud_v2", "result_id"),
                              ("metrics_cloud_probe", "result_id"), ("errors_cloud", "error_id")):
        unique = [ix for ix in sent[collection].values() if ix.get("unique")]
        assert unique == [{"key": {field: 1}, "name": f"{field}_1", "unique": True,
                           "partialFilterExpression": {field: {"$type": "string"}}}]


def test_ensure_indexes_command_asks_for_partial_unique_indexes(spy, seeded, ingest_settings):
    application = create_app(ingest_settings)
    try:
        outcome = application.test_cli_runner().invoke(args=["ensure-indexes"])
    finally:
        application.extensions["bench_ingest.db"].close()
    assert outcome.exit_code == 0, outcome.output
    partial = [ix.get("partialFilterExpression") for command in spy.commands
               for ix in command["indexes"] if ix.get("unique")]
    # Then bench_model_health's (provider, model_id) and provider_catalog's (provider,
    # model_id, region), which every document of theirs carries.
    assert partial == [{"result_id": {"$type": "string"}}] * 2 + \
        [{"error_id": {"$type": "string"}}, None, None]


# An index listing as MongoDB reports it (listIndexes), for the clash check.
ID_INDEX = {"v": 2, "key": {"_id": 1}, "name": "_id_"}
OURS = {"v": 2, "key": {"result_id": 1}, "name": "result_id_1", "unique": True,
        "partialFilterExpression": {"result_id": {"$type": "string"}}}


def test_a_listing_with_our_partial_index_has_no_clash():
    listing = [ID_INDEX, OURS, {"v": 2, "key": {"run_ts": -1}, "name": "run_ts_-1"}]
    assert db.index_mismatch("llm-bench.metrics_cloud_v2", listing, db.RESULT_INDEXES) is None


def test_an_older_plain_unique_index_of_the_same_name_is_named_with_its_fix_in_one_line():
    plain = {"v": 2, "key": {"result_id": 1}, "name": "result_id_1", "unique": True}
    line = db.index_mismatch("llm-bench.metrics_cloud_v2", [ID_INDEX, plain], db.RESULT_INDEXES)
    assert line is not None and "\n" not in line
    assert "result_id_1" in line and "partialFilterExpression" in line
    assert 'getCollection("metrics_cloud_v2").dropIndex("result_id_1")' in line
    assert "ensure-indexes" in line


def test_a_hand_made_unique_index_on_the_same_keys_beside_ours_is_named():
    by_hand = {"v": 2, "key": {"result_id": 1.0}, "name": "rid_unique", "unique": True}
    line = db.index_mismatch("llm-bench.metrics_cloud_v2", [ID_INDEX, OURS, by_hand],
                             db.RESULT_INDEXES)
    assert line is not None and "rid_unique" in line and 'dropIndex("rid_unique")' in line


@pytest.mark.skipif(not REAL_MONGODB, reason="nx-27017 keeps no partial filter and accepts a "
                    "clashing index spec silently; needs TEST_MONGODB_URI (a real MongoDB)")
def test_an_older_plain_unique_index_stops_ensure_indexes_and_writes_with_its_fix(
        mongo_db, ingest_settings):
    mongo_db["metrics_cloud_v2"].create_index([("result_id", 1)], unique=True)
    application = create_app(ingest_settings)
    try:
        outcome = application.test_cli_runner().invoke(args=["ensure-indexes"])
        with application.test_client() as test_client:
            answer = test_client.post("/ingest", json=result_payload(), headers=HEADERS)
    finally:
        application.extensions["bench_ingest.db"].close()
    assert outcome.exit_code == 1
    assert 'dropIndex("result_id_1")' in outcome.output
    assert len(outcome.output.strip().splitlines()) == 1
    assert answer.status_code == 503
    assert mongo_db["metrics_cloud_v2"].count_documents({}) == 0
