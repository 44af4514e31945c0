"""An OpenAI-compatible endpoint, so the real openai client can be run against known truth.

POST /v1/chat/completions streams the chunks OpenAI's API sends: a first chunk with
only the role (and empty content), content deltas, reasoning deltas in the field
vLLM and DeepSeek use (`reasoning_content`) or the one Groq and OpenRouter use
(`reasoning`, per model: `options.reasoning_field`), a chunk with the finish reason
and an empty delta, with `stream_options.include_usage` a last chunk with
`choices: []` and the usage, then `data: [DONE]`. Errors before the stream are the
API's JSON errors (429 with Retry-After, 401, 403, 404 model_not_found, 400
context_length_exceeded, 5xx); mid-stream ones are an `error` event. GET /v1/models
lists the models. A non-streaming call answers one JSON completion. Any key is
accepted except one starting with `sk-revoked` (401, as a revoked key is).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

from .simulator import Delta, StreamPlan, serve
from .sse_simulator import SSEBehaviour, SSEConfig, SSEHandler, SSEServer, StreamCut

log = logging.getLogger(__name__)

# Errors answered before the stream: (status, type, code, message).
PRE_STREAM_ERRORS: dict[str, tuple[int, str, str | None, str]] = {
    "rate_limit": (429, "requests", "rate_limit_exceeded",
                   "Rate limit reached for requests per min. Please try again in 1s."),
    "invalid_api_key": (401, "invalid_request_error", "invalid_api_key",
                        "Incorrect API key provided. You can find your API key in your "
                        "account settings."),
    "permission_denied": (403, "permission_error", "permission_denied",
                          "You are not allowed to use this model."),
    "model_not_found": (404, "invalid_request_error", "model_not_found",
                        "The model `{model_id}` does not exist or you do not have access "
                        "to it."),
    "context_length_exceeded": (
        400, "invalid_request_error", "context_length_exceeded",
        "This model's maximum context length is 8192 tokens. However, your messages "
        "resulted in 9100 tokens. Please reduce the length of the messages."),
    "server_error": (500, "server_error", None,
                     "The server had an error while processing your request."),
    "overloaded": (503, "server_error", "overloaded", "The engine is currently overloaded."),
}
# Errors sent as an event mid-stream: (type, code, message).
STREAM_ERRORS: dict[str, tuple[str, str | None, str]] = {
    "server_error": ("server_error", None,
                     "The server had an error while processing your request."),
    "rate_limit": ("requests", "rate_limit_exceeded", "Rate limit reached for tokens."),
}
# Any key is accepted but one that starts with this: the stand-in for a revoked key.
REVOKED_KEY_PREFIX = "sk-revoked"
FINISH_REASONS = {"end_turn": "stop", "max_tokens": "length"}


class OpenAISimulatorConfig(SSEConfig):
    """The simulator's models and their faults, with OpenAI's error names."""

    errors: ClassVar[frozenset[str]] = frozenset(PRE_STREAM_ERRORS)
    stream_errors: ClassVar[frozenset[str]] = frozenset(STREAM_ERRORS)

    @classmethod
    def default(cls) -> OpenAISimulatorConfig:
        """The embedded models the demo uses."""
        return cls(models={
            "sim-chat-fast": SSEBehaviour(ttft=0.15, gap=0.02, tokens_per_delta=1,
                                          output_tokens=72, name="Sim Chat Fast"),
            "sim-chat-reasoner": SSEBehaviour(
                ttft=0.2, gap=0.015, tokens_per_delta=2, reasoning_tokens=24,
                output_tokens=40, name="Sim Chat Reasoner"),
            "sim-chat-retired": SSEBehaviour(error="model_not_found", name="Sim Chat Retired"),
        })


class OpenAIHandler(SSEHandler):
    """The chat-completions routes."""

    def do_GET(self) -> None:
        if self.stats_route():
            return
        self.note_connection()
        if self.path.split("?", 1)[0].rstrip("/") == "/v1/models":
            created = int(time.time())
            self.send_json(200, {"object": "list", "data": [
                {"id": model_id, "object": "model", "created": created, "owned_by": "simulator"}
                for model_id in self.server.config.models]})
        else:
            self._error(404, "invalid_request_error", None, f"Unknown path {self.path}.")

    def do_POST(self) -> None:
        received = time.perf_counter()
        self.note_connection()
        try:
            request = self.read_json()
            model_id = str(request["model"])
            max_tokens = int(request.get("max_completion_tokens")
                             or request.get("max_tokens") or 4096)
        except (ValueError, TypeError, KeyError):
            self._error(400, "invalid_request_error", None, "We could not parse the JSON body.")
            return
        if self.path.split("?", 1)[0].rstrip("/") != "/v1/chat/completions":
            self._error(404, "invalid_request_error", None, f"Unknown path {self.path}.")
            return
        key = self.headers.get("Authorization", "").removeprefix("Bearer ")
        if not key or key.startswith(REVOKED_KEY_PREFIX) or key == self.headers.get(
                "Authorization"):
            status, kind, code, message = PRE_STREAM_ERRORS["invalid_api_key"]
            self._error(status, kind, code, message)
            return
        call_no = self.server.count_call(model_id)
        b = self.server.config.models.get(model_id)
        if b is None:
            status, kind, code, message = PRE_STREAM_ERRORS["model_not_found"]
            self._error(status, kind, code, message.format(model_id=model_id))
            return
        faulty = b.faulty(call_no)
        if faulty and b.error:
            status, kind, code, message = PRE_STREAM_ERRORS[b.error]
            headers = {"retry-after": f"{b.retry_after:g}"} if b.retry_after is not None else {}
            self._error(status, kind, code, message.format(model_id=model_id), headers)
            return
        plan = self.server.config.plan(model_id, max_tokens)
        if request.get("stream"):
            usage = bool((request.get("stream_options") or {}).get("include_usage"))
            self._stream(model_id, b, plan, received, faulty, usage)
        else:
            self._complete(model_id, b, plan, received)

    # Answers

    def _complete(self, model_id: str, b: SSEBehaviour, plan: StreamPlan,
                  received: float) -> None:
        self.sleep_until(received + plan.generate_time)
        message: dict[str, Any] = {"role": "assistant", "content": _text(plan, "text")}
        reasoning = _text(plan, "reasoning")
        if reasoning:
            message[b.options.get("reasoning_field", "reasoning_content")] = reasoning
        answer = {"id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "object": "chat.completion",
                  "created": int(time.time()), "model": model_id,
                  "choices": [{"index": 0, "message": message, "logprobs": None,
                               "finish_reason": FINISH_REASONS[plan.stop_reason]}]}
        if b.send_usage:
            answer["usage"] = _usage(plan)
        self.send_json(200, answer)

    def _stream(self, model_id: str, b: SSEBehaviour, plan: StreamPlan, received: float,
                faulty: bool, include_usage: bool) -> None:
        request_id = f"req_{uuid.uuid4().hex}"
        self.note_stream()
        self.start_sse({"x-request-id": request_id})
        base = {"id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "object": "chat.completion.chunk",
                "created": int(time.time()), "model": model_id, "system_fingerprint": "fp_sim"}
        reasoning_field = b.options.get("reasoning_field", "reasoning_content")

        def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
            out = {**base, "choices": [{"index": 0, "delta": delta, "logprobs": None,
                                        "finish_reason": finish}]}
            if include_usage:
                out["usage"] = None  # every chunk but the last says null, as OpenAI does
            return out

        def write_delta(_: int, delta: Delta) -> None:
            field = "content" if delta.kind == "text" else reasoning_field
            self.write_event(chunk({field: delta.text}))

        def write_error(name: str) -> None:
            kind, code, message = STREAM_ERRORS[name]
            self.write_event({"error": {"message": message, "type": kind, "param": None,
                                        "code": code}})
            self.end_stream()

        try:
            # The role arrives alone, before any text: it must not stop a TTFT clock.
            self.write_event(chunk({"role": "assistant", "content": "", "refusal": None}))
            lateness = self.stream_deltas(b, plan, received, faulty, write_delta, write_error)
            if not (faulty and b.no_finish):
                self.write_event(chunk({}, FINISH_REASONS[plan.stop_reason]))
            if include_usage and b.send_usage:
                self.write_event({**base, "choices": [], "usage": _usage(plan)})
            self.write_event("[DONE]")
            self.end_stream()
            self.server.record_stream(request_id,
                                      self.finish_lateness(lateness, received, plan))
        except StreamCut:
            self.close_connection = True
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the client gave up: nothing to answer

    def _error(self, status: int, kind: str, code: str | None, message: str,
               headers: dict[str, str] | None = None) -> None:
        self.send_json(status, {"error": {"message": message, "type": kind, "param": None,
                                          "code": code}},
                       {"x-request-id": f"req_{uuid.uuid4().hex}", **(headers or {})})


def _text(plan: StreamPlan, kind: str) -> str:
    return "".join(d.text for d in plan.deltas if d.kind == kind)


def _usage(plan: StreamPlan) -> dict[str, Any]:
    reasoning = sum(d.tokens for d in plan.deltas if d.kind == "reasoning")
    return {"prompt_tokens": plan.input_tokens, "completion_tokens": plan.output_tokens,
            "total_tokens": plan.input_tokens + plan.output_tokens,
            "completion_tokens_details": {"reasoning_tokens": reasoning}}


def make_server(host: str, port: int, config: OpenAISimulatorConfig | None = None
                ) -> SSEServer:
    """A bound, not yet serving, simulator (the default models unless `config`)."""
    return SSEServer((host, port), config or OpenAISimulatorConfig.default(), OpenAIHandler)


def run(host: str, port: int, config_path: Path | None,
        on_listening: Callable[[str], None] | None = None) -> None:
    """Serve until SIGINT or SIGTERM; `on_listening` gets the URL once bound."""
    config = (OpenAISimulatorConfig.from_file(config_path) if config_path
              else OpenAISimulatorConfig.default())
    serve(make_server(host, port, config), "OpenAI-compatible", on_listening)


if __name__ == "__main__":
    # `python -m runner.openai_simulator PORT [CONFIG]`: what the test fixture starts.
    import sys

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    run("127.0.0.1", int(sys.argv[1]), Path(sys.argv[2]) if len(sys.argv) > 2 else None)
