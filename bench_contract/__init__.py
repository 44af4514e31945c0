"""The payload shape the runner sends and the ingest app accepts: one home for both sides.

Field names, their order, the closed vocabularies and the size limits of the
contract live here. The ingest app's marshmallow schemas and the runner's
records are both checked against these tuples by the test suite, so neither
side can add, drop or rename a field without the other noticing.
"""

from __future__ import annotations

import re
from functools import cache

# Bump when the definition of any measured field changes (docs/contract.md section 3).
# 2: decode_tokens_per_second leaves out the first delta's tokens (the stream's
#    mean per delta), not just one token; see docs/contract.md section 3, "Metric definitions".
METRIC_VERSION = 2

# The dashboard's name for the shape of a results row: 2 is the row with the generated and
# visible token fields below. Not ours to bump; our own definitions are METRIC_VERSION.
METRICS_SCHEMA_VERSION = 2
# How a result was measured, named as the dashboard's other writers name theirs
# (<vendor API>_stream). A result's request_mode must be one its provider speaks.
BEDROCK_MODE = "bedrock_converse_stream"
OPENAI_CHAT_MODE = "openai_chat_completions_stream"
ANTHROPIC_MODE = "anthropic_messages_stream"
REQUEST_MODES = (BEDROCK_MODE, OPENAI_CHAT_MODE, ANTHROPIC_MODE)
# Delivered TPS is VISIBLE_TOKEN_MARK / time_to_64_visible_tokens_seconds.
VISIBLE_TOKEN_MARK = 64

# Bump when what a profile asks for, or how a sample is stamped and routed, changes
# (docs/contract.md section 3): protocol_version on every result.
PROTOCOL_VERSION = 1

# The names stored as `provider`: the dashboard's canonical provider ids (its URL slugs), so
# a row lands on the same line as the other writers' rows of that host. vllm and tgi name
# self-hosted OpenAI-compatible servers. A new host is a new line here, on both sides.
PROVIDER_REQUEST_MODES: dict[str, tuple[str, ...]] = {
    "bedrock": (BEDROCK_MODE,),
    "anthropic": (ANTHROPIC_MODE,),
    "openai": (OPENAI_CHAT_MODE,),
    "groq": (OPENAI_CHAT_MODE,),
    "together": (OPENAI_CHAT_MODE,),
    "fireworks": (OPENAI_CHAT_MODE,),
    "deepinfra": (OPENAI_CHAT_MODE,),
    "cerebras": (OPENAI_CHAT_MODE,),
    "vllm": (OPENAI_CHAT_MODE,),
    "tgi": (OPENAI_CHAT_MODE,),
}
PROVIDERS = tuple(PROVIDER_REQUEST_MODES)

# The published protocol (docs/contract.md section 3): the exact request years of history
# were measured with, compared under benchmark_profile_id. Never change one in place;
# a new request gets a new id.
DEFAULT_PROFILE_ID = "cloud-default-v1"
DEFAULT_MAX_TOKENS = 64
DEFAULT_TEMPERATURE = 0.1
DEFAULT_PROMPT = "Tell a long and happy story about the history of the world."
LONG_PROFILE_ID = "cloud-long-v1"
REASONING_PROFILE_ID = "cloud-reasoning-v1"
# id -> (maxTokens, sample_role); every one sends DEFAULT_PROMPT at DEFAULT_TEMPERATURE.
# cloud-long-v1 gives the dashboard steady-state speed against the 64-token runs; the
# reasoning profile measures models that spend 64 tokens thinking, as shadow samples.
PROFILES = {
    DEFAULT_PROFILE_ID: (DEFAULT_MAX_TOKENS, "published"),
    LONG_PROFILE_ID: (512, "published"),
    REASONING_PROFILE_ID: (2048, "shadow"),
}

MAX_BATCH_ITEMS = 500

# The runner's worklist (GET /runner-config) and its catalogue post (POST /ingest/catalog),
# docs/contract.md section 7: the answer's shape version, and the most catalogue entries a
# post may hold (Bedrock lists a few hundred models and inference profiles).
RUNNER_CONFIG_SCHEMA_VERSION = 1
CATALOG_KINDS = ("foundation", "inference-profile")
MAX_CATALOG_MODELS = 5000

MAX_BODY_BYTES = 1024 * 1024
MAX_MISC_BYTES = 16 * 1024
MAX_MESSAGE_CHARS = 4000
MAX_FUTURE_SECONDS = 600

TOKEN_SOURCES = ("provider_usage", "stream_chunks")
# Who may see a result: published samples reach the public collection and charts; shadow
# (a protocol under trial) and probe (checks, diagnostics) go to the probe collection.
PUBLISHED = "published"
SAMPLE_ROLES = (PUBLISHED, "shadow", "probe")
STAGES = ("setup", "call", "stream", "validate", "deliver")
ERROR_KINDS = (
    "throttled",
    "auth",
    "model_unavailable",
    "invalid_request",
    "transient",
    "timeout",
    "budget_exhausted",
    "unknown",
)

RESULT_REQUIRED = (
    "result_id",
    "provider",
    "model_name",
    "run_ts",
    "output_tokens",
    "generate_time",
    "tokens_per_second",
)
RESULT_OPTIONAL = (
    "region",
    "gen_ts",
    "benchmark_profile_id",
    "requested_tokens",
    "temperature",
    "input_tokens",
    "token_source",
    "time_to_first_token",
    "time_to_first_any_token",
    "decode_tokens_per_second",
    "server_latency_ms",
    "stop_reason",
    "request_id",
    "attempts",
    "chunk_count",
    "reasoning_tokens",
    "reasoning_effort",
    "metrics_schema_version",
    "request_mode",
    "ttft_available",
    "generated_output_tokens",
    "visible_output_tokens",
    "generated_tokens_per_second",
    "visible_tokens_per_second",
    "time_to_64_visible_tokens_seconds",
    "metric_version",
    "protocol_version",
    "sample_role",
    "runner_version",
    "misc",
)
RESULT_FIELDS = RESULT_REQUIRED + RESULT_OPTIONAL

ERROR_REQUIRED = (
    "error_id",
    "provider",
    "model_name",
    "ts",
    "stage",
    "error_kind",
    "message",
)
ERROR_OPTIONAL = (
    "region",
    "benchmark_profile_id",
    "exc_type",
    "provider_error_code",
    "http_status",
    "request_id",
    "attempts",
    "runner_version",
    "misc",
)
ERROR_FIELDS = ERROR_REQUIRED + ERROR_OPTIONAL

# Fields the server adds; a client that sends them gets a 422.
# withheld_reason: on a result the model gate kept off the public collection (section 5).
SERVER_RESULT_FIELDS = ("received_at", "runner_id", "withheld_reason")
SERVER_ERROR_FIELDS = ("received_at", "runner_id", "fingerprint")

# An AWS access key id (user, session, role or account-root form) in any text: both sides
# redact it before a message is logged, sent or stored (docs/contract.md section 4).
AWS_KEY_ID = re.compile(r"\b(?:AKIA|ASIA|AROA|AIDA)[A-Z0-9]{16}\b")
# The shapes of the hosted vendors' API keys (OpenAI and Anthropic sk-..., Groq gsk_...,
# Fireworks fw_..., Cerebras csk-...) in any text: both sides redact them as they do AWS ids.
VENDOR_API_KEY = re.compile(r"\b(?:sk-|gsk_|fw_|csk-)[A-Za-z0-9_-]{16,}")

PACKAGE = "bench-ingest"


@cache
def installed_version() -> str:
    """The installed bench-ingest version, looked up on first call (0.0.0+unknown if none)."""
    # importlib.metadata costs ~20 ms at import: the runner's start-up must not pay it.
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(PACKAGE)
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "0.0.0+unknown"
