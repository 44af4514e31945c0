"""The Bedrock simulator, checked with the real boto3 client and botocore's own decoder."""

from __future__ import annotations

import json
import time

import boto3
import pytest
from botocore.config import Config
from botocore.eventstream import ChecksumMismatch, EventStreamBuffer
from botocore.exceptions import ClientError, EventStreamError

from runner import eventstream
from runner.simulator import ModelBehaviour, SimulatorConfig

MESSAGES = [{"role": "user", "content": [{"text": "Say something."}]}]
NO_RETRY = Config(retries={"mode": "standard", "total_max_attempts": 1}, read_timeout=10)


@pytest.fixture
def runtime_for(bedrock_sim):
    """Factory: start a simulator for a config and return a bedrock-runtime client on it."""
    clients = []

    def start(config=None):
        sim = bedrock_sim(config)
        client = boto3.client("bedrock-runtime", config=NO_RETRY)
        clients.append(client)
        return sim, client

    yield start
    for client in clients:
        client.close()


def _events(client, model_id: str, max_tokens: int = 64) -> list[tuple[float, dict]]:
    start = time.perf_counter()
    answer = client.converse_stream(modelId=model_id, messages=MESSAGES,
                                    inferenceConfig={"maxTokens": max_tokens})
    return [(time.perf_counter() - start, event) for event in answer["stream"]]


def _delta_kind(delta: dict) -> str:
    if "reasoningContent" in delta:
        return "reasoning" if "text" in delta["reasoningContent"] else "signature"
    return "text"


def test_encoded_event_is_decoded_by_botocore():
    buffer = EventStreamBuffer()
    buffer.add_data(eventstream.encode_event("messageStop", {"stopReason": "end_turn"}))
    (message,) = list(buffer)
    assert message.headers[":event-type"] == "messageStop"
    assert message.headers[":message-type"] == "event"
    assert json.loads(message.payload) == {"stopReason": "end_turn"}


def test_corrupt_message_fails_botocores_checksum():
    buffer = EventStreamBuffer()
    buffer.add_data(eventstream.encode_event("messageStart", {"role": "assistant"}, corrupt=True))
    with pytest.raises(ChecksumMismatch):
        list(buffer)


def test_stream_delivers_each_delta_when_it_is_written(runtime_for):
    sim, runtime = runtime_for(SimulatorConfig(models={"m": ModelBehaviour(
        ttft=0.2, gap=0.05, tokens_per_delta=3, output_tokens=15)}))
    events = _events(runtime, "m")
    deltas = [(t, e) for t, e in events if "contentBlockDelta" in e]
    assert len(deltas) == 5
    # Arrival follows the schedule, not the end of the body (64 KiB buffering would).
    assert deltas[0][0] == pytest.approx(0.2, abs=0.04)
    assert deltas[-1][0] - deltas[0][0] == pytest.approx(0.2, abs=0.04)
    metadata = events[-1][1]["metadata"]
    assert metadata["usage"]["outputTokens"] == 15
    assert events[-2][1]["messageStop"]["stopReason"] == "end_turn"
    assert sim.calls("m") == 1
    # The simulator reports how late it sent each stream against its plan.
    (lateness,) = sim.stats()["streams"].values()
    assert set(lateness) == {"first_any", "first_text", "last", "max", "end"}
    assert 0 <= lateness["first_text"] <= lateness["max"]


def test_reasoning_comes_first_and_budget_truncates(runtime_for):
    _, runtime = runtime_for(SimulatorConfig(models={"r": ModelBehaviour(
        ttft=0.01, gap=0.001, tokens_per_delta=4, reasoning_tokens=8, output_tokens=20)}))
    events = [e for _, e in _events(runtime, "r", max_tokens=12)]
    kinds = [_delta_kind(e["contentBlockDelta"]["delta"])
             for e in events if "contentBlockDelta" in e]
    assert kinds == ["reasoning", "reasoning", "signature", "text"]
    assert events[-2]["messageStop"]["stopReason"] == "max_tokens"
    assert events[-1]["metadata"]["usage"]["outputTokens"] == 12


def test_error_before_stream_has_bedrock_error_type(runtime_for):
    _, runtime = runtime_for()
    with pytest.raises(ClientError) as caught:
        runtime.converse_stream(modelId="sim.retired-v1", messages=MESSAGES)
    assert caught.value.response["Error"]["Code"] == "ResourceNotFoundException"
    assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404
    assert "end of its life" in caught.value.response["Error"]["Message"]


def test_bare_id_of_profile_only_model_is_refused_on_demand(runtime_for):
    _, runtime = runtime_for()
    with pytest.raises(ClientError) as caught:
        runtime.converse_stream(modelId="sim.profile-only-v1", messages=MESSAGES)
    assert caught.value.response["Error"]["Code"] == "ValidationException"
    assert "on-demand throughput isn't supported" in caught.value.response["Error"]["Message"]
    events = _events(runtime, "us.sim.profile-only-v1")
    assert events[-1][1]["metadata"]["usage"]["outputTokens"] == 48


def test_mid_stream_throttle_is_camel_case_exception(runtime_for):
    _, runtime = runtime_for({"models": {"t": {"ttft": 0.01, "gap": 0.001,
                                  "stream_error": "throttlingException",
                                  "error_after_deltas": 2}}})
    answer = runtime.converse_stream(modelId="t", messages=MESSAGES)
    seen = []
    with pytest.raises(EventStreamError) as caught:
        try:
            for event in answer["stream"]:
                seen.append(event)
        finally:
            answer["stream"].close()
    assert caught.value.response["Error"]["Code"] == "throttlingException"
    assert sum("contentBlockDelta" in e for e in seen) == 2


def test_faults_stop_after_the_first_calls(runtime_for):
    sim, runtime = runtime_for({"models": {"m": {"ttft": 0.01, "gap": 0.001, "error": "throttle",
                                        "fail_first_calls": 2}}})
    for _ in range(2):
        with pytest.raises(ClientError) as caught:
            runtime.converse_stream(modelId="m", messages=MESSAGES)
        assert caught.value.response["Error"]["Code"] == "ThrottlingException"
    assert _events(runtime, "m")[-1][1]["metadata"]["usage"]["outputTokens"] == 64
    assert sim.calls("m") == 3


def test_converse_answers_the_whole_message(runtime_for):
    _, runtime = runtime_for()
    answer = runtime.converse(modelId="sim.fast-v1", messages=MESSAGES,
                              inferenceConfig={"maxTokens": 16})
    assert answer["stopReason"] == "max_tokens"
    assert answer["usage"]["outputTokens"] == 16
    assert answer["output"]["message"]["content"][0]["text"].startswith("The bicycle")


def test_control_plane_lists_models_and_pages_profiles(bedrock_sim):
    bedrock_sim()
    client = boto3.client("bedrock", config=NO_RETRY)
    try:
        models = {m["modelId"]: m for m in client.list_foundation_models()["modelSummaries"]}
        first = client.list_inference_profiles(typeEquals="SYSTEM_DEFINED", maxResults=1)
        second = client.list_inference_profiles(typeEquals="SYSTEM_DEFINED", maxResults=1,
                                                nextToken=first["nextToken"])
    finally:
        client.close()
    assert models["sim.retired-v1"]["modelLifecycle"]["status"] == "LEGACY"
    assert models["sim.profile-only-v1"]["inferenceTypesSupported"] == ["INFERENCE_PROFILE"]
    assert models["sim.fast-v1"]["inferenceTypesSupported"] == ["ON_DEMAND"]
    ids = [p["inferenceProfileId"] for p in first["inferenceProfileSummaries"]
           + second["inferenceProfileSummaries"]]
    assert ids == ["us.sim.reasoner-v1", "us.sim.profile-only-v1"]
    assert "nextToken" not in second


def test_config_file_with_unknown_field_is_refused(tmp_path):
    path = tmp_path / "sim.json"
    path.write_text(json.dumps({"models": {"m": {"ttft": 0.1, "tfft": 0.2}}}))
    with pytest.raises(ValueError, match="tfft"):
        SimulatorConfig.from_file(path)


def test_config_round_trips_through_json(tmp_path):
    path = tmp_path / "sim.json"
    path.write_text(json.dumps(SimulatorConfig.default().to_dict()))
    assert SimulatorConfig.from_file(path) == SimulatorConfig.default()


def test_percent_encoded_arn_model_id_reaches_its_model(runtime_for):
    arn = "arn:aws:bedrock:us-east-1:123456789012:application-inference-profile/abc123"
    sim, runtime = runtime_for({"models": {arn: {"ttft": 0.01, "gap": 0.001}}})
    events = _events(runtime, arn)
    assert events[-1][1]["metadata"]["usage"]["outputTokens"] == 64
    assert sim.calls(arn) == 1


def test_simulator_process_logs_its_url_and_stops_cleanly_on_sigterm(bedrock_sim):
    sim = bedrock_sim()
    sim.stop()
    assert sim.proc.returncode == 0
    log = sim.log_path.read_text()
    assert f"listening on {sim.url}" in log
    assert "sim.fast-v1" in log
    assert "stopped" in log
