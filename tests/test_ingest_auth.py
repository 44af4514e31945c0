"""Only a known key may write; every refusal looks the same and no key is ever logged."""

from __future__ import annotations

import base64
import http.client
import logging
import socket
from urllib.parse import urlsplit

import pytest
import requests

from ingest_app import create_app
from tests.support.ingest import (
    TEST_KEYS,
    TEST_READ_KEYS,
    gunicorn_env,
    result_payload,
    start_gunicorn,
)

KEY_A = TEST_KEYS["runner-a"]


def refusal(answer) -> dict:
    """The error body of a 401 with the request id taken out (it differs by design)."""
    assert answer.status_code == 401
    error = dict(answer.get_json()["error"])
    error.pop("request_id")
    return error


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"X-API-Key": ""},
        {"X-API-Key": "wrong-key-of-exactly-forty-characters-xx"},
        {"X-API-Key": KEY_A[:-1]},
        {"X-API-Key": KEY_A + "x"},
        {"X-API-Key": KEY_A.upper()},
        {"X-API-Key": TEST_READ_KEYS["dashboard"]},
        {"Authorization": f"Basic {base64.b64encode(f'x:{KEY_A}'.encode()).decode()}"},
        {"Authorization": f"Token {KEY_A}"},
        {"Authorization": "Bearer"},
        {"X-API-Key": "kä-0123456789abcdefghijklmnopqrstuvwxyzA".encode().decode("latin-1")},
    ],
)
def test_missing_wrong_or_read_only_key_gets_the_same_401(client, mongo_db, headers):
    baseline = refusal(client.post("/ingest", json=result_payload()))
    answer = client.post("/ingest", json=result_payload(), headers=headers)
    assert refusal(answer) == baseline
    assert baseline["code"] == "unauthorized"
    assert mongo_db["metrics_cloud_v2"].count_documents({}) == 0


@pytest.mark.parametrize("param", ["api_key", "key", "token", "access_token", "API_KEY", "k",
                                   "secret", "password", "passwd", "auth_token", "ingest_key",
                                   "Client_Secret", "session_token"])
def test_key_in_the_query_string_is_refused_even_with_a_good_header(client, auth_headers,
                                                                    mongo_db, param):
    baseline = refusal(client.post("/ingest", json=result_payload()))
    answer = client.post(f"/ingest?{param}={KEY_A}", json=result_payload(), headers=auth_headers)
    assert refusal(answer) == baseline
    assert KEY_A not in answer.get_data(as_text=True)
    assert mongo_db["metrics_cloud_v2"].count_documents({}) == 0


def test_bearer_header_is_accepted(client):
    answer = client.post("/ingest", json=result_payload(),
                         headers={"Authorization": f"Bearer {KEY_A}"})
    assert answer.status_code == 201


def test_two_keys_during_rotation_are_both_accepted_and_told_apart(client, mongo_db):
    stored_by = {}
    for name, key in TEST_KEYS.items():
        payload = result_payload()
        assert client.post("/ingest", json=payload, headers={"X-API-Key": key}).status_code == 201
        stored_by[name] = payload["result_id"]
    for name, result_id in stored_by.items():
        assert mongo_db["metrics_cloud_v2"].find_one({"result_id": result_id})["runner_id"] == name


def test_a_revoked_key_is_refused_once_the_app_restarts_without_it(ingest_settings, mongo_db):
    from dataclasses import replace

    rotated = create_app(replace(ingest_settings, api_keys=(("runner-b", TEST_KEYS["runner-b"]),)))
    with rotated.test_client() as client:
        old = client.post("/ingest", json=result_payload(), headers={"X-API-Key": KEY_A})
        new = client.post("/ingest", json=result_payload(),
                          headers={"X-API-Key": TEST_KEYS["runner-b"]})
    rotated.extensions["bench_ingest.db"].close()
    assert (old.status_code, new.status_code) == (401, 201)


def test_no_key_reaches_the_app_log(client, caplog, auth_headers):
    caplog.set_level(logging.DEBUG)
    client.post("/ingest", json=result_payload(), headers=auth_headers)
    client.post(f"/ingest?api_key={KEY_A}", json=result_payload())
    client.post("/ingest", json=result_payload(), headers={"X-API-Key": KEY_A + "x"})
    client.post("/ingest", data=b"{", headers={**auth_headers, "Content-Type": "application/json"})
    assert caplog.records
    assert all(KEY_A not in record.getMessage() for record in caplog.records)


def test_no_key_reaches_gunicorns_log_and_odd_keys_never_500(mongo_uri, mongo_db_name, mongo_db):
    with start_gunicorn(gunicorn_env(mongo_uri, mongo_db_name), workers=1) as server:
        with requests.post(f"{server.url}/ingest?api_key={KEY_A}", json=result_payload(),
                           timeout=10) as answer:
            assert answer.status_code == 401
        with requests.post(f"{server.url}/ingest", json=result_payload(),
                           headers={"X-API-Key": KEY_A}, timeout=10) as answer:
            assert answer.status_code == 201
        # Raw bytes outside ASCII in the header, as a broken client might send them.
        host = urlsplit(server.url)
        conn = http.client.HTTPConnection(host.hostname, host.port, timeout=10)
        try:
            conn.putrequest("POST", "/ingest")
            conn.putheader("X-API-Key", "k\xe9y-0123456789abcdefghijklmnopqrstuvwxyz".encode(
                "latin-1"))
            conn.putheader("Content-Type", "application/json")
            conn.putheader("Content-Length", "2")
            conn.endheaders(b"{}")
            raw = conn.getresponse()
            assert raw.status == 401
            raw.read()
        finally:
            conn.close()
        log = server.log()
    assert "/ingest" in log  # the access log is there...
    assert KEY_A not in log  # ...without the key that was in the query string


@pytest.mark.parametrize("path", ["/health", "/ready", "/openapi.json", "/no-such-route",
                                  "/static/status.css", "/metrics"])
def test_key_in_the_query_string_is_refused_on_every_route(client, path):
    baseline = refusal(client.post("/ingest", json=result_payload()))
    answer = client.get(f"{path}?api_key={KEY_A}")
    assert refusal(answer) == baseline
    assert KEY_A not in answer.get_data(as_text=True)


def _send_raw(url: str, raw: bytes) -> bytes:
    host = urlsplit(url)
    with socket.create_connection((host.hostname, host.port), timeout=10) as sock:
        sock.sendall(raw)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def test_a_malformed_request_carrying_a_key_never_puts_it_in_gunicorns_log(
        mongo_uri, mongo_db_name, mongo_db):
    key = KEY_A.encode()
    with start_gunicorn(gunicorn_env(mongo_uri, mongo_db_name), workers=1) as server:
        # gunicorn quotes a request line it cannot parse, and a header line without a colon,
        # whole in its error log: with the key from the query string or the header in them.
        bad_target = _send_raw(server.url, b"GET /health?api_key=" + key
                               + b"\x7fx HTTP/1.1\r\nHost: a\r\n\r\n")
        no_colon = _send_raw(server.url, b"POST /ingest HTTP/1.1\r\nHost: a\r\nX-API-Key "
                             + key + b"\r\nContent-Length: 0\r\n\r\n")
        log = server.log()
    assert bad_target.startswith(b"HTTP/1.1 400") and no_colon.startswith(b"HTTP/1.1 400")
    assert "Invalid request" in log  # the event is still logged...
    assert KEY_A not in log  # ...without the key


def test_a_key_in_the_path_never_reaches_gunicorns_log(mongo_uri, mongo_db_name, mongo_db):
    stranger = "zq-" + "0123456789abcdefghijklmnopqrstuvwxyz" * 2
    with start_gunicorn(gunicorn_env(mongo_uri, mongo_db_name), workers=1) as server:
        for path in (f"/ingest/{KEY_A}", f"/{KEY_A}/ingest", f"/ingest/{stranger}"):
            with requests.post(f"{server.url}{path}", json=result_payload(),
                               headers={"X-API-Key": KEY_A}, timeout=10) as answer:
                assert answer.status_code == 404
                assert answer.json()["error"]["code"] == "not_found"
        log = server.log()
    assert '"POST /ingest/[redacted] HTTP/1.1" 404' in log  # the event is logged...
    assert KEY_A not in log and stranger not in log  # ...without what stood in the path


def test_wrong_keys_are_rate_limited_by_client_address(ingest_settings, mongo_db):
    from dataclasses import replace as with_changes

    app = create_app(with_changes(ingest_settings, auth_failure_limit_per_minute=5))
    wrong = {"X-API-Key": "wrong-key-of-exactly-forty-characters-xx"}
    try:
        with app.test_client() as client:
            for _ in range(5):
                assert client.post("/ingest", json=result_payload(),
                                   headers=wrong).status_code == 401
            limited = client.post("/ingest", json=result_payload(), headers=wrong)
            assert limited.status_code == 429
            assert limited.get_json()["error"]["code"] == "rate_limited"
            assert int(limited.headers["Retry-After"]) >= 1
            # The address is cut off for a while, whatever it sends now: guessing stops.
            assert client.post("/ingest", json=result_payload(),
                               headers={"X-API-Key": KEY_A}).status_code == 429
            assert client.get("/summary", headers=wrong).status_code == 429
            # Another address is not.
            other = client.post("/ingest", json=result_payload(), headers={"X-API-Key": KEY_A},
                                environ_base={"REMOTE_ADDR": "192.0.2.7"})
            assert other.status_code == 201
            # Open routes stay open to the limited address.
            assert client.get("/health").status_code == 200
    finally:
        app.extensions["bench_ingest.db"].close()
    assert mongo_db["metrics_cloud_v2"].count_documents({}) == 1
