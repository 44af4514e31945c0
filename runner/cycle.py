"""One run of the runner: drain the outbox, measure each model, queue and deliver every record.

The order matters: every measured record is written to the outbox before anyone
tries to send it, so a crash at any point leaves it on disk; the drain after
measuring delivers it (and anything older) in batches.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from .failures import describe
from .outbox import JOURNAL_MARKER, DrainReport, Outbox, OutboxFull
from .records import Failure, Result
from .settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelOutcome:
    """One model's record and what became of it on this side."""

    model: str
    record: Result | Failure
    queued: bool  # written to the outbox (False only when the disk was full)

    @property
    def ok(self) -> bool:
        """Measured (a Result), not failed."""
        return isinstance(self.record, Result)


@dataclass
class CycleReport:
    """What one cycle did, for the CLI to print and to turn into an exit code."""

    models: tuple[str, ...]
    outcomes: list[ModelOutcome] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    delivery: DrainReport = field(default_factory=DrainReport)
    refused_at_queue: int = 0
    lost: int = 0
    setup_error: str | None = None
    cycle_error: str | None = None
    outbox_full: str | None = None
    pending: int = 0
    dead_total: int = 0
    seconds: float = 0.0
    profile_id: str | None = None
    # With several profiles: the cycle of each, in order (this report is their sum).
    parts: list[CycleReport] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        """Some model failed or was not measured."""
        return bool(self.skipped) or any(not o.ok for o in self.outcomes)

    def problems(self) -> list[str]:
        """Sentences for the user, most serious first."""
        out = []
        if self.setup_error:
            out.append(self.setup_error)
        if self.cycle_error:
            out.append(self.cycle_error)
        out.extend(self.delivery.problems)
        if self.outbox_full:
            out.append(self.outbox_full)
        if self.lost:
            out.append(f"{self.lost} record(s) could not be written or delivered: each is one "
                       f"'{JOURNAL_MARKER.strip()}' line in the log; once the outbox can be "
                       f"written, `bench-runner outbox import` (journalctl -u bench-runner | "
                       f"bench-runner outbox import) puts them back")
        dead = self.delivery.dead + self.refused_at_queue
        if dead:
            out.append(f"{dead} record(s) refused for good: see `bench-runner outbox status`")
        if self.pending and not self.delivery.problems:
            out.append(f"{self.pending} record(s) wait in the outbox for a later run")
        if self.skipped:
            out.append(f"not measured: {', '.join(self.skipped)}")
        return out

    def to_json(self) -> dict[str, Any]:
        """The report for scripts (`once --json`)."""
        return {
            "results": [o.record.to_payload() for o in self.outcomes if o.ok],
            "failures": [o.record.to_payload() for o in self.outcomes if not o.ok],
            "not_measured": list(self.skipped),
            "delivery": {"delivered": self.delivery.delivered,
                         "duplicates": self.delivery.duplicates,
                         "withheld": self.delivery.withheld,
                         "dead": self.delivery.dead + self.refused_at_queue,
                         "pending": self.pending, "dead_total": self.dead_total},
            "problems": self.problems(),
            "seconds": round(self.seconds, 3),
        }


def run_cycle(
    settings: Settings,
    provider: Any,
    outbox: Outbox,
    client: Any,
    *,
    warm: bool = True,
    on_outcome: Callable[[ModelOutcome], None] | None = None,
    stop: threading.Event | None = None,
) -> CycleReport:
    """Run one cycle: warm, drain, check room, measure every model, queue, drain again."""
    from .provider import SetupError

    started = time.perf_counter()
    report = CycleReport(models=settings.models, profile_id=settings.profile.profile_id)
    try:
        if warm:
            provider.warm()
    except SetupError as exc:
        # Reached in a later daemon cycle (credentials expired, role detached): each
        # model's silence is reported as a failure so the gap shows where people look.
        report.setup_error = str(exc)
        report.delivery.add(outbox.drain(client))
        if _report_unmeasured(settings, provider, outbox, client, report, settings.models,
                              exc.kind, str(exc), exc.exc_type, on_outcome):
            report.delivery.add(outbox.drain(client))
        return _finish(report, outbox, started)

    try:
        _drain_and_measure(settings, provider, outbox, client, report, on_outcome, stop)
    except Exception as exc:  # noqa: BLE001 - a broken cycle must still leave records
        if isinstance(exc, OSError) and (host_fault := _outbox_unwritable(outbox)):
            # The runner's own host (a read-only or full state dir), not any model: reported
            # as the runner's, exit 6, with no failure charged to a model.
            log.error("%s", host_fault)
            report.outbox_full = host_fault
            done = {o.model for o in report.outcomes} | set(report.skipped)
            report.skipped.extend(m for m in settings.models if m not in done)
            return _finish(report, outbox, started)
        report.cycle_error = f"the cycle failed: {describe(exc)}"
        log.error("%s", report.cycle_error)
        # Models that ended with a record keep it; the others are reported, not forgotten.
        done = {o.model for o in report.outcomes} | set(report.skipped)
        _report_unmeasured(settings, provider, outbox, client, report,
                           [m for m in settings.models if m not in done], "unknown",
                           report.cycle_error, type(exc).__name__, on_outcome)
    return _finish(report, outbox, started)


def run_profiles(
    settings: Settings,
    provider: Any,
    outbox: Outbox,
    client: Any,
    *,
    warm: bool = True,
    on_outcome: Callable[[ModelOutcome], None] | None = None,
    stop: threading.Event | None = None,
) -> CycleReport:
    """One cycle for each of settings.profiles in turn, summed into one report.

    A model whose worklist settings name profiles is measured under those only; a
    profile no model is left for is not run.
    """
    parts: list[CycleReport] = []
    last_run: CycleReport | None = None
    for profile in settings.profiles:
        models = models_for(settings, profile.profile_id)
        if not models:
            continue
        if parts and parts[-1].delivery.auth_refused:
            # Measuring more would only fill the outbox with records the API refuses.
            parts.append(CycleReport(models=models, profile_id=profile.profile_id,
                                     skipped=list(models)))
            continue
        last_run = run_cycle(replace(settings, profile=profile, models=models), provider,
                             outbox, client, warm=warm and last_run is None,
                             on_outcome=on_outcome, stop=stop)
        parts.append(last_run)
    if last_run is None:
        # Nothing to measure under any profile: still drain what waits.
        return run_cycle(replace(settings, models=()), provider, outbox, client, warm=False,
                         on_outcome=on_outcome, stop=stop)
    if len(parts) == 1:
        return parts[0]
    total = CycleReport(models=tuple(m for part in parts for m in part.models), parts=parts)
    for part in parts:
        total.outcomes.extend(part.outcomes)
        total.skipped.extend(part.skipped)
        total.delivery.add(part.delivery)
        total.refused_at_queue += part.refused_at_queue
        total.lost += part.lost
        total.setup_error = total.setup_error or part.setup_error
        total.cycle_error = total.cycle_error or part.cycle_error
        total.outbox_full = total.outbox_full or part.outbox_full
        total.seconds += part.seconds
    total.pending, total.dead_total = last_run.pending, last_run.dead_total
    return total


def models_for(settings: Settings, profile_id: str) -> tuple[str, ...]:
    """The models measured under `profile_id`: all, less those whose settings leave it out."""
    out = []
    for model in settings.models:
        request = settings.request_of(model)
        if request is None or request.allows(profile_id):
            out.append(model)
    return tuple(out)


def _report_unmeasured(settings: Settings, provider: Any, outbox: Outbox, client: Any,
                       report: CycleReport, models: Sequence[str], kind: str, message: str,
                       exc_type: str | None,
                       on_outcome: Callable[[ModelOutcome], None] | None) -> bool:
    """Queue a setup failure for each model a broken cycle did not measure; False if no room."""
    try:
        outbox.check_room(len(models))
    except (OutboxFull, OSError) as full:
        # Bounded even when every cycle fails: nothing new, as for measured records.
        report.outbox_full = str(full)
        report.skipped.extend(models)
        return False
    for model in models:
        record = _failure(settings, provider, model, stage="setup", kind=kind, message=message,
                          exc_type=exc_type, attempts=0)  # nothing was called
        outcome = ModelOutcome(model=model, record=record,
                               queued=_queue(record, outbox, client, report, threading.Event()))
        report.outcomes.append(outcome)
        _tell(on_outcome, outcome)
    return True


def _outbox_unwritable(outbox: Outbox) -> str | None:
    """Why the outbox cannot take a file now, or None when it can."""
    try:
        outbox.probe()
    except OutboxFull as exc:
        return str(exc)
    return None


def _drain_and_measure(settings: Settings, provider: Any, outbox: Outbox, client: Any,
                       report: CycleReport, on_outcome: Callable[[ModelOutcome], None] | None,
                       stop: threading.Event | None) -> None:
    report.delivery.add(outbox.drain(client))
    if report.delivery.auth_refused:
        # Measuring now would only fill the outbox with records the API will refuse.
        report.skipped = list(settings.models)
        return
    try:
        outbox.check_room(len(settings.models))
    except OutboxFull as exc:
        report.outbox_full = str(exc)
        report.skipped = list(settings.models)
        return
    _measure_all(settings, provider, outbox, client, report, on_outcome, stop)
    report.delivery.add(outbox.drain(client))


def _finish(report: CycleReport, outbox: Outbox, started: float) -> CycleReport:
    # Counts only: status() would read every record file, each cycle.
    report.pending, report.dead_total = outbox.pending_count(), outbox.dead_count()
    report.seconds = time.perf_counter() - started
    log.info("cycle done measured=%d failed=%d skipped=%d delivered=%d pending=%d "
             "seconds=%.3f", sum(o.ok for o in report.outcomes),
             sum(not o.ok for o in report.outcomes), len(report.skipped),
             report.delivery.delivered + report.delivery.duplicates, report.pending,
             report.seconds)
    return report


def _measure_all(settings: Settings, provider: Any, outbox: Outbox, client: Any,
                 report: CycleReport, on_outcome: Callable[[ModelOutcome], None] | None,
                 stop: threading.Event | None) -> None:
    halt = threading.Event()  # set when the disk is full: measure nothing new
    regions = {getattr(settings.request_of(m), "region", None) for m in settings.models}
    if regions - {None} and hasattr(provider, "prepare"):
        # Every region's client warm before the first timer, not inside its first model.
        provider.prepare(sorted(r for r in regions if r))

    def measure(model: str) -> Result | Failure | None:
        if halt.is_set() or (stop is not None and stop.is_set()):
            return None
        request = settings.request_of(model)
        if request is None:
            return provider.measure(model, settings.profile)
        return provider.measure(model, settings.profile, request)

    workers = max(1, min(settings.concurrency, len(settings.models)))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="measure") as pool:
        futures = {pool.submit(measure, model): model for model in settings.models}
        # Records are queued here, in this one thread, as each model finishes.
        for future in as_completed(futures):
            model = futures[future]
            try:
                record = future.result()
            except Exception as exc:  # noqa: BLE001 - a provider bug must still become a record
                log.error("measure raised model=%s error=%s", model, describe(exc))
                record = _failure(
                    settings, provider, model, stage="call", kind="unknown",
                    message=f"the runner failed while measuring: {describe(exc)}",
                    exc_type=type(exc).__name__, attempts=1)
            if record is None:
                report.skipped.append(model)
                continue
            outcome = ModelOutcome(model=model, record=record,
                                   queued=_queue(record, outbox, client, report, halt))
            report.outcomes.append(outcome)
            _tell(on_outcome, outcome)
    # Keep the order the user asked for, whatever order models finished in.
    order = {m: i for i, m in enumerate(settings.models)}
    report.skipped.sort(key=order.__getitem__)


def _tell(on_outcome: Callable[[ModelOutcome], None] | None, outcome: ModelOutcome) -> None:
    """Report progress; a broken progress line (stdout closed) must not stop the queueing."""
    if on_outcome is None:
        return
    try:
        on_outcome(outcome)
    except Exception as exc:  # noqa: BLE001 - the record is queued; only the line is lost
        log.error("progress report failed model=%s error=%s", outcome.model, describe(exc))


def _queue(record: Result | Failure, outbox: Outbox, client: Any, report: CycleReport,
           halt: threading.Event) -> bool:
    try:
        path = outbox.put(record)
    except (OutboxFull, OSError) as exc:
        halt.set()
        reason = str(exc) if isinstance(exc, OutboxFull) else (
            f"cannot write the outbox in {outbox.root}: {exc.strerror or exc}")
        report.outbox_full = f"{reason}: stopped measuring"
        # The record exists only in memory now: try to hand it over directly.
        answer = None
        if client is not None:
            post = client.post_result if isinstance(record, Result) else client.post_error
            try:
                answer = post(record.to_payload())
            except ValueError as send_exc:
                log.error("record not sendable id=%s error=%s", record.record_id, send_exc)
        if answer is None or not answer.delivered:
            report.lost += 1
            # Last resort: the record whole on one line of the journal, which
            # `bench-runner outbox import` puts back into pending/ (docs/reliability.md).
            log.error("outbox could not take this record and the API did not either; "
                      "`bench-runner outbox import` puts it back: %s",
                      outbox.journal_line(record))
        return False
    if path.parent == outbox.dead:
        report.refused_at_queue += 1
    return True


def report_cycle_failure(settings: Settings, outbox: Outbox, exc: BaseException,
                         client: Any = None) -> int:
    """Queue one failure per model for a cycle that broke; returns how many were queued.

    With a client, a record the outbox cannot take is handed over directly, as in a cycle.
    """
    report = CycleReport(models=settings.models)
    _report_unmeasured(settings, None, outbox, client, report, settings.models, "unknown",
                       f"the cycle failed: {describe(exc)}", None, None)
    if report.outbox_full:
        log.error("cycle failure not queued: %s", report.outbox_full)
    return sum(o.queued for o in report.outcomes)


def _failure(settings: Settings, provider: Any, model: str, *, stage: str, kind: str,
             message: str, exc_type: str | None, attempts: int) -> Failure:
    """A failure of `model` that the runner, not the provider, records."""
    return Failure(
        provider=getattr(provider, "name", None) or settings.provider, model_name=model,
        ts=datetime.now(UTC), stage=stage, error_kind=kind, message=message,
        region=getattr(settings.request_of(model), "region", None)
        or getattr(provider, "region", None) or settings.region,
        benchmark_profile_id=settings.profile.profile_id, exc_type=exc_type,
        attempts=attempts)
