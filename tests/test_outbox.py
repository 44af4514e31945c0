"""The outbox keeps every record on disk until the ingest API has it (docs/reliability.md)."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import bench_contract as contract
from runner import outbox as outbox_module
from runner.ingest_client import IngestClient
from runner.outbox import Outbox, OutboxFull
from tests.support.mongo import free_port
from tests.support.runner import Scripted, make_failure, make_result

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def settings(make_settings, scripted_ingest):
    return make_settings(ingest_url=scripted_ingest.ingest_url)


@pytest.fixture
def outbox(settings):
    return Outbox.from_settings(settings)


@pytest.fixture
def client(settings):
    with IngestClient(settings) as c:
        yield c


def files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def test_put_writes_one_complete_record_file_into_pending(outbox):
    result = make_result()
    path = outbox.put(result)
    assert path.parent == outbox.pending
    doc = json.loads(path.read_text())
    assert doc["kind"] == "result"
    assert doc["id"] == result.result_id
    assert doc["payload"] == result.to_payload()
    assert doc["attempts"] == 0
    assert doc["next_attempt_at"] <= time.time()
    assert doc["last_status"] is None
    assert files(outbox.tmp) == []


def test_a_record_json_cannot_hold_goes_to_dead_and_the_next_one_is_queued(outbox):
    odd = make_result(misc={"tags": {"a", "b"}})
    assert outbox.put(odd).parent == outbox.dead
    assert outbox.put(make_result()).parent == outbox.pending
    assert outbox.pending_count() == 1 and outbox.dead_count() == 1
    assert "not valid JSON" in outbox.status().dead_items[0].reason


def test_drain_sends_results_in_one_batch_oldest_first_and_deletes_them(
        outbox, client, scripted_ingest):
    results = [make_result(f"model-{i}") for i in range(5)]
    for r in results:
        outbox.put(r)
    report = outbox.drain(client)
    batches = scripted_ingest.posts("/ingest/batch")
    assert len(batches) == 1
    sent = [item["result_id"] for item in batches[0].json()["results"]]
    assert sent == [r.result_id for r in results]
    assert report.delivered == 5
    assert report.pending_left == 0
    assert files(outbox.pending) == []


def test_failures_go_one_by_one_to_the_error_route(outbox, client, scripted_ingest):
    failures = [make_failure(), make_failure("sim.other-v1")]
    for f in failures:
        outbox.put(f)
    report = outbox.drain(client)
    posts = scripted_ingest.posts("/ingest/error")
    assert [p.json()["error_id"] for p in posts] == [f.error_id for f in failures]
    assert report.delivered == 2
    assert files(outbox.pending) == []


def test_results_wait_in_pending_while_the_api_is_down_and_the_next_drain_delivers_them(
        make_settings, scripted_ingest):
    # Scenario 5: nothing listens on the port during the first drain.
    down = make_settings(ingest_url=f"http://127.0.0.1:{free_port()}/ingest", retry_base=0.0)
    box = Outbox.from_settings(down)
    results = [make_result(f"model-{i}") for i in range(3)]
    for r in results:
        box.put(r)
    with IngestClient(down) as c:
        report = box.drain(c)
    assert report.delivered == 0
    assert report.retry_later == 3
    assert report.pending_left == 3
    doc = json.loads((box.pending / files(box.pending)[0]).read_text())
    assert doc["attempts"] == 1
    assert doc["last_status"] is None
    assert "ConnectionError" in doc["last_error"]

    up = make_settings(ingest_url=scripted_ingest.ingest_url, retry_base=0.0)
    with IngestClient(up) as c:
        report = Outbox.from_settings(up).drain(c)
    assert report.delivered == 3
    assert set(scripted_ingest.stored) == {r.result_id for r in results}
    assert files(box.pending) == []


def test_record_left_behind_after_a_2xx_is_resent_answered_duplicate_and_deleted(
        outbox, client, scripted_ingest):
    # Scenario 8: the runner died after the API stored the record, before deleting the file.
    result = make_result()
    outbox.put(result)
    scripted_ingest.stored[result.result_id] = result.to_payload()
    report = outbox.drain(client)
    assert report.duplicates == 1
    assert report.delivered == 0
    assert files(outbox.pending) == []


def test_writer_killed_mid_write_leaves_nothing_in_pending_and_tmp_is_cleaned_next_start(
        settings, scripted_ingest, client):
    # Scenario 9: a real process is SIGKILLed while its record is half written.
    script = textwrap.dedent(f"""
        import os, sys, time
        from pathlib import Path
        from runner import outbox as m
        from tests.support.runner import make_result

        def half_then_hang(fd, data):
            os.write(fd, data[: len(data) // 2])
            sys.stdout.write("half\\n"); sys.stdout.flush()
            time.sleep(60)

        m._write_all = half_then_hang
        m.Outbox(Path({str(settings.state_dir)!r})).put(make_result())
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, stdout=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout.readline().strip() == "half"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        proc.stdout.close()
    box = Outbox(settings.state_dir)
    assert files(box.pending) == []
    assert len(files(box.tmp)) == 1

    box.put(make_result())
    report = box.drain(client)
    assert files(box.tmp) == []
    assert report.delivered == 1
    assert files(box.pending) == []


def test_tmp_file_of_a_live_writer_is_left_alone(outbox):
    live = outbox.tmp / f"{os.getpid()}-inflight.json"
    live.write_bytes(b'{"half')
    assert outbox.clean_tmp() == 0
    assert live.exists()


def test_full_disk_raises_outbox_full_and_leaves_no_partial_file(outbox, monkeypatch):
    # Scenario 10 (disk): the write seam reports ENOSPC.
    outbox.put(make_result("older"))

    def full(fd, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(outbox_module, "_write_all", full)
    with pytest.raises(OutboxFull, match="full"):
        outbox.put(make_result("newer"))
    assert files(outbox.tmp) == []
    assert len(files(outbox.pending)) == 1  # the older record is kept, never dropped


def test_bound_refuses_more_records_and_keeps_all_it_holds(make_settings, scripted_ingest):
    # Scenario 10 (bound).
    box = Outbox.from_settings(make_settings(max_pending=3))
    for i in range(3):
        box.put(make_result(f"model-{i}"))
    box.check_room(0)
    with pytest.raises(OutboxFull, match="bound of 3"):
        box.check_room(1)
    assert box.pending_count() == 3


def test_corrupt_file_moves_to_dead_with_reason_and_the_rest_drain(
        outbox, client, scripted_ingest):
    # Scenario 11.
    good = make_result()
    outbox.put(good)
    (outbox.pending / "00000000000000000001-result-broken.json").write_bytes(b'{"kind": "res')
    report = outbox.drain(client)
    assert report.dead == 1
    assert report.delivered == 1
    assert good.result_id in scripted_ingest.stored
    assert files(outbox.pending) == []
    assert "00000000000000000001-result-broken.json" in files(outbox.dead)
    reason = json.loads((outbox.dead / "00000000000000000001-result-broken.json.reason.json")
                        .read_text())
    assert reason["reason"].startswith("corrupt outbox file")


def test_retry_after_longer_than_the_inline_cap_defers_the_next_attempt(
        outbox, client, scripted_ingest):
    # Scenario 12: no attempt before Retry-After, even when the backoff is ignored.
    outbox.put(make_result())
    scripted_ingest.script("/ingest/batch", Scripted(429, {"error": {"code": "rate_limited",
                                                                     "message": "slow down"}},
                                                     {"Retry-After": "30"}))
    before = time.time()
    report = outbox.drain(client)
    assert report.retry_later == 1
    doc = json.loads((outbox.pending / files(outbox.pending)[0]).read_text())
    assert doc["next_attempt_at"] >= before + 30
    assert doc["last_status"] == 429

    assert outbox.drain(client).not_due == 1
    assert outbox.drain(client, ignore_backoff=True).not_due == 1
    assert len(scripted_ingest.posts("/ingest/batch")) == 1


def test_short_retry_after_is_waited_out_inside_the_call(make_settings, scripted_ingest):
    # Scenario 12, inline: urllib3 sleeps for the Retry-After, then resends.
    settings = make_settings(ingest_url=scripted_ingest.ingest_url, http_retries=2)
    box = Outbox.from_settings(settings)
    box.put(make_result())
    scripted_ingest.script("/ingest/batch", Scripted(429, None, {"Retry-After": "1"}))
    with IngestClient(settings) as c:
        report = box.drain(c)
    first, second = scripted_ingest.posts("/ingest/batch")
    assert second.at - first.at >= 0.95
    assert report.delivered == 1


@pytest.mark.parametrize("status", [400, 409, 413, 415, 422])
def test_permanent_answer_means_one_attempt_then_dead_with_the_body(
        outbox, client, scripted_ingest, status):
    # Scenario 13.
    failure = make_failure()
    outbox.put(failure)
    body = {"error": {"code": "refused", "message": f"refused with {status}", "details": {}}}
    scripted_ingest.script("/ingest/error", Scripted(status, body))
    report = outbox.drain(client)
    assert report.dead == 1
    assert len(scripted_ingest.posts("/ingest/error")) == 1
    assert files(outbox.pending) == []
    name = next(n for n in files(outbox.dead) if not n.endswith(".reason.json"))
    reason = json.loads((outbox.dead / f"{name}.reason.json").read_text())
    assert reason["status"] == status
    assert reason["body"] == body
    assert outbox.drain(client).dead == 0
    assert len(scripted_ingest.posts("/ingest/error")) == 1


def test_rejected_batch_item_is_dead_lettered_with_its_errors_and_the_others_delivered(
        outbox, client, scripted_ingest):
    good, bad = make_result("good"), make_result("bad")
    outbox.put(good)
    outbox.put(bad)
    item = {"status": "rejected", "errors": {"output_tokens": ["Not a valid integer."]}}
    scripted_ingest.script("/ingest/batch", Scripted(200, {"results": [{"status": "created"},
                                                                       item]}))
    report = outbox.drain(client)
    assert (report.delivered, report.dead) == (1, 1)
    reason = json.loads(next(outbox.dead.glob("*.reason.json")).read_text())
    assert reason["body"] == item
    assert bad.result_id in next(p.name for p in outbox.dead.glob("*-result-*.json")
                                 if not p.name.endswith(".reason.json"))


def test_refused_batch_envelope_is_resent_one_by_one(outbox, client, scripted_ingest):
    for i in range(3):
        outbox.put(make_result(f"model-{i}"))
    scripted_ingest.script("/ingest/batch", Scripted(413, {"error": {"code": "too_large",
                                                                     "message": "too large"}}))
    report = outbox.drain(client)
    assert len(scripted_ingest.posts("/ingest")) == 3
    assert report.delivered == 3
    assert files(outbox.dead) == []


def test_unauthorized_dead_letters_what_was_sent_and_stops_the_drain(
        outbox, client, scripted_ingest):
    outbox.put(make_failure("first"))
    outbox.put(make_failure("second"))
    scripted_ingest.script("/ingest/error", Scripted(401, {"error": {"code": "unauthorized",
                                                                     "message": "bad key"}}))
    report = outbox.drain(client)
    assert report.auth_refused
    assert "INGEST_API_KEY" in report.problems[0]
    assert len(scripted_ingest.posts("/ingest/error")) == 1
    assert report.dead == 1
    assert report.pending_left == 1


def test_a_wrong_ingest_url_keeps_the_records_and_names_the_setting(
        outbox, client, scripted_ingest):
    outbox.put(make_failure("first"))
    scripted_ingest.script("/ingest/error", Scripted(404, {"error": {"code": "not_found",
                                                                     "message": "no route"}}))
    report = outbox.drain(client)
    assert "is INGEST_API_URL the full URL of POST /ingest?" in report.problems[0]
    assert report.pending_left == 1
    assert report.dead == 0
    assert files(outbox.dead) == []


def test_server_error_is_retried_a_few_times_then_dead_lettered(
        make_settings, scripted_ingest):
    settings = make_settings(ingest_url=scripted_ingest.ingest_url, retry_base=0.0,
                             max_server_errors=3)
    box = Outbox.from_settings(settings)
    box.put(make_result())
    oops = Scripted(500, {"error": {"code": "internal", "message": "bug"}})
    scripted_ingest.script("/ingest/batch", oops, oops, oops)
    with IngestClient(settings) as c:
        reports = [box.drain(c) for _ in range(3)]
    assert [r.retry_later for r in reports] == [1, 1, 0]
    assert reports[-1].dead == 1
    assert len(scripted_ingest.posts("/ingest/batch")) == 3
    reason = json.loads(next(box.dead.glob("*.reason.json")).read_text())
    assert reason["status"] == 500


def test_backoff_doubles_with_jitter_between_attempts(tmp_path):
    now = [1000.0]
    box = Outbox(tmp_path, retry_base=10.0, retry_cap=100.0, clock=lambda: now[0],
                 jitter=lambda: 1.0)
    box.put(make_result())

    class Down:
        def post_batch(self, payloads):
            from runner.ingest_client import Answer
            return Answer(status=503, retry_after=None)

    waits = []
    for _ in range(5):
        box.drain(Down(), ignore_backoff=True)
        doc = json.loads(next(box.pending.iterdir()).read_text())
        waits.append(doc["next_attempt_at"] - now[0])
    assert waits == [10.0, 20.0, 40.0, 80.0, 100.0]

    box.jitter = lambda: 0.0
    box.drain(Down(), ignore_backoff=True)
    doc = json.loads(next(box.pending.iterdir()).read_text())
    assert doc["next_attempt_at"] - now[0] == 50.0  # half the capped wait at the least jitter


def test_payload_over_the_body_limit_is_never_sent_and_dead_lettered(
        outbox, client, scripted_ingest):
    huge = make_result(misc={"blob": "x" * (contract.MAX_BODY_BYTES + 10)})
    path = outbox.put(huge)
    assert path.parent == outbox.dead
    outbox.drain(client)
    assert scripted_ingest.requests == []
    reason = json.loads((outbox.dead / f"{path.name}.reason.json").read_text())
    assert "refused to send" in reason["reason"]


def test_a_second_drain_reports_busy_while_another_holds_the_lock(settings, client):
    first = Outbox.from_settings(settings)
    second = Outbox.from_settings(settings)
    second.lock_timeout = 0.1
    with first._lock():
        report = second.drain(client)
    assert report.busy
    assert "another process" in report.problems[0]


def test_status_shows_counts_oldest_age_and_dead_reasons(outbox, client, scripted_ingest):
    outbox.put(make_failure())
    scripted_ingest.script("/ingest/error", Scripted(422, {"error": {"code": "invalid",
                                                                     "message": "bad"}}))
    outbox.drain(client)
    outbox.put(make_result())
    time.sleep(0.05)
    scripted_ingest.script("/ingest/batch", Scripted(429, None, {"Retry-After": "600"}))
    outbox.drain(client)
    status = outbox.status()
    assert (status.pending, status.dead, status.partial) == (1, 1, 0)
    assert status.oldest_age >= 0.05
    assert status.next_attempt_in > 500
    assert status.dead_items[0].status == 422
    assert status.dead_items[0].kind == "error"


def test_requeue_moves_dead_records_back_to_pending_for_delivery(
        outbox, client, scripted_ingest):
    failure = make_failure()
    outbox.put(failure)
    scripted_ingest.script("/ingest/error", Scripted(401, None))
    outbox.drain(client)
    assert outbox.pending_count() == 0
    assert outbox.requeue_dead() == 1
    assert files(outbox.dead) == []
    assert outbox.drain(client).delivered == 1
    assert failure.error_id in scripted_ingest.stored


def test_a_2xx_that_does_not_show_the_record_stored_keeps_it_pending(
        outbox, client, scripted_ingest):
    # E.g. a proxy or a wrong URL answering 200 with a page: nothing proves delivery.
    outbox.put(make_result())
    outbox.put(make_failure())
    scripted_ingest.script("/ingest/batch", Scripted(200, "<html>welcome</html>"))
    report = outbox.drain(client)
    assert report.delivered == 0
    assert report.retry_later == 1
    assert outbox.pending_count() == 2
    assert "without the expected JSON body" in report.problems[0]


def test_requeued_unsendable_record_goes_back_to_dead_without_a_request(
        outbox, client, scripted_ingest):
    outbox.put(make_result(misc={"blob": "x" * (contract.MAX_BODY_BYTES + 10)}))
    assert outbox.requeue_dead() == 1
    report = outbox.drain(client)
    assert report.dead == 1
    assert scripted_ingest.requests == []
    assert outbox.pending_count() == 0


def test_wrong_url_keeps_records_pending_and_says_which_setting_to_check(
        make_settings, scripted_ingest):
    settings = make_settings(ingest_url=f"{scripted_ingest.url}/wrong")
    box = Outbox.from_settings(settings)
    box.put(make_result())
    with IngestClient(settings) as c:
        report = box.drain(c)
    assert box.pending_count() == 1
    assert "INGEST_API_URL" in report.problems[0]


def test_drain_sends_failures_and_results_oldest_first(outbox, client, scripted_ingest):
    # An older failure is not held behind newer results (nor lost with them when the
    # batch route asks to wait).
    older = make_failure()
    outbox.put(older)
    outbox.put(make_result("newer-1"))
    outbox.put(make_result("newer-2"))
    newest = make_failure("sim.newest-v1")
    outbox.put(newest)
    report = outbox.drain(client)
    assert [r.path for r in scripted_ingest.requests] == [
        "/ingest/error", "/ingest/batch", "/ingest/error"]
    assert len(scripted_ingest.posts("/ingest/batch")[0].json()["results"]) == 2
    assert report.delivered == 4

    outbox.put(make_failure("sim.later-v1"))
    outbox.put(make_result("later"))
    scripted_ingest.script("/ingest/batch", Scripted(503, None, {"Retry-After": "120"}))
    report = outbox.drain(client)
    assert scripted_ingest.requests[-2].path == "/ingest/error"
    assert (report.delivered, report.retry_later, outbox.pending_count()) == (1, 1, 1)


def test_a_redirect_keeps_records_pending_and_says_which_setting_to_check(
        outbox, client, scripted_ingest):
    outbox.put(make_result())
    scripted_ingest.script("/ingest/batch", Scripted(301, None, {
        "Location": "https://ingest.example.invalid/ingest/batch"}))
    report = outbox.drain(client)
    assert outbox.pending_count() == 1
    assert "INGEST_API_URL" in report.problems[0]
