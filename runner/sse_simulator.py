"""What every server-sent-events simulator shares: models, plans, the server, the wire.

The OpenAI-compatible and Anthropic simulators speak different JSON over the same
transport: an HTTP/1.1 response of `text/event-stream`, one event per chunk, on a
keep-alive connection. This module holds that transport, the per-model behaviour
(timing, size, faults before and during the stream), and the plan each stream follows,
which is the Bedrock simulator's (runner/simulator.py), so every provider's figures are
checked against the same truth. A vendor module subclasses `SSEHandler` for its routes
and chunk shapes, and names its errors in `SSEConfig.errors` and `stream_errors`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

from .simulator import PLANNED_BUDGETS, STREAMS_KEPT, Delta, StreamPlan, _plan, lateness_entry

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SSEBehaviour:
    """How one simulated model answers over SSE: timing, size, and its fault if any."""

    ttft: float = 0.2  # seconds from request received to the first content delta
    gap: float = 0.02  # seconds between content deltas
    tokens_per_delta: int = 2
    delta_tokens: tuple[int, ...] = ()  # varied delta sizes, repeated; empty: tokens_per_delta
    output_tokens: int = 64  # visible text tokens the model would write unbounded
    reasoning_tokens: int = 0  # reasoning (thinking) tokens written before any text
    input_tokens: int = 18
    send_usage: bool = True  # False: the stream carries no usage
    error: str | None = None  # a vendor error answered instead of a stream
    retry_after: float | None = None  # Retry-After sent with that error
    stream_error: str | None = None  # a vendor error event sent after error_after_deltas
    error_after_deltas: int = 0
    cut_after_deltas: int | None = None  # drop the connection after this many deltas
    no_finish: bool = False  # end the stream cleanly but without a finish/stop reason
    stall_seconds: float = 0.0  # stop writing for this long after stall_after_deltas
    stall_after_deltas: int = 0
    fail_first_calls: int | None = None  # faults apply to the first N calls only (None: all)
    # Vendor-specific switches (e.g. which field carries reasoning), read by its handler.
    options: Mapping[str, Any] = field(default_factory=dict)
    name: str | None = None

    def __post_init__(self) -> None:
        if self.tokens_per_delta < 1:
            raise ValueError("tokens_per_delta must be at least 1")
        object.__setattr__(self, "delta_tokens", tuple(self.delta_tokens))
        if any(not isinstance(n, int) or n < 1 for n in self.delta_tokens):
            raise ValueError("delta_tokens must hold whole numbers of at least 1")
        if min(self.ttft, self.gap, self.stall_seconds) < 0:
            raise ValueError("ttft, gap and stall_seconds cannot be negative")
        # Frozen and hashable, so plans can be cached per behaviour.
        object.__setattr__(self, "options", _FrozenOptions(self.options))

    def faulty(self, call_no: int) -> bool:
        """Whether this call (1-based) shows the configured faults."""
        return self.fail_first_calls is None or call_no <= self.fail_first_calls


class _FrozenOptions(dict):
    """A read-only, hashable mapping (a behaviour's vendor options)."""

    def __hash__(self) -> int:  # type: ignore[override]
        return hash(tuple(sorted((k, json.dumps(v, sort_keys=True)) for k, v in self.items())))

    def _refuse(self, *_: Any, **__: Any) -> None:
        raise TypeError("a behaviour's options cannot change")

    __setitem__ = __delitem__ = update = pop = clear = setdefault = _refuse  # type: ignore


@dataclass(frozen=True)
class SSEConfig:
    """Per-model behaviour, keyed by the model id a client sends; errors checked by name."""

    models: Mapping[str, SSEBehaviour] = field(default_factory=dict)
    # The vendor's error names (subclasses set them); a behaviour naming another is refused.
    errors: ClassVar[frozenset[str]] = frozenset()
    stream_errors: ClassVar[frozenset[str]] = frozenset()

    def __post_init__(self) -> None:
        for model_id, b in self.models.items():
            if b.error is not None and b.error not in self.errors:
                raise ValueError(f"model {model_id}: unknown error {b.error!r}; known: "
                                 f"{sorted(self.errors)}")
            if b.stream_error is not None and b.stream_error not in self.stream_errors:
                raise ValueError(f"model {model_id}: unknown stream_error {b.stream_error!r}; "
                                 f"known: {sorted(self.stream_errors)}")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SSEConfig:
        """Build from `{"models": {model_id: {field: value}}}`; unknown fields are an error."""
        known = {f.name for f in dataclasses.fields(SSEBehaviour)}
        extra = set(data) - {"models"}
        if extra:
            raise ValueError(f"unknown simulator config keys: {sorted(extra)}")
        models: dict[str, SSEBehaviour] = {}
        for model_id, spec in dict(data.get("models", {})).items():
            unknown = set(spec) - known
            if unknown:
                raise ValueError(f"model {model_id}: unknown fields {sorted(unknown)}")
            models[model_id] = SSEBehaviour(**spec)
        return cls(models=models)

    @classmethod
    def from_file(cls, path: Path | str) -> SSEConfig:
        """Read a JSON config file (the shape of `from_dict`)."""
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))

    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready form that `from_dict` reads back."""
        out = {}
        for model_id, b in self.models.items():
            spec = dataclasses.asdict(b)
            spec["options"] = dict(b.options)
            out[model_id] = spec
        return {"models": out}

    def plan(self, model_id: str, max_tokens: int) -> StreamPlan:
        """The deltas a successful call sends (the Bedrock simulator's planning, shared)."""
        return _plan(self.models[model_id], max(0, max_tokens))  # type: ignore[arg-type]


class SSEServer(ThreadingHTTPServer):
    """One thread per connection, keep-alive; counts calls and connections, keeps lateness."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], config: SSEConfig,
                 handler: type[SSEHandler]) -> None:
        self.config = config
        self.stopping = threading.Event()
        self._lock = threading.Lock()
        self.calls: Counter[str] = Counter()
        self.connections = 0
        # Streams that were the first request on their connection: a client that kept no
        # warm connection paid its connect (and, for real, a TLS handshake) inside the TTFT.
        self.cold_streams = 0
        self.streams: OrderedDict[str, dict[str, float]] = OrderedDict()
        for model_id, b in config.models.items():
            if b.error is None:  # plans count tokens per delta: made now, not inside a call
                for budget in PLANNED_BUDGETS:
                    config.plan(model_id, budget)
        super().__init__(address, handler)

    def count_call(self, model_id: str) -> int:
        """Count a call of `model_id`; returns its 1-based number."""
        with self._lock:
            self.calls[model_id] += 1
            return self.calls[model_id]

    def count_connection(self) -> None:
        """Count a connection that carried an API request (the runner should reuse them)."""
        with self._lock:
            self.connections += 1

    def count_cold_stream(self) -> None:
        """Count a stream that opened its own connection."""
        with self._lock:
            self.cold_streams += 1

    def record_stream(self, request_id: str, lateness: list[tuple[str, float]]) -> None:
        """Keep how late a completed stream's deltas left against its plan (seconds)."""
        entry = lateness_entry(lateness)
        if entry is None:
            return
        with self._lock:
            self.streams[request_id] = entry
            while len(self.streams) > STREAMS_KEPT:
                self.streams.popitem(last=False)

    def stats(self) -> dict[str, Any]:
        """Calls per model, connections used, and the lateness of recent streams."""
        with self._lock:
            return {"calls": dict(self.calls), "connections": self.connections,
                    "cold_streams": self.cold_streams, "streams": dict(self.streams)}

    def shutdown(self) -> None:
        """Stop serving and wake every stalled stream so its thread ends."""
        self.stopping.set()
        super().shutdown()


class StreamCut(Exception):
    """The planned fault ended the stream; the handler stops writing."""


class SSEHandler(BaseHTTPRequestHandler):
    """HTTP/1.1 with chunked SSE bodies; a vendor adds do_POST and its event shapes."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # each small chunk would wait ~40 ms for a delayed ACK
    server: SSEServer
    _requests = 0  # API requests this connection has carried

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("simulator %s", format % args)

    def note_connection(self) -> None:
        """Count this connection at its first API request (stats calls do not count)."""
        self._requests += 1
        if self._requests == 1:
            self.server.count_connection()

    def note_stream(self) -> None:
        """Call as a stream starts: counts it when its request opened the connection."""
        if self._requests == 1:
            self.server.count_cold_stream()

    def stats_route(self) -> bool:
        """Answer GET /_simulator/stats; False for any other path."""
        if self.path.split("?", 1)[0] != "/_simulator/stats":
            return False
        self.send_json(200, self.server.stats())
        return True

    def read_json(self) -> Any:
        """The request body as JSON (ValueError when it is not)."""
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        return json.loads(body or b"{}")

    # Answers

    def send_json(self, status: int, payload: Any,
                  headers: Mapping[str, str] | None = None) -> None:
        """A complete JSON answer with a Content-Length (the connection stays open)."""
        raw = json.dumps(payload).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(raw)

    def start_sse(self, headers: Mapping[str, str] | None = None) -> None:
        """The 200 head of an event stream with a chunked body."""
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()

    def write_event(self, data: Any, event: str | None = None) -> None:
        """One server-sent event in one HTTP chunk; `data` as JSON unless already a string."""
        text = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
        frame = (f"event: {event}\n" if event else "") + f"data: {text}\n\n"
        raw = frame.encode("utf-8")
        self.wfile.write(b"%x\r\n%s\r\n" % (len(raw), raw))

    def end_stream(self) -> None:
        """The terminating chunk: the body ended cleanly."""
        self.wfile.write(b"0\r\n\r\n")

    def cut(self) -> None:
        """Drop the connection mid-body, as a crashed upstream or a proxy timeout does."""
        self.wfile.flush()
        self.close_connection = True
        self.connection.shutdown(2)  # socket.SHUT_RDWR

    # The plan on the wire

    def stream_deltas(self, b: SSEBehaviour, plan: StreamPlan, received: float, faulty: bool,
                      write_delta: Callable[[int, Delta], None],
                      write_error: Callable[[str], None]) -> list[tuple[str, float]]:
        """Send the planned deltas on time, with the behaviour's faults; their lateness.

        Raises StreamCut after a mid-stream error event or a dropped connection; the
        caller then sends nothing more.
        """
        lateness: list[tuple[str, float]] = []
        stalled = 0.0
        mark = plan.mark_delta
        for i, delta in enumerate(plan.deltas):
            if faulty and b.stream_error and i == b.error_after_deltas:
                write_error(b.stream_error)
                raise StreamCut
            if faulty and b.cut_after_deltas == i:
                self.cut()
                raise StreamCut
            if faulty and b.stall_seconds and i == b.stall_after_deltas:
                start = time.perf_counter()
                self.server.stopping.wait(b.stall_seconds)
                stalled += time.perf_counter() - start
            self.sleep_until(received + stalled + delta.at)
            write_delta(i, delta)
            late = time.perf_counter() - (received + stalled + delta.at)
            lateness.append((delta.kind, late))
            if i == mark:
                lateness.append(("mark", late))
        if faulty and b.stream_error and b.error_after_deltas >= len(plan.deltas):
            write_error(b.stream_error)
            raise StreamCut
        if faulty and b.cut_after_deltas is not None and b.cut_after_deltas >= len(plan.deltas):
            self.cut()
            raise StreamCut
        self._stalled = stalled
        return lateness

    def finish_lateness(self, lateness: list[tuple[str, float]], received: float,
                        plan: StreamPlan) -> list[tuple[str, float]]:
        """Lateness with the stream's end added, against the plan (stalls left out)."""
        stalled = getattr(self, "_stalled", 0.0)
        return [*lateness, ("end", time.perf_counter() - (received + stalled
                                                          + plan.generate_time))]

    def sleep_until(self, target: float) -> None:
        """Sleep until perf_counter() reaches `target`."""
        delay = target - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
