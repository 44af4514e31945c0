"""The outbox and the client under hostile files and hostile answers (docs/reliability.md)."""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import pytest

from runner.ingest_client import IngestClient
from runner.outbox import Outbox
from tests.support.runner import Scripted, make_failure, make_result

UNAVAILABLE = Scripted(503, {"error": {"code": "database_unavailable", "message": "down"}},
                       {"Retry-After": "1"})


def gunicorn_page(status: int, reason: str, message: str) -> Scripted:
    """gunicorn's own error page, byte for byte as its util.write_error builds it."""
    html = (f"<html>\n  <head>\n    <title>{reason}</title>\n  </head>\n  <body>\n"
            f"    <h1><p>{reason}</p></h1>\n    {message}\n  </body>\n</html>\n")
    return Scripted(status, raw=html.encode("latin1"), content_type="text/html",
                    headers={"Connection": "close"})


@pytest.fixture
def settings(make_settings, scripted_ingest):
    # A long backoff, so that only what the test asserts can make a record due again.
    return make_settings(ingest_url=scripted_ingest.ingest_url, retry_base=600.0,
                         retry_cap=3600.0)


@pytest.fixture
def outbox(settings):
    return Outbox.from_settings(settings)


@pytest.fixture
def client(settings):
    with IngestClient(settings) as c:
        yield c


def names(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def record_doc(outbox: Outbox, name: str) -> dict:
    return json.loads((outbox.pending / name).read_text())


# -- backoff belongs to the destination -----------------------------------------------


def test_after_an_outage_the_first_acknowledged_send_delivers_every_waiting_record(
        outbox, client, scripted_ingest):
    # Four runs while the API answered 503: each left its record with its own retry time.
    older = []
    for _ in range(4):
        older.append(make_result())
        outbox.put(older[-1])
        scripted_ingest.script("/ingest/batch", UNAVAILABLE)
        assert outbox.drain(client).retry_later == 1
    assert outbox.pending_count() == 4
    # The API is back: the next run's new result is acknowledged, and that proves the API
    # takes writes again, so nothing waits out a backoff meant for the outage.
    new = make_result()
    outbox.put(new)
    report = outbox.drain(client)
    assert report.delivered == 5
    assert report.pending_left == 0
    assert set(scripted_ingest.stored) == {r.result_id for r in [*older, new]}


def test_a_record_the_api_refused_for_itself_keeps_its_own_schedule(
        outbox, client, scripted_ingest):
    failure = make_failure()
    outbox.put(failure)
    scripted_ingest.script("/ingest/error", Scripted(500, {"error": {"code": "internal",
                                                                     "message": "bug"}}))
    assert outbox.drain(client).retry_later == 1
    waiting = make_result()
    outbox.put(waiting)
    scripted_ingest.script("/ingest/batch", UNAVAILABLE)
    assert outbox.drain(client).retry_later == 1
    new = make_result()
    outbox.put(new)
    report = outbox.drain(client)
    assert set(scripted_ingest.stored) == {waiting.result_id, new.result_id}
    assert report.pending_left == 1
    (left,) = names(outbox.pending)
    assert failure.error_id in left
    assert record_doc(outbox, left)["last_status"] == 500
    assert len(scripted_ingest.posts("/ingest/error")) == 1


# -- poisoned files in pending/ -------------------------------------------------------


def _deep(path: Path) -> None:
    path.write_text("[" * 200_000 + "]" * 200_000)


def _overflowing(path: Path) -> None:
    record = make_result()
    path.write_text(json.dumps({"version": 1, "kind": "result", "id": record.result_id,
                                "payload": record.to_payload()})[:-1] + ', "attempts": 1e999}')


def _not_finite_time(path: Path) -> None:
    record = make_result()
    path.write_text(json.dumps({"version": 1, "kind": "result", "id": record.result_id,
                                "payload": record.to_payload()})[:-1]
                    + ', "next_attempt_at": -1e999}')


def _symlink_loop(path: Path) -> None:
    os.symlink(path.name, path)


def _symlink_to_a_record(path: Path) -> None:
    # A valid record elsewhere: a link is never followed, whatever it points at.
    elsewhere = path.parent.parent / "elsewhere.json"
    record = make_result()
    elsewhere.write_text(json.dumps({"version": 1, "kind": "result", "id": record.result_id,
                                     "payload": record.to_payload()}))
    os.symlink(elsewhere, path)


def _huge(path: Path) -> None:
    with path.open("wb") as f:
        f.write(b'{"kind": "result", "pad": "')
        f.write(b"x" * (8 << 20))
        f.write(b'"}')


def _fifo(path: Path) -> None:
    os.mkfifo(path)


POISONS = {"nested 200,000 deep": (_deep, "corrupt"),
           "attempts 1e999": (_overflowing, "not a finite number"),
           "next_attempt_at -1e999": (_not_finite_time, "not a finite number"),
           "symlink loop": (_symlink_loop, "symlink"),
           "symlink to a record": (_symlink_to_a_record, "symlink"),
           "over the size cap": (_huge, "bytes"),
           "a fifo": (_fifo, "not a regular file")}


@pytest.mark.parametrize("poison", list(POISONS))
def test_a_poisoned_file_goes_to_dead_with_its_reason_and_the_rest_drain(
        outbox, client, scripted_ingest, poison):
    plant, words = POISONS[poison]
    good = make_result()
    outbox.put(good)
    name = "00000000000000000001-result-poisoned.json"
    plant(outbox.pending / name)
    status = outbox.status()  # `outbox status` must not crash on it either
    assert status.pending == 2
    report = outbox.drain(client)
    assert report.dead == 1
    assert report.delivered == 1
    assert good.result_id in scripted_ingest.stored
    assert names(outbox.pending) == []
    assert name in names(outbox.dead)
    reason = json.loads((outbox.dead / (name + ".reason.json")).read_text())["reason"]
    assert words in reason
    after = outbox.status()
    assert (after.pending, after.dead) == (0, 1)
    assert after.dead_items[0].reason == reason
    # Nothing of it was ever sent.
    assert len(scripted_ingest.stored) == 1


def test_a_requeued_poisoned_file_stays_in_dead(outbox, client):
    name = "00000000000000000001-result-poisoned.json"
    _symlink_loop(outbox.pending / name)
    outbox.drain(client)
    assert outbox.requeue_dead() == 0
    assert name in names(outbox.dead)


# -- hostile answers ------------------------------------------------------------------


@pytest.mark.parametrize("value", ["inf", "1e400", "nan", "-inf", "99999999999999999999"])
@pytest.mark.parametrize("retries", [0, 2])
def test_a_hostile_retry_after_is_capped_and_the_record_is_sent_later(
        make_settings, scripted_ingest, value, retries):
    settings = make_settings(ingest_url=scripted_ingest.ingest_url, retry_base=0.2,
                             retry_cap=1.0, max_retry_after=2.0, http_retries=retries)
    box = Outbox.from_settings(settings)
    record = make_result()
    box.put(record)
    for _ in range(retries + 1):
        scripted_ingest.script("/ingest/batch", Scripted(503, None, {"Retry-After": value}))
    before = time.time()
    with IngestClient(settings) as c:
        report = box.drain(c)
        assert report.retry_later == 1
        scripted_ingest.unscript()  # a long one is handed back at once, not retried inline
        (name,) = names(box.pending)
        doc = record_doc(box, name)
        assert math.isfinite(doc["next_attempt_at"])
        assert math.isfinite(doc["retry_after_until"])
        # Never longer than the Retry-After cap (an hour by default; 2 s here).
        assert doc["next_attempt_at"] <= before + settings.max_retry_after + 5
        time.sleep(max(0.0, doc["next_attempt_at"] - time.time()) + 0.05)
        report = box.drain(c, ignore_backoff=True)
    assert report.delivered == 1
    assert record.result_id in scripted_ingest.stored


@pytest.mark.parametrize("status,reason,message", [
    (400, "Bad Request", "Invalid HTTP Version 'HTTP/9'"),
    (414, "Request-URI Too Large", "Request Line is too large (8200 > 4094)"),
    (417, "Expectation Failed", "Unable to comply with expectation '100-continue-x'"),
    (431, "Request Header Fields Too Large", "Request Header Fields Too Large"),
    (501, "Not Implemented", "Transfer-Encoding: gzip"),
])
def test_gunicorns_own_html_error_pages_are_permanent_and_their_reason_is_kept(
        outbox, client, scripted_ingest, status, reason, message):
    record = make_failure()
    outbox.put(record)
    scripted_ingest.script("/ingest/error", gunicorn_page(status, reason, message))
    report = outbox.drain(client)
    assert report.dead == 1
    assert report.retry_later == 0
    assert len(scripted_ingest.posts("/ingest/error")) == 1
    (name,) = [n for n in names(outbox.dead) if not n.endswith(".reason.json")]
    dead = json.loads((outbox.dead / (name + ".reason.json")).read_text())
    assert dead["status"] == status
    # The page's title says what gunicorn refused; the markup is not the reason.
    assert f"HTTP {status}: {reason}" in dead["reason"]
    assert "<" not in dead["reason"]


def test_a_long_url_refused_by_real_gunicorn_is_dead_lettered_not_retried(
        make_settings, ingest_server):
    settings = make_settings(ingest_url=ingest_server.url + "/ingest" + "/x" * 4200,
                             api_key=ingest_server.key, retry_base=600.0)
    box = Outbox.from_settings(settings)
    box.put(make_failure())
    with IngestClient(settings) as c:
        report = box.drain(c)
    assert report.dead == 1
    (name,) = [n for n in names(box.dead) if not n.endswith(".reason.json")]
    dead = json.loads((box.dead / (name + ".reason.json")).read_text())
    assert dead["status"] == 414


def test_a_huge_answer_is_not_read_whole(outbox, client, scripted_ingest):
    outbox.put(make_result())
    scripted_ingest.script("/ingest/batch", Scripted(503, size=200 << 20))
    report = outbox.drain(client)
    assert report.retry_later == 1
    (name,) = names(outbox.pending)
    assert "answer over" in record_doc(outbox, name)["last_error"]
    # The client hung up after its cap; socket buffers hold a few MiB at most.
    deadline = time.monotonic() + 10
    while scripted_ingest.bytes_sent < 200 << 20 and time.monotonic() < deadline:
        sent = scripted_ingest.bytes_sent
        time.sleep(0.5)
        if scripted_ingest.bytes_sent == sent:
            break
    assert scripted_ingest.bytes_sent < 64 << 20


def test_trickled_headers_are_cut_off_at_the_call_deadline(make_settings, scripted_ingest):
    # Each byte within the read timeout, so only a deadline on the whole call ends it.
    settings = make_settings(ingest_url=scripted_ingest.ingest_url, http_deadline=2.0,
                             http_timeout=(2.0, 10.0))
    box = Outbox.from_settings(settings)
    box.put(make_result())
    padding = {"X-Padding": "p" * 400}  # over a minute of headers at one byte each 0.15 s
    scripted_ingest.script("/ingest/batch", Scripted(200, body={"results": [
        {"status": "created"}]}, headers=padding, drip_head=0.15))
    with IngestClient(settings) as c:
        report = box.drain(c)
    assert report.retry_later == 1
    (name,) = names(box.pending)
    assert "deadline" in record_doc(box, name)["last_error"]
    # The client hung up at its 2 s deadline: some 13 bytes of the head, a few more in flight.
    time.sleep(1.0)
    assert scripted_ingest.bytes_sent < 60


def test_a_trickled_answer_is_cut_off_at_the_call_deadline(make_settings, scripted_ingest):
    settings = make_settings(ingest_url=scripted_ingest.ingest_url, http_deadline=2.0,
                             http_timeout=(2.0, 10.0))
    box = Outbox.from_settings(settings)
    box.put(make_result())
    body = json.dumps({"results": [{"status": "created"}]}).encode()
    scripted_ingest.script("/ingest/batch", Scripted(200, raw=body, drip=2.0))
    started = time.monotonic()
    with IngestClient(settings) as c:
        report = box.drain(c)
    # Dripped whole, the answer would take over a minute; a bound that only catches a hang.
    assert time.monotonic() - started < 20
    assert report.retry_later == 1
    (name,) = names(box.pending)
    assert "deadline" in record_doc(box, name)["last_error"]
