"""Slow clients on real gunicorn and real sockets: the whole request is bounded in time,
and connections still sending their headers hold no worker thread (docs/reliability.md).

The figures (how many slow connections it takes to deny service) are measured by
bench/slow_clients.py; these tests only check outcomes, with bounds that catch a hang.
"""

from __future__ import annotations

import json
import signal
import socket
import threading
import time
from urllib.parse import urlsplit

import requests

from tests.support.ingest import TEST_KEYS, gunicorn_env, result_payload, start_gunicorn

KEY = TEST_KEYS["runner-a"]


def connect(url: str) -> socket.socket:
    parts = urlsplit(url)
    return socket.create_connection((parts.hostname, parts.port), timeout=20)


def drip(sock: socket.socket, data: bytes, every: float, stop: threading.Event) -> None:
    """Send `data` one byte at a time, `every` seconds apart, until done or stopped."""
    for i in range(len(data)):
        if stop.wait(every):
            return
        try:
            sock.sendall(data[i:i + 1])
        except OSError:
            return


def answer_of(sock: socket.socket) -> bytes:
    """What the server sends until it closes the connection (or 20 s pass)."""
    chunks = []
    try:
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    except (TimeoutError, ConnectionResetError):
        pass
    return b"".join(chunks)


def head(path: str, length: int) -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"X-API-Key: {KEY}\r\nContent-Length: {length}\r\n\r\n").encode()


def test_health_and_ready_answer_while_sixteen_clients_drip_their_headers(
        mongo_uri, mongo_db_name, mongo_db):
    with start_gunicorn(gunicorn_env(mongo_uri, mongo_db_name)) as server:
        stop = threading.Event()
        socks = [connect(server.url) for _ in range(16)]
        drippers = [threading.Thread(target=drip, args=(s, head("/ingest", 10), 0.5, stop))
                    for s in socks]
        try:
            for sock in socks:
                sock.sendall(b"P")  # the first byte: each connection is now a request
            for dripper in drippers:
                dripper.start()
            time.sleep(1.5)
            for _ in range(3):
                for route in ("/health", "/ready"):
                    with requests.get(f"{server.url}{route}", timeout=5) as answer:
                        assert answer.status_code == 200, route
            with requests.post(f"{server.url}/ingest", json=result_payload(),
                               headers={"X-API-Key": KEY}, timeout=5) as answer:
                assert answer.status_code == 201
        finally:
            stop.set()
            for dripper in drippers:
                dripper.join(timeout=10)
            for sock in socks:
                sock.close()
    assert mongo_db["metrics_cloud_v2"].count_documents({}) == 1


def test_a_body_dripped_within_the_read_timeout_is_still_cut_off_at_the_request_timeout(
        mongo_uri, mongo_db_name, mongo_db):
    env = gunicorn_env(mongo_uri, mongo_db_name, INGEST_BODY_TIMEOUT_SECONDS="2",
                       INGEST_REQUEST_TIMEOUT_SECONDS="3")
    body = json.dumps(result_payload()).encode()
    with start_gunicorn(env, workers=1) as server:
        stop = threading.Event()
        sock = connect(server.url)
        sock.sendall(head("/ingest", len(body)))
        # One byte a second: every read is within the 2 s read timeout, the body never ends.
        dripper = threading.Thread(target=drip, args=(sock, body, 1.0, stop))
        dripper.start()
        try:
            started = time.monotonic()
            answer = answer_of(sock)
            took = time.monotonic() - started
        finally:
            stop.set()
            dripper.join(timeout=10)
            sock.close()
    assert answer.startswith(b"HTTP/1.1 400"), answer[:200]
    assert b'"incomplete_body"' in answer
    assert took < 15  # only catches a hang: 3 s is the bound, the drip would last minutes
    assert mongo_db["metrics_cloud_v2"].count_documents({}) == 0


def test_headers_dripped_past_the_request_timeout_get_a_408_in_the_json_shape(
        mongo_uri, mongo_db_name, mongo_db):
    env = gunicorn_env(mongo_uri, mongo_db_name, INGEST_REQUEST_TIMEOUT_SECONDS="2")
    with start_gunicorn(env, workers=1) as server:
        stop = threading.Event()
        sock = connect(server.url)
        dripper = threading.Thread(target=drip, args=(sock, head("/ingest", 10), 0.5, stop))
        dripper.start()
        try:
            answer = answer_of(sock)
        finally:
            stop.set()
            dripper.join(timeout=10)
            sock.close()
        # The worker is whole: the next client is served.
        with requests.get(f"{server.url}/health", timeout=5) as health:
            assert health.status_code == 200
    status, _, rest = answer.partition(b"\r\n")
    assert status == b"HTTP/1.1 408 Request Timeout", answer[:200]
    error = json.loads(rest.partition(b"\r\n\r\n")[2])["error"]
    assert error["code"] == "request_timeout"
    assert KEY.encode() not in answer


def test_a_stopping_worker_does_not_wait_for_connections_that_sent_nothing(
        mongo_uri, mongo_db_name):
    # A connection opened and never used (a client's pool, a load balancer's probe) holds
    # no request: a stop (a deploy, systemd's restart) closes it, as gthread closes an idle
    # kept-alive one, instead of waiting out its request deadline (20 s) and then sending
    # it a 408 for a request it never made. The graceful timeout is long here (120 s), so
    # only the worker's own choice ends the wait.
    with start_gunicorn(gunicorn_env(mongo_uri, mongo_db_name), workers=1,
                        extra_args=("--graceful-timeout", "120")) as server:
        socks = [connect(server.url) for _ in range(3)]
        try:
            with requests.get(f"{server.url}/health", timeout=5) as health:
                assert health.status_code == 200  # the worker has taken them in by now
            server.proc.send_signal(signal.SIGTERM)
            server.proc.wait(timeout=60)  # only catches the wait: it takes about a second
            assert all(answer_of(sock) == b"" for sock in socks)  # closed, no answer made up
            log = server.log()
        finally:
            for sock in socks:
                sock.close()
    assert server.proc.returncode == 0, log[-2000:]
    assert "Worker exiting" in log and "Shutting down: Master" in log, log[-2000:]
