"""Measure one model of an OpenAI-compatible API with streaming chat completions.

The same figures as Bedrock (docs/contract.md section 3), through the openai package:
one client per provider with the client's own retries off (the runner's bounded retry
counts every attempt), a connection pool of at least the concurrency, and an untimed
warm-up call before any timer, which pays the client's one-time set-up and opens the
connection. The clock starts in an httpx request hook, where the request leaves for
the transport, so request building is not in any figure, and stops at the end of the
stream.

openai 3.x's synchronous client closes the connection when it reads `[DONE]` instead
of reading the body to its end: the next timed call would pay a fresh connect (and a
TLS handshake) inside its TTFT. So each timed call is preceded by an untimed warm-up
call that leaves an open connection in the pool (tests/test_openai_compat.py counts
the connections).
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import httpx2
import openai

import bench_contract as contract

from .failures import Classification, classify, redact
from .measuring import (
    AttemptFailed,
    Stream,
    backoff_delay,
    failure_record,
    judge,
    read_stream,
    summary,
)
from .openai_endpoints import Endpoint
from .provider import CatalogEntry, SetupError
from .records import Failure, Profile, Result
from .visible_tokens import EncodingUnavailable, encoding

log = logging.getLogger(__name__)

WARM_MODEL_ID = "bench-runner-connection-warm-up"
# Where reasoning text arrives in a delta: vLLM and DeepSeek, then Groq and OpenRouter.
REASONING_FIELDS = ("reasoning_content", "reasoning")
# OpenAI's own API wants max_completion_tokens (its reasoning models refuse max_tokens);
# the other hosts and self-hosted servers all take max_tokens.
_COMPLETION_TOKENS_HOSTS = frozenset({"openai"})
# A sample chunk: parsing it builds the client's (deferred) response models before any
# timer, not inside the first model's first chunk.
_SAMPLE_CHUNK = {
    "id": "warm", "object": "chat.completion.chunk", "created": 0, "model": WARM_MODEL_ID,
    "choices": [{"index": 0, "delta": {"role": "assistant", "content": "."},
                 "finish_reason": None}],
    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
}


class OpenAICompatibleProvider:
    """Any OpenAI-compatible chat-completions API (a preset host or a server of one's own)."""

    region = None

    def __init__(self, endpoint: Endpoint, *, concurrency: int = 1, call_timeout: float = 120.0,
                 retries: int = 2, connect_timeout: float = 10.0, read_timeout: float = 60.0,
                 backoff: float = 1.0, sleep: Callable[[float], None] = time.sleep) -> None:
        self.endpoint = endpoint
        self.name = endpoint.provider  # the name stored as `provider`
        self.concurrency = max(1, concurrency)
        self.call_timeout = call_timeout
        self.retries = max(0, retries)
        self.connect_timeout = connect_timeout
        self.read_timeout = min(read_timeout, call_timeout)
        self.backoff = backoff
        self._sleep = sleep
        self._lock = threading.Lock()
        self._client: openai.OpenAI | None = None
        self._http: httpx2.Client | None = None
        self._sent = threading.local()

    # Set-up

    def warm(self) -> None:
        """Create the client once and open `concurrency` warm connections; SetupError if refused.

        Called again before each cycle, it re-warms the pool.
        """
        try:
            encoding()  # ~0.1 s to load: here, never inside the first model's timing
        except EncodingUnavailable as exc:
            raise SetupError(str(exc), kind="invalid_request") from exc
        with self._lock:
            fresh = self._client is None
            if fresh:
                self._client = self._create_client()
                openai.types.chat.ChatCompletionChunk.model_validate(_SAMPLE_CHUNK)
        try:
            self._warm_connections(self.concurrency, strict=True)
        except SetupError:
            self.close()
            raise
        if fresh:
            log.info("%s ready: base_url=%s connections=%d", self.name, self.endpoint.base_url,
                     self.concurrency)

    def _create_client(self) -> openai.OpenAI:
        pool = max(10, self.concurrency)
        self._http = httpx2.Client(
            timeout=httpx2.Timeout(self.read_timeout, connect=self.connect_timeout),
            limits=httpx2.Limits(max_connections=pool, max_keepalive_connections=pool,
                                 keepalive_expiry=60.0),
            event_hooks={"request": [self._mark_sent]},
        )
        return openai.OpenAI(api_key=self.endpoint.api_key, base_url=self.endpoint.base_url,
                             max_retries=0, http_client=self._http,
                             timeout=httpx2.Timeout(self.read_timeout,
                                                    connect=self.connect_timeout))

    def _mark_sent(self, request: Any) -> None:
        """httpx's request hook: the request leaves for the transport now."""
        self._sent.at = time.perf_counter()
        self._sent.wall = datetime.now(UTC)

    def _warm_connections(self, count: int, *, strict: bool) -> None:
        """Leave `count` open connections in the pool, made by overlapping untimed calls."""
        if count == 1:
            self._warm_call(strict=strict)
            return
        barrier = threading.Barrier(count)
        errors: list[BaseException] = []

        def call() -> None:
            try:
                barrier.wait(timeout=10)
                self._warm_call(strict=strict)
            except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
                errors.append(exc)

        threads = [threading.Thread(target=call, name="openai-warm") for _ in range(count)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        setup = [e for e in errors if isinstance(e, SetupError)]
        if setup:
            raise setup[0]

    def _warm_call(self, *, strict: bool) -> None:
        """One cheap call: a model id no host serves is refused (404), unbilled, after the
        connection is made and the key checked; the connection stays in the pool."""
        assert self._client is not None
        try:
            self._client.chat.completions.create(
                model=WARM_MODEL_ID, messages=[{"role": "user", "content": "."}],
                **{self._max_tokens_field(): 1})
        except (openai.AuthenticationError, openai.PermissionDeniedError) as exc:
            if strict:
                raise SetupError(
                    f"{self.name} refused the key in {self.endpoint.key_env or 'no variable'} "
                    f"({exc.status_code}): check it", kind="auth",
                    exc_type=type(exc).__name__) from None
        except openai.APIStatusError:
            pass  # the expected refusal of the warm-up model: the connection is open
        except openai.APIConnectionError as exc:
            if strict:
                raise SetupError(f"cannot reach {self.name} at {self.endpoint.base_url}: "
                                 f"{self._clean(str(exc.__cause__ or exc))}",
                                 kind=classify(exc).kind,
                                 exc_type=type(exc).__name__) from None
            log.warning("%s connection warm-up failed: %s", self.name, self._clean(str(exc)))

    def _max_tokens_field(self) -> str:
        return ("max_completion_tokens" if self.name in _COMPLETION_TOKENS_HOSTS
                else "max_tokens")

    def _clean(self, text: str) -> str:
        """Text for a log or a record: the key itself and anything shaped like one removed."""
        if self.endpoint.api_key and len(self.endpoint.api_key) >= 8:
            text = text.replace(self.endpoint.api_key, "[redacted]")
        return redact(text)

    # Measuring

    def measure(self, model_id: str, profile: Profile,
                request: Any = None) -> Result | Failure:
        """Measure one model, retrying throttling, transient faults and timeouts a few times.

        Of the worklist's settings (`request`), only omit_temperature applies to a chat
        completions host; the extra fields and the region are Bedrock's.
        """
        if request is not None and request.omit_temperature:
            profile = dataclasses.replace(profile, temperature=None)
        if self._client is None:
            self.warm()
        earlier: list[dict[str, Any]] = []
        first_ts: datetime | None = None
        attempt = calls = 0
        cap_at = time.perf_counter() + self.call_timeout  # the model's cap, retries included
        while True:
            attempt += 1
            outcome = self._attempt(model_id, profile, cap_at)
            if isinstance(outcome, Stream):
                calls += 1
                verdict = self._judge(model_id, profile, outcome, calls, earlier)
                if isinstance(verdict, Result):
                    return verdict
                outcome = verdict
            elif outcome.called:
                calls += 1
            first_ts = first_ts or outcome.run_ts
            c = outcome.classification
            delay = backoff_delay(self.backoff, attempt, c.kind, c.retry_after)
            out_of_time = time.perf_counter() + delay >= cap_at
            if not c.retryable or attempt > self.retries or out_of_time:
                log.warning("%s %s failed: kind=%s code=%s attempts=%d", self.name, model_id,
                            c.kind, c.code or c.exc_type, attempt)
                return failure_record(
                    outcome, provider=self.name, model_id=model_id, profile=profile,
                    region=None, first_ts=first_ts, attempts=calls, earlier=earlier)
            log.warning("%s %s attempt %d %s (%s); retrying in %.2f s", self.name, model_id,
                        attempt, c.kind, c.code or c.exc_type, delay)
            earlier.append(summary(outcome, attempt))
            self._sleep(delay)

    def _attempt(self, model_id: str, profile: Profile,
                 cap_at: float) -> Stream | AttemptFailed:
        """One timed streaming call, stopped at `cap_at`; a failure comes with its stage."""
        assert self._client is not None
        # The connection the last stream used was closed at its [DONE]: open one now,
        # outside the timer.
        self._warm_connections(1, strict=False)
        request: dict[str, Any] = {
            "model": model_id,
            "messages": [{"role": "user", "content": profile.prompt}],
            "stream": True,
            "stream_options": {"include_usage": True},
            self._max_tokens_field(): profile.max_tokens,
        }
        if profile.temperature is not None:
            request["temperature"] = profile.temperature
        self._sent.at = None
        called_wall, called = datetime.now(UTC), time.perf_counter()
        stage, stream, seen = "call", None, None
        try:
            stream = self._client.chat.completions.create(**request)
            seen = Stream(sent=self._sent.at or called,
                          run_ts=self._sent.wall if self._sent.at else called_wall)
            seen.request_id = stream.response.headers.get("x-request-id")
            deadline = min(seen.sent + self.call_timeout, cap_at)
            stage = "stream"
            return read_stream(seen, stream, _record, deadline, self.call_timeout)
        except Exception as exc:  # noqa: BLE001 - every failure of a call becomes a record
            sent_wall = seen.run_ts if seen else (self._sent.wall if self._sent.at
                                                  else called_wall)
            c = classify(exc, model_id=model_id)
            c = _with_message(c, self._clean(c.message))
            return AttemptFailed(c, stage, sent_wall,
                                 c.request_id or (seen.request_id if seen else None))
        finally:
            if stream is not None:
                stream.close()

    def _judge(self, model_id: str, profile: Profile, seen: Stream, attempts: int,
               earlier: list[dict[str, Any]]) -> Result | AttemptFailed:
        """Turn a complete stream into a Result, or a failure when it cannot be one.

        Some hosts report reasoning only in usage (no reasoning deltas): then usage's
        count is not all visible, and the visible text is counted instead."""
        hidden = (seen.usage or {}).get("reasoning_tokens") or 0
        return judge(seen, provider=self.name, model_id=model_id, profile=profile,
                     attempts=attempts, earlier=earlier, temperature=profile.temperature,
                     missing="a finish_reason", length_stop="length",
                     output_key="completion_tokens", input_key="prompt_tokens",
                     hidden_reasoning=hidden > 0, notes={"usage_reasoning_tokens": hidden},
                     request_mode=contract.OPENAI_CHAT_MODE)

    # Catalogue

    def catalogue(self) -> list[CatalogEntry]:
        """The models the endpoint lists (GET /models)."""
        with self._lock:
            if self._client is None:
                self._client = self._create_client()
        try:
            models = list(self._client.models.list())
        except openai.OpenAIError as exc:
            c = classify(exc)
            raise SetupError(f"cannot list the {self.name} models ({c.kind}): "
                             f"{self._clean(c.message)}") from None
        return [CatalogEntry(model_id=m.id, name=m.id, vendor=getattr(m, "owned_by", "") or "",
                             kind="model", streaming=True, needs_profile=False, status="ACTIVE")
                for m in sorted(models, key=lambda m: m.id)]

    def close(self) -> None:
        """Close the client and its pooled connections."""
        with self._lock:
            if self._client is not None:
                self._client.close()
            if self._http is not None:
                self._http.close()
            self._client = self._http = None


def _record(seen: Stream, chunk: Any, now: float) -> None:
    """Fold one chunk into what the attempt saw.

    The first chunk carries only the role (and empty content): no token, so no clock
    stops. Usage arrives in a last chunk whose choices are empty.
    """
    usage = getattr(chunk, "usage", None)
    if usage is not None:
        details = getattr(usage, "completion_tokens_details", None)
        seen.usage = {"prompt_tokens": usage.prompt_tokens,
                      "completion_tokens": usage.completion_tokens,
                      "reasoning_tokens": getattr(details, "reasoning_tokens", None)}
    for choice in chunk.choices or ():
        delta = choice.delta
        if delta is not None:
            text = delta.content
            reasoning = next((value for name in REASONING_FIELDS
                              if isinstance(value := getattr(delta, name, None), str)
                              and value), None)
            if text:
                seen.text(text, now)
            elif reasoning:
                seen.reasoning(reasoning, now)
        if choice.finish_reason:
            seen.stop_reason = choice.finish_reason


def _with_message(c: Classification, message: str) -> Classification:
    from dataclasses import replace

    return replace(c, message=message)
