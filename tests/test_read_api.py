"""GET /results and GET /summary against the real MongoDB-protocol server."""

from __future__ import annotations

import base64
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from ingest_app import create_app, db
from ingest_app.settings import Settings
from tests.support.ingest import TEST_KEYS, TEST_READ_KEYS
from tests.support.seed import failure_doc, result_doc, seed

READ_HEADERS = {"X-API-Key": TEST_READ_KEYS["dashboard"]}


@pytest.fixture(autouse=True)
def _indexes(mongo_db, ingest_settings):
    """The production indexes, so every query runs as it does in service."""
    db.ensure_indexes(mongo_db, ingest_settings)


def _now() -> datetime:
    # Whole milliseconds: what a BSON date keeps.
    now = datetime.now(UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


def _get(client, path, **params):
    response = client.get(path, query_string=params, headers=READ_HEADERS)
    return response, response.get_json()


def _walk(client, **params):
    """Every result, following `next` until it is null."""
    seen, pages, cursor = [], 0, None
    while True:
        query = dict(params, **({"cursor": cursor} if cursor else {}))
        response, body = _get(client, "/results", **query)
        assert response.status_code == 200, body
        seen += body["results"]
        pages += 1
        cursor = body["next"]
        if cursor is None:
            return seen, pages
        assert pages < 100


def test_results_are_newest_first_with_utc_rfc3339_times_and_no_object_id(client, mongo_db):
    now = _now()
    seed(mongo_db, results=[result_doc("m", now - timedelta(minutes=i)) for i in (3, 1, 2)])
    response, body = _get(client, "/results")
    assert response.status_code == 200
    assert response.headers["Cache-Control"] == "no-store"
    assert body["next"] is None
    stamps = [r["run_ts"] for r in body["results"]]
    assert stamps == [(now - timedelta(minutes=i)).isoformat(timespec="milliseconds")
                      .replace("+00:00", "Z") for i in (1, 2, 3)]
    first = body["results"][0]
    assert "_id" not in first
    assert first["received_at"].endswith("Z") and first["gen_ts"].endswith("Z")
    assert first["runner_id"] == "runner-a" and first["model_name"] == "m"


def test_results_filter_by_provider_and_model(client, mongo_db):
    now = _now()
    seed(mongo_db, results=[
        result_doc("a", now - timedelta(minutes=1)),
        result_doc("b", now - timedelta(minutes=2)),
        result_doc("a", now - timedelta(minutes=3), provider="other"),
    ])
    _, body = _get(client, "/results", model_name="a")
    assert sorted(r["provider"] for r in body["results"]) == ["bedrock", "other"]
    _, body = _get(client, "/results", provider="bedrock", model_name="a")
    assert [(r["provider"], r["model_name"]) for r in body["results"]] == [("bedrock", "a")]
    _, body = _get(client, "/results", provider="bedrock")
    assert [r["model_name"] for r in body["results"]] == ["a", "b"]
    _, body = _get(client, "/results", model_name="nothing-like-it")
    assert body == {"results": [], "next": None}


def test_since_is_inclusive_and_until_exclusive(client, mongo_db):
    base = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)
    seed(mongo_db, results=[result_doc(f"m{i}", base + timedelta(minutes=i)) for i in range(5)])
    _, body = _get(client, "/results", since="2026-03-10T12:01:00Z",
                   until="2026-03-10T14:03:00+02:00")
    assert [r["model_name"] for r in body["results"]] == ["m2", "m1"]


def test_an_unencoded_plus_in_the_offset_is_still_read_as_a_timezone(client, mongo_db):
    base = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)
    seed(mongo_db, results=[result_doc("m", base), result_doc("m", base - timedelta(hours=1))])
    response = client.get("/results?since=2026-03-10T12:00:00+00:00", headers=READ_HEADERS)
    assert response.status_code == 200
    assert len(response.get_json()["results"]) == 1


@pytest.mark.parametrize(("params", "field"), [
    ({"since": "2026-03-10T12:00:00"}, "since"),
    ({"since": "2026-03-10"}, "since"),
    ({"until": "yesterday"}, "until"),
    ({"since": "9999-12-31T23:59:59-23:59"}, "since"),
    ({"until": "0001-01-01T00:00:00+23:59"}, "until"),
    ({"since": "20260310T120000Z"}, "since"),
    ({"since": "2026-W10-2T12:00Z"}, "since"),
    ({"since": "2026-03-10T12:00:00Z", "until": "2026-03-10T11:00:00Z"}, "until"),
    ({"limit": "0"}, "limit"),
    ({"limit": "1001"}, "limit"),
    ({"limit": "ten"}, "limit"),
    ({"limit": "-5"}, "limit"),
    ({"limit": "9" * 5000}, "limit"),
    ({"limit": "\u0661\u0662"}, "limit"),
    ({"cursor": "not-a-cursor"}, "cursor"),
    ({"cursor": base64.urlsafe_b64encode(b"1:zz").decode()}, "cursor"),
    ({"model_name": ""}, "model_name"),
    ({"sort": "asc"}, "sort"),
])
def test_bad_query_parameters_answer_422_naming_the_parameter(client, params, field):
    response, body = _get(client, "/results", **params)
    assert response.status_code == 422
    assert body["error"]["code"] == "validation_error"
    assert field in body["error"]["details"]["fields"]
    assert body["error"]["request_id"]


def test_limit_defaults_to_100_and_the_cursor_reaches_every_result_once(client, mongo_db):
    now = _now()
    seed(mongo_db, results=[result_doc("m", now - timedelta(seconds=i)) for i in range(250)])
    _, body = _get(client, "/results")
    assert len(body["results"]) == 100 and body["next"]
    seen, pages = _walk(client)
    assert pages == 3
    assert len({r["result_id"] for r in seen}) == 250 == len(seen)
    assert [r["run_ts"] for r in seen] == sorted((r["run_ts"] for r in seen), reverse=True)


def test_paging_through_many_results_sharing_one_timestamp_skips_and_repeats_none(
        client, mongo_db):
    now = _now()
    tied = now - timedelta(minutes=5)
    docs = ([result_doc("m", now - timedelta(minutes=1))]
            + [result_doc("m", tied) for _ in range(23)]
            + [result_doc("m", now - timedelta(minutes=9)) for _ in range(3)])
    seed(mongo_db, results=docs)
    seen, pages = _walk(client, limit="4")
    assert pages == 7
    assert sorted(r["result_id"] for r in seen) == sorted(d["result_id"] for d in docs)
    stamps = [r["run_ts"] for r in seen]
    assert stamps == sorted(stamps, reverse=True)


def test_a_page_that_ends_exactly_at_the_last_result_has_no_next(client, mongo_db):
    now = _now()
    seed(mongo_db, results=[result_doc("m", now - timedelta(seconds=i)) for i in range(4)])
    _, body = _get(client, "/results", limit="4")
    assert len(body["results"]) == 4 and body["next"] is None


def test_the_cursor_keeps_the_filters_of_the_walk(client, mongo_db):
    now = _now()
    seed(mongo_db, results=[result_doc(m, now - timedelta(seconds=i))
                            for i in range(10) for m in ("a", "b")])
    seen, _ = _walk(client, model_name="a", limit="3",
                    since=(now - timedelta(seconds=7)).isoformat())
    assert {r["model_name"] for r in seen} == {"a"}
    assert len(seen) == 8


def test_empty_database_answers_no_results_and_no_models(client):
    _, body = _get(client, "/results")
    assert body == {"results": [], "next": None}
    response, body = _get(client, "/summary")
    assert response.status_code == 200
    assert body["window"] == "24h" and body["models"] == []


def test_summary_has_one_row_per_model_with_the_window_figures(client, mongo_db):
    now = _now()
    seed(
        mongo_db,
        results=[result_doc("fast", now - timedelta(hours=h), tokens_per_second=100.0 + h)
                 for h in range(1, 5)]
        + [result_doc("slow", now - timedelta(minutes=10), tokens_per_second=9.0, ttft=1.5),
           result_doc("slow", now - timedelta(hours=30), tokens_per_second=1.0)],
        failures=[failure_doc("slow", now - timedelta(minutes=1), error_kind="throttled")],
    )
    response, body = _get(client, "/summary", window="24h")
    assert response.status_code == 200
    assert [m["model_name"] for m in body["models"]] == ["fast", "slow"]
    fast, slow = body["models"]
    assert (fast["runs"], fast["failures"], fast["success_rate"]) == (4, 0, 1.0)
    assert fast["last_outcome"] == "ok"
    assert fast["tokens_per_second"]["median"] == pytest.approx(102.5)
    assert (slow["runs"], slow["failures"], slow["success_rate"]) == (2, 1, 0.5)
    assert slow["last_outcome"] == "throttled"
    assert slow["last_run"].endswith("Z")
    assert slow["time_to_first_token"] == {"median": 1.5, "p90": 1.5}
    _, wide = _get(client, "/summary", window="7d")
    assert [m["runs"] for m in wide["models"]] == [4, 3]
    assert wide["window"] == "7d"


@pytest.mark.parametrize("window", ["24", "0h", "1y", "400d", "abc", "24h\n"])
def test_summary_refuses_a_bad_window_with_422(client, window):
    response, body = _get(client, "/summary", window=window)
    assert response.status_code == 422
    assert "window" in body["error"]["details"]["fields"]


@pytest.mark.parametrize("path", ["/results", "/summary"])
def test_read_routes_are_closed_without_a_key(client, path):
    response = client.get(path)
    assert response.status_code == 401
    assert response.get_json()["error"]["code"] == "unauthorized"
    wrong = client.get(path, headers={"X-API-Key": "k" * 40})
    assert wrong.status_code == 401
    assert wrong.get_json()["error"]["message"] == response.get_json()["error"]["message"]


@pytest.mark.parametrize("path", ["/results", "/summary"])
def test_read_routes_accept_write_keys_read_keys_and_bearer(client, path):
    assert client.get(path, headers={"X-API-Key": TEST_KEYS["runner-b"]}).status_code == 200
    assert client.get(path, headers=READ_HEADERS).status_code == 200
    bearer = {"Authorization": f"Bearer {TEST_READ_KEYS['dashboard']}"}
    assert client.get(path, headers=bearer).status_code == 200


def test_a_key_in_the_query_string_is_refused_even_when_valid(client):
    response = client.get("/results", query_string={"api_key": TEST_KEYS["runner-a"]})
    assert response.status_code == 401
    assert TEST_KEYS["runner-a"] not in response.get_data(as_text=True)


def test_public_read_opens_results_and_summary_without_a_key(ingest_settings, mongo_db):
    app = create_app(replace(ingest_settings, public_read=True))
    try:
        with app.test_client() as client:
            assert client.get("/results").status_code == 200
            assert client.get("/summary").status_code == 200
            leaked = client.get("/summary", query_string={"token": TEST_KEYS["runner-a"]})
            assert leaked.status_code == 401
    finally:
        app.extensions["bench_ingest.db"].close()


@pytest.mark.kills_database
def test_summary_answers_503_with_retry_after_when_the_database_is_down(killable_mongo):
    settings = Settings(mongodb_uri=killable_mongo.uri, mongodb_db="down",
                        api_keys=tuple(TEST_KEYS.items()), db_timeout_seconds=0.5,
                        connect_timeout_ms=500)
    killable_mongo.stop()
    app = create_app(settings)
    try:
        with app.test_client() as client:
            for path in ("/summary", "/results"):
                response = client.get(path, headers={"X-API-Key": TEST_KEYS["runner-a"]})
                assert response.status_code == 503
                assert response.headers["Retry-After"]
                assert response.get_json()["error"]["code"] == "database_unavailable"
    finally:
        app.extensions["bench_ingest.db"].close()


def test_a_forged_or_altered_cursor_is_refused_with_422(client, mongo_db):
    now = _now()
    docs = [result_doc("m", now - timedelta(seconds=i)) for i in range(6)]
    seed(mongo_db, results=docs)
    _, body = _get(client, "/results", limit="2")
    genuine = body["next"]
    assert _get(client, "/results", limit="2", cursor=genuine)[0].status_code == 200
    # A cursor made up from a timestamp and an ObjectId of the client's choosing.
    oid = mongo_db["metrics_cloud_v2"].find_one({"result_id": docs[0]["result_id"]})["_id"]
    millis = int((now + timedelta(days=1)).timestamp() * 1000)
    forged = base64.urlsafe_b64encode(f"{millis}:{oid}".encode()).decode().rstrip("=")
    # The first character: the last one of a base64 run may only change unused padding bits.
    flipped = ("A" if genuine[0] != "A" else "B") + genuine[1:]
    for cursor in (forged, flipped, genuine + "x", "." + genuine):
        response, answer = _get(client, "/results", limit="2", cursor=cursor)
        assert response.status_code == 422, cursor
        assert "cursor" in answer["error"]["details"]["fields"]


@pytest.mark.kills_database
def test_a_bad_window_is_a_422_even_while_the_database_is_down(killable_mongo):
    settings = Settings(mongodb_uri=killable_mongo.uri, mongodb_db="down",
                        api_keys=tuple(TEST_KEYS.items()), db_timeout_seconds=0.5,
                        connect_timeout_ms=500)
    killable_mongo.stop()
    app = create_app(settings)
    headers = {"X-API-Key": TEST_KEYS["runner-a"]}
    try:
        with app.test_client() as client:
            assert client.get("/summary", headers=headers).status_code == 503
            # The client's mistake is told at once, not hidden behind "retry later".
            response = client.get("/summary", query_string={"window": "1y"}, headers=headers)
            assert response.status_code == 422
            assert "window" in response.get_json()["error"]["details"]["fields"]
    finally:
        app.extensions["bench_ingest.db"].close()
