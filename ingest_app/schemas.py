"""What the routes accept and answer: marshmallow schemas for bodies, query strings and answers.

Field names and limits come from bench_contract; a test checks these schemas hold
exactly its fields. Loading yields the canonical stored form: timestamps as UTC
datetimes at millisecond precision (what a BSON date keeps), UUIDs in lower case.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from marshmallow import (
    EXCLUDE,
    INCLUDE,
    RAISE,
    Schema,
    ValidationError,
    fields,
    validate,
    validates_schema,
)

import bench_contract as contract

from .jsonbody import INT64_MAX, INT64_MIN
from .limits import DEFAULT_LIMIT, DEFAULT_WINDOW, MAX_FILTER_CHARS, MAX_LIMIT
from .timestamps import parse_rfc3339, rfc3339

# MongoDB refuses documents nested 100 deep; misc stays far from that.
MAX_MISC_DEPTH = 16


class StrictInteger(fields.Integer):
    """A JSON integer: no strings, no booleans, no floats, within 64 bits."""

    default_error_messages = {
        "invalid": "Not a valid integer.",
        "range": "Integer out of the 64-bit range.",
    }

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(strict=True, **kwargs)

    def _deserialize(self, value: Any, attr: Any, data: Any, **kwargs: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.make_error("invalid")
        if not INT64_MIN <= value <= INT64_MAX:
            raise self.make_error("range")
        return value


class StrictFloat(fields.Float):
    """A finite JSON number (an integer is accepted and stored as a float), never a string."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(allow_nan=False, **kwargs)

    def _deserialize(self, value: Any, attr: Any, data: Any, **kwargs: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.make_error("invalid")
        number = float(value)
        if not math.isfinite(number):
            raise self.make_error("special")
        return number


class StrictBoolean(fields.Boolean):
    """A JSON true or false: no 1, 0 or "yes"."""

    def _deserialize(self, value: Any, attr: Any, data: Any, **kwargs: Any) -> bool:
        if not isinstance(value, bool):
            raise self.make_error("invalid", input=value)
        return value


class StrictString(fields.String):
    """A JSON string without NUL characters."""

    def _deserialize(self, value: Any, attr: Any, data: Any, **kwargs: Any) -> str:
        text = super()._deserialize(value, attr, data, **kwargs)
        if "\x00" in text:
            raise ValidationError("Must not contain NUL characters.")
        return text


class UUIDString(fields.String):
    """A UUID in its usual text form, stored in lower case."""

    def _deserialize(self, value: Any, attr: Any, data: Any, **kwargs: Any) -> str:
        text = super()._deserialize(value, attr, data, **kwargs)
        if not re.fullmatch(r"[0-9A-Fa-f]{8}-([0-9A-Fa-f]{4}-){3}[0-9A-Fa-f]{12}", text):
            raise ValidationError("Not a valid UUID.")
        return str(uuid.UUID(text))


# Older than any benchmark this service can have measured; also keeps UTC conversion in range.
EARLIEST = datetime(2000, 1, 1, tzinfo=UTC)


class Timestamp(fields.AwareDateTime):
    """An RFC 3339 time with its offset, no more than 10 minutes ahead; loaded as UTC at ms."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(format="iso", **kwargs)

    def _deserialize(self, value: Any, attr: Any, data: Any, **kwargs: Any) -> datetime:
        if not isinstance(value, str):
            raise ValidationError("Not an RFC 3339 date-time with a timezone offset.")
        try:
            # BSON dates keep milliseconds: store what the database will give back.
            moment = parse_rfc3339(value)
        except ValueError as exc:
            raise ValidationError(str(exc)) from exc
        if moment < EARLIEST:
            raise ValidationError("Is before the year 2000; check the sender's clock.")
        if moment > datetime.now(UTC) + timedelta(seconds=contract.MAX_FUTURE_SECONDS):
            raise ValidationError(
                f"Is more than {contract.MAX_FUTURE_SECONDS // 60} minutes in the future; "
                "check the sender's clock."
            )
        return moment


class Misc(fields.Dict):
    """A free-form object, at most MAX_MISC_BYTES as JSON, with keys MongoDB stores safely."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(keys=fields.String(), **kwargs)

    def _deserialize(self, value: Any, attr: Any, data: Any, **kwargs: Any) -> dict[str, Any]:
        loaded = super()._deserialize(value, attr, data, **kwargs)
        # Depth first, without recursion: the parser lets through nesting hundreds deep, which
        # would exhaust the stack of anything recursive below (json.dumps, _bad_keys): a 500.
        if _deeper_than(loaded, MAX_MISC_DEPTH):
            raise ValidationError(f"Is nested deeper than {MAX_MISC_DEPTH} levels.")
        size = len(json.dumps(loaded, separators=(",", ":"), ensure_ascii=False).encode())
        if size > contract.MAX_MISC_BYTES:
            raise ValidationError(f"Is {size} bytes; the limit is {contract.MAX_MISC_BYTES}.")
        bad = _bad_keys(loaded)
        if bad:
            raise ValidationError(
                f"Keys must not start with '$' or hold '.' or NUL: {', '.join(bad[:5])}."
            )
        return loaded


def _deeper_than(value: Any, limit: int) -> bool:
    stack = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            if depth + 1 > limit:
                return True
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)
    return False


def _bad_keys(value: Any, path: str = "") -> list[str]:
    bad: list[str] = []
    if isinstance(value, dict):
        for key, item in value.items():
            where = f"{path}.{key}" if path else key
            if key.startswith("$") or "." in key or "\x00" in key:
                bad.append(repr(where[:60]))
            bad.extend(_bad_keys(item, where))
    elif isinstance(value, list):
        for item in value:
            bad.extend(_bad_keys(item, path))
    return bad


def _text(max_chars: int, **kwargs: Any) -> StrictString:
    return StrictString(validate=validate.Length(min=1, max=max_chars), **kwargs)


_NON_NEGATIVE = validate.Range(min=0)


class StrictSchema(Schema):
    """Unknown fields are errors, named one by one; nothing is silently dropped."""

    class Meta:
        unknown = RAISE


class ResultSchema(StrictSchema):
    """One benchmark result (docs/contract.md section 3)."""

    result_id = UUIDString(required=True)
    provider = StrictString(required=True, validate=validate.OneOf(contract.PROVIDERS))
    model_name = _text(256, required=True)
    run_ts = Timestamp(required=True)
    output_tokens = StrictInteger(required=True, validate=_NON_NEGATIVE)
    generate_time = StrictFloat(required=True, validate=_NON_NEGATIVE)
    tokens_per_second = StrictFloat(required=True, validate=_NON_NEGATIVE)
    region = _text(64)
    gen_ts = Timestamp()
    benchmark_profile_id = _text(128)
    requested_tokens = StrictInteger(validate=validate.Range(min=1))
    temperature = StrictFloat(allow_none=True, validate=validate.Range(min=0, max=2))
    input_tokens = StrictInteger(validate=_NON_NEGATIVE)
    token_source = StrictString(validate=validate.OneOf(contract.TOKEN_SOURCES))
    time_to_first_token = StrictFloat(allow_none=True, validate=_NON_NEGATIVE)
    time_to_first_any_token = StrictFloat(allow_none=True, validate=_NON_NEGATIVE)
    decode_tokens_per_second = StrictFloat(allow_none=True, validate=_NON_NEGATIVE)
    server_latency_ms = StrictInteger(allow_none=True, validate=_NON_NEGATIVE)
    stop_reason = _text(64)
    request_id = _text(128)
    attempts = StrictInteger(validate=validate.Range(min=1))
    chunk_count = StrictInteger(validate=_NON_NEGATIVE)
    reasoning_tokens = StrictInteger(allow_none=True, validate=_NON_NEGATIVE)
    reasoning_effort = _text(64, allow_none=True)
    metrics_schema_version = StrictInteger(
        validate=validate.Equal(contract.METRICS_SCHEMA_VERSION))
    request_mode = StrictString(validate=validate.OneOf(contract.REQUEST_MODES))
    ttft_available = StrictBoolean()
    generated_output_tokens = StrictInteger(validate=_NON_NEGATIVE)
    visible_output_tokens = StrictInteger(validate=_NON_NEGATIVE)
    generated_tokens_per_second = StrictFloat(validate=_NON_NEGATIVE)
    visible_tokens_per_second = StrictFloat(validate=_NON_NEGATIVE)
    time_to_64_visible_tokens_seconds = StrictFloat(allow_none=True, validate=_NON_NEGATIVE)
    metric_version = StrictInteger(validate=validate.Range(min=1))
    protocol_version = StrictInteger(validate=validate.Range(min=1))
    sample_role = StrictString(validate=validate.OneOf(contract.SAMPLE_ROLES))
    runner_version = _text(64)
    misc = Misc()

    @validates_schema
    def _consistent(self, data: dict[str, Any], **_: Any) -> None:
        # The dashboard trusts ttft_available; it must say what time_to_first_token says.
        if "ttft_available" in data and "time_to_first_token" in data and \
                data["ttft_available"] != (data["time_to_first_token"] is not None):
            raise ValidationError("Must be true exactly when time_to_first_token is not null.",
                                  "ttft_available")
        modes = contract.PROVIDER_REQUEST_MODES.get(data.get("provider", ""), ())
        if "request_mode" in data and modes and data["request_mode"] not in modes:
            # A Bedrock row stamped as a chat-completions stream (or the reverse) would
            # mislabel how every figure in it was measured.
            raise ValidationError(f"Must be one of {', '.join(modes)} for provider "
                                  f"{data['provider']}.", "request_mode")
        reached = data.get("time_to_64_visible_tokens_seconds")
        generate_time = data.get("generate_time")
        if reached is not None and generate_time is not None and reached > generate_time:
            raise ValidationError("Cannot be later than generate_time.",
                                  "time_to_64_visible_tokens_seconds")


class FailureSchema(StrictSchema):
    """One failed attempt (docs/contract.md section 4)."""

    error_id = UUIDString(required=True)
    provider = StrictString(required=True, validate=validate.OneOf(contract.PROVIDERS))
    model_name = _text(256, required=True)
    ts = Timestamp(required=True)
    stage = StrictString(required=True, validate=validate.OneOf(contract.STAGES))
    error_kind = StrictString(required=True, validate=validate.OneOf(contract.ERROR_KINDS))
    message = _text(contract.MAX_MESSAGE_CHARS, required=True)
    region = _text(64)
    benchmark_profile_id = _text(128)
    exc_type = _text(256)
    provider_error_code = _text(128)
    http_status = StrictInteger(validate=validate.Range(min=100, max=599))
    request_id = _text(128)
    attempts = StrictInteger(validate=_NON_NEGATIVE)
    runner_version = _text(64)
    misc = Misc()


class BatchItems(fields.List):
    """A JSON array of batch items, loaded as sent: each item is judged on its own later.

    The envelope's schema documents the items as results, and loading checks only the
    list and its length, so one bad item rejects that item alone, never the batch.
    """

    def _deserialize(self, value: Any, attr: Any, data: Any, **kwargs: Any) -> list[Any]:
        if not isinstance(value, list):
            raise self.make_error("invalid")
        return value


class BatchSchema(StrictSchema):
    """`POST /ingest/batch`: up to MAX_BATCH_ITEMS results, each judged on its own."""

    results = BatchItems(
        fields.Nested(ResultSchema),
        required=True,
        validate=validate.Length(max=contract.MAX_BATCH_ITEMS,
                                 error=f"At most {contract.MAX_BATCH_ITEMS} items; "
                                       "split the batch."),
    )


class WriteAnswerSchema(Schema):
    """The answer to a single write: created (201) or duplicate (200)."""

    status = fields.String(validate=validate.OneOf(("created", "duplicate")))
    duplicate = fields.Boolean()
    result_id = fields.String(metadata={"description": "on POST /ingest"})
    error_id = fields.String(metadata={"description": "on POST /ingest/error"})
    published = fields.Boolean(metadata={
        "description": "results only, present (false) when stored in the probe collection"})
    withheld_reason = fields.String(
        validate=validate.OneOf(("model_not_listed", "model_disabled", "model_deprecated")),
        metadata={"description": "why the model gate kept it off the public collection"})


class BatchItemAnswerSchema(Schema):
    """One batch item's fate, in the order sent."""

    status = fields.String(
        validate=validate.OneOf(("created", "duplicate", "conflict", "rejected"))
    )
    result_id = fields.String(metadata={"description": "the stored id; for a rejected item, "
                                                      "the id as sent (if it was a string)"})
    differing_fields = fields.List(fields.String(), metadata={
        "description": "for a conflict: the fields that differ from the stored record"})
    published = fields.Boolean(metadata={
        "description": "results only, present (false) when stored in the probe collection"})
    withheld_reason = fields.String(
        validate=validate.OneOf(("model_not_listed", "model_disabled", "model_deprecated")),
        metadata={"description": "why the model gate kept it off the public collection"})
    errors = fields.Dict(metadata={"description": "field -> messages, for rejected items"})


class BatchAnswerSchema(Schema):
    """The answer to a batch: one item per input, in order."""

    results = fields.List(fields.Nested(BatchItemAnswerSchema))


class ErrorBodySchema(Schema):
    """The inside of every error answer."""

    code = fields.String()
    message = fields.String()
    details = fields.Dict()
    request_id = fields.String()


class ErrorAnswerSchema(Schema):
    """Every error answer: {"error": {...}}."""

    error = fields.Nested(ErrorBodySchema)


class StatusAnswerSchema(Schema):
    """The answer of GET /health ("ok") and GET /ready ("ready")."""

    status = fields.String(validate=validate.OneOf(("ok", "ready")))


class StoredResultSchema(ResultSchema):
    """A stored result as GET /results shows it: times as RFC 3339 UTC strings, no _id."""

    class Meta:
        # The collection is shared with older writers: their extra fields are shown as stored.
        unknown = INCLUDE

    received_at = fields.DateTime(metadata={"description": "when the server stored it"})
    runner_id = fields.String(metadata={"description": "the name of the key that sent it"})


# A '+' in a query string arrives as a space when the client did not percent-encode it.
_UNENCODED_OFFSET = re.compile(r" (\d{2}:\d{2})$")


class QueryTimestamp(fields.AwareDateTime):
    """An RFC 3339 time with its offset in a query string, loaded as UTC at ms."""

    def _deserialize(self, value: Any, attr: Any, data: Any, **kwargs: Any) -> datetime:
        try:
            return parse_rfc3339(_UNENCODED_OFFSET.sub(r"+\1", str(value).strip()))
        except ValueError as exc:
            raise ValidationError("Must be an RFC 3339 timestamp with a timezone, like "
                                  "2026-03-10T12:00:00Z.") from exc


class QueryCount(fields.Integer):
    """A whole number in a query string: ASCII digits only, no sign, no other numerals."""

    def _deserialize(self, value: Any, attr: Any, data: Any, **kwargs: Any) -> int:
        text = str(value)
        # Four digits bound the work before int() of a 5000-digit string.
        if not (text.isascii() and text.isdigit() and len(text) <= 4):
            raise self.make_error("invalid")
        return int(text)


class QuerySchema(Schema):
    """A query string: any parameter the route does not take is refused (422), by name."""

    error_messages = {"unknown": "Unknown parameter."}

    class Meta:
        unknown = RAISE


class ResultsQuerySchema(QuerySchema):
    """The query parameters of GET /results; the route loads them with this schema."""

    provider = fields.String(validate=validate.Length(min=1, max=MAX_FILTER_CHARS))
    model_name = fields.String(validate=validate.Length(min=1, max=MAX_FILTER_CHARS))
    since = QueryTimestamp(metadata={"description": "run_ts at or after (RFC 3339); "
                                                    "earlier than until"})
    until = QueryTimestamp(metadata={"description": "run_ts before (RFC 3339); later "
                                                    "than since (422 otherwise)"})
    limit = QueryCount(load_default=DEFAULT_LIMIT, validate=validate.Range(min=1, max=MAX_LIMIT),
                       error_messages={"invalid": f"Must be a whole number from 1 to {MAX_LIMIT}."})
    cursor = fields.String(metadata={"description": "the `next` of the previous page, as "
                                                    "handed out (signed: any other is a 422)"})

    @validates_schema(skip_on_field_errors=False)
    def _since_before_until(self, data: dict[str, Any], **_: Any) -> None:
        since, until = data.get("since"), data.get("until")
        if since is not None and until is not None and since >= until:
            raise ValidationError("Must be later than since.", "until")


class ResultsPageSchema(Schema):
    """GET /results: one page of stored results, newest first."""

    results = fields.List(fields.Nested(StoredResultSchema))
    next = fields.String(allow_none=True,
                         metadata={"description": "cursor of the next page; null at the end"})


# 1 to 31 days in any unit the server takes: 1-44640m, 1-744h, 1-31d, no leading zero
# (docs/contract.md, read answers; summary.parse_window is the judge).
WINDOW_PATTERN = (
    r"^(?:(?:[1-9][0-9]{0,3}|[1-3][0-9]{4}|4[0-3][0-9]{3}|44[0-5][0-9]{2}|446[0-3][0-9]|44640)m"
    r"|(?:[1-9][0-9]?|[1-6][0-9]{2}|7[0-3][0-9]|74[0-4])h"
    r"|(?:[1-9]|[12][0-9]|3[01])d)$"
)


class WindowQuerySchema(QuerySchema):
    """The window of GET /summary and the status page (any other parameter of /summary: 422).

    summary.parse_window judges the window itself, so a bad one is a 422 before any
    database call.
    """

    window = fields.String(load_default=DEFAULT_WINDOW,
                           metadata={"description": "a count and a unit m, h or d, like 1h, "
                                                    "24h or 7d; at most 31d",
                                     "pattern": WINDOW_PATTERN})


class SpreadSchema(Schema):
    """The median and 90th percentile of one figure over the window (null with no data)."""

    median = fields.Float(allow_none=True)
    p90 = fields.Float(allow_none=True)


class RFC3339(fields.DateTime):
    """A time in an answer: RFC 3339 UTC with milliseconds, like 2026-03-10T12:00:00.000Z."""

    def _serialize(self, value: Any, attr: Any, obj: Any, **kwargs: Any) -> str | None:
        return None if value is None else rfc3339(value)


class ModelSummarySchema(Schema):
    """One provider and model over the window, with its latest record ever."""

    provider = fields.String()
    model_name = fields.String()
    last_run = RFC3339(allow_none=True)
    last_outcome = fields.String(allow_none=True, metadata={
        "description": "ok for a stored result, else the failure's error_kind"})
    last_result_at = RFC3339(allow_none=True)
    last_failure_at = RFC3339(allow_none=True)
    runs = fields.Integer(metadata={"description": "results and failures in the window"})
    failures = fields.Integer()
    success_rate = fields.Float(allow_none=True)
    time_to_first_token = fields.Nested(SpreadSchema)
    tokens_per_second = fields.Nested(SpreadSchema)


class RunnerSeenSchema(Schema):
    """When one runner (its key's name) last fetched its worklist and posted its catalogue."""

    runner = fields.String()
    last_config_at = RFC3339(allow_none=True, metadata={
        "description": "its last GET /runner-config (a 304 counts); null: never"})
    last_config_provider = fields.String(allow_none=True)
    last_catalog_at = RFC3339(allow_none=True, metadata={
        "description": "its last stored POST /ingest/catalog; null: never"})
    last_catalog_provider = fields.String(allow_none=True)


class SummarySchema(Schema):
    """GET /summary: one row per provider and model over the window, and the runners seen."""

    window = fields.String()
    since = RFC3339()
    until = RFC3339()
    models = fields.List(fields.Nested(ModelSummarySchema))
    runners = fields.List(fields.Nested(RunnerSeenSchema), metadata={
        "description": "every runner that ever fetched a worklist or posted a catalogue"})


class RunnerConfigQuerySchema(QuerySchema):
    """The query parameters of GET /runner-config; the route loads them with this schema."""

    provider = fields.String(load_default="bedrock", validate=validate.OneOf(contract.PROVIDERS),
                             metadata={"description": "whose models to list"})


class ModelMetadataSchema(Schema):
    """One model's request settings (the `request` subdocument of its `models` entry).

    Keys besides these four are passed on as stored (an older runner ignores them).
    """

    class Meta:
        unknown = INCLUDE

    omit_temperature = fields.Boolean(metadata={
        "description": "true: send no temperature (the result's temperature is null)"})
    additional_model_request_fields = fields.Dict(allow_none=True, metadata={
        "description": "sent to ConverseStream as additionalModelRequestFields, unchanged"})
    region = fields.String(allow_none=True, metadata={
        "description": "the region to call the model in; null: the runner's own"})
    profiles = fields.List(fields.String(), allow_none=True, metadata={
        "description": "the profiles to measure it with; null: every profile of the run"})


class OpenNested(fields.Nested):
    """A nested object dumped with its declared fields and every other key it holds."""

    def _serialize(self, nested_obj: Any, attr: Any, obj: Any, **kwargs: Any) -> Any:
        dumped = super()._serialize(nested_obj, attr, obj, **kwargs)
        if isinstance(nested_obj, dict) and isinstance(dumped, dict):
            dumped.update({k: v for k, v in nested_obj.items() if k not in dumped})
        return dumped


class RunnerConfigSchema(Schema):
    """GET /runner-config: what the calling runner measures, and how."""

    schema_version = fields.Integer(validate=validate.Equal(contract.RUNNER_CONFIG_SCHEMA_VERSION))
    provider = fields.String()
    runner = fields.String(metadata={"description": "the name of the key that asked"})
    interval_minutes = fields.Integer(validate=validate.Range(min=1), metadata={
        "description": "minutes between the daemon's cycles (INGEST_RUNNER_INTERVAL_MINUTES)"})
    models = fields.List(fields.String(), metadata={
        "description": "model ids, sorted: enabled, not deprecated, for this provider and "
                       "this runner"})
    model_metadata = fields.Dict(keys=fields.String(), values=OpenNested(ModelMetadataSchema),
                                 metadata={"description": "per model id in `models`"})
    generated_at = RFC3339()


class CatalogModelSchema(Schema):
    """One model or inference profile as the provider lists it; other keys are ignored."""

    class Meta:
        unknown = EXCLUDE

    model_id = _text(256, required=True)
    name = _text(256, allow_none=True, load_default=None)
    provider_name = _text(256, allow_none=True, load_default=None)
    kind = StrictString(required=True, validate=validate.OneOf(contract.CATALOG_KINDS))
    input_modalities = fields.List(_text(64), load_default=list,
                                   validate=validate.Length(max=32))
    output_modalities = fields.List(_text(64), load_default=list,
                                    validate=validate.Length(max=32))
    inference_types = fields.List(_text(64), load_default=list,
                                  validate=validate.Length(max=32))
    lifecycle_status = _text(64, allow_none=True, load_default=None)
    needs_profile = StrictBoolean(load_default=False)
    streaming = StrictBoolean(allow_none=True, load_default=None)


class CatalogSchema(StrictSchema):
    """`POST /ingest/catalog`: one listing of the provider's models and inference profiles."""

    provider = StrictString(required=True, validate=validate.OneOf(contract.PROVIDERS))
    region = _text(64, allow_none=True, load_default=None)
    started_at = Timestamp(required=True, metadata={"description": "when the listing began"})
    pagination_complete = StrictBoolean(required=True, metadata={
        "description": "true only when every page of every listing was read"})
    models = fields.List(
        fields.Nested(CatalogModelSchema),
        required=True,
        validate=validate.Length(max=contract.MAX_CATALOG_MODELS,
                                 error=f"At most {contract.MAX_CATALOG_MODELS} models."),
    )


class CatalogCountsSchema(Schema):
    """What one catalogue post changed."""

    models = fields.Integer(metadata={"description": "distinct entries posted"})
    new = fields.Integer(metadata={"description": "entries first seen by this post"})
    seen = fields.Integer(metadata={"description": "entries already known"})


class CatalogAnswerSchema(Schema):
    """The answer to a stored catalogue."""

    status = fields.String(validate=validate.OneOf(("stored",)))
    counts = fields.Nested(CatalogCountsSchema)


_ID_LIKE = re.compile(
    r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"  # UUIDs
    # Any run of letters and digits that holds a digit: a number, or an id of any length
    # (short hex like c4f2 or 0x7fa3, trace-id parts, the 1a2b3c of req_1a2b3c), where
    # stripping only its digits would leave letters that differ from one call to the next.
    r"|(?<![a-z0-9])(?=[a-z0-9]*\d)[a-z0-9]+(?![a-z0-9])",
    re.IGNORECASE,
)


def fingerprint(failure: dict[str, Any]) -> str:
    """A stable hash of provider, model, stage, kind and the message without ids and numbers."""
    message = _ID_LIKE.sub("#", failure["message"])
    message = " ".join(message.split()).lower()
    parts = [failure["provider"], failure["model_name"], failure["stage"],
             failure["error_kind"], message]
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:32]


RESULT_SCHEMA = ResultSchema()
FAILURE_SCHEMA = FailureSchema()
BATCH_SCHEMA = BatchSchema()
RESULTS_QUERY = ResultsQuerySchema()
WINDOW_QUERY = WindowQuerySchema()
# The answers are built through the schemas the OpenAPI document shows.
WRITE_ANSWER = WriteAnswerSchema()
BATCH_ANSWER = BatchAnswerSchema()
STATUS_ANSWER = StatusAnswerSchema()
SUMMARY_ANSWER = SummarySchema()
RUNNER_CONFIG_QUERY = RunnerConfigQuerySchema()
RUNNER_CONFIG_ANSWER = RunnerConfigSchema()
CATALOG_SCHEMA = CatalogSchema()
CATALOG_ANSWER = CatalogAnswerSchema()
