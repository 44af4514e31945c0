"""Measure one Claude model through Anthropic's streamed Messages API (docs/contract.md section 3).

One `anthropic.Anthropic` client per provider over one pooled httpx client (at least
`concurrency` keep-alive connections), the SDK's own retries off (`max_retries=0`: the
runner's bounded retry counts every attempt), and before any timer runs: the key
checked and the connections opened by unbilled refused calls through messages.create
itself (an unknown model id is a 404 after authentication), which also runs the
client's first-call set-up. The clock starts in httpx's `request` event hook, when the
built request is handed to the transport, so the SDK's request building is in no
figure; it stops at message_stop.

The 2.x client sends the key as `Authorization: Bearer` with `anthropic-version`
2026-10-21, and that version refuses temperature, top_p and top_k (a 400, even
through `extra_body`); its `messages.create` has no such parameters (a TypeError). So
temperature is sent only by a client whose `messages.create` takes it, and the stored
`temperature` is what was sent: null from a 2.x client.

Thinking deltas are reasoning: they count for time_to_first_any_token and
reasoning_tokens, never for visible text or time_to_first_token. Usage comes in two
parts: input tokens in message_start, output tokens (thinking included) in
message_delta. A stream without message_stop, or without a stop_reason, is a failure.
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import anthropic
import httpx2

import bench_contract as contract

from .failures import Classification, classify
from .measuring import (
    AttemptFailed,
    Stream,
    backoff_delay,
    failure_record,
    judge,
    read_stream,
    summary,
)
from .provider import CatalogEntry, SetupError
from .records import Failure, Profile, Result
from .settings import ENV_ANTHROPIC_API_KEY, ENV_ANTHROPIC_BASE_URL
from .visible_tokens import EncodingUnavailable, encoding

log = logging.getLogger(__name__)

PROVIDER = "anthropic"
REQUEST_MODE = contract.ANTHROPIC_MODE
DEFAULT_BASE_URL = "https://api.anthropic.com"
WARM_MODEL_ID = "bench-runner-connection-warm-up"
IDLE_REWARM_SECONDS = 15.0
WARM_ROUNDS = 3
# How long a Retry-After may hold a retry before the model is given up on: past the
# call's cap it is a failure anyway.
MAX_RETRY_AFTER = 60.0
UNKNOWN_MODEL_HINT = ("check the model id: `bench-runner models --provider anthropic` lists the "
                      "ids this key can call")
CONTEXT_HINT = ("the prompt and max tokens do not fit this model's context window: shorten "
                "--prompt or lower --max-tokens")
@dataclass
class _Stream(Stream):
    """What one attempt saw; the stop reason counts only once message_stop has come."""

    pending_stop: str | None = None  # message_delta's stop_reason, until message_stop
    stopped: bool = False  # message_stop arrived


class AnthropicProvider:
    """Anthropic's Messages API through the maintained `anthropic` client, streamed."""

    name = PROVIDER

    def __init__(self, *, region: str | None = None, concurrency: int = 1,
                 call_timeout: float = 120.0, retries: int = 2, connect_timeout: float = 10.0,
                 read_timeout: float = 60.0, backoff: float = 1.0,
                 sleep: Callable[[float], None] = time.sleep,
                 environ: Mapping[str, str] | None = None) -> None:
        self.region = region
        self.concurrency = max(1, concurrency)
        self.call_timeout = call_timeout
        self.retries = max(0, retries)
        self.connect_timeout = connect_timeout
        self.read_timeout = min(read_timeout, call_timeout)
        self.backoff = backoff
        self._sleep = sleep
        self._environ = os.environ if environ is None else environ
        self._lock = threading.Lock()
        self._client: anthropic.Anthropic | None = None
        self._http: httpx2.Client | None = None
        self._sent = threading.local()
        self._last_used = time.monotonic()
        self._takes_temperature = False
        self._parameters: frozenset[str] = frozenset()
        self._warned_temperature = False

    # Set-up

    def warm(self) -> None:
        """Create the client once, check the key, and (re)open `concurrency` warm connections."""
        try:
            encoding()
        except EncodingUnavailable as exc:
            raise SetupError(str(exc), kind="invalid_request") from exc
        with self._lock:
            fresh = self._client is None
            if fresh:
                self._client = self._create_client()
        try:
            self._warm_connections(self.concurrency, strict=True)
        except SetupError:
            self.close()
            raise
        if fresh:
            log.info("anthropic ready: base_url=%s api_version=%s connections=%d",
                     self._client.base_url if self._client else "-", self.api_version,
                     self.concurrency)

    @property
    def api_version(self) -> str | None:
        """The anthropic-version header the installed client sends (None before warm)."""
        if self._client is None:
            return None
        version = self._client.default_headers.get("anthropic-version")
        return version if isinstance(version, str) else None

    def _create_client(self) -> anthropic.Anthropic:
        key = self._environ.get(ENV_ANTHROPIC_API_KEY, "").strip()
        if not key:
            raise SetupError(f"No Anthropic API key: set {ENV_ANTHROPIC_API_KEY} in the "
                             f"runner's environment.", kind="auth", exc_type="NoCredentialsError")
        base_url = self._environ.get(ENV_ANTHROPIC_BASE_URL, "").strip() or DEFAULT_BASE_URL
        timeout = httpx2.Timeout(self.read_timeout, connect=self.connect_timeout)
        # Fewer pooled connections than threads means handshakes inside TTFT.
        limits = httpx2.Limits(max_connections=max(10, self.concurrency),
                               max_keepalive_connections=max(10, self.concurrency),
                               keepalive_expiry=IDLE_REWARM_SECONDS * 4)
        self._http = anthropic.DefaultHttpxClient(
            timeout=timeout, limits=limits, event_hooks={"request": [self._mark_sent]})
        client = anthropic.Anthropic(api_key=key, base_url=base_url, max_retries=0,
                                     timeout=timeout, http_client=self._http)
        self._parameters = frozenset(inspect.signature(client.messages.create).parameters)
        self._takes_temperature = "temperature" in self._parameters
        return client

    def _warm_connections(self, count: int, *, strict: bool) -> None:
        """Leave at least `count` open connections in the pool, opened by overlapping 404s."""
        for _ in range(WARM_ROUNDS):
            self._warm_round(count, strict=strict)
            idle = self._idle_connections()
            if idle is None or idle >= count:
                return
        log.warning("anthropic warm-up opened %s of %d connections", idle, count)

    def _warm_round(self, count: int, *, strict: bool) -> None:
        barrier = threading.Barrier(count)

        def call() -> None:
            if count > 1:
                barrier.wait(timeout=10)
            self._warm_call(strict=strict)
            self._last_used = time.monotonic()

        if count == 1:
            call()
            return
        with ThreadPoolExecutor(max_workers=count, thread_name_prefix="anthropic-warm") as pool:
            for future in [pool.submit(call) for _ in range(count)]:
                future.result()

    def _idle_connections(self) -> int | None:
        """Idle connections in httpx's pool, if its internals let us see."""
        try:
            pool = self._http._transport._pool  # type: ignore[union-attr]
            return sum(1 for conn in list(pool.connections) if conn.is_idle())
        except Exception:  # noqa: BLE001 - private internals; without them, trust one round
            return None

    def _warm_call(self, *, strict: bool) -> None:
        # An unknown model is a 404 after the key is checked, unbilled, on a kept connection;
        # it also runs the client's first-call set-up outside any timer.
        assert self._client is not None
        try:
            self._client.messages.create(
                model=WARM_MODEL_ID, max_tokens=1, stream=True,
                messages=[{"role": "user", "content": "."}])
        except anthropic.NotFoundError:
            return
        except anthropic.APIStatusError as exc:
            c = classify(exc)
            if strict and c.kind == "auth":
                raise SetupError(f"Anthropic refused the key ({c.code or exc.status_code}): "
                                 f"check {ENV_ANTHROPIC_API_KEY}.", kind="auth",
                                 exc_type=type(exc).__name__) from exc
            if strict and c.kind == "invalid_request":
                raise SetupError(f"Anthropic refused the warm-up request: {c.message}",
                                 kind="invalid_request", exc_type=type(exc).__name__) from exc
            log.warning("anthropic connection warm-up answered %s: %s", exc.status_code,
                        c.code or c.exc_type)
        except anthropic.APIConnectionError as exc:
            if strict:
                raise SetupError(
                    f"Cannot reach Anthropic at {self._client.base_url}: {exc} "
                    f"({type(exc.__cause__).__name__ if exc.__cause__ else 'no cause'})",
                    kind=classify(exc).kind, exc_type=type(exc).__name__) from exc
            log.warning("anthropic connection warm-up failed: %s", exc)

    def _mark_sent(self, request: httpx2.Request) -> None:
        """httpx's request hook: the built request goes to the transport now."""
        self._sent.at = time.perf_counter()
        self._sent.wall = datetime.now(UTC)

    # Measuring

    def measure(self, model_id: str, profile: Profile,
                request: Any = None) -> Result | Failure:
        """Measure one model, retrying throttling, transient faults and timeouts a few times.

        Of the worklist's settings (`request`), omit_temperature and the extra request
        fields apply here (a `thinking` block is a Messages API parameter, as it is
        an extra field on Bedrock); the region is Bedrock's.
        """
        if request is not None and request.omit_temperature:
            profile = dataclasses.replace(profile, temperature=None)
        extra = dict(request.additional_fields or {}) if request is not None else {}
        effort = request.reasoning_effort if request is not None else None
        if self._client is None:
            self.warm()
        earlier: list[dict[str, Any]] = []
        first_ts: datetime | None = None
        attempt = calls = 0
        cap_at = time.perf_counter() + self.call_timeout
        while True:
            attempt += 1
            outcome = self._attempt(model_id, profile, cap_at, extra)
            if isinstance(outcome, Stream):
                calls += 1
                verdict = self._judge(model_id, profile, outcome, calls, earlier, effort)
                if isinstance(verdict, Result):
                    return verdict
                outcome = verdict
            elif outcome.called:
                calls += 1
            first_ts = first_ts or outcome.run_ts
            c = outcome.classification
            if c.kind != "budget_exhausted":
                self._warm_connections(1, strict=False)
            delay = backoff_delay(self.backoff, attempt, c.kind, _retry_after(c))
            out_of_time = time.perf_counter() + delay >= cap_at
            if not c.retryable or attempt > self.retries or out_of_time:
                log.warning("anthropic %s failed: kind=%s code=%s attempts=%d", model_id, c.kind,
                            c.code or c.exc_type, attempt)
                return failure_record(
                    outcome, provider=PROVIDER, model_id=model_id, profile=profile,
                    region=self.region, first_ts=first_ts, attempts=calls, earlier=earlier,
                    retry_after_seconds=_retry_after(c))
            log.warning("anthropic %s attempt %d %s (%s); retrying in %.2f s", model_id, attempt,
                        c.kind, c.code or c.exc_type, delay)
            earlier.append(_summary(outcome, attempt))
            self._sleep(delay)

    def _request(self, model_id: str, profile: Profile,
                 extra: dict[str, Any] | None = None) -> dict[str, Any]:
        request: dict[str, Any] = {
            "model": model_id, "max_tokens": profile.max_tokens, "stream": True,
            "messages": [{"role": "user", "content": profile.prompt}]}
        body: dict[str, Any] = {}
        for key, value in (extra or {}).items():
            if key in request:
                continue  # the profile decides model, budget, prompt and streaming
            # A parameter messages.create names (`thinking`, ...) is passed as one; any
            # other field goes into the body as it is, as Bedrock sends its extra fields.
            (request if key in self._parameters else body)[key] = value
        if body:
            request["extra_body"] = body
        if profile.temperature is not None:
            if self._takes_temperature:
                request["temperature"] = profile.temperature
            elif not self._warned_temperature:
                self._warned_temperature = True
                log.info("anthropic: temperature %s not sent: anthropic-version %s takes no "
                         "sampling parameters; results store temperature null",
                         profile.temperature, self.api_version)
        return request

    def sent_temperature(self, profile: Profile) -> float | None:
        """The temperature a request for `profile` carries (None: left out)."""
        return profile.temperature if self._takes_temperature else None

    def _attempt(self, model_id: str, profile: Profile, cap_at: float,
                 extra: dict[str, Any] | None = None) -> _Stream | AttemptFailed:
        """One timed streamed call, stopped at `cap_at`; a failure comes with its stage."""
        assert self._client is not None
        if time.monotonic() - self._last_used > IDLE_REWARM_SECONDS:
            self._warm_connections(1, strict=False)
        request = self._request(model_id, profile, extra)
        self._sent.at = None
        called_wall, called = datetime.now(UTC), time.perf_counter()
        stage, stream, seen = "call", None, None
        try:
            stream = self._client.messages.create(**request)
            seen = _Stream(sent=self._sent.at or called,
                           run_ts=self._sent.wall if self._sent.at else called_wall,
                           request_id=stream.response.headers.get("request-id"))
            deadline = min(seen.sent + self.call_timeout, cap_at)
            stage = "stream"
            return read_stream(seen, stream, _record, deadline, self.call_timeout)
        except Exception as exc:  # noqa: BLE001 - every failure of a call becomes a record
            sent_wall = seen.run_ts if seen else (self._sent.wall if self._sent.at
                                                  else called_wall)
            c = _refine(classify(exc, model_id=model_id), exc)
            return AttemptFailed(c, stage, sent_wall,
                                 c.request_id or (seen.request_id if seen else None))
        finally:
            if stream is not None:
                stream.close()
            self._last_used = time.monotonic()

    def _judge(self, model_id: str, profile: Profile, seen: _Stream, attempts: int,
               earlier: list[dict[str, Any]],
               reasoning_effort: str | None = None) -> Result | AttemptFailed:
        """Turn a complete stream into a Result, or a failure when it cannot be one."""
        return judge(seen, provider=PROVIDER, model_id=model_id, profile=profile,
                     attempts=attempts, earlier=earlier,
                     temperature=self.sent_temperature(profile),
                     missing="a stop_reason" if seen.stopped else "message_stop",
                     length_stop="max_tokens", deltas="thinking",
                     output_key="output_tokens", input_key="input_tokens",
                     region=self.region, request_mode=REQUEST_MODE,
                     reasoning_effort=reasoning_effort)

    # Catalogue

    def catalogue(self) -> list[CatalogEntry]:
        """The models this key can call, as GET /v1/models lists them."""
        with self._lock:
            if self._client is None:
                self._client = self._create_client()
        try:
            models = list(self._client.models.list(limit=1000))
        except anthropic.APIError as exc:
            c = classify(exc)
            raise SetupError(f"Cannot list the Anthropic models ({c.kind}): {c.message}",
                             kind=c.kind, exc_type=c.exc_type) from exc
        return [CatalogEntry(model_id=m.id, name=m.display_name or m.id, vendor="Anthropic",
                             kind="foundation", streaming=True, needs_profile=False,
                             status="ACTIVE") for m in models]

    def close(self) -> None:
        """Close the client and its pooled connections."""
        with self._lock:
            if self._client is not None:
                self._client.close()
            if self._http is not None:
                self._http.close()
            self._client = self._http = None


def _record(seen: _Stream, event: Any, now: float) -> None:
    """Fold one stream event into what the attempt saw."""
    kind = event.type
    if kind == "content_block_delta":
        delta = event.delta
        if delta.type == "text_delta" and delta.text:
            seen.text(delta.text, now)
        elif delta.type == "thinking_delta" and delta.thinking:
            seen.reasoning(delta.thinking, now)
        # signature_delta and empty deltas carry no token.
    elif kind == "message_start":
        seen.usage = {"input_tokens": getattr(event.message.usage, "input_tokens", None)}
    elif kind == "message_delta":
        seen.pending_stop = event.delta.stop_reason or seen.pending_stop
        usage = seen.usage if seen.usage is not None else {}
        for name in ("output_tokens", "input_tokens"):
            value = getattr(event.usage, name, None)
            if isinstance(value, int):
                usage[name] = value
        seen.usage = usage
    elif kind == "message_stop":
        seen.stopped = True
        seen.stop_reason = seen.pending_stop


def _refine(c: Classification, exc: BaseException) -> Classification:
    """Anthropic's own hints, in place of Bedrock's: an unknown model id, a prompt too long."""
    if c.code == "not_found_error":
        hint = UNKNOWN_MODEL_HINT
    elif c.kind == "invalid_request" and "prompt is too long" in str(exc).lower():
        hint = CONTEXT_HINT
    else:
        return c
    message = c.message.removesuffix(f" Hint: {c.hint}.") if c.hint else c.message
    return replace(c, hint=hint, message=f"{message} Hint: {hint}.")


def _retry_after(c: Classification) -> float | None:
    """Seconds a refused call asked to wait (retry-after), capped: past the cap it fails anyway."""
    return None if c.retry_after is None else min(c.retry_after, MAX_RETRY_AFTER)


def _summary(failed: AttemptFailed, attempt: int) -> dict[str, Any]:
    """A retried attempt for misc.earlier_attempts, with the retry-after it was answered with."""
    out = summary(failed, attempt)
    if (retry_after := _retry_after(failed.classification)) is not None:
        out["retry_after_seconds"] = retry_after
    return out
