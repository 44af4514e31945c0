"""AnthropicProvider: the real `anthropic` client against the Anthropic simulator, over a socket."""

from __future__ import annotations

import inspect
import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor

import anthropic
import httpx2
import pytest
from marshmallow import ValidationError

import bench_contract as contract
from ingest_app.schemas import ResultSchema
from runner.anthropic_provider import (
    CONTEXT_HINT,
    REQUEST_MODE,
    UNKNOWN_MODEL_HINT,
    WARM_MODEL_ID,
    AnthropicProvider,
)
from runner.anthropic_simulator import AnthropicSimulatorConfig
from runner.failures import classify
from runner.provider import SetupError, get_provider
from runner.records import Profile, Result
from runner.sse_simulator import SSEBehaviour as AnthropicBehaviour
from tests.support.measuring import assert_close, failure_of, result_of

PROFILE = Profile(max_tokens=64)


@pytest.fixture
def provider_for(anthropic_sim):
    """Factory: start a simulator for `models` and return it with a warm provider on it."""
    providers: list[AnthropicProvider] = []
    sleeps: list[float] = []

    def start(models=None, **options):
        sim = anthropic_sim(AnthropicSimulatorConfig(models=models) if models is not None
                            else None)
        options.setdefault("backoff", 0.01)
        options.setdefault("sleep", sleeps.append)
        provider = AnthropicProvider(**options)
        providers.append(provider)
        provider.warm()
        provider.sleeps = sleeps
        return sim, provider

    yield start
    for provider in providers:
        provider.close()





def _assert_figures_match(result: Result, sim, model_id: str) -> None:
    """Figures match the plan, shifted by however late the simulator itself sent each part."""
    plan = sim.config.plan(model_id, PROFILE.max_tokens)
    late = sim.stats()["streams"][result.request_id]
    assert late["max"] < 0.5, "the simulator ran too late for a meaningful check"
    assert_close(result.time_to_first_token, plan.time_to_first_token + late["first_text"])
    assert_close(result.time_to_first_any_token,
                  plan.time_to_first_any_token + late["first_any"])
    assert_close(result.generate_time, plan.generate_time + late["end"])
    assert result.output_tokens == plan.output_tokens
    assert result.visible_output_tokens == plan.visible_output_tokens
    if plan.time_to_64_visible_tokens is not None:
        assert_close(result.time_to_64_visible_tokens_seconds,
                      plan.time_to_64_visible_tokens + late["visible_64"])


# Measuring


def test_figures_match_the_plan_and_block_starts_do_not_stop_the_clock(provider_for):
    # message_start, an empty text block's content_block_start and a ping all come at once,
    # 0.3 s before the first text_delta: none of them is the first token.
    sim, provider = provider_for({"m": AnthropicBehaviour(ttft=0.3, gap=0.02,
                                                          tokens_per_delta=2,
                                                          output_tokens=64)})
    result = result_of(provider.measure("m", PROFILE))
    _assert_figures_match(result, sim, "m")
    assert result.time_to_first_token > 0.29
    assert result.provider == "anthropic"
    assert result.request_mode == REQUEST_MODE
    assert result.stop_reason in ("end_turn", "max_tokens")
    assert result.request_id.startswith("req_")
    assert result.chunk_count == 32
    assert result.reasoning_tokens is None


def test_usage_input_from_message_start_output_from_message_delta(provider_for):
    _, provider = provider_for({"m": AnthropicBehaviour(ttft=0.01, gap=0.005,
                                                        tokens_per_delta=5, output_tokens=40,
                                                        input_tokens=37)})
    result = result_of(provider.measure("m", PROFILE))
    # Deltas of 5 tokens: counting chunks would say 8, usage says 40.
    assert (result.input_tokens, result.output_tokens, result.chunk_count) == (37, 40, 8)
    assert result.token_source == "provider_usage"
    assert result.visible_output_tokens == 40


def test_thinking_deltas_are_reasoning_never_visible(provider_for):
    sim, provider = provider_for({"t": AnthropicBehaviour(ttft=0.1, gap=0.02,
                                                          tokens_per_delta=4,
                                                          reasoning_tokens=16,
                                                          output_tokens=24)})
    result = result_of(provider.measure("t", PROFILE))
    plan = sim.config.plan("t", PROFILE.max_tokens)
    _assert_figures_match(result, sim, "t")
    # First any token at the first thinking_delta; first token at the first text_delta.
    assert result.time_to_first_token - result.time_to_first_any_token == pytest.approx(
        plan.time_to_first_token - plan.time_to_first_any_token, abs=0.03)
    assert result.reasoning_tokens == plan.reasoning_tokens
    # usage's output_tokens counts thinking too; the visible count is the text alone.
    assert result.output_tokens == 40
    assert result.visible_output_tokens == plan.visible_output_tokens < 40
    # Four thinking deltas and six text deltas; the signature_delta is no token.
    assert result.chunk_count == 10
    assert result.misc == {"reasoning_chunks": 4}


def test_a_thinking_block_from_the_worklist_is_sent_and_stored_as_reasoning_effort(
        provider_for):
    from runner.worklist import ModelSettings

    _, provider = provider_for({"t": AnthropicBehaviour(ttft=0.01, gap=0.002,
                                                          reasoning_tokens=8,
                                                          output_tokens=16)})
    sent = []
    provider._http.event_hooks["request"].append(lambda request: sent.append(request))
    settings = ModelSettings(additional_fields={
        "thinking": {"type": "enabled", "budget_tokens": 1024},
        "service_tier": "standard_only",  # a parameter messages.create names
        "top_k_hint": 3,  # one it does not: sent in the body as it is
        "max_tokens": 9999})  # the profile's budget stands
    result = result_of(provider.measure("t", PROFILE, settings))
    (request,) = sent
    body = json.loads(request.content)
    assert body["thinking"] == {"type": "enabled", "budget_tokens": 1024}
    assert (body["service_tier"], body["top_k_hint"]) == ("standard_only", 3)
    assert body["max_tokens"] == PROFILE.max_tokens
    assert result.reasoning_effort == "budget_tokens=1024"
    assert result.to_payload()["reasoning_effort"] == "budget_tokens=1024"
    # Without settings nothing was asked, and the row says so.
    assert result_of(provider.measure("t", PROFILE)).reasoning_effort is None


def test_thinking_through_the_whole_budget_is_budget_exhausted(provider_for):
    _, provider = provider_for({"t": AnthropicBehaviour(ttft=0.01, gap=0.002,
                                                        reasoning_tokens=80)})
    failure = failure_of(provider.measure("t", PROFILE))
    assert (failure.error_kind, failure.stage, failure.attempts) == ("budget_exhausted",
                                                                     "stream", 1)


def test_the_clock_starts_where_the_request_leaves_not_where_the_call_is_made(provider_for):
    sim, provider = provider_for({"m": AnthropicBehaviour(ttft=0.1, gap=0.01,
                                                          output_tokens=16)})
    # 0.2 s of work inside the call before the request reaches the transport (as the SDK's
    # own request building, only longer): a clock started at the call would carry it.
    provider._http.event_hooks["request"].insert(0, lambda request: time.sleep(0.2))
    result = result_of(provider.measure("m", PROFILE))
    _assert_figures_match(result, sim, "m")


def test_no_temperature_is_sent_on_2026_10_21_and_the_row_says_so(provider_for):
    sim, provider = provider_for({"m": AnthropicBehaviour(ttft=0.01, gap=0.002,
                                                          output_tokens=8)})
    sent = []
    provider._http.event_hooks["request"].append(lambda request: sent.append(request))
    assert provider.api_version == "2026-10-21"
    result = result_of(provider.measure("m", Profile(max_tokens=64, temperature=0.1)))
    # The simulator refuses a sampling parameter on this version, so a result proves none
    # was sent; the row stores what was sent.
    assert result.temperature is None
    assert result.to_payload()["temperature"] is None
    (request,) = sent
    assert "temperature" not in json.loads(request.content)
    assert request.headers["anthropic-version"] == "2026-10-21"
    assert request.headers["authorization"] == f"Bearer {sim.config.api_key}"
    assert "x-api-key" not in request.headers


@pytest.mark.parametrize(("version", "header", "accepted"), [
    ("2026-10-21", "bearer", True),
    ("2023-06-01", "x-api-key", True),
    ("2023-06-01", "bearer", False),  # the old version reads x-api-key only
    ("2024-13-99", "bearer", False),  # no such version
])
def test_the_simulator_checks_the_key_header_its_version_uses(anthropic_sim, version, header,
                                                              accepted):
    sim = anthropic_sim(AnthropicSimulatorConfig(models={"m": AnthropicBehaviour()}))
    key = sim.config.api_key
    auth = {"Authorization": f"Bearer {key}"} if header == "bearer" else {"x-api-key": key}
    answer = httpx2.get(f"{sim.url}/v1/models", headers={"anthropic-version": version, **auth})
    if accepted:
        assert answer.status_code == 200
        assert [m["id"] for m in answer.json()["data"]] == ["m"]
    else:
        assert answer.status_code in (400, 401)
        assert answer.json()["error"]["type"] in ("invalid_request_error",
                                                  "authentication_error")


def test_the_installed_client_refuses_temperature_and_the_api_refuses_it_in_the_body(
        anthropic_sim):
    sim = anthropic_sim(AnthropicSimulatorConfig(models={
        "m": AnthropicBehaviour(ttft=0.01, gap=0.002, output_tokens=8)}))
    client = anthropic.Anthropic(api_key=sim.config.api_key, base_url=sim.url, max_retries=0)
    request = {"model": "m", "max_tokens": 8, "stream": True,
               "messages": [{"role": "user", "content": "hi"}]}
    try:
        assert "temperature" not in inspect.signature(client.messages.create).parameters
        with pytest.raises(TypeError):
            client.messages.create(**request, temperature=0.1)
        with pytest.raises(anthropic.BadRequestError) as refused:
            client.messages.create(**request, extra_body={"temperature": 0.1})
        assert refused.value.type == "invalid_request_error"
        assert "temperature" in refused.value.api_message
    finally:
        client.close()


# Failures


@pytest.mark.parametrize(("error", "kind", "status", "code", "retried"), [
    ("rate_limit", "throttled", 429, "rate_limit_error", True),
    ("overloaded", "transient", 529, "overloaded_error", True),
    ("api_error", "transient", 500, "api_error", True),
    ("permission", "auth", 403, "permission_error", False),
    ("billing", "auth", 402, "billing_error", False),
    ("prompt_too_long", "invalid_request", 400, "invalid_request_error", False),
    ("request_too_large", "invalid_request", 413, "request_too_large", False),
])
def test_refused_calls_are_classified_with_the_vendor_error_type(provider_for, error, kind,
                                                                  status, code, retried):
    _, provider = provider_for({"m": AnthropicBehaviour(error=error, retry_after=None)},
                               retries=2)
    failure = failure_of(provider.measure("m", PROFILE))
    assert (failure.error_kind, failure.http_status, failure.provider_error_code) == (
        kind, status, code)
    assert failure.stage == "call"
    assert failure.request_id.startswith("req_")
    assert failure.attempts == (3 if retried else 1)


def test_429_waits_at_least_its_retry_after_then_succeeds(provider_for):
    _, provider = provider_for({"m": AnthropicBehaviour(ttft=0.01, gap=0.002, output_tokens=8,
                                                        error="rate_limit", retry_after=7,
                                                        fail_first_calls=1)})
    result = result_of(provider.measure("m", PROFILE))
    assert result.attempts == 2
    assert provider.sleeps == [7.0]  # not the 0.02 s the backoff alone would wait
    (earlier,) = result.misc["earlier_attempts"]
    assert (earlier["error_kind"], earlier["code"], earlier["http_status"],
            earlier["retry_after_seconds"]) == ("throttled", "rate_limit_error", 429, 7.0)


def test_a_retry_after_past_the_call_cap_ends_the_model_at_once(provider_for):
    _, provider = provider_for({"m": AnthropicBehaviour(error="rate_limit", retry_after=30)},
                               call_timeout=5)
    failure = failure_of(provider.measure("m", PROFILE))
    assert (failure.error_kind, failure.attempts) == ("throttled", 1)
    assert failure.misc["retry_after_seconds"] == 30.0
    assert provider.sleeps == []


def test_unknown_model_is_unavailable_with_a_hint(provider_for):
    _, provider = provider_for({"m": AnthropicBehaviour()})
    failure = failure_of(provider.measure("claude-does-not-exist", PROFILE))
    assert (failure.error_kind, failure.http_status, failure.provider_error_code) == (
        "model_unavailable", 404, "not_found_error")
    assert failure.misc["hint"] == UNKNOWN_MODEL_HINT


def test_prompt_too_long_is_an_invalid_request_with_a_hint(provider_for):
    _, provider = provider_for({"m": AnthropicBehaviour(error="prompt_too_long")})
    failure = failure_of(provider.measure("m", PROFILE))
    assert "prompt is too long" in failure.message
    assert failure.misc["hint"] == CONTEXT_HINT


def test_mid_stream_error_event_keeps_its_type_from_the_body(provider_for):
    sim, provider = provider_for({"m": AnthropicBehaviour(ttft=0.01, gap=0.002,
                                                          stream_error="overloaded_error",
                                                          error_after_deltas=3)}, retries=0)
    failure = failure_of(provider.measure("m", PROFILE))
    assert (failure.error_kind, failure.stage, failure.provider_error_code) == (
        "transient", "stream", "overloaded_error")
    assert failure.exc_type == "APIStatusError"
    assert failure.http_status is None  # the stream's 200 is no failure status
    assert failure.request_id.startswith("req_")
    # What the client raises: a status error with the stream's status and the type in the body.
    client = anthropic.Anthropic(api_key=sim.config.api_key, base_url=sim.url, max_retries=0)
    try:
        with pytest.raises(anthropic.APIStatusError) as raised:
            for _ in client.messages.create(model="m", max_tokens=8, stream=True,
                                            messages=[{"role": "user", "content": "hi"}]):
                pass
        assert (raised.value.status_code, raised.value.type) == (200, "overloaded_error")
    finally:
        client.close()


def test_mid_stream_error_then_success_reports_only_the_last_attempt(provider_for):
    sim, provider = provider_for({"m": AnthropicBehaviour(ttft=0.05, gap=0.01,
                                                          output_tokens=16,
                                                          stream_error="api_error",
                                                          error_after_deltas=2,
                                                          fail_first_calls=1)})
    result = result_of(provider.measure("m", PROFILE))
    assert result.attempts == 2
    assert result.misc["earlier_attempts"][0]["code"] == "api_error"
    _assert_figures_match(result, sim, "m")


def test_cut_connection_is_a_transient_failure_in_the_stream(provider_for):
    _, provider = provider_for({"m": AnthropicBehaviour(ttft=0.01, gap=0.002,
                                                        cut_after_deltas=4)}, retries=1)
    failure = failure_of(provider.measure("m", PROFILE))
    assert (failure.error_kind, failure.stage, failure.attempts) == ("transient", "stream", 2)
    assert failure.exc_type == "RemoteProtocolError"


def test_stream_without_message_stop_is_a_failure_not_a_result(provider_for):
    _, provider = provider_for({"m": AnthropicBehaviour(ttft=0.01, gap=0.002,
                                                        no_finish=True)}, retries=1)
    failure = failure_of(provider.measure("m", PROFILE))
    assert (failure.error_kind, failure.stage, failure.exc_type) == (
        "transient", "stream", "IncompleteStream")
    assert "message_stop" in failure.message
    assert failure.attempts == 2


def test_stop_reason_without_message_stop_is_a_failure_too(provider_for):
    _, provider = provider_for({"m": AnthropicBehaviour(
        ttft=0.01, gap=0.002, options={"no_message_stop": True})}, retries=0)
    failure = failure_of(provider.measure("m", PROFILE))
    assert (failure.error_kind, failure.exc_type) == ("transient", "IncompleteStream")
    assert "message_stop" in failure.message


def test_stall_before_headers_is_a_timeout(provider_for):
    _, provider = provider_for({"m": AnthropicBehaviour(options={"stall_before_headers": 5})},
                               read_timeout=0.5, retries=0)
    failure = failure_of(provider.measure("m", PROFILE))
    assert (failure.error_kind, failure.stage, failure.exc_type) == (
        "timeout", "call", "APITimeoutError")


def test_connection_refused_classifies_as_transient():
    client = anthropic.Anthropic(api_key="x" * 20, base_url="http://127.0.0.1:9", max_retries=0)
    try:
        with pytest.raises(anthropic.APIConnectionError) as raised:
            client.messages.create(model="m", max_tokens=1,
                                   messages=[{"role": "user", "content": "."}])
    finally:
        client.close()
    assert classify(raised.value).kind == "transient"


# Set-up, connections, the key


def test_wrong_key_is_an_auth_setup_error_without_the_key(anthropic_sim, monkeypatch):
    sim = anthropic_sim(AnthropicSimulatorConfig(models={"m": AnthropicBehaviour()}))
    wrong = "sk-ant-api03-" + "Q" * 40
    monkeypatch.setenv("ANTHROPIC_API_KEY", wrong)
    provider = get_provider("anthropic", region=None)
    with pytest.raises(SetupError) as refused:
        provider.warm()
    assert refused.value.kind == "auth"
    assert "ANTHROPIC_API_KEY" in str(refused.value)
    assert wrong not in str(refused.value)
    assert sim.stats()["calls"].get(WARM_MODEL_ID, 0) == 0  # refused before the model


def test_missing_key_is_a_setup_error_and_nothing_is_called(anthropic_sim, monkeypatch):
    sim = anthropic_sim(AnthropicSimulatorConfig(models={"m": AnthropicBehaviour()}))
    monkeypatch.delenv("ANTHROPIC_API_KEY")
    with pytest.raises(SetupError) as missing:
        AnthropicProvider().warm()
    assert missing.value.kind == "auth"
    assert "ANTHROPIC_API_KEY" in str(missing.value)
    assert sim.stats()["connections"] == 0


def test_one_warm_connection_per_slot_before_any_timer(provider_for):
    models = {f"m{i}": AnthropicBehaviour(ttft=0.2, gap=0.01, output_tokens=16)
              for i in range(3)}
    sim, provider = provider_for(models, concurrency=3)
    warmed = sim.stats()
    assert warmed["connections"] == 3
    assert warmed["calls"][WARM_MODEL_ID] >= 3
    with ThreadPoolExecutor(max_workers=3) as pool:
        results = list(pool.map(lambda m: result_of(provider.measure(m, PROFILE)), models))
    # Measured at once on the three warm connections: none opened inside a timer.
    assert sim.stats()["connections"] == 3
    for model_id, result in zip(models, results, strict=True):
        _assert_figures_match(result, sim, model_id)


def test_the_key_is_in_no_log_line_and_no_record(provider_for, caplog):
    caplog.set_level(logging.DEBUG)
    sim, provider = provider_for({"ok": AnthropicBehaviour(ttft=0.01, gap=0.002,
                                                           output_tokens=8),
                                  "bad": AnthropicBehaviour(error="permission")})
    records = [provider.measure("ok", PROFILE), provider.measure("bad", PROFILE),
               provider.measure("nope", PROFILE)]
    text = caplog.text + "".join(json.dumps(r.to_payload()) for r in records)
    assert "HTTP Request" in caplog.text  # the SDK's debug lines were captured
    assert sim.config.api_key not in text


def test_catalogue_lists_the_models_the_key_can_call(provider_for):
    _, provider = provider_for({"claude-a": AnthropicBehaviour(name="Claude A"),
                                "claude-b": AnthropicBehaviour()})
    entries = provider.catalogue()
    assert [(e.model_id, e.name, e.vendor) for e in entries] == [
        ("claude-a", "Claude A", "Anthropic"), ("claude-b", "claude-b", "Anthropic")]


def test_rows_pass_the_same_schema_as_bedrock_and_their_mode_must_fit_the_provider(
        provider_for):
    _, provider = provider_for({"t": AnthropicBehaviour(ttft=0.01, gap=0.002,
                                                        reasoning_tokens=8, output_tokens=80)})
    payload = result_of(provider.measure("t", PROFILE)).to_payload()
    assert set(payload) <= set(contract.RESULT_FIELDS)
    assert (payload["provider"], payload["request_mode"]) == ("anthropic",
                                                              "anthropic_messages_stream")
    ResultSchema().load(payload)
    with pytest.raises(ValidationError, match="request_mode"):
        ResultSchema().load({**payload, "request_mode": contract.BEDROCK_MODE})


def test_get_provider_builds_it_from_the_environment(anthropic_sim):
    sim = anthropic_sim(AnthropicSimulatorConfig(models={
        "m": AnthropicBehaviour(ttft=0.01, gap=0.002, output_tokens=8)}))
    provider = get_provider("anthropic", region=None, concurrency=2, call_timeout=30,
                            retries=1)
    try:
        assert isinstance(provider, AnthropicProvider)
        assert (provider.concurrency, provider.call_timeout, provider.retries) == (2, 30, 1)
        provider.warm()
        assert sim.stats()["connections"] == 2
        assert result_of(provider.measure("m", PROFILE)).provider == "anthropic"
    finally:
        provider.close()

