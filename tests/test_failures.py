"""Classification of what botocore and urllib3 raise into the contract's failure kinds."""

from __future__ import annotations

import pytest
from botocore.eventstream import ChecksumMismatch
from botocore.exceptions import (
    ClientError,
    ConnectTimeoutError,
    EndpointConnectionError,
    EventStreamError,
    NoCredentialsError,
    ReadTimeoutError,
)
from urllib3.exceptions import ProtocolError
from urllib3.exceptions import ReadTimeoutError as RawReadTimeoutError

import bench_contract as contract
from runner.failures import CallDeadlineExceeded, classify, profile_hint, redact


def _client_error(code: str, message: str, status: int = 400) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": message},
                        "ResponseMetadata": {"HTTPStatusCode": status, "RequestId": "req-1"}},
                       "ConverseStream")


@pytest.mark.parametrize(("code", "status", "kind"), [
    ("ThrottlingException", 429, "throttled"),
    ("ServiceQuotaExceededException", 400, "throttled"),
    ("AccessDeniedException", 403, "auth"),
    ("UnrecognizedClientException", 403, "auth"),
    ("ExpiredTokenException", 400, "auth"),
    ("ResourceNotFoundException", 404, "model_unavailable"),
    ("ValidationException", 400, "invalid_request"),
    ("ModelNotReadyException", 429, "transient"),
    ("ServiceUnavailableException", 503, "transient"),
    ("InternalServerException", 500, "transient"),
    ("ModelErrorException", 424, "transient"),
    ("ModelTimeoutException", 408, "timeout"),
])
def test_error_codes_before_the_stream_map_to_kinds(code, status, kind):
    c = classify(_client_error(code, "something", status))
    assert (c.kind, c.code, c.http_status, c.request_id) == (kind, code, status, "req-1")
    assert c.kind in contract.ERROR_KINDS
    assert c.retryable == (kind in {"throttled", "transient", "timeout"})


@pytest.mark.parametrize(("code", "kind"), [
    ("throttlingException", "throttled"),
    ("internalServerException", "transient"),
    ("modelStreamErrorException", "transient"),
    ("validationException", "invalid_request"),
    ("serviceUnavailableException", "transient"),
])
def test_camel_case_mid_stream_exceptions_map_to_kinds(code, kind):
    exc = EventStreamError({"Error": {"Code": code, "Message": "mid-stream"}}, "ConverseStream")
    c = classify(exc)
    assert (c.kind, c.exc_type, c.code) == (kind, "EventStreamError", code)


def test_end_of_life_message_is_model_unavailable_whatever_the_code():
    c = classify(_client_error("ValidationException",
                               "This model version has reached the end of its life."))
    assert c.kind == "model_unavailable"
    assert not c.retryable


def test_on_demand_refusal_is_invalid_request_with_a_profile_hint():
    c = classify(_client_error(
        "ValidationException",
        "Invocation of model ID anthropic.claude-x with on-demand throughput isn\u2019t "
        "supported. Retry your request with the ID or ARN of an inference profile."),
        model_id="anthropic.claude-x")
    assert c.kind == "invalid_request"
    assert "us.anthropic.claude-x" in c.hint
    assert c.message.endswith(f"Hint: {c.hint}.")


def test_profile_hint_never_doubles_a_region_prefix():
    assert "us.us." not in profile_hint("us.anthropic.claude-x")
    assert "'us.anthropic.claude-x'" in profile_hint("anthropic.claude-x")


@pytest.mark.parametrize(("exc", "kind"), [
    (ReadTimeoutError(endpoint_url="http://127.0.0.1:1/model/m/converse-stream"), "timeout"),
    (ConnectTimeoutError(endpoint_url="http://127.0.0.1:1"), "timeout"),
    (RawReadTimeoutError(None, "/model/m/converse-stream", "Read timed out."), "timeout"),
    (CallDeadlineExceeded("the stream was still running after 120 s"), "timeout"),
    (ChecksumMismatch(1, 2), "transient"),
    (EndpointConnectionError(endpoint_url="http://127.0.0.1:1"), "transient"),
    (ProtocolError("Connection broken: IncompleteRead"), "transient"),
    (ConnectionResetError(104, "Connection reset by peer"), "transient"),
    (NoCredentialsError(), "auth"),
])
def test_sdk_and_socket_exceptions_map_by_class(exc, kind):
    c = classify(exc)
    assert c.kind == kind
    assert c.exc_type == type(exc).__name__
    assert c.message


@pytest.mark.parametrize(("status", "kind"), [
    (429, "throttled"), (403, "auth"), (404, "model_unavailable"), (504, "timeout"),
    (502, "transient"), (400, "invalid_request"),
])
def test_unknown_codes_fall_back_to_the_http_status(status, kind):
    assert classify(_client_error("SomethingNewException", "new", status)).kind == kind


@pytest.mark.parametrize(("message", "kind"), [
    ("Rate exceeded", "throttled"),
    ("the operation timed out", "timeout"),
    ("Access denied for this account", "auth"),
    ("something odd", "unknown"),
])
def test_message_text_is_the_last_resort(message, kind):
    assert classify(RuntimeError(message)).kind == kind


def test_secrets_echoed_in_a_message_are_redacted():
    text = ("The Canonical String for this request should have been 'x-amz-security-token:"
            "IQoJb3JpZ2luX2VjEJr//////////wEaCXVz' Credential=AKIAIOSFODNN7EXAMPLE/2026 "
            "Signature=0123abcdef")
    cleaned = classify(_client_error("InvalidSignatureException", text, 403)).message
    assert "IQoJb3JpZ2luX2VjEJr" not in cleaned
    assert "AKIAIOSFODNN7EXAMPLE" not in cleaned
    assert "0123abcdef" not in cleaned
    assert redact("plain message") == "plain message"


@pytest.mark.parametrize("key", [
    "sk-proj-" + "Ab3" * 12, "sk-ant-api03-" + "x9Y" * 10, "gsk_" + "Q7w" * 12,
    "fw_" + "3Jk" * 8, "csk-" + "p0o" * 10,
])
def test_vendor_api_keys_and_bearer_headers_are_redacted(key):
    text = (f"Incorrect API key provided: {key}. headers={{'Authorization': 'Bearer {key}', "
            f"'x-api-key': '{key}'}}")
    cleaned = redact(text)
    assert key not in cleaned
    assert key[:12] not in cleaned
    assert redact("Bearer tokens are explained in the docs") == (
        "Bearer tokens are explained in the docs")


@pytest.mark.parametrize(("code", "status", "message", "kind"), [
    ("ThrottlingException", 429,
     "Too many requests: capacity that is no longer available was reclaimed.", "throttled"),
    ("ServiceUnavailableException", 503,
     "The endpoint is no longer available for a moment; try again.", "transient"),
    ("AccessDeniedException", 403,
     "Invocation with on-demand throughput isn't supported for this account.", "auth"),
])
def test_exception_name_decides_before_the_message_text(code, status, message, kind):
    # docs/contract.md section 4: name and status first, message text only as a fallback.
    c = classify(_client_error(code, message, status), model_id="vendor.model-v1")
    assert c.kind == kind
    assert c.hint is None


def test_end_of_life_message_refines_a_mid_stream_validation_error():
    exc = EventStreamError({"Error": {"Code": "validationException",
                                      "Message": "This model version has reached the end of "
                                                 "its life."}}, "ConverseStream")
    assert classify(exc).kind == "model_unavailable"


def _http_response(status: int, headers: dict[str, str] | None = None):
    import httpx2

    request = httpx2.Request("POST", "https://api.example.test/v1/chat/completions")
    return httpx2.Response(status, headers=headers or {}, request=request)


def test_a_cut_connection_is_transient_whichever_client_raised_it():
    import httpx2
    import openai

    request = httpx2.Request("POST", "https://api.example.test/v1/messages")
    # httpx's own error (openai 1.x and anthropic let it escape) and openai 3.x's wrapper.
    for exc in (httpx2.RemoteProtocolError("peer closed connection without sending complete "
                                           "message body", request=request),
                openai.APIConnectionError(request=request)):
        c = classify(exc)
        assert (c.kind, c.retryable) == ("transient", True), type(exc)


def test_vendor_status_errors_keep_their_code_status_request_id_and_retry_after():
    import openai

    response = _http_response(429, {"x-request-id": "req_1", "retry-after": "7"})
    exc = openai.RateLimitError("Rate limit reached", response=response,
                                body={"message": "Rate limit reached", "type": "requests",
                                      "code": "rate_limit_exceeded"})
    c = classify(exc)
    assert (c.kind, c.code, c.http_status, c.request_id, c.retry_after) == (
        "throttled", "rate_limit_exceeded", 429, "req_1", 7.0)


@pytest.mark.parametrize(("status", "error_type", "kind"), [
    (529, "overloaded_error", "transient"),
    (200, "overloaded_error", "transient"),  # a mid-stream error: only the body says what
    (401, "authentication_error", "auth"),
    (404, "not_found_error", "model_unavailable"),
    (400, "invalid_request_error", "invalid_request"),
])
def test_anthropic_errors_are_classified_by_the_type_in_their_body(status, error_type, kind):
    import anthropic

    body = {"type": "error", "error": {"type": error_type, "message": "m"}}
    exc = anthropic.APIStatusError("m", response=_http_response(status, {"request-id": "r2"}),
                                   body=body)
    c = classify(exc)
    assert (c.kind, c.code, c.request_id) == (kind, error_type, "r2")
