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
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from .failures import classify
from .measuring import (
    AttemptFailed,
    Stream,
    backoff_delay,
    failure_record,
    judge,
    read_stream,
    summary,
)
from .provider import CatalogEntry, Listing, SetupError
from .records import Failure, Profile, Result
from .visible_tokens import EncodingUnavailable, encoding
from .worklist import ModelSettings

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


@dataclass
class _Regional:
    """One region's bedrock-runtime client and when its pool was last used."""

    region: str
    runtime: Any
    last_used: float = field(default_factory=time.monotonic)


@dataclass(frozen=True)
class _Ask:
    """What one model is asked, and through which region's client."""

    model_id: str
    profile: Profile
    request: ModelSettings
    client: _Regional

    @property
    def temperature(self) -> float | None:
        """The temperature sent: None when the profile or the model leaves it out."""
        return None if self.request.omit_temperature else self.profile.temperature


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
        # One warm client per region called; the runner's own region is made by warm().
        self._clients: dict[str, _Regional] = {}
        self._control: Any = None
        self._sent = threading.local()

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
            self._resolve_session()
            assert self.region is not None
            fresh = self.region not in self._clients
            if fresh:
                self._clients[self.region] = self._create_runtime(self.region)
            home = self._clients[self.region]
            others = [c for c in self._clients.values() if c is not home]
        try:
            self._warm_connections(home, self.concurrency, strict=True)
        except SetupError:
            self.close()
            raise
        for client in others:
            # Between daemon cycles every region's pool may have gone cold.
            self._warm_connections(client, self.concurrency, strict=False)
        if fresh:
            log.info("bedrock ready: region=%s endpoint=%s connections=%d", self.region,
                     home.runtime.meta.endpoint_url, self.concurrency)

    def prepare(self, regions: Iterable[str | None]) -> None:
        """Create and warm the client of every region a cycle will call, before any timer.

        The first model of each region is then timed on warm connections, as the first
        model of the runner's own region is.
        """
        for region in dict.fromkeys(regions):
            self._client(region)

    def _client(self, region: str | None) -> _Regional:
        """The warm client of `region` (the runner's own when None), made on first use."""
        if not self._clients:
            self.warm()
        region = region or self.region
        assert region is not None
        with self._lock:
            client = self._clients.get(region)
            fresh = client is None
            if client is None:
                client = self._clients[region] = self._create_runtime(region)
        if fresh:
            self._warm_connections(client, self.concurrency, strict=False)
            log.info("bedrock ready: region=%s endpoint=%s connections=%d", region,
                     client.runtime.meta.endpoint_url, self.concurrency)
        return client

    def _create_runtime(self, region: str) -> _Regional:
        session = self._resolve_session()
        try:
            runtime = session.client("bedrock-runtime", region_name=region,
                                     config=self._config(region))
        except BotoCoreError as exc:
            raise SetupError(f"Cannot create a Bedrock client in {region}: {exc}",
                             kind="invalid_request", exc_type=type(exc).__name__) from exc
        runtime.meta.events.register("before-send.bedrock-runtime.ConverseStream",
                                     self._mark_sent)
        return _Regional(region=region, runtime=runtime)

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

    def _config(self, region: str | None = None) -> Config:
        return Config(
            region_name=region or self.region,
            # botocore would retry throttling and 5xx inside the timed call.
            retries={"mode": "standard", "total_max_attempts": 1},
            # Fewer pooled connections than threads means handshakes inside TTFT.
            max_pool_connections=max(10, self.concurrency),
            connect_timeout=self.connect_timeout,
            read_timeout=self.read_timeout,
            tcp_keepalive=True,
        )

    def _warm_connections(self, client: _Regional, count: int, *, strict: bool) -> None:
        """Leave at least `count` open connections in the pool, made by cheap overlapping calls.

        Calls that do not overlap share one connection, so the pool is checked and
        the round repeated a few times if it came up short.
        """
        for _ in range(WARM_ROUNDS):
            self._warm_round(client, count, strict=strict)
            idle = self._idle_connections(client)
            if idle is None or idle >= count:
                return
        log.warning("bedrock warm-up opened %s of %d connections in %s", idle, count,
                    client.region)

    def _warm_round(self, client: _Regional, count: int, *, strict: bool) -> None:
        barrier = threading.Barrier(count)

        def call() -> None:
            if count > 1:
                barrier.wait(timeout=10)
            self._warm_call(client, strict=strict)
            client.last_used = time.monotonic()

        if count == 1:
            call()
            return
        with ThreadPoolExecutor(max_workers=count, thread_name_prefix="bedrock-warm") as pool:
            for future in [pool.submit(call) for _ in range(count)]:
                future.result()

    def _idle_connections(self, client: _Regional) -> int | None:
        """Open connections waiting in the runtime endpoint's pool, if botocore lets us see."""
        try:
            manager = client.runtime._endpoint.http_session._manager
            pool = manager.connection_from_url(client.runtime.meta.endpoint_url)
            return sum(1 for conn in list(pool.pool.queue) if conn is not None)
        except Exception:  # noqa: BLE001 - private internals; without them, trust one round
            return None

    def _warm_call(self, client: _Regional, *, strict: bool) -> None:
        # An unknown model id is refused (400) without being billed, after the TLS
        # handshake and authentication: the connection stays open in the pool.
        try:
            client.runtime.converse(modelId=WARM_MODEL_ID,
                                   messages=[{"role": "user", "content": [{"text": "."}]}])
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code")
            if strict and code in _CREDENTIAL_CODES:
                raise SetupError(f"AWS refused the credentials ({code}): check the instance "
                                 f"role or the configured keys.", kind="auth",
                                 exc_type=type(exc).__name__) from exc
        except BotoCoreError as exc:
            if strict:
                raise SetupError(f"Cannot reach Bedrock at {client.runtime.meta.endpoint_url}: "
                                 f"{exc}", kind=classify(exc).kind,
                                 exc_type=type(exc).__name__) from exc
            log.warning("bedrock connection warm-up failed: %s", exc)

    def _mark_sent(self, **_: Any) -> None:
        """botocore's before-send hook: the request leaves now."""
        self._sent.at = time.perf_counter()
        self._sent.wall = datetime.now(UTC)

    # Measuring

    def measure(self, model_id: str, profile: Profile,
                request: ModelSettings | None = None) -> Result | Failure:
        """Measure one model, retrying throttling, transient faults and timeouts a few times.

        `request` holds the worklist's settings of the model: temperature left out, extra
        request fields, the region to call (docs/contract.md section 7).
        """
        ask = _Ask(model_id, profile, request or ModelSettings(),
                   self._client((request or ModelSettings()).region))
        earlier: list[dict[str, Any]] = []
        first_ts: datetime | None = None
        attempt = calls = 0  # `attempts` in a record counts calls actually made
        # call_timeout caps the model as a whole, retries included: no attempt
        # starts, and no stream runs on, past it.
        cap_at = time.perf_counter() + self.call_timeout
        while True:
            attempt += 1
            outcome = self._attempt(ask, cap_at)
            if isinstance(outcome, Stream):
                calls += 1
                verdict = self._judge(ask, outcome, calls, earlier)
                if isinstance(verdict, Result):
                    return verdict
                outcome = verdict
            elif outcome.called:
                calls += 1
            first_ts = first_ts or outcome.run_ts
            c = outcome.classification
            if c.kind != "budget_exhausted":
                # A broken attempt may have taken its connection with it.
                self._warm_connections(ask.client, 1, strict=False)
            delay = self._backoff_delay(attempt, c.kind)
            out_of_time = time.perf_counter() + delay >= cap_at
            if not c.retryable or attempt > self.retries or out_of_time:
                log.warning("bedrock %s failed: kind=%s code=%s attempts=%d", model_id, c.kind,
                            c.code or c.exc_type, attempt)
                return failure_record(
                    outcome, provider=PROVIDER, model_id=ask.model_id, profile=ask.profile,
                    region=ask.client.region, first_ts=first_ts, attempts=calls,
                    earlier=earlier)
            log.warning("bedrock %s attempt %d %s (%s); retrying in %.2f s", model_id, attempt,
                        c.kind, c.code or c.exc_type, delay)
            earlier.append(summary(outcome, attempt))
            self._sleep(delay)

    def _attempt(self, ask: _Ask, cap_at: float) -> Stream | AttemptFailed:
        """One timed ConverseStream call, stopped at `cap_at`; a failure comes with its stage."""
        model_id, profile, client = ask.model_id, ask.profile, ask.client
        inference: dict[str, Any] = {"maxTokens": profile.max_tokens}
        if ask.temperature is not None:
            inference["temperature"] = ask.temperature
        extra: dict[str, Any] = {}
        if ask.request.additional_fields:
            extra["additionalModelRequestFields"] = dict(ask.request.additional_fields)
        # Refresh near-expiry credentials (instance role) here, not inside the call.
        try:
            self._credentials.get_frozen_credentials()
        except Exception as exc:  # noqa: BLE001 - a refresh failure is this model's failure
            return AttemptFailed(classify(exc, model_id=model_id), "setup",
                                  datetime.now(UTC), None, called=False)
        if time.monotonic() - client.last_used > IDLE_REWARM_SECONDS:
            self._warm_connections(client, 1, strict=False)
        self._sent.at = None
        called_wall, called = datetime.now(UTC), time.perf_counter()
        stage, request_id, stream, seen = "call", None, None, None
        try:
            response = client.runtime.converse_stream(
                modelId=model_id,
                messages=[{"role": "user", "content": [{"text": profile.prompt}]}],
                inferenceConfig=inference,
                **extra,
            )
            seen = Stream(sent=self._sent.at or called,
                           run_ts=self._sent.wall if self._sent.at else called_wall)
            deadline = min(seen.sent + self.call_timeout, cap_at)
            request_id = seen.request_id = response["ResponseMetadata"].get("RequestId")
            stream, stage = response["stream"], "stream"
            return read_stream(seen, stream, _record, deadline, self.call_timeout)
        except Exception as exc:  # noqa: BLE001 - every failure of a call becomes a record
            sent_wall = seen.run_ts if seen else (self._sent.wall if self._sent.at
                                                  else called_wall)
            c = classify(exc, model_id=model_id)
            return AttemptFailed(c, stage, sent_wall, c.request_id or request_id)
        finally:
            if stream is not None:
                stream.close()
            client.last_used = time.monotonic()

    def _judge(self, ask: _Ask, seen: Stream, attempts: int,
               earlier: list[dict[str, Any]]) -> Result | AttemptFailed:
        """Turn a complete stream into a Result, or a failure when it cannot be one."""
        return judge(seen, provider=PROVIDER, model_id=ask.model_id, profile=ask.profile,
                     attempts=attempts, earlier=earlier, temperature=ask.temperature,
                     missing="messageStop", length_stop="max_tokens",
                     output_key="outputTokens", input_key="inputTokens",
                     region=ask.client.region, reasoning_effort=ask.request.reasoning_effort)

    def _backoff_delay(self, attempt: int, kind: str) -> float:
        """Exponential backoff with jitter; throttling waits twice as long."""
        return backoff_delay(self.backoff, attempt, kind)

    # Catalogue

    def catalogue(self) -> list[CatalogEntry]:
        """Foundation models with streamed text output, then system inference profiles."""
        listing = self.listing()
        if listing.problem and not listing.entries:
            raise SetupError(listing.problem)
        return [e for e in listing.entries if e.measurable]

    def listing(self) -> Listing:
        """Every foundation model and system inference profile, each page of them read.

        ListFoundationModels has no pages; ListInferenceProfiles is read page by page
        with nextToken. A page that fails ends the listing with what was read, marked
        incomplete, so the server never takes a partial catalogue for the whole one.
        """
        started = datetime.now(UTC)
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
        except (ClientError, BotoCoreError) as exc:
            c = classify(exc)
            raise SetupError(f"Cannot list the Bedrock catalogue in {self.region} "
                             f"({c.kind}): {c.message}") from exc
        profiles, problem = self._list_profiles()
        return Listing(provider=PROVIDER, region=self.region, started_at=started,
                       entries=_catalogue(models, profiles, every=True),
                       pagination_complete=problem is None, problem=problem)

    def _list_profiles(self) -> tuple[list[dict[str, Any]], str | None]:
        """Every system inference profile, and why the paging stopped early (None: it did not)."""
        out: list[dict[str, Any]] = []
        token: str | None = None
        seen: set[str] = set()
        pages = 0
        while True:
            ask: dict[str, Any] = {"typeEquals": "SYSTEM_DEFINED", "maxResults": 100}
            if token:
                ask["nextToken"] = token
            try:
                page = self._control.list_inference_profiles(**ask)
            except (ClientError, BotoCoreError) as exc:
                c = classify(exc)
                problem = (f"listing inference profiles stopped after {pages} page(s) "
                           f"({c.kind}): {c.message}")
                log.warning("bedrock catalogue: %s", problem)
                return out, problem
            pages += 1
            out.extend(page.get("inferenceProfileSummaries", []))
            token = page.get("nextToken")
            if not token:
                return out, None
            if token in seen:
                return out, "listing inference profiles: the same nextToken came back twice"
            seen.add(token)

    def close(self) -> None:
        """Close the clients and their pooled connections."""
        with self._lock:
            for client in [c.runtime for c in self._clients.values()] + [self._control]:
                if client is not None:
                    client.close()
            self._clients.clear()
            self._control = None


def _record(seen: Stream, event: dict[str, Any], now: float) -> None:
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


def _catalogue(models: list[dict[str, Any]], profiles: list[dict[str, Any]], *,
               every: bool = False) -> list[CatalogEntry]:
    """Catalogue entries from the control plane's two listings (`every`: non-text ones too)."""
    by_arn = {m.get("modelArn"): m for m in models}
    entries: list[CatalogEntry] = []
    for m in sorted(models, key=lambda m: (m.get("providerName", ""), m["modelId"])):
        streaming = m.get("responseStreamingSupported")
        entry = CatalogEntry(
            model_id=m["modelId"], name=m.get("modelName") or m["modelId"],
            vendor=m.get("providerName", ""), kind="foundation",
            streaming=streaming if isinstance(streaming, bool) else None,
            needs_profile="ON_DEMAND" not in m.get("inferenceTypesSupported", []),
            status=(m.get("modelLifecycle") or {}).get("status", "UNKNOWN"),
            input_modalities=tuple(m.get("inputModalities", [])),
            output_modalities=tuple(m.get("outputModalities", [])),
            inference_types=tuple(m.get("inferenceTypesSupported", [])),
        )
        if every or (entry.measurable and entry.streaming):
            entries.append(entry)
    for p in sorted(profiles, key=lambda p: p["inferenceProfileId"]):
        bases = [by_arn.get(ref.get("modelArn")) for ref in p.get("models", [])]
        known = [b for b in bases if b]
        outputs = tuple(dict.fromkeys(o for b in known for o in b.get("outputModalities", [])))
        if not every and known and "TEXT" not in outputs:
            continue
        entries.append(CatalogEntry(
            model_id=p["inferenceProfileId"], name=p.get("inferenceProfileName") or
            p["inferenceProfileId"], vendor=known[0].get("providerName", "") if known else "",
            kind="inference-profile",
            streaming=all(b.get("responseStreamingSupported", True) for b in known)
            if known else None,
            needs_profile=False, status=p.get("status", "UNKNOWN"),
            input_modalities=tuple(dict.fromkeys(
                i for b in known for i in b.get("inputModalities", []))),
            output_modalities=outputs,
            inference_types=("INFERENCE_PROFILE",),
        ))
    return entries


