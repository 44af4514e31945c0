"""An Anthropic Messages API stand-in: the real `anthropic` client run against known truth.

POST /v1/messages with `stream: true` answers server-sent events in the shapes the API
sends: message_start (with usage's input tokens), for each block content_block_start,
its deltas (thinking_delta then a signature_delta for a thinking block, text_delta for
a text block) and content_block_stop, a ping after the first block's start,
message_delta (stop_reason, usage's output tokens, thinking included) and
message_stop. Errors before the stream are the API's JSON error body
(`{"type": "error", "error": {"type": ..., "message": ...}}`) with a `request-id`
header (429 and 529 with retry-after); mid-stream ones are an `event: error`. GET
/v1/models lists the models.

It checks what a client sends: the key in the header its `anthropic-version` uses
(2026-10-21: `Authorization: Bearer`, or x-api-key when both come; 2023-06-01:
x-api-key), a known version, and on 2026-10-21 no temperature, top_p or top_k (the
API refuses them with a 400 even at their defaults). Timing and token counts follow
the plan every simulator shares (runner/sse_simulator.py).
"""

from __future__ import annotations

import dataclasses
import logging
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import Any, ClassVar

from .simulator import Delta, StreamPlan, serve
from .sse_simulator import SSEBehaviour, SSEConfig, SSEHandler, SSEServer, StreamCut

log = logging.getLogger(__name__)

# The key the simulator accepts unless its config names another; not a real key.
DEFAULT_KEY = "sim-anthropic-key-0123456789abcdefghij"
API_VERSIONS = ("2026-10-21", "2023-06-01")
# Sampling parameters the 2026-10-21 version refuses, even at their default values.
REFUSED_2026 = ("temperature", "top_p", "top_k")

# Errors answered instead of a stream: (status, error.type, message).
PRE_STREAM_ERRORS: dict[str, tuple[int, str, str]] = {
    "rate_limit": (429, "rate_limit_error",
                   "This request would exceed the rate limit for your organization of 50 "
                   "requests per minute."),
    "overloaded": (529, "overloaded_error", "Overloaded"),
    "api_error": (500, "api_error", "Internal server error"),
    "permission": (403, "permission_error",
                   "Your API key does not have permission to use the specified resource."),
    "billing": (402, "billing_error", "Your credit balance is too low to access the API."),
    "prompt_too_long": (400, "invalid_request_error",
                        "prompt is too long: 215439 tokens > 200000 maximum"),
    "request_too_large": (413, "request_too_large",
                          "Request exceeds the maximum allowed number of bytes."),
}
# Errors sent as `event: error` after the stream began (the HTTP status is already 200).
STREAM_ERRORS: dict[str, str] = {
    "overloaded_error": "Overloaded",
    "api_error": "Internal server error",
    "rate_limit_error": "Output tokens per minute exceeded.",
}
# The behaviour's vendor options this simulator reads.
OPTIONS = {
    "stall_before_headers": "seconds to wait before the response's status line",
    "no_message_stop": "send message_delta but end the body without message_stop",
    "no_pings": "leave out the ping events",
}


@dataclass(frozen=True)
class AnthropicSimulatorConfig(SSEConfig):
    """The simulated Claude models and their faults, with Anthropic's error names, and the key."""

    api_key: str = DEFAULT_KEY
    errors: ClassVar[frozenset[str]] = frozenset(PRE_STREAM_ERRORS)
    stream_errors: ClassVar[frozenset[str]] = frozenset(STREAM_ERRORS)

    def __post_init__(self) -> None:
        super().__post_init__()
        for model_id, b in self.models.items():
            unknown = set(b.options) - set(OPTIONS)
            if unknown:
                raise ValueError(f"model {model_id}: unknown options {sorted(unknown)}; "
                                 f"known: {sorted(OPTIONS)}")

    @classmethod
    def default(cls) -> AnthropicSimulatorConfig:
        """The embedded models the demo uses."""
        return cls(models={
            "claude-sim-fast": SSEBehaviour(ttft=0.12, gap=0.015, tokens_per_delta=3,
                                            output_tokens=64, name="Claude Sim Fast"),
            "claude-sim-thinker": SSEBehaviour(ttft=0.2, gap=0.02, tokens_per_delta=3,
                                               reasoning_tokens=24, output_tokens=64,
                                               name="Claude Sim Thinker"),
        })

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AnthropicSimulatorConfig:
        """As SSEConfig.from_dict, plus an optional `api_key`."""
        extra = set(data) - {"models", "api_key"}
        if extra:
            raise ValueError(f"unknown simulator config keys: {sorted(extra)}")
        known = {f.name for f in dataclasses.fields(SSEBehaviour)}
        models: dict[str, SSEBehaviour] = {}
        for model_id, spec in dict(data.get("models", {})).items():
            unknown = set(spec) - known
            if unknown:
                raise ValueError(f"model {model_id}: unknown fields {sorted(unknown)}")
            models[model_id] = SSEBehaviour(**spec)
        return cls(models=models, api_key=str(data.get("api_key", DEFAULT_KEY)))

    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready form that `from_dict` reads back."""
        return {**super().to_dict(), "api_key": self.api_key}


class AnthropicHandler(SSEHandler):
    """The Messages API routes."""

    server: SSEServer

    def do_GET(self) -> None:
        if self.stats_route():
            return
        self.note_connection()
        if self.path.split("?", 1)[0].rstrip("/") != "/v1/models":
            self._error(404, "not_found_error", f"Not found: {self.path}")
            return
        if self._refuse_credentials():
            return
        data = [{"type": "model", "id": model_id, "display_name": b.name or model_id,
                 "created_at": "2026-01-01T00:00:00Z"}
                for model_id, b in self.server.config.models.items()]
        self.send_json(200, {"data": data, "has_more": False,
                             "first_id": data[0]["id"] if data else None,
                             "last_id": data[-1]["id"] if data else None})

    def do_POST(self) -> None:
        received = time.perf_counter()
        self.note_connection()
        try:
            request = self.read_json()
            model_id = str(request["model"])
            max_tokens = int(request["max_tokens"])
        except (ValueError, TypeError, KeyError):
            self._error(400, "invalid_request_error", "model and max_tokens: Field required")
            return
        if self.path.split("?", 1)[0].rstrip("/") != "/v1/messages":
            self._error(404, "not_found_error", f"Not found: {self.path}")
            return
        if self._refuse_credentials():
            return
        refused = [name for name in REFUSED_2026 if name in request]
        if self.headers.get("anthropic-version") == API_VERSIONS[0] and refused:
            self._error(400, "invalid_request_error",
                        f"{refused[0]}: Extra inputs are not permitted")
            return
        call_no = self.server.count_call(model_id)
        b = self.server.config.models.get(model_id)
        if b is None:
            self._error(404, "not_found_error", f"model: {model_id}")
            return
        faulty = b.faulty(call_no)
        if faulty and b.options.get("stall_before_headers"):
            self.server.stopping.wait(float(b.options["stall_before_headers"]))
        if faulty and b.error:
            status, kind, message = PRE_STREAM_ERRORS[b.error]
            headers = ({"retry-after": f"{b.retry_after:g}"}
                       if b.retry_after is not None and status in (429, 529) else {})
            self._error(status, kind, message, headers)
            return
        if not request.get("stream"):
            self._error(400, "invalid_request_error", "this simulator streams only")
            return
        self._stream(model_id, b, self.server.config.plan(model_id, max_tokens), received,
                     faulty)

    def _refuse_credentials(self) -> bool:
        """Answer 400 or 401 as the API does when the version or the key's header is wrong."""
        version = self.headers.get("anthropic-version")
        api_key = self.headers.get("x-api-key")
        bearer = self.headers.get("Authorization", "")
        if version not in API_VERSIONS:
            self._error(400, "invalid_request_error",
                        f"anthropic-version: {version!r} is not a valid version")
            return True
        if version == API_VERSIONS[0] and api_key is None:
            sent = bearer.removeprefix("Bearer ") if bearer.startswith("Bearer ") else None
        else:
            sent = api_key  # 2023-06-01 reads the key from x-api-key only
        if sent != self.server.config.api_key:
            self._error(401, "authentication_error", "invalid x-api-key")
            return True
        return False

    # The stream

    def _stream(self, model_id: str, b: SSEBehaviour, plan: StreamPlan, received: float,
                faulty: bool) -> None:
        request_id = f"req_{uuid.uuid4().hex[:24]}"
        self.note_stream()
        self.start_sse({"request-id": request_id})
        blocks = [plan.deltas[0]] if plan.deltas else []

        def event(name: str, data: dict[str, Any]) -> None:
            self.write_event({"type": name, **data}, event=name)

        def write_delta(i: int, delta: Delta) -> None:
            if i and plan.deltas[i - 1].block != delta.block:
                self._close_block(event, plan.deltas[i - 1])
                self._open_block(event, delta)
                blocks.append(delta)
            body = ({"type": "thinking_delta", "thinking": delta.text}
                    if delta.kind == "reasoning" else {"type": "text_delta", "text": delta.text})
            event("content_block_delta", {"index": delta.block, "delta": body})

        def write_error(name: str) -> None:
            event("error", {"error": {"type": name, "message": STREAM_ERRORS[name]}})
            self.end_stream()

        try:
            event("message_start", {"message": {
                "id": f"msg_{uuid.uuid4().hex[:24]}", "type": "message", "role": "assistant",
                "model": model_id, "content": [], "stop_reason": None, "stop_sequence": None,
                "usage": {"input_tokens": plan.input_tokens, "output_tokens": 1}}})
            if blocks:
                # The first block opens (empty) at once, long before its first delta.
                self._open_block(event, blocks[0])
                if not b.options.get("no_pings"):
                    event("ping", {})
            lateness = self.stream_deltas(b, plan, received, faulty, write_delta, write_error)
            if plan.deltas:
                self._close_block(event, plan.deltas[-1])
            if not (faulty and b.no_finish):
                # send_usage False: a gateway that drops usage (the runner counts deltas).
                usage = {"output_tokens": plan.output_tokens} if b.send_usage else {}
                event("message_delta", {
                    "delta": {"stop_reason": plan.stop_reason, "stop_sequence": None},
                    "usage": usage})
                if not (faulty and b.options.get("no_message_stop")):
                    event("message_stop", {})
            self.end_stream()
            self.server.record_stream(request_id, self.finish_lateness(lateness, received, plan))
        except StreamCut:
            self.close_connection = True
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the client gave up: nothing to answer

    @staticmethod
    def _open_block(event: Callable[[str, dict[str, Any]], None], delta: Delta) -> None:
        block = ({"type": "thinking", "thinking": "", "signature": ""}
                 if delta.kind == "reasoning" else {"type": "text", "text": ""})
        event("content_block_start", {"index": delta.block, "content_block": block})

    @staticmethod
    def _close_block(event: Callable[[str, dict[str, Any]], None], last: Delta) -> None:
        if last.kind == "reasoning":
            # A thinking block ends with its signature: no token in it.
            event("content_block_delta", {"index": last.block, "delta": {
                "type": "signature_delta", "signature": uuid.uuid4().hex * 2}})
        event("content_block_stop", {"index": last.block})

    def _error(self, status: int, kind: str, message: str,
               headers: Mapping[str, str] | None = None) -> None:
        self.send_json(status, {"type": "error", "error": {"type": kind, "message": message}},
                       {"request-id": f"req_{uuid.uuid4().hex[:24]}", **(headers or {})})

    def send_response(self, code: int, message: str | None = None) -> None:
        # 529 is Anthropic's own status: http.server knows no phrase for it.
        if message is None and code == 529:
            message = "Overloaded"
        elif message is None and code not in HTTPStatus._value2member_map_:
            message = ""
        super().send_response(code, message)


def make_server(host: str, port: int, config: AnthropicSimulatorConfig | None = None
                ) -> SSEServer:
    """A bound, not yet serving, simulator (the default models unless `config`)."""
    return SSEServer((host, port), config or AnthropicSimulatorConfig.default(),
                     AnthropicHandler)


def run(host: str, port: int, config_path: Path | None,
        on_listening: Callable[[str], None] | None = None) -> None:
    """Serve until SIGINT or SIGTERM; `on_listening` gets the URL once bound."""
    config = (AnthropicSimulatorConfig.from_file(config_path) if config_path
              else AnthropicSimulatorConfig.default())
    serve(make_server(host, port, config), "Anthropic", on_listening)


if __name__ == "__main__":
    # `python -m runner.anthropic_simulator PORT [CONFIG]`: what the test fixture starts.
    import sys

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    run("127.0.0.1", int(sys.argv[1]), Path(sys.argv[2]) if len(sys.argv) > 2 else None)

