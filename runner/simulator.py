"""A Bedrock-compatible local endpoint, so the real boto3 client can be run without AWS.

It speaks the Bedrock Runtime wire protocol (ConverseStream as an event stream with
one event per HTTP chunk, Converse, errors with `x-amzn-ErrorType`) and the two
control-plane listings, with each model's timing and faults taken from a config.
The stream follows a plan computed once per request (`SimulatorConfig.plan`), and
the same plan is the truth that measurements are checked against.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import json
import logging
import re
import signal
import threading
import time
import uuid
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import bench_contract as contract

from . import eventstream, visible_tokens

log = logging.getLogger(__name__)

GEO_PREFIXES = ("us.", "eu.", "apac.", "global.")
STREAMS_KEPT = 1000


def lateness_entry(lateness: list[tuple[str, float]]) -> dict[str, float] | None:
    """How late a completed stream's deltas left against its plan (seconds), or None
    when it had no deltas; every simulator keeps the same figures, so one benchmark
    reads them all."""
    deltas = [(kind, late) for kind, late in lateness if kind in ("text", "reasoning")]
    if not deltas:
        return None
    entry = {"first_any": deltas[0][1], "last": deltas[-1][1],
             "max": max(late for _, late in deltas), "end": lateness[-1][1]}
    first_text = next((late for kind, late in deltas if kind == "text"), None)
    if first_text is not None:
        entry["first_text"] = first_text
    mark = next((late for kind, late in lateness if kind == "mark"), None)
    if mark is not None:
        entry["visible_64"] = mark
    return entry
# The maxTokens of the runner's profiles (bench_contract.PROFILES).
PLANNED_BUDGETS = tuple(sorted({budget for budget, _ in contract.PROFILES.values()}))

# Errors answered before the stream: (status, x-amzn-ErrorType, message).
PRE_STREAM_ERRORS: dict[str, tuple[int, str, str]] = {
    "throttle": (429, "ThrottlingException",
                 "Too many requests, please wait before trying again."),
    "model_not_ready": (429, "ModelNotReadyException",
                        "Model is not ready to serve inference requests."),
    "access_denied": (403, "AccessDeniedException",
                      "You don't have access to the model with the specified model ID."),
    "end_of_life": (404, "ResourceNotFoundException",
                    "This model version has reached the end of its life. "
                    "Please refer to the AWS documentation for more details."),
    "not_found": (404, "ResourceNotFoundException", "Model not found."),
    "on_demand_not_supported": (
        400, "ValidationException",
        "Invocation of model ID {model_id} with on-demand throughput isn't supported. "
        "Retry your request with the ID or ARN of an inference profile that contains "
        "this model."),
    "validation": (400, "ValidationException", "The provided request is not valid."),
    "model_timeout": (408, "ModelTimeoutException", "Model has timed out in processing."),
    "model_error": (424, "ModelErrorException", "The model encountered an error."),
    "internal": (500, "InternalServerException", "The server encountered an internal error."),
    "service_unavailable": (503, "ServiceUnavailableException",
                            "The service is temporarily unable to handle the request."),
}

# Bedrock's own words for the request settings a model refuses (400 ValidationException),
# as Bedrock passes on Anthropic's refusal.
TEMPERATURE_REFUSED = ("The model returned the following errors: `temperature` is "
                       "deprecated for this model.")
TEMPERATURE_WITH_THINKING = ("The model returned the following errors: temperature may only "
                             "be set to 1 when thinking is enabled.")
FIELD_REFUSED = ("The model returned the following errors: {field}: Extra inputs are not "
                 "permitted")
INVALID_MODEL_ID = "The provided model identifier is invalid."
# The region a SigV4 request is signed for: Credential=<key id>/<date>/<region>/<service>/...
_SIGNED_REGION = re.compile(r"Credential=[^/,\s]+/\d{8}/([a-z0-9-]+)/")
REQUESTS_KEPT = 1000

# Exceptions sent mid-stream: camelCase, as Bedrock sends them and botocore expects.
STREAM_ERRORS: dict[str, str] = {
    "throttlingException": "Too many tokens, please wait before trying again.",
    "internalServerException": "The server encountered an internal error.",
    "modelStreamErrorException": "The model stream ended with an error.",
    "validationException": "The provided request is not valid.",
    "serviceUnavailableException": "The service is temporarily unable to handle the request.",
}

# What the simulated models write: plain ASCII with short and long words, numbers and
# punctuation, so deltas of one token count differ in length and BPE merges across
# delta boundaries. Cut into deltas by cl100k_base tokens (runner.visible_tokens), so the
# plan knows the true visible token count after every delta.
_ANSWER = (
    "The bicycle began as a wooden running machine in 1817, pushed along by the "
    "rider's feet. Pedals on the front wheel came in the 1860s, then the tall "
    "penny-farthing, and at last the safety bicycle with a chain and two equal "
    "wheels, which made riding cheap and safe for almost everyone. By 1895 some "
    "factories (Coventry, Chicago, Saint-Etienne) built 1,200 a week; tyres were "
    "pneumatic, brakes reliable - and cycling clubs extraordinarily popular! "
)
_REASONING = (
    "The user wants history in plain English. Keep it chronological: running "
    "machine, pedals, penny-farthing, safety bicycle. Tone: warm; avoid jargon. "
)


@functools.lru_cache(maxsize=4)
def _source_tokens(text: str) -> tuple[int, ...]:
    """`text` repeated past any budget, as cl100k_base token ids."""
    encoded = visible_tokens.encoding().encode(text)
    return tuple(encoded * (16384 // len(encoded) + 1))


@dataclass(frozen=True)
class ModelBehaviour:
    """How one simulated model answers: timing, size, and which fault (if any) it shows."""

    ttft: float = 0.2  # seconds from request received to the first content delta
    gap: float = 0.02  # seconds between content deltas
    tokens_per_delta: int = 2
    # Tokens in each delta in turn, repeated (varied sizes); empty: tokens_per_delta each.
    delta_tokens: tuple[int, ...] = ()
    output_tokens: int = 64  # visible text tokens the model would write unbounded
    reasoning_tokens: int = 0  # reasoning tokens written before any text
    input_tokens: int = 18
    send_usage: bool = True  # False: no usage in metadata (the runner counts chunks)
    empty_first_delta: bool = False  # an empty text delta right after messageStart
    error: str | None = None  # a PRE_STREAM_ERRORS key, answered instead of a stream
    stream_error: str | None = None  # a STREAM_ERRORS key, sent after error_after_deltas
    error_after_deltas: int = 0
    stall_seconds: float = 0.0  # stop writing for this long after stall_after_deltas
    stall_after_deltas: int = 0
    stall_before_headers: bool = False  # stall before the response headers instead
    corrupt_after_deltas: int | None = None  # send a message with a bad CRC at this point
    fail_first_calls: int | None = None  # faults apply to the first N calls only (None: all)
    # Request settings: a model that refuses any temperature (Claude Opus 4.7 and later);
    # one that takes a `thinking` block in additionalModelRequestFields and then reasons
    # first (`reasoning_tokens` of it), refusing a temperature other than 1 beside it.
    refuses_temperature: bool = False
    thinking: bool = False
    # The regions that offer it (empty: every region); elsewhere its id is invalid.
    regions: tuple[str, ...] = ()
    # What the control plane lists about it.
    name: str | None = None
    vendor: str = "Simulated"
    streaming: bool = True
    output_modalities: tuple[str, ...] = ("TEXT",)
    lifecycle: str = "ACTIVE"

    def __post_init__(self) -> None:
        if self.error is not None and self.error not in PRE_STREAM_ERRORS:
            raise ValueError(f"unknown error {self.error!r}; known: {sorted(PRE_STREAM_ERRORS)}")
        if self.stream_error is not None and self.stream_error not in STREAM_ERRORS:
            raise ValueError(
                f"unknown stream_error {self.stream_error!r}; known: {sorted(STREAM_ERRORS)}")
        if self.tokens_per_delta < 1:
            raise ValueError("tokens_per_delta must be at least 1")
        object.__setattr__(self, "delta_tokens", tuple(self.delta_tokens))
        if any(not isinstance(n, int) or n < 1 for n in self.delta_tokens):
            raise ValueError("delta_tokens must hold whole numbers of at least 1")
        if min(self.ttft, self.gap, self.stall_seconds) < 0:
            raise ValueError("ttft, gap and stall_seconds cannot be negative")
        object.__setattr__(self, "output_modalities", tuple(self.output_modalities))
        object.__setattr__(self, "regions", tuple(self.regions))

    def offered_in(self, region: str | None) -> bool:
        """Whether a call signed for `region` finds this model."""
        return not self.regions or region is None or region in self.regions

    def as_asked(self, thinking: bool) -> ModelBehaviour:
        """The behaviour for one request: a thinking model reasons only when asked to."""
        if self.thinking and not thinking:
            return dataclasses.replace(self, reasoning_tokens=0)
        return self


@dataclass(frozen=True)
class Delta:
    """One planned content delta: when it is sent (seconds after the request) and what it holds."""

    at: float
    kind: str  # "text" or "reasoning"
    text: str
    tokens: int  # tokens generated for it (what usage adds up)
    block: int
    # cl100k_base tokens of all the visible text up to and including this delta.
    visible_total: int = 0


@dataclass(frozen=True)
class StreamPlan:
    """What a successful stream sends, and therefore the truth a measurement should find."""

    deltas: tuple[Delta, ...]
    stop_reason: str
    input_tokens: int
    output_tokens: int

    @property
    def visible_output_tokens(self) -> int:
        """cl100k_base tokens of the whole visible text."""
        return self.deltas[-1].visible_total if self.deltas else 0

    @property
    def reasoning_tokens(self) -> int | None:
        """cl100k_base tokens of the whole reasoning text; None when no reasoning is sent."""
        reasoning = "".join(d.text for d in self.deltas if d.kind == "reasoning")
        return visible_tokens.count(reasoning) if reasoning else None

    @property
    def mark_delta(self) -> int | None:
        """Index of the delta that carries the 64th visible token; None if fewer are sent."""
        return next((i for i, d in enumerate(self.deltas) if d.kind == "text"
                     and d.visible_total >= visible_tokens.VISIBLE_TOKEN_MARK), None)

    @property
    def time_to_64_visible_tokens(self) -> float | None:
        """Offset of the delta that carries the 64th visible token; None if fewer are sent."""
        i = self.mark_delta
        return None if i is None else self.deltas[i].at

    def visible_tokens_per_delta(self) -> list[int]:
        """The true number of visible tokens each delta adds (0 for reasoning deltas)."""
        counts, before = [], 0
        for d in self.deltas:
            counts.append(d.visible_total - before)
            before = d.visible_total
        return counts

    @property
    def time_to_first_token(self) -> float | None:
        """Offset of the first non-empty text delta, or None when no text is sent."""
        return next((d.at for d in self.deltas if d.kind == "text"), None)

    @property
    def time_to_first_any_token(self) -> float | None:
        """Offset of the first content delta of any kind."""
        return self.deltas[0].at if self.deltas else None

    @property
    def generate_time(self) -> float:
        """Offset of the last delta, after which the closing events follow at once."""
        return self.deltas[-1].at if self.deltas else 0.0

    @property
    def decode_tokens_per_second(self) -> float | None:
        """Tokens sent after the first delta over the first-to-last span (metric_version 2)."""
        if len(self.deltas) < 2 or self.output_tokens <= self.deltas[0].tokens:
            return None
        return ((self.output_tokens - self.deltas[0].tokens)
                / (self.deltas[-1].at - self.deltas[0].at))


@dataclass(frozen=True)
class CatalogBehaviour:
    """How the control plane pages ListInferenceProfiles, and where it fails."""

    page_size: int | None = None  # at most this many profiles a page, whatever is asked
    fail_page: int | None = None  # this page (1-based) answers 500, once per page_fail_times
    fail_times: int | None = None  # None: every time

    def __post_init__(self) -> None:
        if self.page_size is not None and self.page_size < 1:
            raise ValueError("catalog page_size must be at least 1")


@dataclass(frozen=True)
class SimulatorConfig:
    """Per-model behaviour of the simulator, keyed by the exact model id a client sends."""

    models: Mapping[str, ModelBehaviour] = field(default_factory=dict)
    catalog: CatalogBehaviour = field(default_factory=CatalogBehaviour)

    @classmethod
    def default(cls) -> SimulatorConfig:
        """The embedded models the demo uses."""
        return cls(models={
            "sim.fast-v1": ModelBehaviour(
                ttft=0.15, gap=0.02, tokens_per_delta=4, output_tokens=64,
                name="Sim Fast v1"),
            "sim.steady-v1": ModelBehaviour(
                ttft=0.3, gap=0.03, tokens_per_delta=2, output_tokens=64,
                empty_first_delta=True, name="Sim Steady v1"),
            "us.sim.reasoner-v1": ModelBehaviour(
                ttft=0.2, gap=0.02, tokens_per_delta=4, reasoning_tokens=24,
                output_tokens=32, name="Sim Reasoner v1"),
            "sim.retired-v1": ModelBehaviour(
                error="end_of_life", lifecycle="LEGACY", name="Sim Retired v1"),
            "us.sim.profile-only-v1": ModelBehaviour(
                ttft=0.25, gap=0.025, tokens_per_delta=3, output_tokens=48,
                name="Sim Profile-only v1"),
        })

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SimulatorConfig:
        """Build from `{"models": {model_id: {field: value}}, "catalog": {...}}`.

        Unknown fields are an error.
        """
        known = {f.name for f in dataclasses.fields(ModelBehaviour)}
        models: dict[str, ModelBehaviour] = {}
        extra = set(data) - {"models", "catalog"}
        if extra:
            raise ValueError(f"unknown simulator config keys: {sorted(extra)}")
        for model_id, spec in dict(data.get("models", {})).items():
            unknown = set(spec) - known
            if unknown:
                raise ValueError(f"model {model_id}: unknown fields {sorted(unknown)}")
            models[model_id] = ModelBehaviour(**spec)
        catalog = dict(data.get("catalog") or {})
        unknown = set(catalog) - {f.name for f in dataclasses.fields(CatalogBehaviour)}
        if unknown:
            raise ValueError(f"catalog: unknown fields {sorted(unknown)}")
        return cls(models=models, catalog=CatalogBehaviour(**catalog))

    @classmethod
    def from_file(cls, path: Path | str) -> SimulatorConfig:
        """Read a JSON config file (the shape of `from_dict`)."""
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))

    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready form that `from_dict` reads back."""
        return {"models": {k: dataclasses.asdict(v) for k, v in self.models.items()},
                "catalog": dataclasses.asdict(self.catalog)}

    def plan(self, model_id: str, max_tokens: int, *, thinking: bool = False) -> StreamPlan:
        """The deltas a successful call of `model_id` with `max_tokens` sends, with offsets.

        `thinking`: the request carried a `thinking` block (a thinking model reasons then).
        """
        return _plan(self.models[model_id].as_asked(thinking), max(0, max_tokens))


@functools.lru_cache(maxsize=256)
def _plan(b: ModelBehaviour, budget: int) -> StreamPlan:
    reasoning = min(b.reasoning_tokens, budget)
    text = min(b.output_tokens, budget - reasoning)
    encoding = visible_tokens.encoding()
    sizes = itertools.cycle(b.delta_tokens or (b.tokens_per_delta,))
    deltas: list[Delta] = []
    shown = ""
    for kind, count, block, source in (("reasoning", reasoning, 0, _REASONING),
                                       ("text", text, 1 if reasoning else 0, _ANSWER)):
        tokens, taken = _source_tokens(source), 0
        while taken < count:
            n = min(next(sizes), count - taken)
            chunk = encoding.decode(list(tokens[taken:taken + n]))
            taken += n
            if kind == "text":
                shown += chunk
            deltas.append(Delta(b.ttft + len(deltas) * b.gap, kind, chunk, n, block,
                                visible_tokens.count(shown)))
    truncated = b.reasoning_tokens + b.output_tokens > budget
    return StreamPlan(
        deltas=tuple(deltas),
        stop_reason="max_tokens" if truncated else "end_turn",
        input_tokens=b.input_tokens,
        output_tokens=reasoning + text,
    )


class SimulatorServer(ThreadingHTTPServer):
    """The HTTP server: one thread per connection, keep-alive, stops stalls on shutdown."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], config: SimulatorConfig) -> None:
        self.config = config
        self.stopping = threading.Event()
        self._lock = threading.Lock()
        self.calls: Counter[str] = Counter()
        self.connections = 0
        self.streams: OrderedDict[str, dict[str, float]] = OrderedDict()
        # What each runtime call asked (model, region, temperature, extra fields), newest last.
        self.requests: deque[dict[str, Any]] = deque(maxlen=REQUESTS_KEPT)
        self.profile_page_failures: Counter[int] = Counter()
        # Plans count tokens after every delta; make the profiles' ones now, not inside a call.
        for model_id, behaviour in config.models.items():
            if behaviour.error is None:
                for budget in PLANNED_BUDGETS:
                    config.plan(model_id, budget)
                    if behaviour.thinking:
                        config.plan(model_id, budget, thinking=True)
        super().__init__(address, _Handler)

    def count_call(self, model_id: str) -> int:
        """Count a runtime call of `model_id`; returns its 1-based number."""
        with self._lock:
            self.calls[model_id] += 1
            return self.calls[model_id]

    def count_connection(self) -> None:
        """Count a connection that carried a Bedrock request (the runner should reuse them)."""
        with self._lock:
            self.connections += 1

    def record_stream(self, request_id: str, lateness: list[tuple[str, float]]) -> None:
        """Keep how late a completed stream's deltas left against its plan (seconds)."""
        # A benchmark uses it to tell this process's scheduling delays from the runner's error.
        entry = lateness_entry(lateness)
        if entry is None:
            return
        with self._lock:
            self.streams[request_id] = entry
            while len(self.streams) > STREAMS_KEPT:
                self.streams.popitem(last=False)

    def stats(self) -> dict[str, Any]:
        """Calls per model, connections used, and the lateness of recent streams (seconds)."""
        with self._lock:
            return {"calls": dict(self.calls), "connections": self.connections,
                    "streams": dict(self.streams), "requests": list(self.requests)}

    def record_request(self, entry: dict[str, Any]) -> None:
        """Keep what one runtime call asked."""
        with self._lock:
            self.requests.append(entry)

    def fail_profile_page(self, page: int) -> bool:
        """Whether ListInferenceProfiles' page `page` (1-based) fails this time."""
        catalog = self.config.catalog
        if catalog.fail_page != page:
            return False
        with self._lock:
            self.profile_page_failures[page] += 1
            return catalog.fail_times is None or \
                self.profile_page_failures[page] <= catalog.fail_times

    def shutdown(self) -> None:
        """Stop serving and wake every stalled stream so its thread ends."""
        self.stopping.set()
        super().shutdown()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # otherwise each small chunk waits ~40 ms for a delayed ACK
    server: SimulatorServer

    _RUNTIME = re.compile(r"^/model/(?P<model>[^/]+)/(?P<op>converse-stream|converse)$")

    _counted = False

    def _note_connection(self) -> None:
        # Counted at its first Bedrock request, so probes and stats calls do not count.
        if not self._counted:
            self._counted = True
            self.server.count_connection()

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("simulator %s", format % args)

    # Routing

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        if parts.path != "/_simulator/stats":
            self._note_connection()
        region = self._signed_region()
        if parts.path == "/foundation-models":
            self._send_json(200, {"modelSummaries": self._foundation_models(region)})
        elif parts.path == "/inference-profiles":
            answer = self._inference_profiles(parse_qs(parts.query), region)
            if answer is None:
                self._send_error(500, "InternalServerException",
                                 "The server encountered an internal error.")
            else:
                self._send_json(200, answer)
        elif parts.path == "/_simulator/stats":
            self._send_json(200, self.server.stats())
        else:
            self._send_error(404, "UnknownOperationException", "Unknown operation.")

    def do_POST(self) -> None:
        received = time.perf_counter()
        self._note_connection()
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        match = self._RUNTIME.match(urlsplit(self.path).path)
        if not match:
            self._send_error(404, "UnknownOperationException", "Unknown operation.")
            return
        model_id = unquote(match["model"])
        try:
            request = json.loads(body or b"{}")
            inference = request.get("inferenceConfig", {})
            max_tokens = int(inference.get("maxTokens", 4096))
            extra = request.get("additionalModelRequestFields")
            if extra is not None and not isinstance(extra, dict):
                raise TypeError("additionalModelRequestFields is not an object")
        except (ValueError, TypeError, AttributeError):
            self._send_error(400, "ValidationException", "Malformed input request.")
            return
        region = self._signed_region()
        self.server.record_request({
            "model": model_id, "op": match["op"], "region": region,
            "inferenceConfig": inference, "additionalModelRequestFields": extra})
        call_no = self.server.count_call(model_id)
        behaviour = self.server.config.models.get(model_id)
        if behaviour is None or not behaviour.offered_in(region):
            self._answer_unknown(model_id, region)
            return
        refusal = _refused_settings(behaviour, inference, extra or {})
        if refusal:
            self._send_error(400, "ValidationException", refusal)
            return
        faulty = behaviour.fail_first_calls is None or call_no <= behaviour.fail_first_calls
        if faulty and behaviour.error:
            status, name, message = PRE_STREAM_ERRORS[behaviour.error]
            self._send_error(status, name, message.format(model_id=model_id))
            return
        thinking = isinstance((extra or {}).get("thinking"), dict)
        plan = self.server.config.plan(model_id, max_tokens, thinking=thinking)
        behaviour = behaviour.as_asked(thinking)
        if match["op"] == "converse":
            self._converse(behaviour, plan, received, faulty)
        else:
            self._converse_stream(behaviour, plan, received, faulty)

    def _signed_region(self) -> str | None:
        """The region the request was signed for (SigV4's credential scope), if signed."""
        found = _SIGNED_REGION.search(self.headers.get("Authorization", ""))
        return found.group(1) if found else None

    def _answer_unknown(self, model_id: str, region: str | None = None) -> None:
        # A bare id whose cross-region profile exists: Bedrock refuses on-demand calls.
        models = self.server.config.models
        if any(p + model_id in models and models[p + model_id].offered_in(region)
               for p in GEO_PREFIXES):
            _, name, message = PRE_STREAM_ERRORS["on_demand_not_supported"]
            self._send_error(400, name, message.format(model_id=model_id))
        else:
            self._send_error(400, "ValidationException", INVALID_MODEL_ID)

    # Runtime answers

    def _converse(self, b: ModelBehaviour, plan: StreamPlan, received: float,
                  faulty: bool) -> None:
        if faulty and b.stall_seconds:
            self.server.stopping.wait(b.stall_seconds)
        self._sleep_until(received + plan.generate_time)
        content: list[dict[str, Any]] = []
        reasoning = "".join(d.text for d in plan.deltas if d.kind == "reasoning")
        if reasoning:
            content.append({"reasoningContent": {"reasoningText": {"text": reasoning}}})
        content.append({"text": "".join(d.text for d in plan.deltas if d.kind == "text")})
        answer: dict[str, Any] = {
            "output": {"message": {"role": "assistant", "content": content}},
            "stopReason": plan.stop_reason,
            "metrics": {"latencyMs": round((time.perf_counter() - received) * 1000)},
        }
        if b.send_usage:
            answer["usage"] = _usage(plan)
        self._send_json(200, answer)

    def _converse_stream(self, b: ModelBehaviour, plan: StreamPlan, received: float,
                         faulty: bool) -> None:
        if faulty and b.stall_seconds and b.stall_before_headers:
            self.server.stopping.wait(b.stall_seconds)
        self.send_response(200)
        self.send_header("Content-Type", "application/vnd.amazon.eventstream")
        self.send_header("Transfer-Encoding", "chunked")
        request_id = str(uuid.uuid4())
        self.send_header("x-amzn-RequestId", request_id)
        self.end_headers()
        self._lateness: list[tuple[str, float]] = []
        self._stalled = 0.0
        try:
            self._write_chunk(eventstream.encode_event("messageStart", {"role": "assistant"}))
            if b.empty_first_delta:
                self._write_chunk(eventstream.encode_event(
                    "contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": ""}}))
            if not self._stream_deltas(b, plan, received, faulty):
                self._write_chunk(b"")
                return
            self._write_chunk(eventstream.encode_event("messageStop",
                                                       {"stopReason": plan.stop_reason}))
            metadata: dict[str, Any] = {
                "metrics": {"latencyMs": round((time.perf_counter() - received) * 1000)}}
            if b.send_usage:
                metadata["usage"] = _usage(plan)
            self._write_chunk(eventstream.encode_event("metadata", metadata))
            self._write_chunk(b"")
            self._lateness.append(
                ("end", time.perf_counter() - (received + self._stalled + plan.generate_time)))
            self.server.record_stream(request_id, self._lateness)
        except (BrokenPipeError, ConnectionResetError):
            # The client gave up (its read timeout or overall cap): nothing to answer.
            self.close_connection = True

    def _stream_deltas(self, b: ModelBehaviour, plan: StreamPlan, received: float,
                       faulty: bool) -> bool:
        """Send the planned deltas and block stops; False when a fault ended the stream."""
        stalled = 0.0
        mark = plan.mark_delta
        for i, delta in enumerate(plan.deltas):
            if faulty and b.stream_error and i == b.error_after_deltas:
                self._write_chunk(eventstream.encode_exception(
                    b.stream_error, STREAM_ERRORS[b.stream_error]))
                return False
            if faulty and b.stall_seconds and not b.stall_before_headers \
                    and i == b.stall_after_deltas:
                start = time.perf_counter()
                self.server.stopping.wait(b.stall_seconds)
                stalled += time.perf_counter() - start
                self._stalled = stalled
            corrupt = faulty and b.corrupt_after_deltas == i
            self._sleep_until(received + stalled + delta.at)
            if i and plan.deltas[i - 1].block != delta.block:
                self._close_block(plan.deltas[i - 1], signature=True)
            payload = {"contentBlockIndex": delta.block, "delta": _delta_body(delta)}
            self._write_chunk(eventstream.encode_event("contentBlockDelta", payload,
                                                       corrupt=corrupt))
            # How late this delta left against the plan (a busy machine delays it).
            late = time.perf_counter() - (received + stalled + delta.at)
            self._lateness.append((delta.kind, late))
            if i == mark:
                self._lateness.append(("mark", late))
            if corrupt:
                return False
        if faulty and b.stream_error and b.error_after_deltas >= len(plan.deltas):
            self._write_chunk(eventstream.encode_exception(
                b.stream_error, STREAM_ERRORS[b.stream_error]))
            return False
        if plan.deltas:
            last = plan.deltas[-1]
            self._close_block(last, signature=last.kind == "reasoning")
        return True

    def _close_block(self, delta: Delta, *, signature: bool) -> None:
        if signature and delta.kind == "reasoning":
            # Bedrock ends a reasoning block with a signature-only delta: no token in it.
            self._write_chunk(eventstream.encode_event("contentBlockDelta", {
                "contentBlockIndex": delta.block,
                "delta": {"reasoningContent": {"signature": uuid.uuid4().hex}}}))
        self._write_chunk(eventstream.encode_event("contentBlockStop",
                                                   {"contentBlockIndex": delta.block}))

    # Control plane

    def _foundation_models(self, region: str | None) -> list[dict[str, Any]]:
        models = self.server.config.models
        summaries: dict[str, dict[str, Any]] = {}
        for model_id, b in models.items():
            if not b.offered_in(region):
                continue
            base = _strip_geo(model_id)
            on_demand = base in models and models[base].error != "on_demand_not_supported"
            summaries.setdefault(base, {
                "modelArn": f"arn:aws:bedrock:us-east-1::foundation-model/{base}",
                "modelId": base,
                "modelName": b.name or base,
                "providerName": b.vendor,
                "inputModalities": ["TEXT"],
                "outputModalities": list(b.output_modalities),
                "responseStreamingSupported": b.streaming,
                "customizationsSupported": [],
                "inferenceTypesSupported": ["ON_DEMAND"] if on_demand else ["INFERENCE_PROFILE"],
                "modelLifecycle": {"status": b.lifecycle},
            })
        return list(summaries.values())

    def _inference_profiles(self, query: Mapping[str, list[str]],
                            region: str | None) -> dict[str, Any] | None:
        """One page of the system profiles offered in `region`; None when the page fails."""
        profiles = [
            {
                "inferenceProfileName": f"US {b.name or _strip_geo(model_id)}",
                "inferenceProfileId": model_id,
                "inferenceProfileArn":
                    f"arn:aws:bedrock:us-east-1:123456789012:inference-profile/{model_id}",
                "description": "Routes requests across regions.",
                "models": [{"modelArn":
                            f"arn:aws:bedrock:us-east-1::foundation-model/{_strip_geo(model_id)}"}],
                "status": "ACTIVE",
                "type": "SYSTEM_DEFINED",
            }
            for model_id, b in self.server.config.models.items()
            if model_id != _strip_geo(model_id) and b.offered_in(region)
        ]
        start = int(query.get("nextToken", ["0"])[0] or 0)
        size = int(query.get("maxResults", ["1000"])[0] or 1000)
        if self.server.config.catalog.page_size:
            size = min(size, self.server.config.catalog.page_size)
        if self.server.fail_profile_page(start // size + 1):
            return None
        answer: dict[str, Any] = {"inferenceProfileSummaries": profiles[start:start + size]}
        if start + size < len(profiles):
            answer["nextToken"] = str(start + size)
        return answer

    # Wire

    def _sleep_until(self, target: float) -> None:
        delay = target - time.perf_counter()
        if delay > 0:
            time.sleep(delay)

    def _write_chunk(self, data: bytes) -> None:
        """One HTTP chunk, written at once; an empty one ends the body."""
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))

    def _send_json(self, status: int, payload: Any) -> None:
        raw = json.dumps(payload).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.send_header("x-amzn-RequestId", str(uuid.uuid4()))
        self.end_headers()
        self.wfile.write(raw)

    def _send_error(self, status: int, error_type: str, message: str) -> None:
        raw = json.dumps({"message": message}).encode("utf-8")
        self.send_response(status, HTTPStatus(status).phrase)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.send_header("x-amzn-RequestId", str(uuid.uuid4()))
        self.send_header("x-amzn-ErrorType", f"{error_type}:http://internal.amazon.com/coral/")
        self.end_headers()
        self.wfile.write(raw)


def _refused_settings(b: ModelBehaviour, inference: Mapping[str, Any],
                      extra: Mapping[str, Any]) -> str | None:
    """Bedrock's refusal of a request's settings for model `b`, or None when it takes them."""
    if "temperature" in inference and b.refuses_temperature:
        return TEMPERATURE_REFUSED
    if "thinking" in extra:
        if not b.thinking:
            return FIELD_REFUSED.format(field="thinking")
        if inference.get("temperature", 1) != 1:
            return TEMPERATURE_WITH_THINKING
    unknown = sorted(set(extra) - {"thinking"})
    if unknown:
        return FIELD_REFUSED.format(field=unknown[0])
    return None


def _strip_geo(model_id: str) -> str:
    for prefix in GEO_PREFIXES:
        if model_id.startswith(prefix):
            return model_id[len(prefix):]
    return model_id


def _delta_body(delta: Delta) -> dict[str, Any]:
    if delta.kind == "reasoning":
        return {"reasoningContent": {"text": delta.text}}
    return {"text": delta.text}


def _usage(plan: StreamPlan) -> dict[str, int]:
    return {"inputTokens": plan.input_tokens, "outputTokens": plan.output_tokens,
            "totalTokens": plan.input_tokens + plan.output_tokens}


def run(host: str, port: int, config_path: Path | None,
        on_listening: Callable[[str], None] | None = None) -> None:
    """Serve the Bedrock simulator until SIGINT or SIGTERM (see `serve`)."""
    config = SimulatorConfig.from_file(config_path) if config_path else SimulatorConfig.default()
    serve(SimulatorServer((host, port), config), "Bedrock", on_listening)


def serve(server: Any, what: str,
          on_listening: Callable[[str], None] | None = None) -> None:
    """Serve until SIGINT or SIGTERM, logging one line with the endpoint URL (every simulator).

    `on_listening` gets the URL once the socket is bound, so with port 0 it is the
    port the kernel picked, not 0.
    """
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set())
                for sig in (signal.SIGINT, signal.SIGTERM)}
    thread = threading.Thread(target=server.serve_forever, name=f"{what.lower()}-simulator",
                              daemon=True)
    thread.start()
    host, port = server.server_address[:2]
    log.info("%s simulator listening on http://%s:%s (models: %s)", what, host, port,
             ", ".join(server.config.models))
    if on_listening is not None:
        on_listening(f"http://{host}:{port}")
    try:
        while not stop.wait(0.5):
            pass
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        log.info("%s simulator stopped", what)


if __name__ == "__main__":
    # `python -m runner.simulator PORT [CONFIG]`: what the test fixture starts, kept
    # free of click so it starts fast.
    import sys

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    run("127.0.0.1", int(sys.argv[1]), Path(sys.argv[2]) if len(sys.argv) > 2 else None)
