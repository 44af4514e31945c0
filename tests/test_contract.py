"""The runner's records carry exactly the contract's fields."""

import dataclasses
from datetime import UTC, datetime

import pytest

import bench_contract as contract
from runner.records import Failure, Result


def test_result_record_has_exactly_the_contract_fields():
    assert {f.name for f in dataclasses.fields(Result)} == set(contract.RESULT_FIELDS)


def test_failure_record_has_exactly_the_contract_fields():
    assert {f.name for f in dataclasses.fields(Failure)} == set(contract.ERROR_FIELDS)


def test_failure_refuses_an_unknown_kind():
    with pytest.raises(ValueError, match="error kind"):
        Failure(provider="bedrock", model_name="m", ts=datetime.now(UTC), stage="call",
                error_kind="bad", message="x")


def test_failure_message_is_capped_at_the_contract_limit():
    f = Failure(provider="bedrock", model_name="m", ts=datetime.now(UTC), stage="call",
                error_kind="unknown", message="x" * 10_000)
    assert len(f.to_payload()["message"]) == contract.MAX_MESSAGE_CHARS


def test_result_payload_sends_explicit_null_ttft():
    r = Result(provider="bedrock", model_name="m", run_ts=datetime.now(UTC), output_tokens=0,
               generate_time=1.0, tokens_per_second=0.0)
    payload = r.to_payload()
    assert payload["time_to_first_token"] is None
    assert payload["run_ts"].endswith("+00:00")
