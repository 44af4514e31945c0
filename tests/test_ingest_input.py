"""Bad input is refused with the right status and nothing is stored.

docs/reliability.md scenarios 15-19.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
from datetime import UTC, datetime, timedelta

import pytest

import bench_contract as contract
from ingest_app import create_app
from tests.support.ingest import failure_payload, result_payload

JSON = {"Content-Type": "application/json"}


def post_raw(client, auth_headers, body: bytes, headers: dict | None = None, route="/ingest"):
    """POST raw bytes as the body."""
    return client.post(route, data=body, headers={**auth_headers, **(headers or JSON)})


def assert_nothing_stored(mongo_db):
    assert mongo_db["metrics_cloud_v2"].count_documents({}) == 0
    assert mongo_db["errors_cloud"].count_documents({}) == 0


def valid_body() -> str:
    return json.dumps(result_payload())


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (b"", "empty"),
        (b"   ", "empty"),
        (valid_body().encode()[:-7], "truncated"),
        (valid_body().encode() + b" junk", "trailing junk"),
        (valid_body().encode() + b"{}", "trailing object"),
        (b"[]", "array"),
        (b"[" + valid_body().encode() + b"]", "array of results"),
        (b'"a string"', "string"),
        (b"null", "null"),
        (b"\xff\xfe{}", "not UTF-8"),
        (valid_body().replace("sim.fast-v1", "sim.fast-v1\udcff").encode("utf-8", "surrogatepass"),
         "surrogate"),
        (b'{"a": 1, "a": 2}', "duplicate key"),
        (valid_body().replace('"output_tokens": 64', '"output_tokens": NaN').encode(), "NaN"),
        (valid_body().replace('"generate_time": 1.5', '"generate_time": Infinity').encode(),
         "Infinity"),
        (valid_body().replace('"generate_time": 1.5', '"generate_time": -Infinity').encode(),
         "-Infinity"),
        (valid_body().replace('"generate_time": 1.5', '"generate_time": 1e999').encode(),
         "overflowing float"),
        (valid_body().replace('"output_tokens": 64', '"output_tokens": 9223372036854775808')
         .encode(), "beyond int64"),
        (valid_body().replace('"output_tokens": 64', '"output_tokens": ' + "9" * 5000).encode(),
         "absurdly long integer"),
        (valid_body().replace('"sim.fast-v1"', '"sim\\ud800"').encode(), "lone surrogate"),
        (valid_body().replace('"req-1"', '"\\uDC00x"').encode(), "lone low surrogate"),
        (b'{"misc": {"\\ud83d": 1}}', "lone surrogate in a key"),
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
        (b'{"misc": {"x": ' + b"[" * 50_000 + b"]" * 50_000 + b"}}", "nested object"),
    ],
)
def test_malformed_json_is_refused_with_400(client, auth_headers, mongo_db, body, why):
    answer = post_raw(client, auth_headers, body)
    assert answer.status_code == 400, why
    assert answer.get_json()["error"]["code"] == "invalid_json"
    assert_nothing_stored(mongo_db)


def test_error_route_refuses_nan_too(client, auth_headers, mongo_db):
    body = json.dumps(failure_payload()).replace('"attempts": 1', '"attempts": NaN').encode()
    assert post_raw(client, auth_headers, body, route="/ingest/error").status_code == 400
    assert_nothing_stored(mongo_db)


def test_batch_with_nan_in_one_item_is_refused_whole(client, auth_headers, mongo_db):
    items = [valid_body(), valid_body().replace('"generate_time": 1.5', '"generate_time": NaN')]
    body = ('{"results": [' + ",".join(items) + "]}").encode()
    assert post_raw(client, auth_headers, body, route="/ingest/batch").status_code == 400
    assert_nothing_stored(mongo_db)


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Content-Type": "text/plain"},
        {"Content-Type": "application/x-www-form-urlencoded"},
        {"Content-Type": "application/json; charset=latin-1"},
        {"Content-Type": "application/json", "Content-Encoding": "gzip"},
        {"Content-Type": "application/json", "Content-Encoding": "deflate"},
    ],
)
def test_wrong_media_type_or_encoding_is_refused_with_415(client, auth_headers, mongo_db,
                                                          headers):
    body = valid_body().encode()
    if headers.get("Content-Encoding") == "gzip":
        body = gzip.compress(body)
    answer = client.post("/ingest", data=body, headers={**auth_headers, **headers})
    assert answer.status_code == 415
    assert answer.get_json()["error"]["code"] == "unsupported_media_type"
    assert_nothing_stored(mongo_db)


@pytest.mark.parametrize("content_type", ["application/json; charset=utf-8",
                                          "application/json; charset=UTF-8",
                                          "Application/JSON"])
def test_json_with_utf8_charset_is_accepted(client, auth_headers, content_type):
    answer = post_raw(client, auth_headers, valid_body().encode(),
                      {"Content-Type": content_type})
    assert answer.status_code == 201


def test_body_over_the_limit_is_refused_with_413(client, auth_headers, mongo_db):
    payload = result_payload(misc={"pad": "x" * (contract.MAX_BODY_BYTES + 10)})
    answer = client.post("/ingest", json=payload, headers=auth_headers)
    assert answer.status_code == 413
    body = answer.get_json()["error"]
    assert body["code"] == "payload_too_large"
    assert body["details"]["limit_bytes"] == contract.MAX_BODY_BYTES
    assert_nothing_stored(mongo_db)


def test_body_exactly_at_the_limit_is_read(client, auth_headers, mongo_db):
    text = valid_body()
    padded = text + " " * (contract.MAX_BODY_BYTES - len(text))
    assert len(padded) == contract.MAX_BODY_BYTES
    assert post_raw(client, auth_headers, padded.encode()).status_code == 201


def _unknown_and_wrong(named: dict, expected: set[str], answer) -> None:
    assert answer.status_code == 422, answer.get_json()
    error = answer.get_json()["error"]
    assert error["code"] == "validation_error"
    assert set(error["details"]["fields"]) == expected


def test_every_bad_and_unknown_field_is_named(client, auth_headers, mongo_db):
    payload = result_payload(
        output_tokens="5",
        attempts=True,
        generate_time="1.5",
        run_ts="2026-03-01T10:00:00",
        gen_ts=(datetime.now(UTC) + timedelta(minutes=11)).isoformat(),
        provider="no-such-host",
        token_source="guess",
        misc=[1, 2],
        colour="blue",
        runner_id="me",
        received_at="2026-01-01T00:00:00Z",
    )
    del payload["model_name"]
    answer = client.post("/ingest", json=payload, headers=auth_headers)
    _unknown_and_wrong(payload, {"output_tokens", "attempts", "generate_time", "run_ts", "gen_ts",
                                 "provider", "token_source", "misc", "colour", "runner_id",
                                 "received_at", "model_name"}, answer)
    fields = answer.get_json()["error"]["details"]["fields"]
    assert fields["colour"] == ["Unknown field."]
    assert "future" in fields["gen_ts"][0]
    assert_nothing_stored(mongo_db)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("result_id", "not-a-uuid"),
        ("result_id", 12345),
        ("output_tokens", 1.0),
        ("output_tokens", -1),
        ("output_tokens", None),
        ("generate_time", True),
        ("tokens_per_second", -0.5),
        ("run_ts", "yesterday"),
        ("run_ts", "2026-03-01"),
        ("run_ts", 1767225600),
        ("run_ts", "0001-01-01T00:00:00+01:00"),
        ("run_ts", "9999-12-31T23:59:59-01:00"),
        ("run_ts", "1999-12-31T23:59:59Z"),
        ("run_ts", "2026-W01-1T00:00:00Z"),
        ("run_ts", "20260101T000000Z"),
        ("run_ts", "2026-02-30T00:00:00Z"),
        ("model_name", ""),
        ("model_name", "m" * 300),
        ("model_name", "bad\u0000name"),
        ("server_latency_ms", 1.5),
        ("temperature", "0.1"),
        ("misc", {"$where": 1}),
        ("misc", {"a.b": 1}),
        ("misc", {"pad": "x" * (contract.MAX_MISC_BYTES + 1)}),
        ("misc", {"bad\u0000key": 1}),
        ("misc", {"deep": json.loads("[" * 30 + "]" * 30)}),
    ],
)
def test_wrong_type_or_value_is_refused_with_422_naming_the_field(client, auth_headers, mongo_db,
                                                                  field, value):
    answer = client.post("/ingest", json=result_payload(**{field: value}), headers=auth_headers)
    _unknown_and_wrong({}, {field}, answer)
    assert_nothing_stored(mongo_db)


def test_escaped_surrogate_pair_is_a_valid_character_and_stored(client, auth_headers, mongo_db):
    body = valid_body().replace('"req-1"', '"req-\\ud83d\\ude80"').encode()
    assert post_raw(client, auth_headers, body).status_code == 201
    assert mongo_db["metrics_cloud_v2"].find_one()["request_id"] == "req-\U0001f680"


@pytest.mark.parametrize(
    ("sent", "stored"),
    [
        ("2026-03-01T10:00:00Z", datetime(2026, 3, 1, 10, 0)),
        ("2026-03-01t10:00:00z", datetime(2026, 3, 1, 10, 0)),
        ("2026-03-01T10:00:00.123456789-05:30", datetime(2026, 3, 1, 15, 30, 0, 123000)),
        ("2026-03-01 10:00:00.5+01:00", datetime(2026, 3, 1, 9, 0, 0, 500000)),
    ],
)
def test_rfc3339_forms_are_stored_as_utc_milliseconds(client, auth_headers, mongo_db, sent,
                                                      stored):
    payload = result_payload(run_ts=sent)
    assert client.post("/ingest", json=payload, headers=auth_headers).status_code == 201
    assert mongo_db["metrics_cloud_v2"].find_one()["run_ts"] == stored


def test_run_ts_just_under_ten_minutes_ahead_is_accepted(client, auth_headers):
    soon = (datetime.now(UTC) + timedelta(minutes=9)).isoformat()
    assert client.post("/ingest", json=result_payload(run_ts=soon),
                       headers=auth_headers).status_code == 201


def test_failure_fields_are_checked_against_the_contract(client, auth_headers, mongo_db):
    payload = failure_payload(stage="lunch", error_kind="bad_luck", message="x" * 4001,
                              ts="2026-03-01T10:00:00", http_status=99, fingerprint="f")
    answer = client.post("/ingest/error", json=payload, headers=auth_headers)
    _unknown_and_wrong({}, {"stage", "error_kind", "message", "ts", "http_status", "fingerprint"},
                       answer)
    assert_nothing_stored(mongo_db)


def test_a_rejected_batch_item_names_its_fields(client, auth_headers, mongo_db):
    items = [result_payload(output_tokens="5", shoe_size=42), result_payload()]
    answer = client.post("/ingest/batch", json={"results": items}, headers=auth_headers)
    first, second = answer.get_json()["results"]
    assert first["status"] == "rejected"
    assert set(first["errors"]) == {"output_tokens", "shoe_size"}
    assert first["result_id"] == items[0]["result_id"]
    assert second["status"] == "created"
    assert mongo_db["metrics_cloud_v2"].count_documents({}) == 1


ODD_VALUES = [None, True, False, 0, -1, 2**63 - 1, -(2**63), 1e308, -1e-308, "", "x" * 5000,
              "\u0000", "2026-13-45T99:99:99Z", [], [None], {}, {"$set": 1}, {"a": {"b": [1]}}]


@pytest.mark.parametrize("route", ["/ingest", "/ingest/error"])
def test_no_odd_value_in_any_field_ever_causes_a_500(ingest_settings, auth_headers, mongo_db,
                                                     route):
    make = result_payload if route == "/ingest" else failure_payload
    fields = contract.RESULT_FIELDS if route == "/ingest" else contract.ERROR_FIELDS
    # Every field times every odd value is more requests than a key may send in a minute:
    # the rate limit (tested on its own) is off here, so each answer is the payload's.
    app = create_app(dataclasses.replace(ingest_settings, rate_limit_per_minute=0))
    seen = set()
    try:
        with app.test_client() as client:
            for name in fields:
                for value in ODD_VALUES:
                    answer = client.post(route, json=make(**{name: value}), headers=auth_headers)
                    assert answer.status_code in (200, 201, 422), (name, value,
                                                                   answer.get_json())
                    seen.add(answer.status_code)
    finally:
        app.extensions["bench_ingest.db"].close()
    assert seen == {201, 422}


@pytest.mark.parametrize("depth", [17, 500, 900])
def test_deeply_nested_misc_is_refused_with_422_never_500(client, auth_headers, mongo_db, depth):
    misc = '{"deep": ' + "[" * depth + "]" * depth + "}"
    result = valid_body()[:-1] + ', "misc": ' + misc + "}"
    failure = json.dumps(failure_payload())[:-1] + ', "misc": ' + misc + "}"
    answer = post_raw(client, auth_headers, result.encode())
    assert answer.status_code == 422, answer.get_json()
    assert set(answer.get_json()["error"]["details"]["fields"]) == {"misc"}
    answer = post_raw(client, auth_headers, failure.encode(), route="/ingest/error")
    assert answer.status_code == 422, answer.get_json()
    batch = post_raw(client, auth_headers, ('{"results": [' + result + "]}").encode(),
                     route="/ingest/batch")
    assert batch.status_code == 200, batch.get_json()
    assert [item["status"] for item in batch.get_json()["results"]] == ["rejected"]
    assert_nothing_stored(mongo_db)
