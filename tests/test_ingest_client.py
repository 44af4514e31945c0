"""The ingest client: what goes on the wire and how answers come back."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest

import bench_contract as contract
from runner.ingest_client import IngestClient, parse_retry_after
from runner.payload import BodyTooLarge
from tests.support.mongo import free_port
from tests.support.runner import SCRIPTED_KEY, Scripted, make_result


@pytest.fixture
def settings(make_settings, scripted_ingest):
    return make_settings(ingest_url=scripted_ingest.ingest_url)


def post_result(settings, payload):
    with IngestClient(settings) as client:
        return client.post_result(payload)


def test_a_result_is_posted_with_the_key_and_answered_stored(settings, scripted_ingest):
    result = make_result()
    assert post_result(settings, result.to_payload()).delivered is True
    (post,) = scripted_ingest.posts("/ingest")
    assert post.headers["X-API-Key"] == SCRIPTED_KEY
    assert post.headers["Content-Type"] == "application/json"
    assert post.headers["User-Agent"].startswith("bench-runner/")
    assert post.json() == result.to_payload()


def test_a_duplicate_counts_as_delivered(settings, scripted_ingest):
    result = make_result()
    assert post_result(settings, result.to_payload()).delivered is True
    assert post_result(settings, result.to_payload()).delivered is True
    assert len(scripted_ingest.posts("/ingest")) == 2
    assert len(scripted_ingest.stored) == 1


def test_a_refusal_is_not_delivered(settings, scripted_ingest):
    scripted_ingest.script("/ingest", Scripted(422, {"error": {"code": "invalid",
                                                               "message": "bad field"}}))
    assert post_result(settings, make_result().to_payload()).delivered is False


def test_body_over_the_contract_limit_is_refused_before_sending(settings, scripted_ingest):
    with IngestClient(settings) as client, pytest.raises(BodyTooLarge):
        client.post_result({"misc": "x" * contract.MAX_BODY_BYTES})
    assert scripted_ingest.requests == []


def test_no_listener_gives_an_answer_without_status(make_settings):
    settings = make_settings(ingest_url=f"http://127.0.0.1:{free_port()}/ingest")
    with IngestClient(settings) as client:
        answer = client.post_result(make_result().to_payload())
    assert answer.status is None
    assert not answer.delivered
    assert "ConnectionError" in answer.describe()


def test_503_is_retried_inside_the_call_then_delivered(make_settings, scripted_ingest):
    settings = make_settings(ingest_url=scripted_ingest.ingest_url, http_retries=2)
    scripted_ingest.script("/ingest/error", Scripted(503, {"error": {"code": "db",
                                                                     "message": "down"}}))
    with IngestClient(settings) as client:
        answer = client.post_error({"error_id": "e-1"})
    assert answer.status == 201
    assert len(scripted_ingest.posts("/ingest/error")) == 2


def test_long_retry_after_comes_back_to_the_caller_instead_of_sleeping(
        make_settings, scripted_ingest):
    settings = make_settings(ingest_url=scripted_ingest.ingest_url, http_retries=2,
                             max_inline_retry_after=5.0)
    scripted_ingest.script("/ingest", Scripted(503, None, {"Retry-After": "120"}))
    with IngestClient(settings) as client:
        answer = client.post_result(make_result().to_payload())
    assert answer.status == 503
    assert answer.retry_after == 120.0
    assert len(scripted_ingest.posts("/ingest")) == 1


def test_500_is_not_retried_inside_the_call(make_settings, scripted_ingest):
    settings = make_settings(ingest_url=scripted_ingest.ingest_url, http_retries=2)
    scripted_ingest.script("/ingest", Scripted(500, {"error": {"code": "internal",
                                                               "message": "bug"}}))
    with IngestClient(settings) as client:
        answer = client.post_result(make_result().to_payload())
    assert answer.status == 500
    assert answer.describe() == "HTTP 500: bug"
    assert len(scripted_ingest.posts("/ingest")) == 1


def test_retry_after_accepts_seconds_and_http_dates():
    now = datetime(2026, 1, 1, tzinfo=UTC)
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after(format_datetime(now + timedelta(seconds=30), usegmt=True),
                             now=now.timestamp()) == 30.0
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None


def test_the_key_never_appears_in_log_lines(settings, scripted_ingest, caplog):
    caplog.set_level(logging.DEBUG)
    scripted_ingest.script("/ingest", Scripted(401, {"error": {"code": "unauthorized",
                                                               "message": "bad key"}}))
    post_result(settings, make_result().to_payload())
    post_result(settings, make_result().to_payload())
    assert caplog.records
    assert SCRIPTED_KEY not in caplog.text
    assert SCRIPTED_KEY not in repr(settings)


def test_413_with_retry_after_is_not_retried_inside_the_call(make_settings, scripted_ingest):
    settings = make_settings(ingest_url=scripted_ingest.ingest_url, http_retries=2)
    scripted_ingest.script("/ingest", Scripted(413, None, {"Retry-After": "1"}))
    with IngestClient(settings) as client:
        answer = client.post_result(make_result().to_payload())
    assert answer.status == 413
    assert len(scripted_ingest.posts("/ingest")) == 1


def test_a_redirect_is_not_followed_so_the_key_never_leaves_for_another_host(
        make_settings, scripted_ingest):
    from tests.support.runner import ScriptedIngest

    elsewhere = ScriptedIngest()
    elsewhere.start()
    try:
        scripted_ingest.script("/ingest", Scripted(307, None,
                                                   {"Location": elsewhere.ingest_url}))
        settings = make_settings(ingest_url=scripted_ingest.ingest_url, http_retries=2)
        with IngestClient(settings) as client:
            answer = client.post_result(make_result().to_payload())
    finally:
        elsewhere.stop()
    assert elsewhere.requests == []
    assert answer.status == 307
    assert not answer.delivered
