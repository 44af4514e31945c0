"""What every provider's measurement shares: what an attempt saw, and the derived figures.

No SDK here: Bedrock, the OpenAI-compatible and the Anthropic providers fold their
own events into a `Stream`, then derive the contract's figures (docs/contract.md
section 3) from it by the same functions, so a figure means the same for every host.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import bench_contract as contract

from .failures import CallDeadlineExceeded, Classification
from .records import Failure, Profile, Result
from .visible_tokens import VisibleTokenClock

EARLIER_MESSAGE_CHARS = 300


@dataclass
class Stream:
    """What one attempt saw, in perf_counter seconds."""

    sent: float
    run_ts: datetime
    request_id: str | None = None
    first_text: float | None = None
    first_any: float | None = None
    last_delta: float | None = None
    end: float | None = None
    chunks: int = 0
    reasoning_chunks: int = 0
    stop_reason: str | None = None
    usage: dict[str, Any] | None = None
    latency_ms: int | None = None
    clock: VisibleTokenClock = field(init=False)

    def __post_init__(self) -> None:
        self.clock = VisibleTokenClock(self.sent)

    def text(self, text: str, now: float) -> None:
        """A non-empty visible text delta arrived at `now`."""
        self.chunks += 1
        if self.first_text is None:
            self.first_text = now
        self.clock.visible(text, now)
        self._any(now)

    def reasoning(self, text: str, now: float) -> None:
        """A non-empty reasoning (thinking) delta arrived at `now`: time, never visible text."""
        self.chunks += 1
        self.reasoning_chunks += 1
        self.clock.reasoning(text)
        self._any(now)

    def _any(self, now: float) -> None:
        if self.first_any is None:
            self.first_any = now
        self.last_delta = now


@dataclass(frozen=True)
class AttemptFailed:
    """An attempt that ended without a result, with the stage it failed in."""

    classification: Classification
    stage: str
    run_ts: datetime
    request_id: str | None
    called: bool = True  # False when it failed before any call was made


def backoff_delay(backoff: float, attempt: int, kind: str,
                  retry_after: float | None = None) -> float:
    """Exponential backoff with jitter; throttling waits twice as long, and a server's
    Retry-After is the least it waits."""
    base = backoff * (2 if kind == "throttled" else 1) * 2 ** (attempt - 1)
    delay = base / 2 + random.uniform(0, base / 2)  # noqa: S311 - jitter, not security
    return max(delay, retry_after or 0.0)


def decode_speed(output_tokens: int, seen: Stream) -> float | None:
    """Tokens per second after the first delta (metric_version 2).

    The tokens that arrived with the first delta were not decoded inside the
    first-to-last span, so they are left out of the numerator. Deltas often carry
    several tokens and say not how many, so the first delta is taken to hold the
    stream's mean (output_tokens / chunk_count); with one token a delta this is the
    familiar (output_tokens - 1) / span. Counting only one token there would
    overstate the speed by (tokens_per_delta - 1) / output_tokens.
    """
    if seen.first_any is None or seen.last_delta is None or seen.chunks < 2:
        return None
    span = seen.last_delta - seen.first_any
    first_delta_tokens = output_tokens / seen.chunks
    if span <= 0 or output_tokens <= first_delta_tokens:
        return None
    return (output_tokens - first_delta_tokens) / span


def visible_tokens(output_tokens: int, token_source: str, seen: Stream, *,
                   hidden_reasoning: bool = False) -> int:
    """Tokens of the answer the user sees (docs/contract.md section 3).

    Usage counts every generated token, reasoning included, and does not always split
    them. With no reasoning deltas (and no reasoning the usage admits to) all of it was
    visible, so usage's exact count stands; otherwise (or without usage) the visible
    text is counted with cl100k_base, as the other writers count it.
    """
    if token_source == contract.TOKEN_SOURCES[0] and not seen.clock.had_reasoning \
            and not hidden_reasoning:
        return output_tokens
    return seen.clock.visible_tokens()


def since(t: float | None, start: float) -> float | None:
    """Seconds from `start` to `t`, or None when `t` never happened."""
    return None if t is None else t - start


def misc(earlier: list[dict[str, Any]], **notes: Any) -> dict[str, Any] | None:
    """A record's misc: the notes that hold something, then the retried attempts; None if empty."""
    out = {name: value for name, value in notes.items() if value}
    if earlier:
        out["earlier_attempts"] = earlier
    return out or None


def failure_record(failed: AttemptFailed, *, provider: str, model_id: str, profile: Profile,
                   region: str | None, first_ts: datetime, attempts: int,
                   earlier: list[dict[str, Any]], **notes: Any) -> Failure:
    """The record of a model whose last attempt failed: its classification and stage, the
    first attempt's time, every call counted, the earlier attempts and `notes` in misc."""
    c = failed.classification
    return Failure(
        provider=provider, model_name=model_id, ts=first_ts, stage=failed.stage,
        error_kind=c.kind, message=c.message, region=region,
        benchmark_profile_id=profile.profile_id, exc_type=c.exc_type,
        provider_error_code=c.code, http_status=c.http_status,
        request_id=failed.request_id, attempts=attempts,
        misc=misc(earlier, hint=c.hint, **notes),
    )


def summary(failed: AttemptFailed, attempt: int) -> dict[str, Any]:
    """A retried attempt, kept in the final record so no attempt goes unrecorded."""
    c = failed.classification
    return {"attempt": attempt, "error_kind": c.kind, "stage": failed.stage,
            "code": c.code or c.exc_type, "http_status": c.http_status,
            "request_id": failed.request_id, "ts": failed.run_ts.isoformat(),
            "message": c.message[:EARLIER_MESSAGE_CHARS]}


def judge(seen: Stream, *, provider: str, model_id: str, profile: Profile, attempts: int,
          earlier: list[dict[str, Any]], temperature: float | None, missing: str,
          length_stop: str, output_key: str, input_key: str, deltas: str = "reasoning",
          hidden_reasoning: bool = False, notes: dict[str, Any] | None = None,
          **fields: Any) -> Result | AttemptFailed:
    """Turn a complete stream into a Result, or a failure when it cannot be one.

    The judgement is the same for every host, so a figure means the same everywhere;
    each provider brings only its own words: what a stream that never stopped lacked
    (`missing`), the stop reason that means the budget ran out (`length_stop`), its
    usage keys, what it calls a reasoning delta, and its own Result fields (`fields`:
    region, request_mode, ...; `notes`: extra misc after reasoning_chunks).
    """
    if seen.stop_reason is None:
        return AttemptFailed(
            Classification("transient", f"the stream ended without {missing}",
                           "IncompleteStream", request_id=seen.request_id),
            "stream", seen.run_ts, seen.request_id)
    if seen.first_text is None and seen.stop_reason == length_stop:
        return AttemptFailed(
            Classification(
                "budget_exhausted",
                f"{model_id} spent the whole budget of {profile.max_tokens} tokens "
                f"({seen.reasoning_chunks} {deltas} deltas) without visible text; "
                f"raise --max-tokens for reasoning models, or add the "
                f"{contract.REASONING_PROFILE_ID} profile to --profiles",
                "BudgetExhausted", request_id=seen.request_id),
            "stream", seen.run_ts, seen.request_id)
    assert seen.end is not None
    usage = seen.usage or {}
    if isinstance(usage.get(output_key), int):
        output_tokens, token_source = usage[output_key], contract.TOKEN_SOURCES[0]
    else:
        output_tokens, token_source = seen.chunks, contract.TOKEN_SOURCES[1]
    generate_time = seen.end - seen.sent
    visible = visible_tokens(output_tokens, token_source, seen,
                             hidden_reasoning=hidden_reasoning)
    ttft = since(seen.first_text, seen.sent)
    return Result(
        provider=provider,
        model_name=model_id,
        run_ts=seen.run_ts,
        gen_ts=seen.run_ts + timedelta(seconds=generate_time),
        output_tokens=output_tokens,
        generate_time=generate_time,
        tokens_per_second=output_tokens / generate_time,
        benchmark_profile_id=profile.profile_id,
        requested_tokens=profile.max_tokens,
        temperature=temperature,
        input_tokens=usage.get(input_key),
        token_source=token_source,
        time_to_first_token=ttft,
        time_to_first_any_token=since(seen.first_any, seen.sent),
        decode_tokens_per_second=decode_speed(output_tokens, seen),
        server_latency_ms=seen.latency_ms,
        stop_reason=seen.stop_reason,
        request_id=seen.request_id,
        attempts=attempts,
        chunk_count=seen.chunks,
        reasoning_tokens=seen.clock.reasoning_tokens() if seen.clock.had_reasoning else None,
        ttft_available=ttft is not None,
        generated_output_tokens=output_tokens,
        visible_output_tokens=visible,
        generated_tokens_per_second=output_tokens / generate_time,
        visible_tokens_per_second=visible / generate_time,
        time_to_64_visible_tokens_seconds=seen.clock.time_to_mark,
        sample_role=profile.sample_role,
        misc=misc(earlier, reasoning_chunks=seen.reasoning_chunks, **(notes or {})),
        **fields,
    )


def read_stream(seen: Stream, events: Iterable[Any], record: Callable[[Stream, Any, float], None],
                deadline: float, call_timeout: float) -> Stream:
    """Read a provider's stream to its end, each event handed to `record` with when it came.

    Raises CallDeadlineExceeded once an event arrives past `deadline`; `seen.end` is when
    the stream ended.
    """
    for event in events:
        now = time.perf_counter()
        record(seen, event, now)
        if now > deadline:
            raise CallDeadlineExceeded(f"the stream was still running after {call_timeout:g} s")
    seen.end = time.perf_counter()
    return seen
