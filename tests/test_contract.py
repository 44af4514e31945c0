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


def test_the_published_profile_is_the_request_the_history_was_made_with():
    from runner.records import CATALOGUE, Profile

    story = "Tell a long and happy story about the history of the world."
    assert CATALOGUE["cloud-default-v1"] == Profile(
        prompt=story, max_tokens=64, temperature=0.1, profile_id="cloud-default-v1",
        sample_role="published")
    assert Profile() == CATALOGUE["cloud-default-v1"]
    assert CATALOGUE["cloud-long-v1"] == Profile(
        prompt=story, max_tokens=512, temperature=0.1, profile_id="cloud-long-v1",
        sample_role="published")
    assert CATALOGUE["cloud-reasoning-v1"] == Profile(
        prompt=story, max_tokens=2048, temperature=0.1, profile_id="cloud-reasoning-v1",
        sample_role="shadow")


def test_a_profile_of_ones_own_is_measured_alone_and_never_published(tmp_path):
    from runner import settings as cfg

    own = cfg.load(state_dir=tmp_path, max_tokens=128, profile_id="my-long-v1",
                   profiles="cloud-default-v1,cloud-long-v1", environ={})
    assert [(p.profile_id, p.max_tokens, p.sample_role) for p in own.profiles] == [
        ("my-long-v1", 128, "probe")]
    chosen = cfg.load(state_dir=tmp_path, profiles="cloud-long-v1, cloud-default-v1",
                      environ={})
    assert [p.profile_id for p in chosen.profiles] == ["cloud-long-v1", "cloud-default-v1"]
