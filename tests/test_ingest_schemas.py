"""The app's schemas hold exactly the contract's fields, and the runner's payloads pass them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from prometheus_client import REGISTRY

import bench_contract as contract
from ingest_app.schemas import FAILURE_SCHEMA, RESULT_SCHEMA, FailureSchema, ResultSchema
from runner.records import Failure, Result
from tests.support.ingest import result_payload


def required(schema) -> set[str]:
    return {name for name, field in schema.fields.items() if field.required}


def test_result_schema_has_exactly_the_contract_fields():
    assert set(ResultSchema().fields) == set(contract.RESULT_FIELDS)
    assert required(ResultSchema()) == set(contract.RESULT_REQUIRED)


def test_failure_schema_has_exactly_the_contract_fields():
    assert set(FailureSchema().fields) == set(contract.ERROR_FIELDS)
    assert required(FailureSchema()) == set(contract.ERROR_REQUIRED)


def test_server_fields_are_not_accepted_from_clients():
    assert not set(contract.SERVER_RESULT_FIELDS) & set(ResultSchema().fields)
    assert not set(contract.SERVER_ERROR_FIELDS) & set(FailureSchema().fields)


def test_a_minimal_runner_result_passes_the_schema():
    record = Result(provider="bedrock", model_name="sim.fast-v1", run_ts=datetime.now(UTC),
                    output_tokens=0, generate_time=0.4, tokens_per_second=0.0)
    loaded = RESULT_SCHEMA.load(record.to_payload())
    assert loaded["result_id"] == record.result_id
    assert loaded["time_to_first_token"] is None


def test_a_full_runner_result_passes_the_schema():
    now = datetime.now(UTC)
    record = Result(
        provider="bedrock", model_name="us.sim.reasoner-v1", run_ts=now - timedelta(seconds=3),
        output_tokens=64, generate_time=2.5, tokens_per_second=25.6, region="us-west-2",
        gen_ts=now, benchmark_profile_id=contract.DEFAULT_PROFILE_ID, requested_tokens=64,
        temperature=None, input_tokens=20, token_source="stream_chunks",
        time_to_first_token=1.2, time_to_first_any_token=0.3, decode_tokens_per_second=48.0,
        server_latency_ms=2400, stop_reason="max_tokens", request_id="abc", attempts=2,
        chunk_count=30, reasoning_tokens=12, misc={"note": "warm", "n": [1, 2.5]},
        ttft_available=True, generated_output_tokens=64, visible_output_tokens=52,
        generated_tokens_per_second=25.6, visible_tokens_per_second=20.8,
        time_to_64_visible_tokens_seconds=None,
    )
    loaded = RESULT_SCHEMA.load(record.to_payload())
    assert set(loaded) == set(contract.RESULT_FIELDS)


@pytest.mark.parametrize("stage", contract.STAGES)
@pytest.mark.parametrize("kind", contract.ERROR_KINDS)
def test_every_runner_failure_passes_the_schema(stage, kind):
    record = Failure(provider="bedrock", model_name="sim.retired-v1", ts=datetime.now(UTC),
                     stage=stage, error_kind=kind, message="x" * 10_000, exc_type="E",
                     provider_error_code="Code", http_status=429, request_id="r", attempts=3,
                     region="us-east-1", benchmark_profile_id="cloud-default-v1",
                     misc={"retry_after": 2})
    loaded = FAILURE_SCHEMA.load(record.to_payload())
    assert loaded["error_id"] == record.error_id
    assert len(loaded["message"]) == contract.MAX_MESSAGE_CHARS


def test_openapi_document_describes_every_write_route_and_field(client):
    answer = client.get("/openapi.json")
    assert answer.status_code == 200
    spec = answer.get_json()
    assert spec["openapi"].startswith("3.")
    assert {"/ingest", "/ingest/batch", "/ingest/error", "/health", "/ready"} <= set(spec["paths"])
    components = spec["components"]["schemas"]
    assert set(components["Result"]["properties"]) == set(contract.RESULT_FIELDS)
    assert set(components["Result"]["required"]) == set(contract.RESULT_REQUIRED)
    assert set(components["Failure"]["properties"]) == set(contract.ERROR_FIELDS)
    assert components["Failure"]["properties"]["stage"]["enum"] == list(contract.STAGES)
    responses = spec["paths"]["/ingest"]["post"]["responses"]
    assert {"201", "200", "400", "401", "409", "413", "415", "422", "503"} <= set(responses)


def test_wrong_method_answers_405_in_the_one_error_shape(client):
    answer = client.get("/ingest")
    assert answer.status_code == 405
    assert answer.get_json()["error"]["code"] == "method_not_allowed"
    assert "POST" in answer.headers["Allow"]


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_writes_and_rejections_are_counted(client, auth_headers):
    created = sample("bench_ingest_records_total", kind="result", outcome="created")
    duplicate = sample("bench_ingest_records_total", kind="result", outcome="duplicate")
    refused = sample("bench_ingest_rejections_total", reason="validation_error")
    unauthorized = sample("bench_ingest_rejections_total", reason="unauthorized")
    payload = result_payload()
    client.post("/ingest", json=payload, headers=auth_headers)
    client.post("/ingest", json=payload, headers=auth_headers)
    client.post("/ingest", json=result_payload(output_tokens="x"), headers=auth_headers)
    client.post("/ingest", json=result_payload())
    assert sample("bench_ingest_records_total", kind="result", outcome="created") == created + 1
    assert sample("bench_ingest_records_total", kind="result",
                  outcome="duplicate") == duplicate + 1
    assert sample("bench_ingest_rejections_total", reason="validation_error") == refused + 1
    assert sample("bench_ingest_rejections_total", reason="unauthorized") == unauthorized + 1
