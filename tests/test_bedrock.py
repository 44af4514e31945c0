"""BedrockProvider with the real boto3 client against the simulator: figures and failures."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

import bench_contract as contract
from runner.bedrock import WARM_MODEL_ID, BedrockProvider
from runner.provider import SetupError, get_provider
from runner.records import Profile, Result
from runner.simulator import ModelBehaviour, SimulatorConfig
from tests.support.measuring import assert_close, failure_of, result_of
from tests.support.mongo import free_port

PROFILE = Profile(max_tokens=64)
# Generous: the machine is shared, but a figure can never be earlier than the truth
# by more than clock granularity, and the simulator adds ~2 ms.


@pytest.fixture
def provider_for(bedrock_sim):
    """Factory: start a simulator for `models` and return a warm provider on it."""
    providers: list[BedrockProvider] = []

    def start(models: dict[str, ModelBehaviour] | None = None, **options):
        config = SimulatorConfig(models=models) if models is not None else None
        sim = bedrock_sim(config)
        options.setdefault("backoff", 0.01)
        provider = BedrockProvider(region=None, **options)
        providers.append(provider)
        provider.warm()
        return sim, provider

    yield start
    for provider in providers:
        provider.close()





def _assert_figures_match(result: Result, sim, model_id: str) -> None:
    """Figures match the configured schedule, shifted by however late the simulator itself
    sent each part (a busy machine delays it; that is not the runner's error)."""
    plan = sim.config.plan(model_id, PROFILE.max_tokens)
    late = sim.stats()["streams"][result.request_id]
    assert late["max"] < 0.5, "the simulator ran too late for a meaningful check"
    assert_close(result.time_to_first_token, plan.time_to_first_token + late["first_text"])
    assert_close(result.time_to_first_any_token,
                  plan.time_to_first_any_token + late["first_any"])
    assert_close(result.generate_time, plan.generate_time + late["end"])
    span = plan.deltas[-1].at - plan.deltas[0].at + late["last"] - late["first_any"]
    assert result.decode_tokens_per_second == pytest.approx(
        (plan.output_tokens - plan.deltas[0].tokens) / span, rel=0.15)
    assert result.output_tokens == plan.output_tokens
    assert result.tokens_per_second == pytest.approx(result.output_tokens
                                                     / result.generate_time)


def test_decode_speed_leaves_out_every_token_of_the_first_delta(provider_for):
    # 8 tokens a delta every 50 ms decode at 160 tok/s; counting only one token of
    # the first delta as "not decoded" would read 63 / 0.35 s = 180 tok/s.
    sim, provider = provider_for({"m": ModelBehaviour(ttft=0.1, gap=0.05, tokens_per_delta=8,
                                                      output_tokens=64)})
    result = result_of(provider.measure("m", PROFILE))
    late = sim.stats()["streams"][result.request_id]
    span = 0.35 + late["last"] - late["first_any"]
    assert result.chunk_count == 8
    assert result.decode_tokens_per_second == pytest.approx(56 / span, rel=0.05)
    assert result.decode_tokens_per_second < 63 / span * 0.95
    assert result.metric_version == 2


def test_first_model_is_measured_against_the_configured_delays(provider_for):
    sim, provider = provider_for({"m": ModelBehaviour(ttft=0.2, gap=0.03, tokens_per_delta=4,
                                                      output_tokens=40)})
    result = result_of(provider.measure("m", PROFILE))
    _assert_figures_match(result, sim, "m")
    assert result.token_source == "provider_usage"
    assert result.chunk_count == 10
    assert result.attempts == 1
    assert result.stop_reason == "end_turn"
    assert result.request_id
    assert result.region == "us-east-1"
    late_end = sim.stats()["streams"][result.request_id]["end"]
    assert result.server_latency_ms == pytest.approx(470 + late_end * 1000, abs=10)
    assert result.gen_ts > result.run_ts


def test_tokens_come_from_usage_when_a_delta_carries_several(provider_for):
    _, provider = provider_for({"m": ModelBehaviour(ttft=0.01, gap=0.005, tokens_per_delta=5,
                                                    output_tokens=40)})
    result = result_of(provider.measure("m", PROFILE))
    assert (result.output_tokens, result.chunk_count) == (40, 8)
    assert result.token_source == "provider_usage"


def test_chunk_count_is_the_fallback_when_usage_is_missing(provider_for):
    _, provider = provider_for({"m": ModelBehaviour(ttft=0.01, gap=0.005, tokens_per_delta=5,
                                                    output_tokens=40, send_usage=False)})
    result = result_of(provider.measure("m", PROFILE))
    assert (result.output_tokens, result.token_source) == (8, "stream_chunks")


def test_empty_first_delta_does_not_count_as_first_token(provider_for):
    sim, provider = provider_for({"m": ModelBehaviour(ttft=0.25, gap=0.01,
                                                      empty_first_delta=True)})
    result = result_of(provider.measure("m", PROFILE))
    _assert_figures_match(result, sim, "m")


def test_reasoning_model_reports_first_answer_token_apart_from_first_token(provider_for):
    sim, provider = provider_for({"r": ModelBehaviour(ttft=0.1, gap=0.02, tokens_per_delta=4,
                                                      reasoning_tokens=16, output_tokens=24)})
    result = result_of(provider.measure("r", PROFILE))
    _assert_figures_match(result, sim, "r")
    # Four reasoning deltas and six text deltas; the signature-only delta is no token.
    assert result.chunk_count == 10
    assert result.misc == {"reasoning_chunks": 4}


def test_reasoning_model_that_spends_the_budget_thinking_is_budget_exhausted(provider_for):
    sim, provider = provider_for({"r": ModelBehaviour(ttft=0.01, gap=0.002, reasoning_tokens=80,
                                                      output_tokens=20)})
    failure = failure_of(provider.measure("r", PROFILE))
    assert failure.error_kind == "budget_exhausted"
    assert failure.stage == "stream"
    assert failure.attempts == 1
    assert "--max-tokens" in failure.message
    assert failure.request_id
    assert sim.calls("r") == 1


def test_models_measured_concurrently_keep_their_own_timings(provider_for):
    models = {f"m{i}": ModelBehaviour(ttft=0.1 + 0.05 * i, gap=0.02 + 0.005 * i,
                                      tokens_per_delta=2 + i, output_tokens=48)
              for i in range(4)}
    sim, provider = provider_for(models, concurrency=4)
    connections = sim.stats()["connections"]
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = dict(zip(models, pool.map(lambda m: provider.measure(m, PROFILE), models),
                           strict=True))
    for model_id, outcome in results.items():
        _assert_figures_match(result_of(outcome), sim, model_id)
    # Every measured call went over a connection opened during warm-up.
    assert sim.stats()["connections"] == connections


def test_sequential_measurements_reuse_the_warm_connection(provider_for):
    sim, provider = provider_for({"m": ModelBehaviour(ttft=0.01, gap=0.002)})
    connections = sim.stats()["connections"]
    for _ in range(3):
        result_of(provider.measure("m", PROFILE))
    assert sim.stats()["connections"] == connections


def test_throttling_before_the_stream_is_retried_then_recorded_as_throttled(provider_for):
    delays: list[float] = []
    sim, provider = provider_for({"m": ModelBehaviour(error="throttle")}, retries=2,
                                 backoff=0.01, sleep=delays.append)
    failure = failure_of(provider.measure("m", PROFILE))
    assert failure.error_kind == "throttled"
    assert (failure.stage, failure.http_status) == ("call", 429)
    assert failure.provider_error_code == "ThrottlingException"
    assert failure.attempts == 3 == sim.calls("m")
    assert [a["error_kind"] for a in failure.misc["earlier_attempts"]] == ["throttled"] * 2
    # Throttling backs off exponentially (twice the base), with jitter in the upper half.
    assert 0.01 <= delays[0] <= 0.02 and 0.02 <= delays[1] <= 0.04


def test_throttled_attempt_is_counted_and_not_reported_as_a_slow_success(provider_for):
    sim, provider = provider_for({"m": ModelBehaviour(ttft=0.15, gap=0.01, error="throttle",
                                                      fail_first_calls=1)}, backoff=0.2)
    result = result_of(provider.measure("m", PROFILE))
    assert result.attempts == 2 == sim.calls("m")
    _assert_figures_match(result, sim, "m")
    (earlier,) = result.misc["earlier_attempts"]
    assert (earlier["error_kind"], earlier["code"]) == ("throttled", "ThrottlingException")


def test_mid_stream_throttle_is_recorded_as_throttled_in_the_stream_stage(provider_for):
    sim, provider = provider_for({"m": ModelBehaviour(
        ttft=0.01, gap=0.002, stream_error="throttlingException", error_after_deltas=3)})
    failure = failure_of(provider.measure("m", PROFILE))
    assert (failure.error_kind, failure.stage) == ("throttled", "stream")
    assert failure.provider_error_code == "throttlingException"
    assert failure.exc_type == "EventStreamError"
    assert failure.request_id
    assert failure.attempts == 3 == sim.calls("m")


def test_mid_stream_throttle_then_success_times_only_the_last_attempt(provider_for):
    sim, provider = provider_for({"m": ModelBehaviour(
        ttft=0.1, gap=0.02, stream_error="throttlingException", error_after_deltas=10,
        fail_first_calls=1)})
    result = result_of(provider.measure("m", PROFILE))
    assert result.attempts == 2
    _assert_figures_match(result, sim, "m")


def test_stalled_stream_is_a_timeout_and_the_next_model_is_measured(provider_for):
    sim, provider = provider_for({
        "stalls": ModelBehaviour(ttft=0.01, gap=0.01, stall_seconds=30, stall_after_deltas=2),
        "fine": ModelBehaviour(ttft=0.05, gap=0.01),
    }, read_timeout=0.4, retries=1)
    started = time.perf_counter()
    failure = failure_of(provider.measure("stalls", PROFILE))
    assert time.perf_counter() - started < 5
    assert (failure.error_kind, failure.stage, failure.attempts) == ("timeout", "stream", 2)
    _assert_figures_match(result_of(provider.measure("fine", PROFILE)), sim, "fine")


def test_stall_before_the_answer_is_a_timeout_in_the_call_stage(provider_for):
    _, provider = provider_for({"m": ModelBehaviour(stall_seconds=30,
                                                    stall_before_headers=True)},
                               read_timeout=0.3, retries=0)
    failure = failure_of(provider.measure("m", PROFILE))
    assert (failure.error_kind, failure.stage, failure.attempts) == ("timeout", "call", 1)


def test_slow_stream_past_the_overall_cap_is_a_timeout(provider_for):
    _, provider = provider_for({"m": ModelBehaviour(ttft=0.01, gap=0.1, tokens_per_delta=1)},
                               call_timeout=0.5, retries=0)
    started = time.perf_counter()
    failure = failure_of(provider.measure("m", PROFILE))
    assert time.perf_counter() - started < 1.5
    assert (failure.error_kind, failure.exc_type) == ("timeout", "CallDeadlineExceeded")
    assert "0.5 s" in failure.message


def test_overall_cap_covers_the_model_retries_included(provider_for):
    # Each attempt alone fits in the cap, but three of them do not: the cap is the
    # model's, so the runner stops retrying instead of taking 3 x call_timeout.
    _, provider = provider_for({"m": ModelBehaviour(ttft=0.01, gap=0.1, tokens_per_delta=1)},
                               call_timeout=0.8, retries=2)
    started = time.perf_counter()
    failure = failure_of(provider.measure("m", PROFILE))
    assert time.perf_counter() - started < 0.8 + 0.5
    assert failure.error_kind == "timeout"
    assert failure.attempts == 1


def test_corrupt_event_is_a_transient_failure(provider_for):
    _, provider = provider_for({"m": ModelBehaviour(ttft=0.01, gap=0.002,
                                                    corrupt_after_deltas=2)}, retries=0)
    failure = failure_of(provider.measure("m", PROFILE))
    assert (failure.error_kind, failure.exc_type) == ("transient", "ChecksumMismatch")


@pytest.mark.parametrize(("error", "kind", "status", "retried"), [
    ("access_denied", "auth", 403, False),
    ("end_of_life", "model_unavailable", 404, False),
    ("not_found", "model_unavailable", 404, False),
    ("validation", "invalid_request", 400, False),
    ("model_not_ready", "transient", 429, True),
    ("internal", "transient", 500, True),
    ("service_unavailable", "transient", 503, True),
    ("model_error", "transient", 424, True),
    ("model_timeout", "timeout", 408, True),
])
def test_errors_before_the_stream_are_classified(provider_for, error, kind, status, retried):
    sim, provider = provider_for({"m": ModelBehaviour(error=error)}, retries=1)
    failure = failure_of(provider.measure("m", PROFILE))
    assert (failure.error_kind, failure.http_status, failure.stage) == (kind, status, "call")
    assert failure.attempts == sim.calls("m") == (2 if retried else 1)


def test_on_demand_refusal_hints_at_the_inference_profile_id(provider_for):
    _, provider = provider_for()
    failure = failure_of(provider.measure("sim.profile-only-v1", PROFILE))
    assert failure.error_kind == "invalid_request"
    assert "us.sim.profile-only-v1" in failure.message
    assert "us.sim.profile-only-v1" in failure.misc["hint"]
    assert isinstance(provider.measure("us.sim.profile-only-v1", PROFILE), Result)


def test_records_fit_the_contract(provider_for):
    _, provider = provider_for({"m": ModelBehaviour(ttft=0.01, gap=0.002, error="throttle",
                                                    fail_first_calls=1),
                                "bad": ModelBehaviour(error="access_denied")})
    result = result_of(provider.measure("m", PROFILE)).to_payload()
    failure = failure_of(provider.measure("bad", PROFILE)).to_payload()
    assert set(contract.RESULT_REQUIRED) <= set(result) <= set(contract.RESULT_FIELDS)
    assert set(contract.ERROR_REQUIRED) <= set(failure) <= set(contract.ERROR_FIELDS)
    assert len(json.dumps(result["misc"])) <= contract.MAX_MISC_BYTES
    assert result["provider"] == failure["provider"] == "bedrock"


def test_catalogue_lists_streaming_text_models_and_pages_profiles(provider_for):
    models = {f"us.sim.p{i:03d}": ModelBehaviour() for i in range(120)}
    models["sim.fast-v1"] = ModelBehaviour(name="Sim Fast v1")
    models["sim.embed-v1"] = ModelBehaviour(output_modalities=("EMBEDDING",))
    _, provider = provider_for(models)
    entries = {e.model_id: e for e in provider.catalogue()}
    assert "sim.embed-v1" not in entries
    assert entries["sim.fast-v1"].kind == "foundation"
    assert not entries["sim.fast-v1"].needs_profile
    assert entries["sim.p007"].needs_profile
    profiles = [e for e in entries.values() if e.kind == "inference-profile"]
    assert len(profiles) == 120
    assert entries["us.sim.p119"].vendor == "Simulated"


def test_missing_credentials_are_a_setup_error(bedrock_sim, monkeypatch):
    bedrock_sim()
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    provider = BedrockProvider(region="us-east-1")
    with pytest.raises(SetupError, match="No AWS credentials found"):
        provider.warm()


def test_missing_region_is_a_setup_error(bedrock_sim, monkeypatch):
    bedrock_sim()
    monkeypatch.delenv("AWS_DEFAULT_REGION")
    with pytest.raises(SetupError, match="--region"):
        BedrockProvider(region=None).warm()


def test_unreachable_endpoint_is_a_setup_error(monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL_BEDROCK_RUNTIME", f"http://127.0.0.1:{free_port()}")
    provider = BedrockProvider(region="us-east-1", connect_timeout=1)
    try:
        with pytest.raises(SetupError, match="Cannot reach Bedrock"):
            provider.warm()
    finally:
        provider.close()


def test_unknown_provider_names_the_known_ones():
    with pytest.raises(SetupError, match="bedrock"):
        get_provider("vertex", region=None)


def test_get_provider_gives_a_bedrock_provider_with_the_options(bedrock_sim):
    bedrock_sim()
    provider = get_provider("bedrock", region="us-west-2", concurrency=3, call_timeout=9,
                            retries=4)
    try:
        assert isinstance(provider, BedrockProvider)
        assert (provider.name, provider.region, provider.concurrency) == ("bedrock",
                                                                          "us-west-2", 3)
        assert (provider.call_timeout, provider.retries) == (9, 4)
        assert isinstance(provider.measure("sim.fast-v1", PROFILE), Result)
    finally:
        provider.close()


def test_warming_again_rewarms_the_pool_without_new_connections(provider_for):
    sim, provider = provider_for({"m": ModelBehaviour(ttft=0.01, gap=0.002)}, concurrency=2)
    warm_calls = sim.calls(WARM_MODEL_ID)
    provider.warm()
    result_of(provider.measure("m", PROFILE))
    # Two overlapping warm-up calls (a busy machine may need another round) ...
    assert sim.calls(WARM_MODEL_ID) >= warm_calls + 2
    # ... over the two connections the first warm-up opened.
    assert sim.stats()["connections"] == 2


def test_idle_connection_is_rewarmed_before_the_timer(provider_for, monkeypatch):
    sim, provider = provider_for({"m": ModelBehaviour(ttft=0.05, gap=0.002)})
    warm_calls = sim.calls(WARM_MODEL_ID)
    result_of(provider.measure("m", PROFILE))
    assert sim.calls(WARM_MODEL_ID) == warm_calls, sim.stats()
    monkeypatch.setattr("runner.bedrock.IDLE_REWARM_SECONDS", 0.0)
    _assert_figures_match(result_of(provider.measure("m", PROFILE)), sim, "m")
    # At least one warm-up call; more only if a round left the pool short.
    assert sim.calls(WARM_MODEL_ID) > warm_calls, sim.stats()


def test_malformed_region_is_a_setup_error(bedrock_sim):
    bedrock_sim()
    with pytest.raises(SetupError, match="us east 1"):
        BedrockProvider(region="us east 1").warm()


def test_credentials_that_cannot_refresh_are_an_auth_failure_and_nothing_is_called(
        provider_for):
    # An instance role whose refresh fails just before a call (metadata service gone).
    from botocore.credentials import RefreshableCredentials
    from botocore.exceptions import CredentialRetrievalError

    def refresh():
        raise CredentialRetrievalError(provider="iam-role", error_msg="metadata unreachable")

    sim, provider = provider_for({"m": ModelBehaviour(ttft=0.01, gap=0.002)})
    provider._credentials = RefreshableCredentials.create_from_metadata(
        metadata={"access_key": "testing", "secret_key": "testing", "token": "testing",
                  "expiry_time": "2000-01-01T00:00:00Z"},
        refresh_using=refresh, method="iam-role")
    failure = failure_of(provider.measure("m", PROFILE))
    assert (failure.error_kind, failure.stage) == ("auth", "setup")
    assert failure.exc_type == "CredentialRetrievalError"
    assert "metadata unreachable" in failure.message
    assert failure.attempts == 0 == sim.calls("m")


# The dashboard's schema v2 fields, against the simulator's truth under cl100k_base.
TOLERANCE_64 = 0.025  # time_to_64_visible_tokens_seconds within 25 ms of when it was sent
LONG = Profile(max_tokens=512, profile_id="cloud-long-v1")


def _assert_time_to_64(result: Result, sim, model_id: str, profile: Profile) -> None:
    plan = sim.config.plan(model_id, profile.max_tokens)
    late = sim.stats()["streams"][result.request_id]
    assert plan.time_to_64_visible_tokens is not None
    truth = plan.time_to_64_visible_tokens + late["visible_64"]
    assert result.time_to_64_visible_tokens_seconds is not None
    assert abs(result.time_to_64_visible_tokens_seconds - truth) <= TOLERANCE_64, (
        result.time_to_64_visible_tokens_seconds, truth)


def test_schema_v2_fields_match_the_truth_for_deltas_of_varied_sizes(provider_for):
    model = ModelBehaviour(ttft=0.1, gap=0.01, delta_tokens=(1, 3, 2, 7, 4, 1, 5),
                           output_tokens=300)
    sim, provider = provider_for({"sim.varied": model})
    result = result_of(provider.measure("sim.varied", LONG))
    plan = sim.config.plan("sim.varied", LONG.max_tokens)
    # The 64th visible token is not the 64th delta, nor in the 64th-token-th delta by usage.
    assert plan.visible_tokens_per_delta()[:7] != [1] * 7
    assert result.metrics_schema_version == 2
    assert result.request_mode == "bedrock_converse_stream"
    assert result.ttft_available is True
    assert result.generated_output_tokens == plan.output_tokens == result.output_tokens
    # No reasoning: every generated token was visible, and usage's exact count stands.
    assert result.visible_output_tokens == plan.output_tokens
    assert result.reasoning_tokens is None
    assert result.generated_tokens_per_second == pytest.approx(300 / result.generate_time)
    assert result.visible_tokens_per_second == pytest.approx(300 / result.generate_time)
    _assert_time_to_64(result, sim, "sim.varied", LONG)


def test_reasoning_deltas_are_counted_apart_and_never_advance_the_visible_clock(provider_for):
    model = ModelBehaviour(ttft=0.1, gap=0.01, delta_tokens=(2, 5, 1, 3),
                           reasoning_tokens=90, output_tokens=150)
    sim, provider = provider_for({"us.sim.thinker": model})
    result = result_of(provider.measure("us.sim.thinker", LONG))
    plan = sim.config.plan("us.sim.thinker", LONG.max_tokens)
    # Usage counts reasoning too; visible and reasoning tokens are the text's cl100k_base count.
    assert result.generated_output_tokens == plan.output_tokens == 240
    assert result.visible_output_tokens == plan.visible_output_tokens
    assert result.reasoning_tokens == plan.reasoning_tokens
    assert result.reasoning_tokens > 64  # the clock would have crossed on reasoning alone
    assert result.visible_tokens_per_second == pytest.approx(
        plan.visible_output_tokens / result.generate_time)
    # The mark falls inside the text: after every reasoning delta, at the right text delta.
    first_text = plan.time_to_first_token
    assert plan.time_to_64_visible_tokens > first_text
    _assert_time_to_64(result, sim, "us.sim.thinker", LONG)


def test_fewer_than_64_visible_tokens_leave_time_to_64_null(provider_for):
    model = ModelBehaviour(ttft=0.1, gap=0.01, tokens_per_delta=4, reasoning_tokens=80,
                           output_tokens=40)
    sim, provider = provider_for({"us.sim.brief": model})
    result = result_of(provider.measure("us.sim.brief", LONG))
    plan = sim.config.plan("us.sim.brief", LONG.max_tokens)
    assert plan.time_to_64_visible_tokens is None
    assert result.time_to_64_visible_tokens_seconds is None
    assert result.to_payload()["time_to_64_visible_tokens_seconds"] is None
    assert result.visible_output_tokens == plan.visible_output_tokens < 64
    assert result.output_tokens == 120


def test_without_usage_visible_tokens_are_counted_from_the_text(provider_for):
    model = ModelBehaviour(ttft=0.1, gap=0.01, delta_tokens=(3, 1, 6), output_tokens=100,
                           send_usage=False)
    sim, provider = provider_for({"sim.quiet": model})
    result = result_of(provider.measure("sim.quiet", LONG))
    plan = sim.config.plan("sim.quiet", LONG.max_tokens)
    assert result.token_source == "stream_chunks"
    assert result.visible_output_tokens == plan.visible_output_tokens
    _assert_time_to_64(result, sim, "sim.quiet", LONG)


def test_warm_loads_the_token_encoding_before_any_timer(provider_for, monkeypatch):
    # Loading cl100k_base takes ~0.1 s; inside a stream it would delay every later delta.
    from runner import visible_tokens

    monkeypatch.setattr(visible_tokens, "_encoding", None)
    provider_for({"m": ModelBehaviour(ttft=0.05, gap=0.005, output_tokens=8)})  # warms
    assert visible_tokens._encoding is not None
