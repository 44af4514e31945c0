"""One cycle: real boto3 against the Bedrock simulator, real HTTP to an ingest API, real outbox."""

from __future__ import annotations

import errno
import json
import logging

import pytest

from runner import outbox as outbox_module
from runner.cli import ExitCode, exit_code
from runner.cycle import report_cycle_failure, run_cycle
from runner.ingest_client import IngestClient
from runner.outbox import Outbox
from runner.provider import get_provider
from runner.records import Failure, Result
from tests.support.mongo import free_port
from tests.support.runner import Scripted, make_result

FAST = {"ttft": 0.05, "gap": 0.005, "tokens_per_delta": 4, "output_tokens": 16}
SIM = {"models": {
    "sim.a-v1": FAST,
    "sim.b-v1": FAST,
    "sim.c-v1": FAST,
    "sim.retired-v1": {"error": "end_of_life", "lifecycle": "LEGACY"},
}}


@pytest.fixture
def provider(bedrock_sim):
    bedrock_sim(SIM)
    p = get_provider("bedrock", region="us-east-1", concurrency=2, call_timeout=10.0,
                     retries=0)
    yield p
    p.close()


def cycle(settings, provider, **kw):
    box = Outbox.from_settings(settings)
    with IngestClient(settings) as client:
        return run_cycle(settings, provider, box, client, **kw), box


def test_cycle_measures_queues_and_delivers_every_result_and_failure(
        make_settings, scripted_ingest, provider):
    settings = make_settings(ingest_url=scripted_ingest.ingest_url,
                             models=("sim.a-v1", "sim.retired-v1", "sim.b-v1"), concurrency=2)
    seen = []
    report, box = cycle(settings, provider, on_outcome=seen.append)
    assert sorted(o.model for o in seen) == sorted(settings.models)
    assert {o.model for o in report.outcomes if o.ok} == {"sim.a-v1", "sim.b-v1"}
    (failed,) = [o for o in report.outcomes if not o.ok]
    assert failed.record.error_kind == "model_unavailable"
    assert report.failed
    assert report.pending == 0
    assert box.pending_count() == 0
    results = [item for post in scripted_ingest.posts("/ingest/batch")
               for item in post.json()["results"]]
    assert sorted(r["model_name"] for r in results) == ["sim.a-v1", "sim.b-v1"]
    assert all(r["output_tokens"] == 16 for r in results)
    (error,) = [p.json() for p in scripted_ingest.posts("/ingest/error")]
    assert error["model_name"] == "sim.retired-v1"
    assert error["error_id"] == failed.record.error_id


def test_old_pending_records_are_delivered_before_measuring(
        make_settings, scripted_ingest, provider):
    # Scenario 5, across runs: what waited from an earlier run goes first.
    settings = make_settings(ingest_url=scripted_ingest.ingest_url, models=("sim.a-v1",))
    old = make_result("sim.earlier-v1")
    Outbox.from_settings(settings).put(old)
    report, _ = cycle(settings, provider)
    first_batch = scripted_ingest.posts("/ingest/batch")[0].json()["results"]
    assert [r["result_id"] for r in first_batch] == [old.result_id]
    assert report.delivery.delivered == 2
    assert not report.failed


def test_api_down_leaves_every_record_pending_for_the_next_run(make_settings, provider,
                                                                scripted_ingest):
    # Scenario 5: ingest API down during the run.
    down = make_settings(ingest_url=f"http://127.0.0.1:{free_port()}/ingest",
                         models=("sim.a-v1", "sim.retired-v1"), retry_base=0.0)
    report, box = cycle(down, provider)
    assert len(report.outcomes) == 2
    assert report.pending == 2
    assert box.pending_count() == 2
    assert any("pending/" in p for p in report.problems())

    up = make_settings(ingest_url=scripted_ingest.ingest_url, models=("sim.b-v1",),
                       retry_base=0.0)
    report, box = cycle(up, provider)
    assert report.pending == 0
    assert len(scripted_ingest.stored) == 3


def test_outbox_over_its_bound_measures_nothing_and_keeps_every_record(
        make_settings, provider, bedrock_sim):
    # Scenario 10 (bound): the API is down, the outbox is at its bound.
    settings = make_settings(ingest_url=f"http://127.0.0.1:{free_port()}/ingest",
                             models=("sim.a-v1",), max_pending=2)
    box = Outbox.from_settings(settings)
    kept = [make_result("sim.old-v1").result_id for _ in range(2)]
    for _ in kept:
        box.put(make_result("sim.old-v1"))
    report, box = cycle(settings, provider)
    assert report.outbox_full and "bound of 2" in report.outbox_full
    assert report.outcomes == []
    assert report.skipped == ["sim.a-v1"]
    assert box.pending_count() == 2


def test_full_disk_stops_measuring_and_hands_the_record_over_directly(
        make_settings, scripted_ingest, provider, monkeypatch):
    # Scenario 10 (disk): the first record cannot be written; it is posted straight away.
    settings = make_settings(ingest_url=scripted_ingest.ingest_url,
                             models=("sim.a-v1", "sim.b-v1", "sim.c-v1"), concurrency=1)

    def full(fd, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    box = Outbox.from_settings(settings)
    monkeypatch.setattr(outbox_module, "_write_all", full)
    with IngestClient(settings) as client:
        report = run_cycle(settings, provider, box, client)
    assert "full" in report.outbox_full
    # With one worker, at most the model already in flight finishes after the disk filled.
    assert 1 <= len(report.outcomes) <= 2
    assert "sim.c-v1" in report.skipped
    assert report.lost == 0
    posted = [p.json()["result_id"] for p in scripted_ingest.posts("/ingest")]
    assert posted == [o.record.result_id for o in report.outcomes]
    assert list(box.tmp.iterdir()) == []


def test_unauthorized_at_the_first_drain_measures_nothing(make_settings, scripted_ingest,
                                                          provider, bedrock_sim):
    settings = make_settings(ingest_url=scripted_ingest.ingest_url, models=("sim.a-v1",))
    Outbox.from_settings(settings).put(make_result())
    scripted_ingest.script("/ingest/batch", Scripted(401, {"error": {"code": "unauthorized",
                                                                     "message": "no"}}))
    report, _ = cycle(settings, provider)
    assert report.delivery.auth_refused
    assert report.outcomes == []
    assert report.skipped == ["sim.a-v1"]


def test_a_provider_bug_becomes_a_failure_record_and_the_run_goes_on(
        make_settings, scripted_ingest, provider, monkeypatch):
    settings = make_settings(ingest_url=scripted_ingest.ingest_url,
                             models=("sim.a-v1", "sim.b-v1"))
    real = provider.measure

    def flaky(model_id, profile):
        if model_id == "sim.a-v1":
            raise RuntimeError("bug in the provider")
        return real(model_id, profile)

    monkeypatch.setattr(provider, "measure", flaky)
    report, _ = cycle(settings, provider)
    by_model = {o.model: o.record for o in report.outcomes}
    assert isinstance(by_model["sim.b-v1"], Result)
    assert isinstance(by_model["sim.a-v1"], Failure)
    assert by_model["sim.a-v1"].error_kind == "unknown"
    assert "bug in the provider" in scripted_ingest.posts("/ingest/error")[0].json()["message"]


def test_stop_request_measures_no_further_model(make_settings, scripted_ingest, provider):
    settings = make_settings(ingest_url=scripted_ingest.ingest_url,
                             models=("sim.a-v1", "sim.b-v1", "sim.c-v1"), concurrency=1)

    class StopAfterFirst:
        def __init__(self):
            self.calls = 0

        def is_set(self):
            self.calls += 1
            return self.calls > 1

    report, _ = cycle(settings, provider, stop=StopAfterFirst())
    assert [o.model for o in report.outcomes] == ["sim.a-v1"]
    assert report.skipped == ["sim.b-v1", "sim.c-v1"]
    assert report.pending == 0


def test_results_land_once_in_mongodb_through_real_gunicorn(make_settings, ingest_server,
                                                           provider):
    settings = make_settings(ingest_url=ingest_server.ingest_url, api_key=ingest_server.key,
                             models=("sim.a-v1", "sim.b-v1", "sim.retired-v1"), concurrency=2)
    report, _box = cycle(settings, provider)
    assert report.pending == 0
    assert report.delivery.dead == 0
    stored = list(ingest_server.db["metrics_cloud_v2"].find({}, {"_id": 0}))
    assert sorted(d["model_name"] for d in stored) == ["sim.a-v1", "sim.b-v1"]
    ids = {o.record.result_id for o in report.outcomes if o.ok}
    assert {d["result_id"] for d in stored} == ids
    errors = list(ingest_server.db["errors_cloud"].find({}, {"_id": 0}))
    assert [e["model_name"] for e in errors] == ["sim.retired-v1"]
    assert errors[0]["error_kind"] == "model_unavailable"


def test_record_left_after_the_api_stored_it_is_resent_and_stored_once(
        make_settings, ingest_server):
    # Scenario 8 on the real app: killed after the 2xx, before deleting the file.
    settings = make_settings(ingest_url=ingest_server.ingest_url, api_key=ingest_server.key)
    result = make_result()
    box = Outbox.from_settings(settings)
    path = box.put(result)
    saved = path.read_bytes()
    with IngestClient(settings) as client:
        assert box.drain(client).delivered == 1
        path.write_bytes(saved)  # the file a crash would have left behind
        report = box.drain(client)
    assert report.duplicates == 1
    assert box.pending_count() == 0
    assert ingest_server.db["metrics_cloud_v2"].count_documents(
        {"result_id": result.result_id}) == 1


def test_record_the_real_app_refuses_is_dead_lettered_with_its_answer(
        make_settings, ingest_server):
    # Scenario 13 on the real app: an unknown field is a 422 naming the field.
    settings = make_settings(ingest_url=ingest_server.ingest_url, api_key=ingest_server.key)
    box = Outbox.from_settings(settings)
    box.put(make_result())
    bad = box.pending / next(iter(sorted(p.name for p in box.pending.iterdir())))
    doc = json.loads(bad.read_text())
    doc["payload"]["colour"] = "blue"
    bad.write_text(json.dumps(doc))
    with IngestClient(settings) as client:
        report = box.drain(client)
    assert report.dead == 1
    reason = json.loads(next(box.dead.glob("*.reason.json")).read_text())
    assert "colour" in json.dumps(reason["body"])
    assert ingest_server.db["metrics_cloud_v2"].count_documents({}) == 0


def test_setup_failure_in_a_later_cycle_is_reported_as_a_failure_per_model(
        make_settings, scripted_ingest, bedrock_sim, monkeypatch):
    bedrock_sim(SIM)
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    settings = make_settings(ingest_url=scripted_ingest.ingest_url,
                             models=("sim.a-v1", "sim.b-v1"))
    fresh = get_provider("bedrock", region="us-east-1")
    try:
        report, box = cycle(settings, fresh, warm=True)
    finally:
        fresh.close()
    assert "No AWS credentials" in report.setup_error
    errors = [p.json() for p in scripted_ingest.posts("/ingest/error")]
    assert sorted(e["model_name"] for e in errors) == ["sim.a-v1", "sim.b-v1"]
    assert {(e["stage"], e["error_kind"]) for e in errors} == {("setup", "auth")}
    assert {e["attempts"] for e in errors} == {0}  # no call was made
    assert box.pending_count() == 0


def test_results_measured_while_the_api_was_down_reach_mongodb_on_the_next_run(
        make_settings, ingest_server, provider):
    # Scenario 5 on the real app: down during the first run, up for the second.
    down = make_settings(ingest_url=f"http://127.0.0.1:{free_port()}/ingest",
                         api_key=ingest_server.key, models=("sim.a-v1",), retry_base=0.0)
    first, box = cycle(down, provider)
    assert box.pending_count() == 1
    up = make_settings(ingest_url=ingest_server.ingest_url, api_key=ingest_server.key,
                       models=("sim.b-v1",), retry_base=0.0)
    second, box = cycle(up, provider)
    assert box.pending_count() == 0
    stored = {d["result_id"] for d in ingest_server.db["metrics_cloud_v2"].find()}
    assert stored == {first.outcomes[0].record.result_id, second.outcomes[0].record.result_id}


def test_an_outbox_write_error_hands_the_record_over_and_measures_nothing_new(
        make_settings, scripted_ingest, provider, monkeypatch):
    # Not only a full disk: any write error (EIO, a read-only remount) must not lose the
    # record in hand nor those of the models still being measured.
    settings = make_settings(ingest_url=scripted_ingest.ingest_url,
                             models=("sim.a-v1", "sim.b-v1", "sim.c-v1"), concurrency=1)

    def broken(fd, data):
        raise OSError(errno.EIO, "Input/output error")

    box = Outbox.from_settings(settings)
    monkeypatch.setattr(outbox_module, "_write_all", broken)
    with IngestClient(settings) as client:
        report = run_cycle(settings, provider, box, client)
    assert "Input/output error" in report.outbox_full
    assert "sim.c-v1" in report.skipped
    assert report.lost == 0
    posted = [p.json()["result_id"] for p in scripted_ingest.posts("/ingest")]
    assert posted == [o.record.result_id for o in report.outcomes]
    assert exit_code(report) == ExitCode.OUTBOX_FULL


def test_a_failing_progress_line_loses_no_record(make_settings, scripted_ingest, provider):
    # E.g. stdout piped into `head`, closed after the first line.
    settings = make_settings(ingest_url=scripted_ingest.ingest_url,
                             models=("sim.a-v1", "sim.b-v1", "sim.c-v1"), concurrency=1)

    def broken_pipe(outcome):
        raise BrokenPipeError(32, "Broken pipe")

    report, box = cycle(settings, provider, on_outcome=broken_pipe)
    assert sorted(o.model for o in report.outcomes) == list(settings.models)
    assert sorted(d["model_name"] for d in scripted_ingest.stored.values()) == \
        list(settings.models)
    assert box.pending_count() == 0


def test_an_error_inside_the_cycle_leaves_a_failure_per_model_in_the_outbox(
        make_settings, scripted_ingest, provider, monkeypatch):
    settings = make_settings(ingest_url=scripted_ingest.ingest_url,
                             models=("sim.a-v1", "sim.b-v1"))
    box = Outbox.from_settings(settings)

    def unreadable(client, **kw):
        raise PermissionError(13, "Permission denied", str(box.pending))

    monkeypatch.setattr(box, "drain", unreadable)
    with IngestClient(settings) as client:
        report = run_cycle(settings, provider, box, client)
    assert "PermissionError" in report.cycle_error
    assert exit_code(report) == ExitCode.ERROR
    queued = [json.loads(p.read_text())["payload"] for p in sorted(box.pending.iterdir())]
    assert sorted(f["model_name"] for f in queued) == ["sim.a-v1", "sim.b-v1"]
    assert {(f["stage"], f["error_kind"]) for f in queued} == {("setup", "unknown")}
    assert all("Permission denied" in f["message"] for f in queued)


def test_setup_failures_respect_the_outbox_bound(make_settings, bedrock_sim, monkeypatch):
    # Lost credentials with the API down, cycle after cycle: the outbox must stay bounded.
    bedrock_sim(SIM)
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    settings = make_settings(ingest_url=f"http://127.0.0.1:{free_port()}/ingest",
                             models=("sim.a-v1", "sim.b-v1"), max_pending=3)
    box = Outbox.from_settings(settings)
    box.put(make_result("sim.old-v1"))
    fresh = get_provider("bedrock", region="us-east-1")
    try:
        for _ in range(3):
            report, box = cycle(settings, fresh, warm=True)
    finally:
        fresh.close()
    assert box.pending_count() == 3
    assert "bound of 3" in report.outbox_full
    assert exit_code(report) != ExitCode.OK
    assert report_cycle_failure(settings, box, RuntimeError("broken")) == 0
    assert box.pending_count() == 3


def test_an_aws_secret_in_a_runner_error_reaches_neither_the_failure_nor_the_log(
        make_settings, scripted_ingest, provider, monkeypatch, caplog):
    caplog.set_level(logging.DEBUG)
    settings = make_settings(ingest_url=scripted_ingest.ingest_url, models=("sim.a-v1",))

    def leaky(model_id, profile):
        raise RuntimeError("signing failed for Credential=AKIAIOSFODNN7EXAMPLE/20261127 "
                           "x-amz-security-token:IQoJb3JpZ2luX2VjEJr0secret0token")

    monkeypatch.setattr(provider, "measure", leaky)
    report, _ = cycle(settings, provider)
    (posted,) = [p.json() for p in scripted_ingest.posts("/ingest/error")]
    for text in (posted["message"], caplog.text, json.dumps(report.to_json())):
        assert "AKIAIOSFODNN7EXAMPLE" not in text
        assert "IQoJb3JpZ2luX2VjEJr0secret0token" not in text
    assert "RuntimeError: signing failed" in posted["message"]


def test_bedrock_unreachable_in_a_later_cycle_is_classified_by_the_exception(
        make_settings, scripted_ingest, bedrock_sim):
    sim = bedrock_sim(SIM)
    settings = make_settings(ingest_url=scripted_ingest.ingest_url, models=("sim.a-v1",))
    p = get_provider("bedrock", region="us-east-1", retries=0)
    try:
        p.warm()
        sim.stop()  # the endpoint goes away between daemon cycles
        report, _ = cycle(settings, p, warm=True)
    finally:
        p.close()
    assert "Cannot reach Bedrock" in report.setup_error
    (error,) = [post.json() for post in scripted_ingest.posts("/ingest/error")]
    assert (error["stage"], error["error_kind"]) == ("setup", "transient")
    assert error["exc_type"] == "EndpointConnectionError"


def test_an_error_inside_every_cycle_keeps_the_outbox_bounded(
        make_settings, scripted_ingest, provider, monkeypatch):
    settings = make_settings(ingest_url=scripted_ingest.ingest_url,
                             models=("sim.a-v1", "sim.b-v1"), max_pending=3)
    box = Outbox.from_settings(settings)

    def unreadable(client, **kw):
        raise PermissionError(13, "Permission denied", str(box.pending))

    monkeypatch.setattr(box, "drain", unreadable)
    with IngestClient(settings) as client:
        reports = [run_cycle(settings, provider, box, client) for _ in range(3)]
    assert box.pending_count() == 2
    assert "bound of 3" in reports[-1].outbox_full
    assert reports[-1].skipped == ["sim.a-v1", "sim.b-v1"]
