"""What every provider's measurement shares: what an attempt saw, and the derived figures.

No SDK here: Bedrock, the OpenAI-compatible and the Anthropic providers fold their
own events into a `Stream`, then derive the contract's figures (docs/contract.md
section 3) from it by the same functions, so a figure means the same for every host.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import bench_contract as contract

from .failures import Classification
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


def summary(failed: AttemptFailed, attempt: int) -> dict[str, Any]:
    """A retried attempt, kept in the final record so no attempt goes unrecorded."""
    c = failed.classification
    return {"attempt": attempt, "error_kind": c.kind, "stage": failed.stage,
            "code": c.code or c.exc_type, "http_status": c.http_status,
            "request_id": failed.request_id, "ts": failed.run_ts.isoformat(),
            "message": c.message[:EARLIER_MESSAGE_CHARS]}
