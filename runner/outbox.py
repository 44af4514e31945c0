"""The durable outbox: every result and failure is on disk before anyone tries to send it.

Layout under the state dir (docs/reliability.md, "The runner's outbox"):

    outbox/tmp/       files being written (cleaned at start: a crash leaves them half done)
    outbox/pending/   one JSON file per record, named so that name order is age order
    outbox/dead/      records the API refused for good or files that cannot be read,
                      each with a `<name>.reason.json` sidecar holding status and body
    outbox/lock       held (flock) by whoever drains

A record file holds kind, id, payload, attempts, next_attempt_at, the Retry-After
deadline and the last answer. A file reaches pending/ only by rename after fsync,
so pending/ never holds a partial file.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import math
import os
import random
import stat
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import bench_contract as contract

from .payload import BATCH_ENVELOPE_BYTES, BodyTooLarge, batches, body, encode
from .records import Failure, Result
from .settings import Settings

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
KINDS = {"result": "result_id", "error": "error_id"}
# 414, 417, 431 and 501 come from gunicorn itself (its HTML page, docs/contract.md section 2):
# the URL, a header or the framing is refused, and a resend carries the same.
PERMANENT_STATUSES = frozenset({400, 401, 409, 413, 414, 415, 417, 422, 431, 501})
# Statuses a record earns for itself: it keeps its own backoff when others are sent.
OWN_FAULT_STATUSES = frozenset({500})
# A record file is at most a payload at the body limit plus its bookkeeping; anything
# larger was not written by us and is not read (docs/reliability.md, poisoned files).
MAX_RECORD_FILE_BYTES = 2 * contract.MAX_BODY_BYTES + 64 * 1024
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
REASON_SUFFIX = ".reason.json"


class OutboxFull(Exception):
    """The outbox cannot take more records: over its bound, or the disk is full."""


class OutboxBusy(Exception):
    """Another process is draining this outbox right now."""


JOURNAL_MARKER = "bench-runner-record "


def _open_file(path: Path, flags: int, mode: int = 0o600) -> int:
    """Open a file of the outbox: the seam where a directory can refuse a new entry."""
    return os.open(path, flags, mode)


def _rename(src: Path, dst: Path) -> None:
    """Move a file of the outbox into place (a rename, never a copy)."""
    os.replace(src, dst)


def _write_all(fd: int, data: bytes) -> None:
    """Write every byte to fd: the one seam where the disk can say it is full."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass(frozen=True)
class _Unproven:
    """A 2xx whose body does not show the record was stored: handled like no answer."""

    status: None
    error: str
    body: Any = None
    retry_after: float | None = None
    delivered: bool = False
    hint: str | None = None

    def describe(self) -> str:
        return self.error


def _unproven(answer: Any) -> _Unproven:
    return _Unproven(status=None, error=f"HTTP {answer.status} without the expected JSON body")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass
class Entry:
    """One record file in pending/."""

    name: str
    kind: str
    record_id: str
    payload: dict[str, Any]
    attempts: int = 0
    created_at: float = 0.0
    next_attempt_at: float = 0.0
    retry_after_until: float = 0.0
    last_status: int | None = None
    last_error: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The file's content."""
        return {"version": FORMAT_VERSION, "kind": self.kind, "id": self.record_id,
                "payload": self.payload, "attempts": self.attempts,
                "created_at": self.created_at, "next_attempt_at": self.next_attempt_at,
                "retry_after_until": self.retry_after_until,
                "last_status": self.last_status, "last_error": self.last_error}

    @classmethod
    def from_json(cls, name: str, doc: Any) -> Entry:
        """Parse a record file; ValueError says what is wrong with it."""
        if not isinstance(doc, dict):
            raise ValueError("not a JSON object")
        kind = doc.get("kind")
        if kind not in KINDS:
            raise ValueError(f"unknown kind {kind!r}")
        payload = doc.get("payload")
        if not isinstance(payload, dict):
            raise ValueError("payload is not an object")
        record_id = doc.get("id")
        if not isinstance(record_id, str) or payload.get(KINDS[kind]) != record_id:
            raise ValueError(f"id does not match the payload's {KINDS[kind]}")
        numbers = {}
        for key in ("attempts", "created_at", "next_attempt_at", "retry_after_until"):
            value = doc.get(key, 0)
            if not isinstance(value, int | float) or isinstance(value, bool):
                raise ValueError(f"{key} is not a number")
            if not math.isfinite(value) or abs(value) > 1e15:
                raise ValueError(f"{key} is not a finite number of a sane size")
            numbers[key] = value
        status = doc.get("last_status")
        return cls(name=name, kind=kind, record_id=record_id, payload=payload,
                   attempts=int(numbers["attempts"]), created_at=float(numbers["created_at"]),
                   next_attempt_at=float(numbers["next_attempt_at"]),
                   retry_after_until=float(numbers["retry_after_until"]),
                   last_status=status if isinstance(status, int) else None,
                   last_error=doc.get("last_error") if isinstance(doc.get("last_error"), str)
                   else None)


@dataclass
class DrainReport:
    """What one drain did."""

    delivered: int = 0
    duplicates: int = 0
    # Of those delivered or already stored: results the ingest app kept off the public
    # collection because its model gate withheld them (docs/contract.md section 5).
    withheld: int = 0
    dead: int = 0
    retry_later: int = 0
    not_due: int = 0
    pending_left: int = 0
    auth_refused: bool = False
    busy: bool = False
    problems: list[str] = field(default_factory=list)

    def add(self, other: DrainReport) -> None:
        """Fold another drain into this one (pending_left is the latest)."""
        self.delivered += other.delivered
        self.duplicates += other.duplicates
        self.withheld += other.withheld
        self.dead += other.dead
        self.retry_later += other.retry_later
        self.not_due = other.not_due
        self.pending_left = other.pending_left
        self.auth_refused = self.auth_refused or other.auth_refused
        self.busy = self.busy or other.busy
        self.problems.extend(other.problems)


@dataclass(frozen=True)
class DeadItem:
    """A record in dead/ and why it is there."""

    name: str
    kind: str | None
    record_id: str | None
    status: int | None
    reason: str


@dataclass(frozen=True)
class Status:
    """Counts and ages for `bench-runner outbox status`."""

    pending: int
    dead: int
    partial: int
    oldest_age: float | None
    next_attempt_in: float | None
    dead_items: tuple[DeadItem, ...]


class Outbox:
    """A directory of records waiting for delivery."""

    def __init__(
        self,
        state_dir: Path,
        *,
        max_pending: int = 10_000,
        retry_base: float = 30.0,
        retry_cap: float = 3600.0,
        max_server_errors: int = 3,
        max_retry_after: float = 3600.0,
        lock_timeout: float = 10.0,
        clock: Callable[[], float] = time.time,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        self.root = Path(state_dir) / "outbox"
        self.tmp = self.root / "tmp"
        self.pending = self.root / "pending"
        self.dead = self.root / "dead"
        self.max_pending = max_pending
        self.retry_base = retry_base
        self.retry_cap = retry_cap
        self.max_server_errors = max_server_errors
        self.max_retry_after = max_retry_after
        self.lock_timeout = lock_timeout
        self.clock = clock
        self.jitter = jitter
        for directory in (self.tmp, self.pending, self.dead):
            directory.mkdir(parents=True, exist_ok=True, mode=0o700)

    @classmethod
    def from_settings(cls, settings: Settings) -> Outbox:
        """The outbox under settings.state_dir with its bound and backoff."""
        return cls(settings.state_dir, max_pending=settings.max_pending,
                   retry_base=settings.retry_base, retry_cap=settings.retry_cap,
                   max_server_errors=settings.max_server_errors,
                   max_retry_after=settings.max_retry_after)

    # -- writing ----------------------------------------------------------------

    def put(self, record: Result | Failure) -> Path:
        """Write one record durably into pending/ (or dead/ if it can never be sent).

        Raises OutboxFull when the disk is full; the caller still holds the record.
        """
        payload = record.to_payload()
        entry = Entry(name=self._new_name(record.kind, record.record_id), kind=record.kind,
                      record_id=record.record_id, payload=payload, created_at=self.clock(),
                      next_attempt_at=self.clock())
        unsendable = self._unsendable(entry)
        if unsendable:
            return self._bury_new(entry, None, unsendable)
        target = self.pending / entry.name
        self._write_durably(target, encode(entry.to_json()))
        log.info("outbox queued kind=%s id=%s", entry.kind, entry.record_id)
        return target

    def _new_name(self, kind: str, record_id: str) -> str:
        # Nanoseconds first so that name order is age order; the id keeps names unique.
        return f"{time.time_ns():020d}-{kind}-{record_id}.json"

    def _write_durably(self, target: Path, data: bytes) -> None:
        """tmp -> fsync -> rename -> fsync dir; OutboxFull when the disk is full."""
        tmp = self.tmp / f"{os.getpid()}-{uuid.uuid4().hex}.json"
        try:
            fd = _open_file(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                _write_all(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
            _rename(tmp, target)
            _fsync_dir(target.parent)
        except OSError as exc:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            if exc.errno in DISK_FULL_ERRNOS:
                raise OutboxFull(f"the disk holding {self.root} is full") from exc
            raise

    def _bury_new(self, entry: Entry, status: int | None, reason: str) -> Path:
        target = self.dead / entry.name
        doc = entry.to_json()
        self._write_durably(target, json.dumps(doc, allow_nan=True, default=repr).encode("utf-8"))
        self._write_reason(entry.name, status, None, reason, entry.attempts)
        log.error("outbox dead-lettered kind=%s id=%s reason=%s", entry.kind, entry.record_id,
                  reason)
        return target

    def _write_reason(self, name: str, status: int | None, body: Any, reason: str,
                      attempts: int) -> None:
        doc = {"status": status, "reason": reason, "body": body, "attempts": attempts,
               "dead_at": self.clock()}
        try:
            self._write_durably(self.dead / (name + REASON_SUFFIX),
                                json.dumps(doc, default=str).encode("utf-8"))
        except OutboxFull:
            log.error("outbox reason not written (disk full) name=%s reason=%s", name, reason)

    # -- counting ---------------------------------------------------------------

    def _names(self, directory: Path) -> list[str]:
        # Never follow a link to ask what it is (a loop raises ELOOP): anything named like a
        # record is listed, and _read refuses what is not a plain file.
        return sorted(e.name for e in os.scandir(directory)
                      if not e.is_dir(follow_symlinks=False) and e.name.endswith(".json")
                      and not e.name.endswith(REASON_SUFFIX))

    def pending_count(self) -> int:
        """How many records wait in pending/."""
        return len(self._names(self.pending))

    def dead_count(self) -> int:
        """How many records lie in dead/ (without reading them)."""
        return len(self._names(self.dead))

    def check_room(self, incoming: int) -> None:
        """Raise OutboxFull unless `incoming` more records fit under the bound and the
        outbox can take a file right now (nothing is measured that could not be kept)."""
        pending = self.pending_count()
        if pending + incoming > self.max_pending:
            raise OutboxFull(
                f"{pending} records wait in {self.pending} and {incoming} more would pass the "
                f"bound of {self.max_pending}; deliver them (bench-runner outbox flush) first")
        self.probe()

    def probe(self) -> None:
        """Raise OutboxFull unless a file can be made in tmp/ and renamed into pending/.

        A read-only remount or a directory the runner may not write is a fault of the
        runner's host: it is found here, before any model is called, and reported as the
        runner's (exit 6), never as a model's failure (docs/reliability.md).
        """
        tmp = self.tmp / f"{os.getpid()}-probe-{uuid.uuid4().hex}"
        target = self.pending / f".probe-{os.getpid()}-{uuid.uuid4().hex}"
        try:
            os.close(_open_file(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
            _rename(tmp, target)
            target.unlink()
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise OutboxFull(f"cannot write the outbox in {self.root}: "
                             f"{exc.strerror or exc}; fix the state dir "
                             f"(BENCH_RUNNER_STATE_DIR) or its disk") from exc

    # -- the journal: the last place of a record the outbox could not take -------------

    @staticmethod
    def journal_line(record: Result | Failure) -> str:
        """The record whole on one line, after a marker that `outbox import` looks for."""
        doc = {"version": FORMAT_VERSION, "kind": record.kind, "id": record.record_id,
               "payload": record.to_payload()}
        # The same encoding as a record file and a request body (runner/payload.py); a
        # record JSON cannot hold (NaN) is still logged whole, for a person to read.
        try:
            return JOURNAL_MARKER + encode(doc).decode("utf-8")
        except (TypeError, ValueError):
            return JOURNAL_MARKER + json.dumps(doc, default=repr, separators=(",", ":"))

    def import_lines(self, lines: Iterable[str]) -> tuple[int, int, int]:
        """Put journaled records back into pending/: (imported, already there, broken)."""
        imported = present = broken = 0
        waiting = {n.split("-", 1)[1] for n in self._names(self.pending)}
        for line in lines:
            _, marker, text = line.partition(JOURNAL_MARKER)
            if not marker:
                continue
            try:
                entry = Entry.from_json("", json.loads(text.strip()))
            except (ValueError, RecursionError) as exc:
                log.error("outbox import skipped a broken line: %s", exc)
                broken += 1
                continue
            if f"{entry.kind}-{entry.record_id}.json" in waiting:
                present += 1
                continue
            entry.name = self._new_name(entry.kind, entry.record_id)
            entry.created_at = entry.next_attempt_at = self.clock()
            self._write_durably(self.pending / entry.name, encode(entry.to_json()))
            waiting.add(f"{entry.kind}-{entry.record_id}.json")
            log.info("outbox imported kind=%s id=%s", entry.kind, entry.record_id)
            imported += 1
        return imported, present, broken

    def clean_tmp(self) -> int:
        """Remove files a crashed writer left in tmp/; returns how many."""
        removed = 0
        for entry in os.scandir(self.tmp):
            pid_text = entry.name.split("-", 1)[0]
            pid = int(pid_text) if pid_text.isdigit() else -1
            # A live writer (this process or another run) may still be about to rename it.
            if pid > 0 and _pid_alive(pid):
                continue
            with contextlib.suppress(FileNotFoundError):
                os.unlink(entry.path)
                removed += 1
        if removed:
            log.warning("outbox removed %d partial file(s) from %s", removed, self.tmp)
        return removed

    def status(self) -> Status:
        """Counts, the oldest pending record's age and the dead records with reasons."""
        now = self.clock()
        pending = self._names(self.pending)
        oldest_age = None
        next_in = None
        if pending:
            first = pending[0].split("-", 1)[0]
            if first.isdigit():
                oldest_age = max(0.0, now - int(first) / 1e9)
            for name in pending:
                entry = self._read(self.pending / name)
                if isinstance(entry, Entry):
                    wait = entry.next_attempt_at - now
                    next_in = wait if next_in is None else min(next_in, wait)
        dead_items = tuple(self._dead_item(name) for name in self._names(self.dead))
        partial = sum(1 for _ in os.scandir(self.tmp))
        return Status(pending=len(pending), dead=len(dead_items), partial=partial,
                      oldest_age=oldest_age,
                      next_attempt_in=None if next_in is None else max(0.0, next_in),
                      dead_items=dead_items)

    def _dead_item(self, name: str) -> DeadItem:
        reason, status = "no reason recorded", None
        with contextlib.suppress(OSError, ValueError):
            doc = json.loads((self.dead / (name + REASON_SUFFIX)).read_text("utf-8"))
            reason = str(doc.get("reason") or reason)
            status = doc.get("status") if isinstance(doc.get("status"), int) else None
        parts = name[: -len(".json")].split("-", 2)
        kind, record_id = (parts[1], parts[2]) if len(parts) == 3 else (None, None)
        return DeadItem(name=name, kind=kind, record_id=record_id, status=status, reason=reason)

    def requeue_dead(self) -> int:
        """Move every readable dead record back to pending/ (after fixing what refused it)."""
        moved = 0
        with self._lock():
            for name in self._names(self.dead):
                entry = self._read(self.dead / name)
                if not isinstance(entry, Entry):
                    continue
                entry.attempts, entry.next_attempt_at, entry.retry_after_until = 0, 0.0, 0.0
                self._write_durably(self.pending / name, encode(entry.to_json()))
                (self.dead / name).unlink()
                with contextlib.suppress(FileNotFoundError):
                    (self.dead / (name + REASON_SUFFIX)).unlink()
                moved += 1
        return moved

    # -- draining ---------------------------------------------------------------

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        fd = _open_file(self.root / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            deadline = time.monotonic() + self.lock_timeout
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise OutboxBusy(f"another process is draining {self.root}") from None
                    time.sleep(0.05)
            try:
                yield
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def _read(self, path: Path) -> Entry | str:
        """The entry in a file, or a sentence saying why it cannot be read.

        Whatever lies in pending/ (a link, a fifo, a huge or hostile file) gives a sentence,
        never an exception, so one planted file cannot stop every drain.
        """
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except FileNotFoundError:
            return "vanished"
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                return "a symlink, not followed: the outbox reads only its own plain files"
            return f"unreadable outbox file: {exc.strerror or exc}"
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                return "not a regular file"
            if info.st_size > MAX_RECORD_FILE_BYTES:
                return (f"{info.st_size} bytes, over the {MAX_RECORD_FILE_BYTES} bytes a "
                        f"record file can hold")
            with os.fdopen(fd, "rb", closefd=False) as f:
                raw = f.read(MAX_RECORD_FILE_BYTES + 1)
        except OSError as exc:
            return f"unreadable outbox file: {exc.strerror or exc}"
        finally:
            os.close(fd)
        try:
            return Entry.from_json(path.name, json.loads(raw.decode("utf-8")))
        except (UnicodeDecodeError, ValueError, RecursionError, OverflowError) as exc:
            return f"corrupt outbox file: {type(exc).__name__}: {str(exc)[:200]}"

    def drain(self, client: Any, *, ignore_backoff: bool = False) -> DrainReport:
        """Send what is due, oldest first, until done or the API asks us to wait.

        Results go in batches through /ingest/batch; failures one by one through
        /ingest/error (the contract has no batch route for them), each in its place in
        the age order. `ignore_backoff`
        sends records whose backoff has not run out, but never before a Retry-After.
        """
        report = DrainReport()
        try:
            with self._lock():
                self.clean_tmp()
                self._drain_locked(client, report, ignore_backoff)
        except OutboxBusy as exc:
            report.busy = True
            report.problems.append(str(exc))
        report.pending_left = self.pending_count()
        return report

    def _drain_locked(self, client: Any, report: DrainReport, ignore_backoff: bool) -> None:
        now = self.clock()
        due: list[Entry] = []
        # Not due because the API was not taking records: backoff belongs to the
        # destination, so once it acknowledges a send in this drain, these go too.
        waiting: list[Entry] = []
        for name in self._names(self.pending):
            entry = self._read(self.pending / name)
            if entry == "vanished":
                continue
            if isinstance(entry, str):
                self._bury_file(name, entry)
                report.dead += 1
                continue
            unsendable = self._unsendable(entry)
            if unsendable:
                self._bury(entry, None, None, unsendable)
                report.dead += 1
                continue
            due_at = entry.retry_after_until if ignore_backoff else max(
                entry.next_attempt_at, entry.retry_after_until)
            if due_at > now:
                report.not_due += 1
                if entry.last_status not in OWN_FAULT_STATUSES:
                    waiting.append(entry)
                continue
            due.append(entry)

        if not self._send_in_order(client, due, report):
            return
        if waiting and (report.delivered or report.duplicates):
            # The API just stored a record: an outage is over, whatever each record's own
            # retry time says (docs/reliability.md, backoff belongs to the destination).
            log.info("outbox ingest API is back: sending %d record(s) before their retry time",
                     len(waiting))
            report.not_due -= len(waiting)
            self._send_in_order(client, waiting, report)

    def _send_in_order(self, client: Any, entries: list[Entry], report: DrainReport) -> bool:
        """Oldest first across both kinds: runs of results as batches, each failure alone at
        its place in the order; False means stop draining."""
        results: list[Entry] = []
        for entry in entries:
            if entry.kind == "result":
                results.append(entry)
                continue
            if not self._send_results(client, results, report):
                return False
            results = []
            if not self._send_one(client, entry, report):
                return False
        return self._send_results(client, results, report)

    def _send_results(self, client: Any, results: list[Entry], report: DrainReport) -> bool:
        """Send results in batches, in order; False means stop draining."""
        return all(self._send_batch(client, batch, report)
                   for batch in batches(results, lambda entry: entry.payload))

    def _unsendable(self, entry: Entry) -> str | None:
        """Why a record can never be sent (checked when queued, and when a requeued one drains)."""
        try:
            body(entry.payload)
        except BodyTooLarge as exc:
            return f"refused to send: {exc}"
        except (TypeError, ValueError) as exc:  # NaN, or a value JSON has no form for
            return f"not valid JSON, never sent: {exc}"
        return None

    def _post(self, client: Any, kind: str, payloads: Any) -> Any:
        if kind == "batch":
            return client.post_batch(payloads)
        return client.post_error(payloads) if kind == "error" else client.post_result(payloads)

    def _send_batch(self, client: Any, batch: list[Entry], report: DrainReport) -> bool:
        """Send one batch; False means stop draining."""
        if len(batch) == 1:
            try:
                body(batch[0].payload, overhead=BATCH_ENVELOPE_BYTES)
            except BodyTooLarge:  # fits alone, not in an envelope
                return self._send_one(client, batch[0], report)
        answer = self._post(client, "batch", [e.payload for e in batch])
        items = answer.body.get("results") if isinstance(answer.body, dict) else None
        if answer.status == 200 and isinstance(items, list) and len(items) == len(batch):
            for entry, item in zip(batch, items, strict=True):
                self._judge_item(entry, item, report)
            return True
        if answer.delivered:
            # A 2xx without one status per record (a proxy, a wrong URL): nothing proves
            # they were stored, so keep them and try again later.
            answer = _unproven(answer)
        if answer.status in PERMANENT_STATUSES and answer.status != 401 and len(batch) > 1:
            # The envelope was refused whole (e.g. a smaller body limit on the server):
            # send each record alone so each gets its own verdict.
            log.warning("batch of %d refused (%s); sending one by one", len(batch),
                        answer.describe())
            return all(self._send_one(client, entry, report) for entry in batch)
        # One answer for the whole batch: every record in it gets that verdict.
        verdicts = [self._verdict(entry, answer, report) for entry in batch]
        return all(verdicts)

    def _send_one(self, client: Any, entry: Entry, report: DrainReport) -> bool:
        """Send one record alone; False means stop draining."""
        try:
            answer = self._post(client, entry.kind, entry.payload)
        except ValueError as exc:  # over the limit or not valid JSON: never sendable
            self._bury(entry, None, None, f"refused to send: {exc}")
            report.dead += 1
            return True
        return self._verdict(entry, answer, report)

    def _judge_item(self, entry: Entry, item: Any, report: DrainReport) -> None:
        state = item.get("status") if isinstance(item, dict) else None
        if state == "created":
            self._delete(entry)
            report.delivered += 1
            _note_withheld(entry, item, report)
        elif state == "duplicate":
            self._delete(entry)
            report.duplicates += 1
            _note_withheld(entry, item, report)
        elif state in ("rejected", "conflict"):
            status = 409 if state == "conflict" else 422
            self._bury(entry, status, item, f"batch item {state}")
            report.dead += 1
        else:
            self._schedule(entry, None, f"unexpected batch item status {state!r}", None)
            report.retry_later += 1

    def _verdict(self, entry: Entry, answer: Any, report: DrainReport) -> bool:
        """Act on one answer for one record; False means stop draining."""
        if answer.delivered and not isinstance(answer.body, dict):
            answer = _unproven(answer)
        if answer.delivered:
            self._delete(entry)
            if answer.body.get("duplicate"):
                report.duplicates += 1
            else:
                report.delivered += 1
            _note_withheld(entry, answer.body, report)
            return True
        status = answer.status
        # The client's hint names the setting to check: the outbox knows none of them.
        hint = answer.hint
        if status == 401:
            self._bury(entry, status, answer.body,
                       "the ingest API refused the key" + (f" ({hint})" if hint else ""))
            report.dead += 1
            if not report.auth_refused:
                report.problems.append(
                    "the ingest API answered 401" + (f": {hint}" if hint else "")
                    + ", then move the refused records back with `bench-runner outbox requeue`")
            report.auth_refused = True
            return False
        if status in PERMANENT_STATUSES:
            self._bury(entry, status, answer.body, f"permanent answer {answer.describe()}")
            report.dead += 1
            return True
        entry.attempts += 1
        if status == 500 and entry.attempts >= self.max_server_errors:
            self._bury(entry, status, answer.body,
                       f"HTTP 500 on {entry.attempts} attempts: {answer.describe()}")
            report.dead += 1
            return True
        self._schedule(entry, status, answer.describe(), answer.retry_after, counted=True)
        report.retry_later += 1
        problem = f"ingest API not taking records ({answer.describe()}); they wait in pending/"
        if hint:
            problem += f" ({hint})"
        if problem not in report.problems:
            report.problems.append(problem)
        return False

    def _schedule(self, entry: Entry, status: int | None, error: str,
                  retry_after: float | None, *, counted: bool = False) -> None:
        if not counted:
            entry.attempts += 1
        now = self.clock()
        delay = min(self.retry_cap, self.retry_base * 2 ** max(0, entry.attempts - 1))
        delay = delay / 2 + self.jitter() * delay / 2  # jitter so many runners do not stampede
        if retry_after is not None and not math.isfinite(retry_after):
            retry_after = None
        if retry_after:
            # A Retry-After is honoured up to a cap (an hour): `inf` or 1e20 s from a
            # hostile or broken server must not park a record for ever.
            retry_after = min(max(0.0, retry_after), self.max_retry_after)
        entry.retry_after_until = now + retry_after if retry_after else 0.0
        entry.next_attempt_at = max(now + delay, entry.retry_after_until)
        entry.last_status, entry.last_error = status, error[:500]
        try:
            self._write_durably(self.pending / entry.name, encode(entry.to_json()))
        except OutboxFull:
            # The old file stays as it was: only the schedule is lost, never the record.
            log.error("outbox schedule not saved (disk full) id=%s", entry.record_id)
        log.info("outbox retry later id=%s attempts=%d in=%.1fs status=%s", entry.record_id,
                 entry.attempts, entry.next_attempt_at - now, status)

    def _delete(self, entry: Entry) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.pending / entry.name).unlink()
        log.info("outbox delivered kind=%s id=%s", entry.kind, entry.record_id)

    def _bury(self, entry: Entry, status: int | None, body: Any, reason: str) -> None:
        self._write_reason(entry.name, status, body, reason, entry.attempts + 1)
        _rename(self.pending / entry.name, self.dead / entry.name)
        _fsync_dir(self.dead)
        log.error("outbox dead-lettered kind=%s id=%s status=%s reason=%s", entry.kind,
                  entry.record_id, status, reason)

    def _bury_file(self, name: str, reason: str) -> None:
        self._write_reason(name, None, None, reason, 0)
        _rename(self.pending / name, self.dead / name)
        _fsync_dir(self.dead)
        log.error("outbox dead-lettered unreadable file name=%s reason=%s", name, reason)


def _note_withheld(entry: Entry, answer: dict[str, Any], report: DrainReport) -> None:
    """Count and log a result the ingest app stored off the public collection by its gate."""
    reason = answer.get("withheld_reason")
    if isinstance(reason, str):
        report.withheld += 1
        log.warning("stored but not published id=%s reason=%s (list the model with "
                    "`flask --app ingest_app models add` on the ingest host)",
                    entry.record_id, reason)
