"""Measure one Amazon Bedrock model with ConverseStream, as docs/contract.md section 3 defines it.

One long-lived bedrock-runtime client per provider (thread-safe, pool at least the
concurrency), botocore's retries off, and the connections warmed before any timer
runs. The clock starts when botocore hands the signed request to the HTTP layer,
so client-side serialisation and signing are not in any figure, and stops at the
end of the stream. A retried attempt is the runner's own decision: each attempt is
timed on its own and counted, and only the final attempt's figures are reported.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

import bench_contract as contract

from .failures import CallDeadlineExceeded, Classification, classify
from .measuring import AttemptFailed as _AttemptFailed
from .measuring import Stream as _Stream
from .measuring import backoff_delay, decode_speed, misc, since, summary, visible_tokens
from .provider import CatalogEntry, SetupError
from .records import Failure, Profile, Result
from .visible_tokens import EncodingUnavailable, encoding

log = logging.getLogger(__name__)

PROVIDER = "bedrock"
WARM_MODEL_ID = "bench-runner-connection-warm-up"
# Codes that mean the credentials themselves were refused, whatever the model.
_CREDENTIAL_CODES = frozenset({
    "UnrecognizedClientException", "InvalidSignatureException", "ExpiredTokenException",
    "IncompleteSignatureException", "MissingAuthenticationTokenException",
    "InvalidClientTokenId", "SignatureDoesNotMatch",
})
# A pooled connection idle longer than this may have been closed by the far end;
# re-warm before the timer rather than reconnect inside it.
IDLE_REWARM_SECONDS = 15.0
WARM_ROUNDS = 3


class BedrockProvider:
    """Amazon Bedrock through boto3's ConverseStream."""

    name = PROVIDER

    def __init__(self, *, region: str | None = None, concurrency: int = 1,
                 call_timeout: float = 120.0, retries: int = 2,
                 connect_timeout: float = 10.0, read_timeout: float = 60.0,
                 backoff: float = 1.0, sleep: Callable[[float], None] = time.sleep) -> None:
        self.region = region
        self.concurrency = max(1, concurrency)
        self.call_timeout = call_timeout
        self.retries = max(0, retries)
        self.connect_timeout = connect_timeout
        # A single socket read can never outlast the whole call's cap.
        self.read_timeout = min(read_timeout, call_timeout)
        self.backoff = backoff
        self._sleep = sleep
        self._lock = threading.Lock()
        self._session: boto3.session.Session | None = None
        self._credentials: Any = None
        self._runtime: Any = None
        self._control: Any = None
        self._sent = threading.local()
        self._last_used = time.monotonic()

    # Set-up

    def warm(self) -> None:
        """Create the client once, resolve credentials, and (re)open `concurrency` warm connections.

        Called again before each cycle, it re-warms the pool: connections left idle
        between daemon cycles may have been closed by the far end.
        """
        try:
            # Loading cl100k_base takes ~0.1 s: here, never inside the first model's timing.
            encoding()
        except EncodingUnavailable as exc:
            raise SetupError(str(exc), kind="invalid_request") from exc
        with self._lock:
            if self._runtime is None:
                self._runtime = self._create_runtime()
                fresh = True
            else:
                fresh = False
        try:
            self._warm_connections(self.concurrency, strict=True)
        except SetupError:
            self.close()
            raise
        if fresh:
            log.info("bedrock ready: region=%s endpoint=%s connections=%d", self.region,
                     self._runtime.meta.endpoint_url, self.concurrency)

    def _create_runtime(self) -> Any:
        session = self._resolve_session()
        try:
            runtime = session.client("bedrock-runtime", config=self._config())
        except BotoCoreError as exc:
            raise SetupError(f"Cannot create a Bedrock client in {self.region}: {exc}",
                             kind="invalid_request", exc_type=type(exc).__name__) from exc
        runtime.meta.events.register("before-send.bedrock-runtime.ConverseStream",
                                     self._mark_sent)
        return runtime

    def _resolve_session(self) -> boto3.session.Session:
        if self._session is not None:
            return self._session
        try:
            session = boto3.session.Session(region_name=self.region)
            credentials = session.get_credentials()
            frozen = credentials.get_frozen_credentials() if credentials else None
        except BotoCoreError as exc:
            raise SetupError(f"Cannot load AWS credentials: {exc}", kind="auth",
                             exc_type=type(exc).__name__) from exc
        if not session.region_name:
            raise SetupError("No AWS region: pass --region or set AWS_REGION.",
                             kind="invalid_request")
        if frozen is None or not frozen.access_key:
            raise SetupError(
                "No AWS credentials found: on EC2 attach an instance role; elsewhere set "
                "AWS_PROFILE or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY.", kind="auth",
                exc_type="NoCredentialsError")
        self.region = session.region_name
        self._session, self._credentials = session, credentials
        return session

    def _config(self) -> Config:
        return Config(
            region_name=self.region,
            # botocore would retry throttling and 5xx inside the timed call.
            retries={"mode": "standard", "total_max_attempts": 1},
            # Fewer pooled connections than threads means handshakes inside TTFT.
            max_pool_connections=max(10, self.concurrency),
            connect_timeout=self.connect_timeout,
            read_timeout=self.read_timeout,
            tcp_keepalive=True,
        )

    def _warm_connections(self, count: int, *, strict: bool) -> None:
        """Leave at least `count` open connections in the pool, made by cheap overlapping calls.

        Calls that do not overlap share one connection, so the pool is checked and
        the round repeated a few times if it came up short.
        """
        for _ in range(WARM_ROUNDS):
            self._warm_round(count, strict=strict)
            idle = self._idle_connections()
            if idle is None or idle >= count:
                return
        log.warning("bedrock warm-up opened %s of %d connections", idle, count)

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
        with ThreadPoolExecutor(max_workers=count, thread_name_prefix="bedrock-warm") as pool:
            for future in [pool.submit(call) for _ in range(count)]:
                future.result()

    def _idle_connections(self) -> int | None:
        """Open connections waiting in the runtime endpoint's pool, if botocore lets us see."""
        try:
            manager = self._runtime._endpoint.http_session._manager
            pool = manager.connection_from_url(self._runtime.meta.endpoint_url)
            return sum(1 for conn in list(pool.pool.queue) if conn is not None)
        except Exception:  # noqa: BLE001 - private internals; without them, trust one round
            return None

    def _warm_call(self, *, strict: bool) -> None:
        # An unknown model id is refused (400) without being billed, after the TLS
        # handshake and authentication: the connection stays open in the pool.
        try:
            self._runtime.converse(modelId=WARM_MODEL_ID,
                                   messages=[{"role": "user", "content": [{"text": "."}]}])
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code")
            if strict and code in _CREDENTIAL_CODES:
                raise SetupError(f"AWS refused the credentials ({code}): check the instance "
                                 f"role or the configured keys.", kind="auth",
                                 exc_type=type(exc).__name__) from exc
        except BotoCoreError as exc:
            if strict:
                raise SetupError(f"Cannot reach Bedrock at {self._runtime.meta.endpoint_url}: "
                                 f"{exc}", kind=classify(exc).kind,
                                 exc_type=type(exc).__name__) from exc
            log.warning("bedrock connection warm-up failed: %s", exc)

    def _mark_sent(self, **_: Any) -> None:
        """botocore's before-send hook: the request leaves now."""
        self._sent.at = time.perf_counter()
        self._sent.wall = datetime.now(UTC)

    # Measuring

    def measure(self, model_id: str, profile: Profile) -> Result | Failure:
        """Measure one model, retrying throttling, transient faults and timeouts a few times."""
        if self._runtime is None:
            self.warm()
        earlier: list[dict[str, Any]] = []
        first_ts: datetime | None = None
        attempt = calls = 0  # `attempts` in a record counts calls actually made
        # call_timeout caps the model as a whole, retries included: no attempt
        # starts, and no stream runs on, past it.
        cap_at = time.perf_counter() + self.call_timeout
        while True:
            attempt += 1
            outcome = self._attempt(model_id, profile, cap_at)
            if isinstance(outcome, _Stream):
                calls += 1
                verdict = self._judge(model_id, profile, outcome, calls, earlier)
                if isinstance(verdict, Result):
                    return verdict
                outcome = verdict
            elif outcome.called:
                calls += 1
            first_ts = first_ts or outcome.run_ts
            c = outcome.classification
            if c.kind != "budget_exhausted":
                # A broken attempt may have taken its connection with it.
                self._warm_connections(1, strict=False)
            delay = self._backoff_delay(attempt, c.kind)
            out_of_time = time.perf_counter() + delay >= cap_at
            if not c.retryable or attempt > self.retries or out_of_time:
                log.warning("bedrock %s failed: kind=%s code=%s attempts=%d", model_id, c.kind,
                            c.code or c.exc_type, attempt)
                return self._failure(model_id, profile, outcome, first_ts, calls, earlier)
            log.warning("bedrock %s attempt %d %s (%s); retrying in %.2f s", model_id, attempt,
                        c.kind, c.code or c.exc_type, delay)
            earlier.append(summary(outcome, attempt))
            self._sleep(delay)

    def _attempt(self, model_id: str, profile: Profile,
                 cap_at: float) -> _Stream | _AttemptFailed:
        """One timed ConverseStream call, stopped at `cap_at`; a failure comes with its stage."""
        inference: dict[str, Any] = {"maxTokens": profile.max_tokens}
        if profile.temperature is not None:
            inference["temperature"] = profile.temperature
        # Refresh near-expiry credentials (instance role) here, not inside the call.
        try:
            self._credentials.get_frozen_credentials()
        except Exception as exc:  # noqa: BLE001 - a refresh failure is this model's failure
            return _AttemptFailed(classify(exc, model_id=model_id), "setup",
                                  datetime.now(UTC), None, called=False)
        if time.monotonic() - self._last_used > IDLE_REWARM_SECONDS:
            self._warm_connections(1, strict=False)
        self._sent.at = None
        called_wall, called = datetime.now(UTC), time.perf_counter()
        stage, request_id, stream, seen = "call", None, None, None
        try:
            response = self._runtime.converse_stream(
                modelId=model_id,
                messages=[{"role": "user", "content": [{"text": profile.prompt}]}],
                inferenceConfig=inference,
            )
            seen = _Stream(sent=self._sent.at or called,
                           run_ts=self._sent.wall if self._sent.at else called_wall)
            deadline = min(seen.sent + self.call_timeout, cap_at)
            request_id = seen.request_id = response["ResponseMetadata"].get("RequestId")
            stream, stage = response["stream"], "stream"
            for event in stream:
                now = time.perf_counter()
                _record(seen, event, now)
                if now > deadline:
                    raise CallDeadlineExceeded(
                        f"the stream was still running after {self.call_timeout:g} s")
            seen.end = time.perf_counter()
            return seen
        except Exception as exc:  # noqa: BLE001 - every failure of a call becomes a record
            sent_wall = seen.run_ts if seen else (self._sent.wall if self._sent.at
                                                  else called_wall)
            c = classify(exc, model_id=model_id)
            return _AttemptFailed(c, stage, sent_wall, c.request_id or request_id)
        finally:
            if stream is not None:
                stream.close()
            self._last_used = time.monotonic()

    def _judge(self, model_id: str, profile: Profile, seen: _Stream, attempts: int,
               earlier: list[dict[str, Any]]) -> Result | _AttemptFailed:
        """Turn a complete stream into a Result, or a failure when it cannot be one."""
        if seen.stop_reason is None:
            return _AttemptFailed(
                Classification("transient", "the stream ended without messageStop",
                               "IncompleteStream", request_id=seen.request_id),
                "stream", seen.run_ts, seen.request_id)
        if seen.first_text is None and seen.stop_reason == "max_tokens":
            return _AttemptFailed(
                Classification(
                    "budget_exhausted",
                    f"{model_id} spent the whole budget of {profile.max_tokens} tokens "
                    f"({seen.reasoning_chunks} reasoning deltas) without visible text; "
                    f"raise --max-tokens for reasoning models, or add the "
                    f"{contract.REASONING_PROFILE_ID} profile to --profiles",
                    "BudgetExhausted", request_id=seen.request_id),
                "stream", seen.run_ts, seen.request_id)
        assert seen.end is not None
        usage = seen.usage or {}
        if isinstance(usage.get("outputTokens"), int):
            output_tokens, token_source = usage["outputTokens"], "provider_usage"
        else:
            output_tokens, token_source = seen.chunks, "stream_chunks"
        generate_time = seen.end - seen.sent
        decode = decode_speed(output_tokens, seen)
        visible = visible_tokens(output_tokens, token_source, seen)
        ttft = since(seen.first_text, seen.sent)
        return Result(
            provider=PROVIDER,
            model_name=model_id,
            run_ts=seen.run_ts,
            gen_ts=seen.run_ts + timedelta(seconds=generate_time),
            output_tokens=output_tokens,
            generate_time=generate_time,
            tokens_per_second=output_tokens / generate_time,
            region=self.region,
            benchmark_profile_id=profile.profile_id,
            requested_tokens=profile.max_tokens,
            temperature=profile.temperature,
            input_tokens=usage.get("inputTokens"),
            token_source=token_source,
            time_to_first_token=ttft,
            time_to_first_any_token=since(seen.first_any, seen.sent),
            decode_tokens_per_second=decode,
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
            misc=misc(earlier, reasoning_chunks=seen.reasoning_chunks),
        )

    def _failure(self, model_id: str, profile: Profile, failed: _AttemptFailed,
                 first_ts: datetime, attempts: int, earlier: list[dict[str, Any]]) -> Failure:
        c = failed.classification
        return Failure(
            provider=PROVIDER, model_name=model_id, ts=first_ts, stage=failed.stage,
            error_kind=c.kind, message=c.message, region=self.region,
            benchmark_profile_id=profile.profile_id, exc_type=c.exc_type,
            provider_error_code=c.code, http_status=c.http_status,
            request_id=failed.request_id, attempts=attempts, misc=misc(earlier, hint=c.hint),
        )

    def _backoff_delay(self, attempt: int, kind: str) -> float:
        """Exponential backoff with jitter; throttling waits twice as long."""
        return backoff_delay(self.backoff, attempt, kind)

    # Catalogue

    def catalogue(self) -> list[CatalogEntry]:
        """Foundation models with streamed text output, then system inference profiles."""
        with self._lock:
            session = self._resolve_session()
            if self._control is None:
                try:
                    self._control = session.client("bedrock", config=self._config())
                except BotoCoreError as exc:
                    raise SetupError(f"Cannot create a Bedrock client in {self.region}: "
                                     f"{exc}") from exc
        try:
            models = self._control.list_foundation_models()["modelSummaries"]
            profiles = self._list_profiles()
        except (ClientError, BotoCoreError) as exc:
            c = classify(exc)
            raise SetupError(f"Cannot list the Bedrock catalogue in {self.region} "
                             f"({c.kind}): {c.message}") from exc
        return _catalogue(models, profiles)

    def _list_profiles(self) -> list[dict[str, Any]]:
        # list_foundation_models is not paged (botocore has no paginator for it).
        pages = self._control.get_paginator("list_inference_profiles").paginate(
            typeEquals="SYSTEM_DEFINED", PaginationConfig={"PageSize": 100})
        return [profile for page in pages for profile in page.get("inferenceProfileSummaries", [])]

    def close(self) -> None:
        """Close the clients and their pooled connections."""
        with self._lock:
            for client in (self._runtime, self._control):
                if client is not None:
                    client.close()
            self._runtime = self._control = None


def _record(seen: _Stream, event: dict[str, Any], now: float) -> None:
    """Fold one stream event into what the attempt saw."""
    if "contentBlockDelta" in event:
        delta = event["contentBlockDelta"].get("delta", {})
        text = delta.get("text")
        reasoning = (delta.get("reasoningContent") or {}).get("text")
        # Empty deltas and signature-only reasoning deltas carry no token.
        if text:
            seen.chunks += 1
            if seen.first_text is None:
                seen.first_text = now
            seen.clock.visible(text, now)
        elif reasoning:
            seen.chunks += 1
            seen.reasoning_chunks += 1
            seen.clock.reasoning(reasoning)
        else:
            return
        if seen.first_any is None:
            seen.first_any = now
        seen.last_delta = now
    elif "messageStop" in event:
        seen.stop_reason = event["messageStop"].get("stopReason")
    elif "metadata" in event:
        metadata = event["metadata"]
        seen.usage = metadata.get("usage")
        latency = (metadata.get("metrics") or {}).get("latencyMs")
        seen.latency_ms = int(latency) if isinstance(latency, int | float) else None


def _catalogue(models: list[dict[str, Any]],
               profiles: list[dict[str, Any]]) -> list[CatalogEntry]:
    """Catalogue entries from the control plane's two listings."""
    by_arn = {m.get("modelArn"): m for m in models}
    entries: list[CatalogEntry] = []
    for m in sorted(models, key=lambda m: (m.get("providerName", ""), m["modelId"])):
        if "TEXT" not in m.get("outputModalities", []) or not m.get("responseStreamingSupported"):
            continue
        entries.append(CatalogEntry(
            model_id=m["modelId"], name=m.get("modelName") or m["modelId"],
            vendor=m.get("providerName", ""), kind="foundation", streaming=True,
            needs_profile="ON_DEMAND" not in m.get("inferenceTypesSupported", []),
            status=(m.get("modelLifecycle") or {}).get("status", "UNKNOWN"),
        ))
    for p in sorted(profiles, key=lambda p: p["inferenceProfileId"]):
        bases = [by_arn.get(ref.get("modelArn")) for ref in p.get("models", [])]
        known = [b for b in bases if b]
        if known and not any("TEXT" in b.get("outputModalities", []) for b in known):
            continue
        entries.append(CatalogEntry(
            model_id=p["inferenceProfileId"], name=p.get("inferenceProfileName") or
            p["inferenceProfileId"], vendor=known[0].get("providerName", "") if known else "",
            kind="inference-profile",
            streaming=all(b.get("responseStreamingSupported", True) for b in known),
            needs_profile=False, status=p.get("status", "UNKNOWN"),
        ))
    return entries


