"""Faults the service survives, on real gunicorn and real sockets.

docs/reliability.md scenarios 1, 3, 4, 6 and 14-16.

Timing assertions are the contract's own promise (a 503 within 5 s) with the app's
database cap set to 3 s, so they hold with room to spare on a loaded machine.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from urllib.parse import urlsplit

import pymongo
import pytest
import requests

import bench_contract as contract
from tests.support.ingest import TEST_KEYS, gunicorn_env, result_payload, start_gunicorn

KEY = TEST_KEYS["runner-a"]
HEADERS = {"X-API-Key": KEY}
PROMISED_SECONDS = 5.0


def post(url: str, payload: dict, timeout: float = 15) -> tuple[int, dict, float, dict]:
    """POST one result; return status, body, seconds taken and headers."""
    started = time.monotonic()
    with requests.post(f"{url}/ingest", json=payload, headers=HEADERS, timeout=timeout) as ans:
        return ans.status_code, ans.json(), time.monotonic() - started, dict(ans.headers)


def count(mongo_uri: str, db_name: str, query: dict | None = None) -> int:
    """Documents in the results collection (a fresh client, so a frozen one is not reused)."""
    with pymongo.MongoClient(mongo_uri, serverSelectionTimeoutMS=5000) as client:
        return client[db_name]["metrics_cloud_v2"].count_documents(query or {})


def raw_request(url: str, head: str, body: bytes = b"") -> socket.socket:
    """Open a socket to the app and send a request head (and some body) as given."""
    parts = urlsplit(url)
    sock = socket.create_connection((parts.hostname, parts.port), timeout=15)
    sock.sendall(head.encode("latin-1") + b"\r\n" + body)
    return sock


def request_head(path: str, length: int | None, chunked: bool = False) -> str:
    lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", "Content-Type: application/json",
             f"X-API-Key: {KEY}"]
    if length is not None:
        lines.append(f"Content-Length: {length}")
    if chunked:
        lines.append("Transfer-Encoding: chunked")
    return "\r\n".join(lines) + "\r\n"


def read_answer(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes or goes quiet."""
    chunks = []
    try:
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
            if b"\r\n\r\n" in b"".join(chunks) and _complete(b"".join(chunks)):
                break
    except (TimeoutError, ConnectionResetError):
        pass
    return b"".join(chunks)


def _complete(data: bytes) -> bool:
    head, _, body = data.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return len(body) >= int(line.split(b":")[1])
    return False


def test_database_down_at_start_boots_and_answers_503_then_recovers(killable_mongo, mongo_db_name):
    killable_mongo.stop()
    with start_gunicorn(gunicorn_env(killable_mongo.uri, mongo_db_name), workers=1) as server:
        with requests.get(f"{server.url}/health", timeout=10) as health:
            assert health.status_code == 200
        started = time.monotonic()
        with requests.get(f"{server.url}/ready", timeout=10) as ready:
            assert ready.status_code == 503
            assert ready.json()["error"]["code"] == "database_unavailable"
        assert time.monotonic() - started < PROMISED_SECONDS
        status, body, took, headers = post(server.url, result_payload())
        assert status == 503 and took < PROMISED_SECONDS
        assert int(headers["Retry-After"]) > 0
        assert body["error"]["code"] == "database_unavailable"

        killable_mongo.start()
        payload = result_payload()
        deadline = time.monotonic() + 20
        while (status := post(server.url, payload)[0]) == 503 and time.monotonic() < deadline:
            time.sleep(0.5)
        assert status == 201
    assert count(killable_mongo.uri, mongo_db_name) == 1


def test_hung_database_answers_503_in_time_and_the_worker_survives(killable_mongo, mongo_db_name):
    env = gunicorn_env(killable_mongo.uri, mongo_db_name)
    # A worker timeout close above the app's cap: a worker stuck on the database would be killed.
    with start_gunicorn(env, workers=1, timeout=8) as server:
        assert post(server.url, result_payload())[0] == 201
        workers = server.worker_pids()
        killable_mongo.freeze()
        try:
            for _ in range(2):
                status, body, took, headers = post(server.url, result_payload())
                assert status == 503, body
                assert took < PROMISED_SECONDS
                assert "Retry-After" in headers
            with requests.get(f"{server.url}/ready", timeout=10) as ready:
                assert ready.status_code == 503
            # Stay hung past the worker timeout: the worker must still be the same process.
            time.sleep(4)
            assert server.worker_pids() == workers
        finally:
            killable_mongo.thaw()
        payload = result_payload()
        deadline = time.monotonic() + 20
        while (status := post(server.url, payload)[0]) == 503 and time.monotonic() < deadline:
            time.sleep(0.5)
        assert status == 201
        assert server.worker_pids() == workers
        assert "WORKER TIMEOUT" not in server.log()


def test_lost_answer_then_resend_answers_duplicate_and_stores_one(ingest_server):
    payload = result_payload()
    body = json.dumps(payload).encode()
    # The client sends the whole request and goes away before reading the answer.
    sock = raw_request(ingest_server.url, request_head("/ingest", len(body)), body)
    sock.close()
    deadline = time.monotonic() + 10
    coll = ingest_server.db["metrics_cloud_v2"]
    while coll.count_documents({"result_id": payload["result_id"]}) == 0:
        assert time.monotonic() < deadline, "the write never landed"
        time.sleep(0.05)
    status, answer, _, _ = post(ingest_server.url, payload)
    assert (status, answer["duplicate"]) == (200, True)
    assert coll.count_documents({"result_id": payload["result_id"]}) == 1


def test_client_timeout_then_resend_stores_one(ingest_server):
    payload = result_payload()
    # A read timeout shorter than the app takes: the client gives up before the 201.
    with contextlib.suppress(requests.exceptions.Timeout):
        requests.post(ingest_server.ingest_url, json=payload, headers=HEADERS,
                      timeout=(5, 0.0005)).close()
    coll = ingest_server.db["metrics_cloud_v2"]
    deadline = time.monotonic() + 10
    while coll.count_documents({"result_id": payload["result_id"]}) == 0:
        assert time.monotonic() < deadline, "the first write never landed"
        time.sleep(0.05)
    assert post(ingest_server.url, payload)[0] == 200
    assert coll.count_documents({"result_id": payload["result_id"]}) == 1


def test_concurrent_identical_posts_store_one_document(mongo_uri, mongo_db_name, mongo_db):
    payload = result_payload()
    n = 8
    barrier = threading.Barrier(n)
    statuses: list[int] = []
    lock = threading.Lock()

    def send() -> None:
        barrier.wait()
        status = post(url, payload)[0]
        with lock:
            statuses.append(status)

    # A fresh database: the very first writes also race to create the unique index.
    with start_gunicorn(gunicorn_env(mongo_uri, mongo_db_name), workers=2) as server:
        url = server.url
        threads = [threading.Thread(target=send) for _ in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
    assert sorted(statuses) == [200] * (n - 1) + [201]
    assert mongo_db["metrics_cloud_v2"].count_documents({"result_id": payload["result_id"]}) == 1


def test_concurrent_identical_batches_store_each_result_once(ingest_server):
    items = [result_payload() for _ in range(40)]
    outcomes: list[list[str]] = []
    lock = threading.Lock()
    barrier = threading.Barrier(4)

    def send() -> None:
        barrier.wait()
        with requests.post(f"{ingest_server.ingest_url}/batch", json={"results": items},
                           headers=HEADERS, timeout=30) as answer, lock:
            outcomes.append([i["status"] for i in answer.json()["results"]])

    threads = [threading.Thread(target=send) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(outcomes) == 4
    for position in range(len(items)):
        assert sorted(o[position] for o in outcomes) == ["created"] + ["duplicate"] * 3
    assert ingest_server.db["metrics_cloud_v2"].count_documents({}) == len(items)


def test_half_sent_body_is_cut_off_and_others_are_served(mongo_uri, mongo_db_name, mongo_db):
    env = gunicorn_env(mongo_uri, mongo_db_name, INGEST_BODY_TIMEOUT_SECONDS="1")
    payload = result_payload()
    body = json.dumps(payload).encode()
    with start_gunicorn(env, workers=1) as server:
        head = request_head("/ingest", len(body))
        stalled = raw_request(server.url, head, body[: len(body) // 2])
        try:
            # While that client dawdles, another one is served by the same single worker.
            assert post(server.url, result_payload())[0] == 201
            answer = read_answer(stalled)
        finally:
            stalled.close()
        # Told 400 once the body timeout passes; nothing of it is stored.
        assert answer.startswith(b"HTTP/1.1 400"), answer[:200]
        assert b"\"incomplete_body\"" in answer

        gone = raw_request(server.url, request_head("/ingest", len(body)), body[:40])
        gone.close()
        time.sleep(0.5)
        assert post(server.url, result_payload())[0] == 201
    assert mongo_db["metrics_cloud_v2"].count_documents({"result_id": payload["result_id"]}) == 0
    assert mongo_db["metrics_cloud_v2"].count_documents({}) == 2


def test_oversized_bodies_get_413_with_and_without_content_length(ingest_server):
    limit = contract.MAX_BODY_BYTES
    # Declared too large: refused from the header alone, before any body is sent.
    sock = raw_request(ingest_server.url, request_head("/ingest", 2 * limit))
    try:
        answer = read_answer(sock)
    finally:
        sock.close()
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b'"payload_too_large"' in answer

    # Chunked, no Content-Length: the app reads at most limit+1 bytes and refuses.
    def chunks():
        piece = b" " * 65536
        for _ in range(limit // len(piece) + 1):
            yield piece

    with requests.post(ingest_server.ingest_url, data=chunks(), timeout=30,
                       headers={**HEADERS, "Content-Type": "application/json"}) as answer:
        assert answer.status_code == 413
        assert answer.json()["error"]["code"] == "payload_too_large"
    assert ingest_server.db["metrics_cloud_v2"].count_documents({}) == 0


def test_chunked_body_within_the_limit_is_stored(ingest_server):
    payload = result_payload()
    body = json.dumps(payload).encode()
    with requests.post(ingest_server.ingest_url, data=iter([body[:100], body[100:]]),
                       headers={**HEADERS, "Content-Type": "application/json"},
                       timeout=30) as answer:
        assert answer.status_code == 201
    assert ingest_server.db["metrics_cloud_v2"].count_documents({}) == 1


@pytest.mark.parametrize("route", ["/ingest", "/ingest/batch", "/ingest/error"])
def test_gzip_body_gets_415_from_real_gunicorn(ingest_server, route):
    import gzip

    body = gzip.compress(json.dumps(result_payload()).encode())
    with requests.post(f"{ingest_server.url}{route}", data=body, timeout=10, headers={
            **HEADERS, "Content-Type": "application/json", "Content-Encoding": "gzip"}) as ans:
        assert ans.status_code == 415


def test_batch_with_the_database_down_answers_503_and_a_resend_stores_each_once(
        killable_mongo, mongo_db_name):
    from ingest_app import create_app
    from ingest_app.settings import Settings

    app = create_app(Settings(mongodb_uri=killable_mongo.uri, mongodb_db=mongo_db_name,
                              api_keys=tuple(TEST_KEYS.items()), db_timeout_seconds=1.0))
    items = [result_payload() for _ in range(20)]
    try:
        with app.test_client() as client:
            assert client.post("/ingest/batch", json={"results": items[:5]},
                               headers=HEADERS).status_code == 200
            killable_mongo.stop()
            down = client.post("/ingest/batch", json={"results": items}, headers=HEADERS)
            assert down.status_code == 503
            assert down.get_json()["error"]["code"] == "database_unavailable"
            assert int(down.headers["Retry-After"]) > 0
            killable_mongo.start()
            deadline = time.monotonic() + 20
            while (again := client.post("/ingest/batch", json={"results": items},
                                        headers=HEADERS)).status_code == 503:
                assert time.monotonic() < deadline
                time.sleep(0.5)
    finally:
        app.extensions["bench_ingest.db"].close()
    statuses = [item["status"] for item in again.get_json()["results"]]
    assert statuses == ["duplicate"] * 5 + ["created"] * 15
    assert count(killable_mongo.uri, mongo_db_name) == 20


# Each breaks chunked framing differently; the last hides a key where a size belongs.
BROKEN_CHUNKS = {
    "size zz": b"zz\r\nabc\r\n0\r\n\r\n",
    "size -1": b"-1\r\nabc\r\n0\r\n\r\n",
    "missing CRLF": b"3\r\nabcXX0\r\n\r\n",
    "bad extension": b"3;\x01bad\r\nabc\r\n0\r\n\r\n",
    "bad trailer": b"3\r\nabc\r\n0\r\nno colon in this trailer\r\n\r\n",
    "key as size": KEY.encode() + b"\r\nabc\r\n0\r\n\r\n",
}


@pytest.mark.parametrize("route", ["/ingest", "/ingest/batch", "/ingest/error"])
def test_malformed_chunked_body_answers_400_in_the_json_shape(ingest_server, route):
    for name, body in BROKEN_CHUNKS.items():
        sock = raw_request(ingest_server.url, request_head(route, None, chunked=True), body)
        try:
            answer = read_answer(sock)
        finally:
            sock.close()
        head, _, text = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 400"), (name, answer[:300])
        error = json.loads(text)["error"]
        assert error["code"] == "malformed_body", name
        assert error["request_id"]
    # No traceback, and the key that stood in the framing is in no log line.
    log = ingest_server.gunicorn.log()
    assert "Traceback" not in log
    assert KEY not in log
    assert ingest_server.db["metrics_cloud_v2"].count_documents({}) == 0
    assert ingest_server.db["errors_cloud"].count_documents({}) == 0
    # The server is still whole.
    assert post(ingest_server.url, result_payload())[0] == 201
