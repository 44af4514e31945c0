"""What one measurement produces: a result or a failure, as sent to the ingest API."""

from __future__ import annotations

import dataclasses
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import bench_contract as contract


@dataclass(frozen=True)
class Profile:
    """What is asked of every model: prompt, token budget and temperature, under one id."""

    prompt: str = contract.DEFAULT_PROMPT
    max_tokens: int = contract.DEFAULT_MAX_TOKENS
    temperature: float | None = contract.DEFAULT_TEMPERATURE
    profile_id: str = contract.DEFAULT_PROFILE_ID
    # published results reach the public collection; shadow and probe ones the probe collection.
    sample_role: str = contract.PUBLISHED


# The catalogue `--profiles` chooses from (bench_contract.PROFILES).
CATALOGUE: dict[str, Profile] = {
    profile_id: Profile(max_tokens=max_tokens, profile_id=profile_id, sample_role=role)
    for profile_id, (max_tokens, role) in contract.PROFILES.items()
}


def _runner_version() -> str:
    # Resolved when a record is made, not at import, so `bench-runner --help` stays fast.
    import runner

    return runner.__version__


def _iso(ts: datetime) -> str:
    if ts.tzinfo is None:
        raise ValueError("timestamps must be timezone-aware")
    return ts.isoformat()


def _payload(record: Any) -> dict[str, Any]:
    """Serialise a record: datetimes as RFC 3339, None fields left out."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(record):
        value = getattr(record, f.name)
        if value is None:
            continue
        out[f.name] = _iso(value) if isinstance(value, datetime) else value
    return out


@dataclass(frozen=True)
class Result:
    """One benchmark result (docs/contract.md section 3). Field order follows bench_contract."""

    provider: str
    model_name: str
    run_ts: datetime
    output_tokens: int
    generate_time: float
    tokens_per_second: float
    result_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    region: str | None = None
    gen_ts: datetime | None = None
    benchmark_profile_id: str | None = None
    requested_tokens: int | None = None
    temperature: float | None = None
    input_tokens: int | None = None
    token_source: str | None = None
    time_to_first_token: float | None = None
    time_to_first_any_token: float | None = None
    decode_tokens_per_second: float | None = None
    server_latency_ms: int | None = None
    stop_reason: str | None = None
    request_id: str | None = None
    attempts: int = 1
    chunk_count: int | None = None
    reasoning_tokens: int | None = None
    # What the request asked of a reasoning model (a thinking budget, an effort), or null.
    reasoning_effort: str | None = None
    metrics_schema_version: int = contract.METRICS_SCHEMA_VERSION
    request_mode: str = contract.BEDROCK_MODE  # each provider sets its own
    ttft_available: bool | None = None
    generated_output_tokens: int | None = None
    visible_output_tokens: int | None = None
    generated_tokens_per_second: float | None = None
    visible_tokens_per_second: float | None = None
    time_to_64_visible_tokens_seconds: float | None = None
    metric_version: int = contract.METRIC_VERSION
    protocol_version: int = contract.PROTOCOL_VERSION
    sample_role: str = contract.PUBLISHED
    runner_version: str = field(default_factory=_runner_version)
    misc: dict[str, Any] | None = None

    kind = "result"

    @property
    def record_id(self) -> str:
        """The idempotency key of this record."""
        return self.result_id

    def to_payload(self) -> dict[str, Any]:
        """The JSON object POSTed to /ingest.

        Nullable measured fields (TTFT and friends) are sent as explicit nulls so a
        reader can tell "no text arrived" from "field not measured".
        """
        out = _payload(self)
        for name in ("time_to_first_token", "time_to_first_any_token",
                     "decode_tokens_per_second", "temperature", "reasoning_effort",
                     "time_to_64_visible_tokens_seconds"):
            out.setdefault(name, None)
        return out


@dataclass(frozen=True)
class Failure:
    """One failed attempt (docs/contract.md section 4)."""

    provider: str
    model_name: str
    ts: datetime
    stage: str
    error_kind: str
    message: str
    error_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    region: str | None = None
    benchmark_profile_id: str | None = None
    exc_type: str | None = None
    provider_error_code: str | None = None
    http_status: int | None = None
    request_id: str | None = None
    attempts: int = 1
    runner_version: str = field(default_factory=_runner_version)
    misc: dict[str, Any] | None = None

    kind = "error"

    def __post_init__(self) -> None:
        if self.stage not in contract.STAGES:
            raise ValueError(f"unknown stage {self.stage!r}")
        if self.error_kind not in contract.ERROR_KINDS:
            raise ValueError(f"unknown error kind {self.error_kind!r}")
        from .failures import redact  # a message may quote an SDK error that echoes a key

        object.__setattr__(self, "message", redact(self.message))
        if len(self.message) > contract.MAX_MESSAGE_CHARS:
            object.__setattr__(self, "message", self.message[: contract.MAX_MESSAGE_CHARS])

    @property
    def record_id(self) -> str:
        """The idempotency key of this record."""
        return self.error_id

    def to_payload(self) -> dict[str, Any]:
        """The JSON object POSTed to /ingest/error."""
        return _payload(self)
