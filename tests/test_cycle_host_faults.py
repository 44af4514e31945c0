"""A run whose own host fails it: the outbox's directory or disk (docs/reliability.md).

The faults are injected at the outbox's own write seams (`_write_all` for the bytes,
`_open_file` and `_rename` for the directory entries), as the kernel would raise them:
a full disk (ENOSPC), a directory the runner may not write (EACCES), a read-only
remount (EROFS).
"""

from __future__ import annotations

import errno
import json
import logging
import os

import pytest
from click.testing import CliRunner

from runner import outbox as outbox_module
from runner.cli import ExitCode, exit_code, main
from runner.cycle import report_cycle_failure, run_cycle
from runner.ingest_client import IngestClient
from runner.outbox import JOURNAL_MARKER, Outbox
from runner.provider import get_provider
from tests.support.mongo import free_port
from tests.support.runner import SCRIPTED_KEY

SIM = {"models": {m: {"ttft": 0.02, "gap": 0.002, "tokens_per_delta": 4, "output_tokens": 16}
                  for m in ("sim.a-v1", "sim.b-v1")}}


@pytest.fixture
def sim(bedrock_sim):
    return bedrock_sim(SIM)


@pytest.fixture
def provider(sim):
    p = get_provider("bedrock", region="us-east-1")
    p.warm()
    yield p
    p.close()


def measured_models(sim) -> dict[str, int]:
    """Calls per model, the connection warm-up left out."""
    return {m: n for m, n in sim.stats()["calls"].items() if m.startswith("sim.")}


def refuse_entries(monkeypatch, err: int, where: os.PathLike | None = None) -> None:
    """Every new directory entry under `where` (or anywhere) fails with `err`."""
    real_open, real_rename = outbox_module._open_file, outbox_module._rename

    def inside(path) -> bool:
        return where is None or str(path).startswith(str(where))

    def open_file(path, flags, mode=0o600):
        if flags & (os.O_CREAT | os.O_WRONLY | os.O_RDWR) and inside(path):
            raise OSError(err, os.strerror(err), str(path))
        return real_open(path, flags, mode)

    def rename(src, dst):
        if inside(dst):
            raise OSError(err, os.strerror(err), str(dst))
        return real_rename(src, dst)

    monkeypatch.setattr(outbox_module, "_open_file", open_file)
    monkeypatch.setattr(outbox_module, "_rename", rename)


def test_a_read_only_state_dir_is_the_runners_fault_not_a_models(
        make_settings, scripted_ingest, provider, sim, monkeypatch):
    settings = make_settings(ingest_url=scripted_ingest.ingest_url,
                             models=("sim.a-v1", "sim.b-v1"))
    box = Outbox.from_settings(settings)
    refuse_entries(monkeypatch, errno.EROFS, box.root)
    with IngestClient(settings) as client:
        report = run_cycle(settings, provider, box, client)
    assert exit_code(report) == ExitCode.OUTBOX_FULL
    assert "Read-only file system" in report.outbox_full
    assert str(box.root) in report.outbox_full
    # Nothing measured, and no failure charged to any model, here or at the API.
    assert measured_models(sim) == {}
    assert report.outcomes == []
    assert report.skipped == ["sim.a-v1", "sim.b-v1"]
    assert scripted_ingest.requests == []
    assert report_cycle_failure(settings, box, RuntimeError("boom"), client=None) == 0


def test_an_unwritable_pending_dir_measures_nothing_new(make_settings, provider, sim,
                                                        monkeypatch):
    # The API is down too: a model measured now would have nowhere to go.
    settings = make_settings(ingest_url=f"http://127.0.0.1:{free_port()}/ingest",
                             models=("sim.a-v1", "sim.b-v1"))
    box = Outbox.from_settings(settings)
    refuse_entries(monkeypatch, errno.EACCES, box.pending)
    with IngestClient(settings) as client:
        report = run_cycle(settings, provider, box, client)
    assert exit_code(report) == ExitCode.OUTBOX_FULL
    assert "Permission denied" in report.outbox_full
    assert measured_models(sim) == {}
    assert report.lost == 0


def test_a_record_in_hand_with_the_disk_full_and_the_api_down_is_journaled_then_imported(
        make_settings, scripted_ingest, provider, monkeypatch, caplog, tmp_path):
    down = make_settings(ingest_url=f"http://127.0.0.1:{free_port()}/ingest",
                         models=("sim.a-v1", "sim.b-v1"), concurrency=1)
    box = Outbox.from_settings(down)

    def full(fd, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(outbox_module, "_write_all", full)
    with caplog.at_level(logging.ERROR, logger="runner"), IngestClient(down) as client:
        report = run_cycle(down, provider, box, client)
    monkeypatch.undo()
    assert exit_code(report) == ExitCode.OUTBOX_FULL
    # With one worker, at most the model already in flight finishes after the disk filled.
    assert 1 <= report.lost == len(report.outcomes) <= 2
    assert any("bench-runner outbox import" in p for p in report.problems())
    lines = [r.getMessage() for r in caplog.records if JOURNAL_MARKER in r.getMessage()]
    measured = {o.record.record_id: o.record for o in report.outcomes}
    # Whole, on one line: the journal can give each back as it was.
    docs = [json.loads(line.split(JOURNAL_MARKER, 1)[1]) for line in lines]
    assert {d["id"]: d["payload"] for d in docs} == {
        k: r.to_payload() for k, r in measured.items()}
    assert box.pending_count() == 0

    # What `journalctl -u bench-runner` prints, prefixes and other lines included.
    journal = tmp_path / "journal.txt"
    journal.write_text("Dec 01 10:00:00 host bench-runner[1]: some other line\n" + "".join(
        f"Dec 01 10:00:01 host bench-runner[1]: {line}\n" for line in [*lines, *lines]))
    env = {"BENCH_RUNNER_STATE_DIR": str(down.state_dir), "INGEST_API_KEY": SCRIPTED_KEY,
           "INGEST_API_URL": scripted_ingest.ingest_url}
    imported = CliRunner().invoke(main, ["outbox", "import", str(journal)], env=env,
                                  catch_exceptions=False)
    assert imported.exit_code == 0, imported.output
    assert f"imported {len(lines)} record(s) into pending ({len(lines)} already there)" in \
        imported.output
    assert box.pending_count() == len(lines)
    flushed = CliRunner().invoke(main, ["outbox", "flush"], env=env, catch_exceptions=False)
    assert flushed.exit_code == ExitCode.OK, flushed.output
    assert scripted_ingest.stored == {k: r.to_payload() for k, r in measured.items()}


def test_import_reads_standard_input_and_refuses_a_broken_line(make_settings, tmp_path):
    settings = make_settings()
    env = {"BENCH_RUNNER_STATE_DIR": str(settings.state_dir)}
    broken = f"x {JOURNAL_MARKER}{{\"kind\": \"result\", \"id\": \"nope\"}}\n"
    result = CliRunner().invoke(main, ["outbox", "import"], env=env, input=broken,
                                catch_exceptions=False)
    assert result.exit_code == 1
    assert "1 line(s) could not be imported" in result.output
    assert Outbox.from_settings(settings).pending_count() == 0
