"""Classify what went wrong in a call into the failure kinds of docs/contract.md section 4.

The SDK's exception name and error code decide first, then the HTTP status, and
only then the message text. No SDK import here: exceptions are recognised by the
names in their class hierarchy and by the attributes they carry, so the same
rules hold for botocore's wrappers, the raw urllib3 and httpx errors that escape
while a stream is being read, and the openai and anthropic clients' errors (a
`status_code`, a JSON `body` whose error has a `code` or `type`, an httpx response
whose headers hold the request id and `Retry-After`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import bench_contract as contract

RETRYABLE_KINDS = frozenset({"throttled", "transient", "timeout"})


class CallDeadlineExceeded(TimeoutError):
    """The runner's own cap on one call was reached while the stream was still going."""


@dataclass(frozen=True)
class Classification:
    """What a failed call was, in the contract's words."""

    kind: str
    message: str
    exc_type: str
    code: str | None = None
    http_status: int | None = None
    request_id: str | None = None
    hint: str | None = None
    retry_after: float | None = None  # seconds the server asked for (Retry-After)

    @property
    def retryable(self) -> bool:
        """Whether another attempt may succeed (throttling, a transient fault, a timeout)."""
        return self.kind in RETRYABLE_KINDS


# Error codes, lower-cased without the "Exception" suffix; mid-stream codes are camelCase.
_CODE_KINDS = {
    "throttling": "throttled",
    "toomanyrequests": "throttled",
    "throttled": "throttled",
    "requestlimitexceeded": "throttled",
    "servicequotaexceeded": "throttled",
    "limitexceeded": "throttled",
    "accessdenied": "auth",
    "unrecognizedclient": "auth",
    "invalidsignature": "auth",
    "signaturedoesnotmatch": "auth",
    "incompletesignature": "auth",
    "expiredtoken": "auth",
    "invalidclienttokenid": "auth",
    "missingauthenticationtoken": "auth",
    "unauthorized": "auth",
    "resourcenotfound": "model_unavailable",
    "validation": "invalid_request",
    "serialization": "invalid_request",
    "badrequest": "invalid_request",
    "modelnotready": "transient",
    "serviceunavailable": "transient",
    "internalserver": "transient",
    "internalfailure": "transient",
    "modelerror": "transient",
    "modelstreamerror": "transient",
    "modeltimeout": "timeout",
    "requesttimeout": "timeout",
    # OpenAI-compatible error codes and types, and Anthropic's error types.
    "rate_limit_exceeded": "throttled",
    "rate_limit_error": "throttled",
    "tokens": "throttled",
    "requests": "throttled",
    "invalid_api_key": "auth",
    "authentication_error": "auth",
    "permission_error": "auth",
    "permission_denied": "auth",
    "model_not_found": "model_unavailable",
    "not_found_error": "model_unavailable",
    "model_not_available": "model_unavailable",
    "context_length_exceeded": "invalid_request",
    "string_above_max_length": "invalid_request",
    "invalid_request_error": "invalid_request",
    "request_too_large": "invalid_request",
    "server_error": "transient",
    "api_error": "transient",
    "overloaded_error": "transient",
    "service_unavailable_error": "transient",
    "timeout_error": "timeout",
    "billing_error": "auth",  # the key's account cannot pay: fixed where the key is
}

# Exception class names (anywhere in the hierarchy), most specific first by MRO order.
_NAME_KINDS = {
    "CallDeadlineExceeded": "timeout",
    "APITimeoutError": "timeout",
    "ReadTimeoutError": "timeout",
    "ConnectTimeoutError": "timeout",
    "ReadTimeout": "timeout",
    "ConnectTimeout": "timeout",
    "TimeoutError": "timeout",
    "timeout": "timeout",
    "NoCredentialsError": "auth",
    "PartialCredentialsError": "auth",
    "CredentialRetrievalError": "auth",
    "TokenRetrievalError": "auth",
    "UnauthorizedSSOTokenError": "auth",
    "ParamValidationError": "invalid_request",
    "NoRegionError": "invalid_request",
    "ChecksumMismatch": "transient",
    "ParserError": "transient",
    "EndpointConnectionError": "transient",
    "ConnectionClosedError": "transient",
    "ResponseStreamingError": "transient",
    "IncompleteReadError": "transient",
    "IncompleteRead": "transient",
    "ProtocolError": "transient",
    "HTTPClientError": "transient",
    "ConnectionError": "transient",
    "APIConnectionError": "transient",
    "IncompleteStream": "transient",
}

_REFINABLE_KINDS = frozenset({"invalid_request", "model_unavailable", "unknown"})
_END_OF_LIFE = re.compile(r"end[ -]of[ -](its )?life|no longer (available|supported)", re.I)
_ON_DEMAND = re.compile(r"on-demand throughput is(n['\u2019]t| not) supported", re.I)
_TEXT_KINDS = (
    (re.compile(r"throttl|too many requests|rate exceeded", re.I), "throttled"),
    (re.compile(r"timed? ?out", re.I), "timeout"),
    (re.compile(r"access denied|not authori[sz]ed|forbidden", re.I), "auth"),
)
_SECRETS = (
    re.compile(r"(x-amz-security-token[:=]\s*)\S+", re.I),
    # botocore's debug lines print the headers as a dict: 'X-Amz-Security-Token': b'...'
    re.compile(r"(x-amz-security-token['\"]?\s*[:=,]\s*b?['\"])[^'\"]+", re.I),
    re.compile(r"(Credential=)[^/\s,'\"]+", re.I),
    re.compile(r"(Signature=)[0-9a-f]+", re.I),
    # An Authorization header an HTTP client's debug line or error quotes, and the
    # header Anthropic's older clients send the key in.
    re.compile(r"(\b(?:Bearer|Basic)\s+)[A-Za-z0-9._~+/=-]{8,}", re.I),
    re.compile(r"(x-api-key['\"]?\s*[:=,]\s*b?['\"]?)[^'\"\s,}]+", re.I),
)
_UNKNOWN_MODEL = re.compile(r"model identifier is invalid|model not found|"
                            r"could not resolve the foundation model", re.I)
# Bedrock's words, and the OpenAI-compatible and Anthropic codes, for a model id the host
# does not know: the fix is to look the id up.
UNKNOWN_MODEL_HINT = ("check the model id: `bench-runner models` (with the same --provider) "
                      "lists the ids the provider offers")


def profile_hint(model_id: str | None) -> str:
    """The advice for a model that refuses on-demand calls by its bare id."""
    bare = bool(model_id) and not model_id.startswith(("us.", "eu.", "apac.", "global."))
    example = f"us.{model_id}" if bare else "us.<model id>"
    return (f"this model needs an inference profile: use a profile id such as "
            f"'{example}' (bench-runner models lists them)")


def redact(text: str) -> str:
    """Remove session tokens, signatures, access key ids and API keys an SDK message may echo."""
    for pattern in _SECRETS:
        text = pattern.sub(r"\1[redacted]", text)
    text = contract.VENDOR_API_KEY.sub("[redacted]", text)
    return contract.AWS_KEY_ID.sub("[redacted]", text)


def describe(exc: BaseException) -> str:
    """One line for a log or a failure record: type, redacted message, and where it was raised."""
    text = " ".join(str(exc).split())
    where = ""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    if tb is not None:
        code = tb.tb_frame.f_code
        where = f" (at {code.co_filename.rsplit('/', 1)[-1]}:{tb.tb_lineno} in {code.co_name})"
    return redact(f"{type(exc).__name__}: {text}") + where


def classify(exc: BaseException, *, model_id: str | None = None) -> Classification:
    """Classify an exception raised by a call or while reading its stream."""
    names = [cls.__name__ for cls in type(exc).__mro__]
    response: Any = getattr(exc, "response", None)
    if isinstance(response, dict) or response is None:
        error = (response or {}).get("Error") or {}
        meta = (response or {}).get("ResponseMetadata") or {}
        code = error.get("Code") or None
        status = meta.get("HTTPStatusCode")
        request_id = meta.get("RequestId") or None
        sdk_message = error.get("Message") or str(exc) or names[0]
        retry_after = None
    else:  # an HTTP client's response (openai, anthropic: httpx)
        code, sdk_message = _vendor_code(exc), str(exc) or names[0]
        status = getattr(exc, "status_code", None) or getattr(response, "status_code", None)
        if isinstance(status, int) and 200 <= status < 300:
            # An error event inside a stream whose answer was 200: no failure status.
            status = None
        headers = getattr(response, "headers", None) or {}
        request_id = (getattr(exc, "request_id", None) or headers.get("x-request-id")
                      or headers.get("request-id") or None)
        retry_after = _seconds(headers.get("retry-after"))
    if response is None and not code:
        # A mid-stream error: no response of its own, the error object in `body`.
        code = _vendor_code(exc)
    message = redact(str(exc) or sdk_message)

    kind = _kind(names, code, status, sdk_message)
    hint = None
    # The text only refines what the name left open: Bedrock reports a retired model and
    # a profile-only model as ValidationException (or 404); it never overrides e.g. a
    # throttle, which must stay retryable.
    refinable = kind in _REFINABLE_KINDS
    if refinable and _END_OF_LIFE.search(sdk_message):
        kind = "model_unavailable"
    elif refinable and _ON_DEMAND.search(sdk_message):
        kind = "invalid_request"
        hint = profile_hint(model_id)
        message = f"{message} Hint: {hint}."
    elif refinable and (_UNKNOWN_MODEL.search(sdk_message) or code in _UNKNOWN_MODEL_CODES):
        hint = UNKNOWN_MODEL_HINT
        message = f"{message} Hint: {hint}."
    return Classification(kind=kind, message=message, exc_type=names[0],
                          code=str(code)[:128] if code else None,
                          http_status=status if isinstance(status, int) else None,
                          request_id=str(request_id)[:128] if request_id else None, hint=hint,
                          retry_after=retry_after)


_UNKNOWN_MODEL_CODES = frozenset({"model_not_found", "not_found_error"})


def _vendor_code(exc: BaseException) -> str | None:
    """The error code an openai or anthropic error carries, else its error type."""
    code = getattr(exc, "code", None)
    if isinstance(code, str) and code:
        return code
    body = getattr(exc, "body", None)
    if not isinstance(body, dict):
        return None
    inner = body.get("error") if isinstance(body.get("error"), dict) else body
    for key in ("code", "type"):
        value = inner.get(key)
        if isinstance(value, str) and value and value != "error":
            return value
    return None


def _seconds(value: Any) -> float | None:
    """A Retry-After in seconds (the date form is not sent by these APIs); None if absent."""
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        return None
    return seconds if 0 <= seconds < float("inf") else None


def _kind(names: list[str], code: str | None, status: Any, message: str) -> str:
    if code:
        key = code.split(":")[0].strip().lower().removesuffix("exception")
        if key in _CODE_KINDS:
            return _CODE_KINDS[key]
    for name in names:
        if name in _NAME_KINDS:
            return _NAME_KINDS[name]
    if isinstance(status, int):
        if status == 429:
            return "throttled"
        if status in (401, 403):
            return "auth"
        if status == 404:
            return "model_unavailable"
        if status in (408, 504):
            return "timeout"
        if status >= 500:
            return "transient"
        if status in (400, 422):
            return "invalid_request"
    for pattern, kind in _TEXT_KINDS:
        if pattern.search(message):
            return kind
    return "unknown"
