"""Per-model summaries over a window, computed on the real MongoDB-protocol server."""

from __future__ import annotations

from datetime import timedelta

import pytest

from ingest_app.summary import WindowError, parse_window, percentile, summarize
from tests.support.seed import ERRORS, NOW, RESULTS, failure_doc, result_doc, seed


def _summary(db, window="24h"):
    return summarize(db[RESULTS], db[ERRORS], window, now=NOW)


def _row(summary, model_name):
    rows = [m for m in summary.models if m.model_name == model_name]
    assert len(rows) == 1, f"{model_name} appears {len(rows)} times"
    return rows[0]


def test_empty_database_summarises_to_no_models_and_no_failures(mongo_db):
    summary = _summary(mongo_db)
    assert summary.models == ()
    assert summary.failures == ()
    assert summary.until - summary.since == timedelta(hours=24)


def test_each_model_gets_one_row_with_runs_failures_and_success_rate(mongo_db):
    seed(
        mongo_db,
        results=[result_doc("sim.fast-v1", NOW - timedelta(hours=h)) for h in range(1, 9)]
        + [result_doc("sim.steady-v1", NOW - timedelta(hours=h)) for h in range(1, 4)],
        failures=[failure_doc("sim.fast-v1", NOW - timedelta(minutes=30 + m)) for m in (0, 5)],
    )
    summary = _summary(mongo_db)
    assert [(m.provider, m.model_name) for m in summary.models] == [
        ("bedrock", "sim.fast-v1"), ("bedrock", "sim.steady-v1")]
    fast, steady = _row(summary, "sim.fast-v1"), _row(summary, "sim.steady-v1")
    assert (fast.runs, fast.failures, fast.success_rate) == (10, 2, 0.8)
    assert fast.success_rate == pytest.approx(0.8)
    assert (steady.runs, steady.failures, steady.success_rate) == (3, 0, 1.0)


def test_median_and_p90_of_ttft_and_tokens_per_second(mongo_db):
    seed(mongo_db, results=[
        result_doc("m", NOW - timedelta(minutes=i), tokens_per_second=float(i), ttft=i / 10)
        for i in range(1, 11)
    ])
    row = _row(_summary(mongo_db), "m")
    assert row.tokens_per_second_median == pytest.approx(5.5)
    assert row.tokens_per_second_p90 == pytest.approx(9.1)
    assert row.ttft_median == pytest.approx(0.55)
    assert row.ttft_p90 == pytest.approx(0.91)


def test_a_null_ttft_is_left_out_of_the_ttft_percentiles_not_counted_as_zero(mongo_db):
    seed(mongo_db, results=[
        result_doc("m", NOW - timedelta(minutes=1), ttft=None),
        result_doc("m", NOW - timedelta(minutes=2), ttft=0.4),
        result_doc("m", NOW - timedelta(minutes=3), ttft=0.6),
    ])
    row = _row(_summary(mongo_db), "m")
    assert row.runs == 3
    assert row.ttft_median == pytest.approx(0.5)


def test_window_start_is_inclusive_and_older_records_are_outside(mongo_db):
    since = NOW - timedelta(hours=1)
    seed(
        mongo_db,
        results=[result_doc("m", since, tokens_per_second=10.0),
                 result_doc("m", since - timedelta(milliseconds=1), tokens_per_second=999.0)],
        failures=[failure_doc("m", since),
                  failure_doc("m", since - timedelta(milliseconds=1))],
    )
    row = _row(_summary(mongo_db, "1h"), "m")
    assert (row.runs, row.failures) == (2, 1)
    assert row.tokens_per_second_p90 == pytest.approx(10.0)


def test_last_outcome_is_the_failure_kind_when_the_latest_record_failed(mongo_db):
    seed(
        mongo_db,
        results=[result_doc("m", NOW - timedelta(minutes=10))],
        failures=[failure_doc("m", NOW - timedelta(minutes=5), error_kind="timeout")],
    )
    row = _row(_summary(mongo_db), "m")
    assert row.last_outcome == "timeout"
    assert row.last_run == NOW - timedelta(minutes=5)
    assert row.last_result_at == NOW - timedelta(minutes=10)


def test_last_outcome_is_ok_when_the_latest_record_is_a_result(mongo_db):
    seed(
        mongo_db,
        results=[result_doc("m", NOW - timedelta(minutes=1))],
        failures=[failure_doc("m", NOW - timedelta(minutes=5), error_kind="timeout")],
    )
    row = _row(_summary(mongo_db), "m")
    assert (row.last_outcome, row.last_run) == ("ok", NOW - timedelta(minutes=1))


def test_a_model_silent_during_the_window_still_shows_when_it_last_ran(mongo_db):
    seed(
        mongo_db,
        results=[result_doc("stale", NOW - timedelta(days=3)),
                 result_doc("fresh", NOW - timedelta(minutes=1))],
        failures=[failure_doc("stale", NOW - timedelta(days=2), error_kind="auth")],
    )
    row = _row(_summary(mongo_db), "stale")
    assert (row.runs, row.failures, row.success_rate) == (0, 0, None)
    assert row.last_run == NOW - timedelta(days=2)
    assert row.last_outcome == "auth"
    assert row.tokens_per_second_median is None
    assert row.series == ()


def test_a_model_that_only_ever_failed_is_listed_with_its_failure_kind(mongo_db):
    seed(mongo_db, failures=[
        failure_doc("sim.retired-v1", NOW - timedelta(minutes=m), error_kind="model_unavailable",
                    message="This model version has reached the end of its life.")
        for m in (1, 6, 11)
    ])
    row = _row(_summary(mongo_db), "sim.retired-v1")
    assert (row.runs, row.failures, row.success_rate) == (3, 3, 0.0)
    assert row.last_outcome == "model_unavailable"
    assert row.last_result_at is None


def test_failures_group_by_fingerprint_with_count_and_latest_message(mongo_db):
    throttled = [failure_doc("m", NOW - timedelta(minutes=m)) for m in (3, 1, 2)]
    throttled[1]["message"] = "Too many requests (latest)."
    timeout = failure_doc("m", NOW - timedelta(minutes=4), error_kind="timeout",
                          stage="stream", message="Read timeout on endpoint URL")
    seed(mongo_db, failures=[*throttled, timeout])
    groups = _summary(mongo_db).failures
    assert [(g.error_kind, g.count) for g in groups] == [("throttled", 3), ("timeout", 1)]
    assert groups[0].last_message == "Too many requests (latest)."
    assert groups[0].last_ts == NOW - timedelta(minutes=1)
    assert groups[1].stage == "stream"


def test_sparkline_series_is_ordered_and_inside_the_window(mongo_db):
    seed(mongo_db, results=[
        result_doc("m", NOW - timedelta(hours=h), tokens_per_second=10.0 * h) for h in range(1, 6)
    ])
    summary = _summary(mongo_db)
    series = _row(summary, "m").series
    assert len(series) == 5
    assert [t for t, _ in series] == sorted(t for t, _ in series)
    assert all(summary.since <= t <= summary.until for t, _ in series)
    assert [v for _, v in series] == [50.0, 40.0, 30.0, 20.0, 10.0]


@pytest.mark.parametrize(("text", "expected"), [
    ("30m", timedelta(minutes=30)), ("1h", timedelta(hours=1)),
    ("24h", timedelta(hours=24)), ("7d", timedelta(days=7)),
])
def test_window_accepts_a_count_and_a_unit(text, expected):
    assert parse_window(text) == expected


@pytest.mark.parametrize("text", ["", "24", "h", "0h", "-1h", "1.5h", "1w", "24 h", "32d", "1H"])
def test_window_refuses_anything_else(text):
    with pytest.raises(WindowError):
        parse_window(text)


def test_percentile_interpolates_and_handles_one_and_no_values():
    assert percentile([], 0.5) is None
    assert percentile([4.0], 0.9) == 4.0
    assert percentile([1.0, 2.0], 0.5) == pytest.approx(1.5)
