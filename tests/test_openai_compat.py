"""OpenAICompatibleProvider with the real openai client against the simulator, over a socket.

The figures are checked against the simulator's plan (the truth), shifted by however
late the simulator itself sent each part, as tests/test_bedrock.py does for Bedrock.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest

import bench_contract as contract
from ingest_app.schemas import ResultSchema
from runner.openai_compat import OpenAICompatibleProvider
from runner.openai_endpoints import resolve
from runner.openai_simulator import OpenAISimulatorConfig
from runner.provider import SetupError, get_provider
from runner.records import Profile, Result
from runner.sse_simulator import SSEBehaviour
from tests.support.measuring import EARLY, assert_close, failure_of, result_of
from tests.support.simulator import OPENAI_TEST_KEY

PROFILE = Profile(max_tokens=64)


@pytest.fixture
def provider_for(openai_sim):
    """Factory: start a simulator for `models`; a warm `openai` preset provider on it."""
    providers: list[OpenAICompatibleProvider] = []

    def start(models: dict[str, SSEBehaviour] | None = None, name: str = "openai", **options):
        config = OpenAISimulatorConfig(models=models) if models is not None else None
        sim = openai_sim(config)
        options.setdefault("backoff", 0.01)
        provider = OpenAICompatibleProvider(resolve(name), **options)
        providers.append(provider)
        provider.warm()
        return sim, provider

    yield start
    for provider in providers:
        provider.close()





def test_figures_match_the_plan(provider_for):
    sim, provider = provider_for({"m": SSEBehaviour(ttft=0.2, gap=0.02, tokens_per_delta=1,
                                                    output_tokens=80)})
    result = result_of(provider.measure("m", PROFILE))
    plan = sim.config.plan("m", PROFILE.max_tokens)
    late = sim.stats()["streams"][result.request_id]
    assert late["max"] < 0.5, "the simulator ran too late for a meaningful check"
    assert_close(result.time_to_first_token, plan.time_to_first_token + late["first_text"])
    assert_close(result.generate_time, plan.generate_time + late["end"])
    assert_close(result.time_to_64_visible_tokens_seconds,
                  plan.time_to_64_visible_tokens + late["visible_64"])
    assert (result.output_tokens, result.visible_output_tokens) == (64, 64)
    assert result.stop_reason == "length"  # 80 tokens asked of a 64-token budget
    assert (result.provider, result.request_mode) == ("openai",
                                                      "openai_chat_completions_stream")
    assert result.request_id.startswith("req_") and result.region is None
    assert result.chunk_count == 64 and result.attempts == 1


def test_the_role_only_first_chunk_does_not_stop_the_ttft_clock(provider_for):
    # The role chunk leaves with the headers, 0.3 s before the first text.
    _, provider = provider_for({"m": SSEBehaviour(ttft=0.3, gap=0.01, output_tokens=8)})
    result = result_of(provider.measure("m", PROFILE))
    assert result.time_to_first_token >= 0.3 - EARLY
    assert result.time_to_first_any_token >= 0.3 - EARLY


@pytest.mark.parametrize("field", ["reasoning_content", "reasoning"])
def test_reasoning_deltas_count_for_first_any_token_never_for_visible_tokens(provider_for,
                                                                             field):
    sim, provider = provider_for({"m": SSEBehaviour(
        ttft=0.1, gap=0.02, tokens_per_delta=2, reasoning_tokens=20, output_tokens=30,
        options={"reasoning_field": field})})
    result = result_of(provider.measure("m", PROFILE))
    plan = sim.config.plan("m", PROFILE.max_tokens)
    late = sim.stats()["streams"][result.request_id]
    assert_close(result.time_to_first_any_token,
                  plan.time_to_first_any_token + late["first_any"])
    assert_close(result.time_to_first_token, plan.time_to_first_token + late["first_text"])
    assert result.time_to_first_token - result.time_to_first_any_token >= 0.2 - EARLY
    assert result.visible_output_tokens == plan.visible_output_tokens == 30
    assert result.reasoning_tokens == plan.reasoning_tokens
    assert result.output_tokens == 50  # usage: reasoning included
    assert result.misc["reasoning_chunks"] == 10


def test_a_reasoning_only_stream_cut_by_the_budget_is_budget_exhausted(provider_for):
    _, provider = provider_for({"m": SSEBehaviour(ttft=0.01, gap=0.001, reasoning_tokens=80)})
    failure = failure_of(provider.measure("m", PROFILE))
    assert (failure.error_kind, failure.attempts) == ("budget_exhausted", 1)


def test_usage_comes_from_the_last_chunk_without_choices(provider_for):
    _, provider = provider_for({
        "usage": SSEBehaviour(ttft=0.01, gap=0.002, tokens_per_delta=4, output_tokens=40),
        "bare": SSEBehaviour(ttft=0.01, gap=0.002, tokens_per_delta=4, output_tokens=40,
                             send_usage=False)})
    with_usage = result_of(provider.measure("usage", PROFILE))
    assert (with_usage.output_tokens, with_usage.chunk_count) == (40, 10)
    assert (with_usage.token_source, with_usage.input_tokens) == ("provider_usage", 18)
    bare = result_of(provider.measure("bare", PROFILE))
    assert (bare.output_tokens, bare.token_source) == (10, "stream_chunks")
    assert bare.visible_output_tokens == 40  # counted with cl100k_base


def test_a_stream_that_ends_without_a_finish_reason_is_a_failure(provider_for):
    _, provider = provider_for({"m": SSEBehaviour(ttft=0.01, gap=0.001, output_tokens=8,
                                                  no_finish=True)}, retries=1)
    failure = failure_of(provider.measure("m", PROFILE))
    assert (failure.error_kind, failure.stage, failure.exc_type) == (
        "transient", "stream", "IncompleteStream")
    assert failure.attempts == 2


def test_429_with_retry_after_is_throttled_and_waits_at_least_that_long(provider_for):
    waits: list[float] = []
    _, provider = provider_for({"m": SSEBehaviour(ttft=0.01, gap=0.001, output_tokens=8,
                                                  error="rate_limit", retry_after=0.4,
                                                  fail_first_calls=1)},
                               sleep=waits.append)
    result = result_of(provider.measure("m", PROFILE))
    assert result.attempts == 2
    assert waits and waits[0] >= 0.4
    first = result.misc["earlier_attempts"][0]
    assert (first["error_kind"], first["code"], first["http_status"]) == (
        "throttled", "rate_limit_exceeded", 429)


@pytest.mark.parametrize(("error", "kind", "status", "code", "attempts"), [
    ("invalid_api_key", "auth", 401, "invalid_api_key", 1),
    ("permission_denied", "auth", 403, "permission_denied", 1),
    ("model_not_found", "model_unavailable", 404, "model_not_found", 1),
    ("context_length_exceeded", "invalid_request", 400, "context_length_exceeded", 1),
    ("server_error", "transient", 500, "server_error", 3),
    ("overloaded", "transient", 503, "overloaded", 3),
])
def test_errors_before_the_stream_are_classified_with_the_vendor_code(
        provider_for, error, kind, status, code, attempts):
    _, provider = provider_for({"m": SSEBehaviour(error=error)})
    failure = failure_of(provider.measure("m", PROFILE))
    assert (failure.error_kind, failure.http_status, failure.provider_error_code) == (
        kind, status, code)
    assert (failure.stage, failure.attempts, failure.provider) == ("call", attempts, "openai")
    assert failure.request_id.startswith("req_")


def test_an_unknown_model_points_at_bench_runner_models(provider_for):
    _, provider = provider_for({})
    failure = failure_of(provider.measure("no-such-model", PROFILE))
    assert failure.error_kind == "model_unavailable"
    assert "bench-runner models" in failure.message


def test_a_mid_stream_error_is_classified(provider_for):
    _, provider = provider_for({"m": SSEBehaviour(ttft=0.01, gap=0.001, output_tokens=20,
                                                  stream_error="server_error",
                                                  error_after_deltas=5)}, retries=0)
    failure = failure_of(provider.measure("m", PROFILE))
    # openai raises a bare APIError for an error event: no status, the type in its body.
    assert (failure.error_kind, failure.stage, failure.exc_type) == (
        "transient", "stream", "APIError")
    assert failure.provider_error_code == "server_error"


def test_a_cut_connection_is_classified(provider_for):
    _, provider = provider_for({"m": SSEBehaviour(ttft=0.01, gap=0.001, output_tokens=20,
                                                  cut_after_deltas=5)}, retries=0)
    failure = failure_of(provider.measure("m", PROFILE))
    assert (failure.error_kind, failure.stage, failure.exc_type) == (
        "transient", "stream", "APIConnectionError")


def test_openai_3_closes_the_connection_at_done_and_every_timed_call_gets_a_warm_one(
        provider_for, openai_sim):
    sim, provider = provider_for({"m": SSEBehaviour(ttft=0.01, gap=0.001, output_tokens=8)})
    for _ in range(3):
        result_of(provider.measure("m", PROFILE))
    stats = sim.stats()
    assert stats["cold_streams"] == 0, "a timed stream opened its own connection"
    # The client's own behaviour, without the runner's warm-up: each stream after the
    # first lands on a fresh connection, because the last one was closed at [DONE].
    client = openai.OpenAI(api_key=OPENAI_TEST_KEY, base_url=f"{sim.url}/v1", max_retries=0)
    before = sim.stats()["connections"]
    for _ in range(3):
        stream = client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "."}], stream=True, max_tokens=8)
        for _chunk in stream:
            pass
    client.close()
    after = sim.stats()
    assert after["connections"] - before == 3
    assert after["cold_streams"] == 3


def test_each_concurrent_slot_has_a_warm_connection(provider_for):
    models = {f"m{i}": SSEBehaviour(ttft=0.05, gap=0.005, output_tokens=16) for i in range(3)}
    sim, provider = provider_for(models, concurrency=3)
    with ThreadPoolExecutor(max_workers=3) as pool:
        results = list(pool.map(lambda m: provider.measure(m, PROFILE), models))
    assert all(isinstance(r, Result) for r in results)
    assert sim.stats()["cold_streams"] == 0


def test_a_refused_key_stops_warm_as_a_setup_error(openai_sim, monkeypatch):
    openai_sim()
    monkeypatch.setenv("OPENAI_API_KEY", "sk-revoked-" + "x" * 20)
    provider = get_provider("openai", region=None)
    with pytest.raises(SetupError, match="refused the key in OPENAI_API_KEY") as caught:
        provider.warm()
    assert caught.value.kind == "auth"
    assert "sk-revoked" not in str(caught.value)


def test_the_key_is_in_no_record_and_no_log_line(provider_for, caplog):
    caplog.set_level(logging.DEBUG)
    _, provider = provider_for({"ok": SSEBehaviour(ttft=0.01, gap=0.001, output_tokens=8),
                                "bad": SSEBehaviour(error="invalid_api_key"),
                                "cut": SSEBehaviour(ttft=0.01, gap=0.001, output_tokens=8,
                                                    cut_after_deltas=2)}, retries=0)
    payloads = [provider.measure(m, PROFILE).to_payload() for m in ("ok", "bad", "cut")]
    assert OPENAI_TEST_KEY not in str(payloads)
    assert OPENAI_TEST_KEY not in caplog.text


def test_self_hosted_servers_need_a_base_url_and_a_stored_name_but_no_key(openai_sim,
                                                                        monkeypatch):
    sim = openai_sim({"models": {"m": {"ttft": 0.01, "gap": 0.001, "output_tokens": 8}}})
    monkeypatch.setenv("OPENAI_COMPATIBLE_PROVIDER_NAME", "vllm")
    monkeypatch.delenv("OPENAI_API_KEY")
    provider = get_provider("openai-compatible", region=None)
    try:
        provider.warm()
        result = result_of(provider.measure("m", PROFILE))
    finally:
        provider.close()
    assert result.provider == "vllm"
    assert ResultSchema().load(result.to_payload())["provider"] == "vllm"
    assert sim.calls("m") == 1


@pytest.mark.parametrize(("name", "env", "says"), [
    ("openai-compatible", {}, "OPENAI_COMPATIBLE_BASE_URL is not set"),
    ("openai-compatible", {"OPENAI_COMPATIBLE_BASE_URL": "http://h:8000/v1"},
     "OPENAI_COMPATIBLE_PROVIDER_NAME must be one of vllm, tgi"),
    ("openai-compatible", {"OPENAI_COMPATIBLE_BASE_URL": "http://h:8000/v1",
                           "OPENAI_COMPATIBLE_PROVIDER_NAME": "groq"}, "not 'groq'"),
    ("groq", {}, "GROQ_API_KEY is not set"),
    ("groq", {"GROQ_API_KEY": "gsk_x", "OPENAI_COMPATIBLE_PROVIDER_NAME": "vllm"},
     "contradicts --provider groq"),
    ("together", {"TOGETHER_API_KEY": "k", "OPENAI_COMPATIBLE_BASE_URL": "ftp://x"},
     "must start with http"),
    ("fireworks", {"OPENAI_COMPATIBLE_API_KEY_ENV": "MY_KEY"}, "MY_KEY is not set"),
])
def test_a_configuration_that_cannot_work_is_one_sentence(name, env, says):
    with pytest.raises(SetupError, match=says):
        get_provider(name, region=None, environ=env)


def test_presets_store_the_dashboard_names_and_call_their_hosts():
    hosts = {}
    for name in ("openai", "groq", "together", "fireworks", "deepinfra", "cerebras"):
        key_env = f"{name.upper()}_API_KEY"
        endpoint = resolve(name, {key_env: "k" * 20})
        assert (endpoint.provider, endpoint.key_env) == (name, key_env)
        assert endpoint.provider in contract.PROVIDERS
        hosts[name] = endpoint.base_url
    assert hosts["groq"] == "https://api.groq.com/openai/v1"
    assert hosts["deepinfra"] == "https://api.deepinfra.com/v1/openai"
    assert resolve("groq", {"GROQ_API_KEY": "k", "OPENAI_COMPATIBLE_BASE_URL":
                            "http://proxy:9/v1/"}).base_url == "http://proxy:9/v1"


def test_rows_pass_the_same_schema_as_bedrock_and_their_mode_must_fit_the_provider(
        provider_for):
    _, provider = provider_for({"m": SSEBehaviour(ttft=0.01, gap=0.001, output_tokens=8)})
    payload = result_of(provider.measure("m", PROFILE)).to_payload()
    assert set(payload) <= set(contract.RESULT_FIELDS)
    ResultSchema().load(payload)
    from marshmallow import ValidationError

    with pytest.raises(ValidationError, match="request_mode"):
        ResultSchema().load({**payload, "request_mode": contract.BEDROCK_MODE})
    with pytest.raises(ValidationError, match="request_mode"):
        ResultSchema().load({**payload, "provider": "bedrock"})


def test_models_lists_what_the_endpoint_serves(provider_for):
    _, provider = provider_for()
    ids = [entry.model_id for entry in provider.catalogue()]
    assert ids == sorted(OpenAISimulatorConfig.default().models)
