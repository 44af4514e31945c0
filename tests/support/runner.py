"""Test fixtures for the runner side (registered in tests/conftest.py).

`scripted_ingest` is a real HTTP server on a real socket standing in for the
ingest API where a test needs answers the real app would not give on demand
(429 with Retry-After, 500, 401, a lost answer). By default it behaves like the
app: 201 for a new id, 200 duplicate for a known one, per-item statuses for a
batch.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from runner.records import Failure, Result
from runner.settings import Settings

# Not a real key: 40 printable characters, as the ingest app requires of keys.
SCRIPTED_KEY = "scripted-test-key-0123456789abcdefghijkl"


@dataclass
class Received:
    """One request the stand-in server got."""

    path: str
    headers: dict[str, str]
    body: bytes
    at: float

    def json(self) -> Any:
        """The body parsed as JSON."""
        return json.loads(self.body)


@dataclass
class Scripted:
    """An answer to give once: status, headers, JSON body."""

    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    # A hostile or foreign answer: these bytes as the body instead of JSON (e.g. gunicorn's
    # own HTML error page), `size` bytes of it streamed (a huge answer), or each byte
    # after `drip` seconds (a server that trickles its answer).
    raw: bytes | None = None
    content_type: str = "application/json"
    size: int | None = None
    drip: float = 0.0
    # Each byte of the whole answer, status line and headers included, after this many
    # seconds (a server that trickles its headers, which a read timeout alone never ends).
    drip_head: float = 0.0
    delay: float = 0.0  # seconds before the answer's first byte (a server that hangs)


class ScriptedIngest:
    """A real HTTP server that answers from a script and otherwise acts like the ingest API."""

    def __init__(self) -> None:
        self.requests: list[Received] = []
        # Body bytes of streamed (`size`) answers, and bytes of dripped (`drip_head`) ones,
        # that left the server.
        self.bytes_sent = 0
        self.stored: dict[str, Any] = {}
        # GET /runner-config answers this (with an ETag, 304 on If-None-Match); None: 404,
        # as an ingest API from before the worklist answers.
        self.worklist: dict[str, Any] | None = None
        self.catalogs: list[Any] = []  # bodies of POST /ingest/catalog, in order
        self._script: dict[str, list[Scripted]] = {}
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,),
                                        daemon=True)

    @property
    def url(self) -> str:
        """Base URL of the server."""
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def ingest_url(self) -> str:
        """What INGEST_API_URL would be."""
        return f"{self.url}/ingest"

    def script(self, path: str, *answers: Scripted) -> None:
        """Queue answers for POSTs to `path` (e.g. "/ingest/batch"), used in order."""
        with self._lock:
            self._script.setdefault(path, []).extend(answers)

    def unscript(self) -> None:
        """Drop the answers not given yet: back to behaving like the app."""
        with self._lock:
            self._script.clear()

    def posts(self, path: str) -> list[Received]:
        """Requests received on one path, in order."""
        with self._lock:
            return [r for r in self.requests if r.path == path]

    def start(self) -> None:
        """Serve in a background thread."""
        self._thread.start()

    def stop(self) -> None:
        """Stop serving and close the listening socket."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def _answer(self, path: str, body: bytes) -> Scripted:
        with self._lock:
            queue = self._script.get(path)
            if queue:
                return queue.pop(0)
            try:
                doc = json.loads(body)
            except ValueError:
                return Scripted(400, {"error": {"code": "bad_json", "message": "not JSON"}})
            if path == "/ingest/batch":
                return Scripted(200, {"results": [self._store(item, "result_id")
                                                  for item in doc["results"]]})
            if path == "/ingest/catalog":
                self.catalogs.append(doc)
                return Scripted(201, {"status": "stored",
                                      "counts": {"models": len(doc.get("models", []))}})
            if path in ("/ingest", "/ingest/error"):
                key = "result_id" if path == "/ingest" else "error_id"
                item = self._store(doc, key)
                if item["status"] == "created":
                    return Scripted(201, {"status": "created"})
                return Scripted(200, {"status": "duplicate", "duplicate": True})
            return Scripted(404, {"error": {"code": "not_found", "message": "no such route"}})

    def _answer_get(self, path: str, headers: dict[str, str]) -> Scripted:
        route = path.split("?", 1)[0]
        with self._lock:
            queue = self._script.get(route)
            if queue:
                return queue.pop(0)
            if route != "/runner-config" or self.worklist is None:
                return Scripted(404, {"error": {"code": "not_found", "message": "no such route"}})
            raw = json.dumps(self.worklist, sort_keys=True).encode()
        import hashlib

        etag = '"' + hashlib.sha256(raw).hexdigest()[:16] + '"'
        if headers.get("If-None-Match") == etag:
            return Scripted(304, headers={"ETag": etag}, raw=b"")
        return Scripted(200, headers={"ETag": etag}, raw=raw)

    def gets(self, path: str) -> list[Received]:
        """GET requests received on one path (query string left out), in order."""
        with self._lock:
            return [r for r in self.requests if r.path.split("?", 1)[0] == path]

    def _store(self, doc: dict[str, Any], key: str) -> dict[str, Any]:
        record_id = doc[key]
        if record_id in self.stored:
            return {"status": "duplicate"}
        self.stored[record_id] = doc
        return {"status": "created"}

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            timeout = 5  # idle keep-alive connections end, so teardown never waits

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                with outer._lock:
                    outer.requests.append(Received(self.path, dict(self.headers), b"",
                                                   time.monotonic()))
                self._send(outer._answer_get(self.path, dict(self.headers)))

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with outer._lock:
                    outer.requests.append(Received(self.path, dict(self.headers), body,
                                                   time.monotonic()))
                self._send(outer._answer(self.path, body))

            def _send(self, answer: Scripted) -> None:
                if answer.delay:
                    time.sleep(answer.delay)
                if answer.raw is not None:
                    data = answer.raw
                else:
                    data = json.dumps(answer.body).encode() if answer.body is not None else b""
                if answer.drip_head:
                    self._drip_whole(answer, data)
                    return
                self.send_response(answer.status)
                self.send_header("Content-Type", answer.content_type)
                self.send_header("Content-Length", str(answer.size or len(data)))
                for name, value in answer.headers.items():
                    self.send_header(name, value)
                self.end_headers()
                try:
                    if answer.size:
                        self._stream(answer.size)
                    elif answer.drip:
                        for i in range(len(data)):
                            time.sleep(answer.drip)
                            self.wfile.write(data[i:i + 1])
                            self.wfile.flush()
                    else:
                        self.wfile.write(data)
                except OSError:  # the client hung up on a hostile answer, as it should
                    self.close_connection = True

            def _drip_whole(self, answer: Scripted, data: bytes) -> None:
                head = (f"HTTP/1.1 {answer.status} OK\r\nContent-Type: {answer.content_type}\r\n"
                        f"Content-Length: {len(data)}\r\n"
                        + "".join(f"{k}: {v}\r\n" for k, v in answer.headers.items())
                        + "\r\n").encode()
                self.close_connection = True
                try:
                    for byte in (head + data):
                        time.sleep(answer.drip_head)
                        self.wfile.write(bytes([byte]))
                        self.wfile.flush()
                        with outer._lock:
                            outer.bytes_sent += 1
                except OSError:  # the client hung up, as it should at its deadline
                    pass

            def _stream(self, size: int) -> None:
                chunk = b"x" * (1 << 20)
                left = size
                while left > 0:
                    piece = chunk[:left]
                    self.wfile.write(piece)
                    with outer._lock:
                        outer.bytes_sent += len(piece)
                    left -= len(piece)

        return Handler


@pytest.fixture
def scripted_ingest() -> Iterator[ScriptedIngest]:
    """A stand-in ingest API on a free 127.0.0.1 port, stopped after the test."""
    server = ScriptedIngest()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def make_settings(tmp_path: Path) -> Callable[..., Settings]:
    """A factory of runner Settings on this test's state dir; keyword arguments override."""

    def build(**overrides: Any) -> Settings:
        base = Settings(state_dir=tmp_path / "state", ingest_url="http://127.0.0.1:9/ingest",
                        api_key=SCRIPTED_KEY, models=("sim.fast-v1",), http_retries=0,
                        http_timeout=(2.0, 5.0), retry_base=0.2, retry_cap=1.0)
        return replace(base, **overrides)

    return build


def make_result(model: str = "sim.fast-v1", **overrides: Any) -> Result:
    """A plausible measured result, as the provider would return it."""
    fields: dict[str, Any] = {
        "provider": "bedrock", "model_name": model, "run_ts": datetime.now(UTC),
        "output_tokens": 64, "generate_time": 0.8, "tokens_per_second": 80.0,
        "region": "us-east-1", "gen_ts": datetime.now(UTC),
        "benchmark_profile_id": "cloud-default-v1", "requested_tokens": 64,
        "temperature": 0.1, "input_tokens": 20, "token_source": "provider_usage",
        "time_to_first_token": 0.15, "time_to_first_any_token": 0.15,
        "decode_tokens_per_second": 98.0, "stop_reason": "max_tokens", "chunk_count": 16,
    }
    fields.update(overrides)
    return Result(**fields)


def make_failure(model: str = "sim.retired-v1", **overrides: Any) -> Failure:
    """A plausible failure record."""
    fields: dict[str, Any] = {
        "provider": "bedrock", "model_name": model, "ts": datetime.now(UTC), "stage": "call",
        "error_kind": "model_unavailable", "message": "The model has reached the end of its life",
        "region": "us-east-1", "exc_type": "ResourceNotFoundException", "http_status": 404,
    }
    fields.update(overrides)
    return Failure(**fields)
