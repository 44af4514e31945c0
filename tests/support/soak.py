"""A chaos soak on real processes: the engine behind tests/test_soak.py and bench/chaos_soak.py.

A real `bench-runner daemon` measures simulated models (the Bedrock simulator in its own
process) every few seconds and delivers to the ingest app under real gunicorn, which stores
into a private nx-27017 server. Meanwhile a schedule drawn from one seed SIGKILLs and
restarts the database, the gunicorn master, a gunicorn worker and the runner, and
SIGSTOPs/SIGCONTs the database. Then everything comes back, the daemon is stopped, the
outbox is flushed, and the promise is checked: every record id that ever reached the outbox
is stored exactly once, nothing is in dead/, nothing is pending.

Record ids are collected while the soak runs from the outbox itself (pending/ and dead/
scanned every few milliseconds; a file's name holds its kind and id) and afterwards from
every runner log line that names a record (queued, delivered, retried, dead-lettered), so
a record that came and went between two scans is still counted.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pymongo

from runner.simulator import SimulatorConfig
from tests.support.ingest import (
    TEST_KEYS,
    Gunicorn,
    gunicorn_env,
    http_status,
    spawn_gunicorn,
    stop_gunicorn,
    wait_healthy,
)
from tests.support.mongo import MongoServer, free_port
from tests.support.simulator import SimulatorHandle, start_simulator

BENCH_RUNNER = str(Path(sys.executable).with_name("bench-runner"))
RUNNER_KEY_NAME = "runner-a"
DB_NAME = "soak"
RESULTS, ERRORS = "metrics_cloud_v2", "errors_cloud"
COLLECTION = {"result": (RESULTS, "result_id"), "error": (ERRORS, "error_id")}

# What each fault hits, and how long (seconds, drawn uniformly) the target stays down.
FAULTS = ("kill_db", "freeze_db", "kill_gunicorn", "kill_worker", "kill_runner")
TARGET = {"kill_db": "db", "freeze_db": "db", "kill_gunicorn": "app", "kill_worker": "app",
          "kill_runner": "runner"}
DOWNTIME = {"kill_db": (0.3, 3.0), "freeze_db": (0.5, 4.0), "kill_gunicorn": (0.0, 2.0),
            "kill_worker": (0.0, 0.0), "kill_runner": (0.0, 2.0)}
# A target is left alone this long after it is due back, so a fault never lands on a
# process still starting up.
SETTLE = 1.0

# outbox/pending/<20-digit ns>-<kind>-<id>.json, and the runner's log lines about a record.
_FILE_NAME = re.compile(r"^\d{20}-(result|error)-([0-9a-f-]{36})\.json$")
_LOG_LINE = re.compile(
    r"outbox (?:queued|delivered|dead-lettered) kind=(result|error) id=([0-9a-f-]{36})"
    r"|outbox retry later id=([0-9a-f-]{36})")
# gunicorn's access line: ... "POST /ingest/batch HTTP/1.1" 503 ...
_ACCESS_STATUS = re.compile(r'"[A-Z]+ (\S+) HTTP/1\.[01]" (\d{3}) ')


@dataclass(frozen=True)
class Fault:
    """One planned fault: seconds after the start, what, and how long the target stays down."""

    at: float
    kind: str
    downtime: float


def plan_faults(seed: int, seconds: float, mean_gap: float) -> tuple[Fault, ...]:
    """The fault schedule of a seed: every kind once (in a seeded order), then random ones.

    The schedule depends on the seed alone, never on how the run goes, so the same seed
    replays the same faults at the same offsets.
    """
    rng = random.Random(seed)
    busy = dict.fromkeys(TARGET.values(), 0.0)
    first = list(FAULTS)
    rng.shuffle(first)
    faults: list[Fault] = []
    t = rng.uniform(0.5, 1.5)
    while t < seconds:
        free = [k for k in (first[:1] or FAULTS) if busy[TARGET[k]] <= t]
        if free:
            kind = rng.choice(free)
            if first:
                first.remove(kind)
            downtime = round(rng.uniform(*DOWNTIME[kind]), 2)
            busy[TARGET[kind]] = t + downtime + SETTLE
            faults.append(Fault(round(t, 2), kind, downtime))
        t += rng.expovariate(1 / mean_gap)
    return tuple(faults)


def simulator_config(models: int) -> tuple[SimulatorConfig, tuple[str, ...]]:
    """`models` quick models that answer and one retired model that always fails."""
    spec: dict[str, dict[str, Any]] = {
        f"sim.soak-{i}-v1": {"ttft": 0.05 + 0.04 * (i % 4), "gap": 0.01,
                             "tokens_per_delta": 4, "output_tokens": 32}
        for i in range(models)
    }
    spec["sim.soak-retired-v1"] = {"error": "end_of_life"}
    return SimulatorConfig.from_dict({"models": spec}), tuple(spec)


@dataclass(frozen=True)
class SoakConfig:
    """How long and how hard to soak; the seed fixes the fault schedule."""

    seed: int
    workdir: Path
    seconds: float = 30.0  # the chaos phase
    mean_gap: float = 2.0  # mean seconds between two faults
    models: int = 4  # models that answer (one failing model is added)
    concurrency: int = 2
    interval_minutes: float = 0.02  # the daemon's cycle interval (1.2 s)
    # All up again: the daemon has this long to empty pending/ by itself before it is stopped.
    settle_seconds: float = 20.0
    drain_seconds: float = 30.0  # bound on `outbox flush` rounds after the daemon stopped


@dataclass
class SoakReport:
    """What a soak did and found; `line()` is the one line to read and replay from."""

    seed: int
    seconds: float = 0.0
    faults: Counter = field(default_factory=Counter)
    results: int = 0  # result ids seen in the outbox
    errors: int = 0  # failure ids seen in the outbox
    duplicates: int = 0  # extra stored copies of one id
    lost: list[str] = field(default_factory=list)  # seen, never stored
    unseen: list[str] = field(default_factory=list)  # stored, never seen in the outbox
    dead: list[str] = field(default_factory=list)  # dead/ files with their reasons
    pending: int = 0
    # Answers the app gave during the faults, by status; a 500 is a bug (an outage is a 503).
    statuses: Counter = field(default_factory=Counter)
    left_for_flush: int = 0  # pending when the daemon stopped, for `outbox flush` to deliver
    drained_in: float | None = None  # seconds the daemon took to empty pending/ once all was up
    flushes: int = 0
    runner_starts: int = 0
    daemon_exit: int | None = None
    notes: list[str] = field(default_factory=list)  # anything else that went wrong

    @property
    def ok(self) -> bool:
        """The promise held and the soak did something."""
        return (self.results > 0 and not self.duplicates and not self.lost and not self.unseen
                and not self.dead and not self.pending and self.daemon_exit == 0
                and not self.server_errors and not self.notes and not self.left_for_flush)

    @property
    def server_errors(self) -> int:
        """Answers with a 5xx other than 503 (the app's only answer to an outage)."""
        return sum(n for status, n in self.statuses.items() if status >= 500 and status != 503)

    def line(self) -> str:
        """Seed, kills by kind and the counts, in one line."""
        kills = " ".join(f"{kind}={self.faults[kind]}" for kind in FAULTS)
        return (f"soak seed={self.seed} seconds={self.seconds:.0f} {kills} "
                f"results={self.results} errors={self.errors} duplicates={self.duplicates} "
                f"lost={len(self.lost)} unseen={len(self.unseen)} dead={len(self.dead)} "
                f"pending={self.pending} http_503={self.statuses[503]} "
                f"http_5xx_other={self.server_errors} drained_in={_seconds(self.drained_in)} "
                f"left_for_flush={self.left_for_flush} "
                f"flushes={self.flushes} runner_starts={self.runner_starts} "
                f"daemon_exit={self.daemon_exit} {'OK' if self.ok else 'FAILED'}")

    def details(self) -> str:
        """The line, then what broke the promise (ids, dead reasons, notes)."""
        parts = [self.line(), f"replay: SOAK_SEED={self.seed}"]
        if self.lost:
            parts.append(f"lost: {', '.join(self.lost[:10])}")
        if self.unseen:
            parts.append(f"stored but never in the outbox: {', '.join(self.unseen[:10])}")
        parts.extend(f"dead: {d}" for d in self.dead[:10])
        if self.server_errors:
            parts.append(f"answers by status: {dict(sorted(self.statuses.items()))}")
        parts.extend(self.notes)
        return "\n".join(parts)


class OutboxWatcher:
    """Notes every record file that shows up in pending/ or dead/, from a background thread."""

    def __init__(self, state_dir: Path, every: float = 0.01) -> None:
        self.dirs = [state_dir / "outbox" / "pending", state_dir / "outbox" / "dead"]
        self.every = every
        self.seen: dict[str, str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="outbox-watcher", daemon=True)

    def start(self) -> None:
        """Start scanning."""
        self._thread.start()

    def stop(self) -> None:
        """Stop scanning, after one last scan."""
        self._stop.set()
        self._thread.join(timeout=10)
        self.scan()

    def scan(self) -> None:
        """Record the kind and id of every record file present now."""
        for directory in self.dirs:
            with contextlib.suppress(FileNotFoundError):
                for entry in os.scandir(directory):
                    match = _FILE_NAME.match(entry.name)
                    if match:
                        self.seen[match[2]] = match[1]

    def _run(self) -> None:
        while not self._stop.is_set():
            self.scan()
            self._stop.wait(self.every)


def ids_in_logs(paths: list[Path]) -> dict[str, str | None]:
    """Record ids named in runner log lines; the kind where the line gives it."""
    found: dict[str, str | None] = {}
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            for match in _LOG_LINE.finditer(path.read_text(errors="replace")):
                if match[2]:
                    found[match[2]] = match[1]
                else:
                    found.setdefault(match[3], None)
    return found


class Soak:
    """The processes of one soak; a context manager that leaves none of them behind."""

    def __init__(self, config: SoakConfig) -> None:
        self.config = config
        self.work = Path(config.workdir)
        self.state = self.work / "runner-state"
        self.logs = self.work / "logs"
        self.report = SoakReport(seed=config.seed)
        self.db = MongoServer(self.work / "mongo")
        self.app_port = free_port()
        self.app: Gunicorn | None = None
        self.masters: list[Gunicorn] = []
        self.runner: subprocess.Popen | None = None
        self.runners: list[subprocess.Popen] = []
        self.runner_logs: list[Path] = []
        self.sim: SimulatorHandle | None = None
        self.frozen = False
        self.rng = random.Random(config.seed ^ 0x5EED)  # which worker to kill
        sim_config, self.models = simulator_config(config.models)
        self._sim_config = sim_config
        self.watcher = OutboxWatcher(self.state)
        # Held while a process is started and registered, so that once close() has run no
        # restore thread still on its way can start one that nobody stops.
        self._spawning = threading.Lock()
        self.closed = False

    # -- the processes ----------------------------------------------------------------

    def __enter__(self) -> Soak:
        self.logs.mkdir(parents=True, exist_ok=True)
        try:
            self.sim = start_simulator(self._sim_config, self.work / "simulator")
            self.db.start()
            self.start_app()
            self.watcher.start()
            self.start_runner()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop every process this soak started, whatever state it is in."""
        with self._spawning:
            self.closed = True
        for proc in self.runners:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        for master in self.masters:
            with contextlib.suppress(Exception):
                stop_gunicorn(master)
        with contextlib.suppress(Exception):
            if self.frozen:
                self.db.thaw()
        with contextlib.suppress(Exception):
            self.db.stop()
        if self.sim is not None:
            with contextlib.suppress(Exception):
                self.sim.stop()
        with contextlib.suppress(Exception):
            self.watcher.stop()

    def app_env(self) -> dict[str, str]:
        """The ingest app's environment: a dead database is told fast and retried soon."""
        return gunicorn_env(self.db.uri, DB_NAME, MONGODB_TIMEOUT_SECONDS="1",
                            INGEST_RETRY_AFTER_SECONDS="1")

    def start_app(self) -> None:
        """Start a gunicorn master on the app's port and wait until it answers."""
        with self._spawning:
            self._refuse_if_closed()
            self.app = spawn_gunicorn(self.app_env(), port=self.app_port, workdir=self.logs)
            self.masters.append(self.app)
        # gunicorn retries a bind that a departing worker still holds; wait past that.
        wait_healthy(self.app, limit=30.0)

    def runner_env(self) -> dict[str, str]:
        """The runner's environment: the simulator for Bedrock, this soak's app and outbox."""
        assert self.sim is not None
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("AWS_", "INGEST_", "BENCHMARK_", "BENCH_RUNNER_"))}
        env.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
                   AWS_DEFAULT_REGION="us-east-1", AWS_EC2_METADATA_DISABLED="true",
                   AWS_CONFIG_FILE=os.devnull, AWS_SHARED_CREDENTIALS_FILE=os.devnull,
                   INGEST_API_URL=f"http://127.0.0.1:{self.app_port}/ingest",
                   INGEST_API_KEY=TEST_KEYS[RUNNER_KEY_NAME],
                   BENCH_RUNNER_STATE_DIR=str(self.state), **self.sim.env)
        return env

    def start_runner(self) -> None:
        """Start a `bench-runner daemon` on the soak's models, logging to a file of its own."""
        with self._spawning:
            self._refuse_if_closed()
            self.report.runner_starts += 1
            log_path = self.logs / f"runner-{self.report.runner_starts}.log"
            self.runner_logs.append(log_path)
            with open(log_path, "wb") as log:
                self.runner = subprocess.Popen(
                    [BENCH_RUNNER, "daemon", "--interval", str(self.config.interval_minutes),
                     "--log-level", "info", "--models", ",".join(self.models),
                     "--concurrency", str(self.config.concurrency), "--call-timeout", "10"],
                    env=self.runner_env(), stdout=log, stderr=subprocess.STDOUT,
                    start_new_session=True)
            self.runners.append(self.runner)

    def _refuse_if_closed(self) -> None:
        if self.closed:
            raise RuntimeError("the soak is over: nothing more is started")

    # -- faults -----------------------------------------------------------------------

    def inject(self, fault: Fault) -> bool:
        """Do a fault; False when there was nothing to hit (no live worker)."""
        if fault.kind == "kill_db":
            self.db.stop()
        elif fault.kind == "freeze_db":
            self.db.freeze()
            self.frozen = True
        elif fault.kind == "kill_gunicorn":
            assert self.app is not None
            os.kill(self.app.pid, signal.SIGKILL)
        elif fault.kind == "kill_worker":
            assert self.app is not None
            workers = sorted(self.app.worker_pids())
            if not workers:
                return False
            os.kill(self.rng.choice(workers), signal.SIGKILL)
        elif fault.kind == "kill_runner":
            assert self.runner is not None
            self.runner.kill()
            self.runner.wait(timeout=10)
        return True

    def restore(self, fault: Fault) -> None:
        """Bring back what a fault took down."""
        if fault.kind == "kill_db":
            with self._spawning:  # its start waits for a ping: close() waits that long too
                self._refuse_if_closed()
                self.db.start()
        elif fault.kind == "freeze_db":
            self.db.thaw()
            self.frozen = False
        elif fault.kind == "kill_gunicorn":
            assert self.app is not None
            self.app.proc.wait(timeout=10)
            # Workers whose master died notice, finish what they hold and leave.
            if not _group_gone(self.app.pid, limit=20.0):
                self.report.notes.append(
                    f"gunicorn workers of killed master {self.app.pid} still there after 20 s")
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.app.pid, signal.SIGKILL)
            self.start_app()
        elif fault.kind == "kill_runner":
            self.start_runner()

    def run_faults(self, faults: tuple[Fault, ...]) -> None:
        """Play the schedule on time; each target comes back after its downtime, in a thread.

        Restoring in the background keeps one slow restart (a database or a gunicorn coming
        up) from delaying the faults of the other targets; a fault waits only for its own
        target to be up again.
        """
        started = time.monotonic()
        up = {target: threading.Event() for target in TARGET.values()}
        for event in up.values():
            event.set()
        failures: list[BaseException] = []
        threads: list[threading.Thread] = []

        def bring_back(fault: Fault) -> None:
            try:
                time.sleep(fault.downtime)
                self.restore(fault)
            except BaseException as exc:  # noqa: BLE001 - re-raised in the soak's thread
                failures.append(exc)
            finally:
                up[TARGET[fault.kind]].set()

        try:
            for fault in faults:
                time.sleep(max(0.0, started + fault.at - time.monotonic()))
                target = up[TARGET[fault.kind]]
                if not target.wait(timeout=60) or failures:
                    break
                if not self.inject(fault):
                    continue
                self.report.faults[fault.kind] += 1
                if fault.kind == "kill_worker":
                    continue
                target.clear()
                thread = threading.Thread(target=bring_back, args=(fault,), daemon=True)
                thread.start()
                threads.append(thread)
            time.sleep(max(0.0, started + self.config.seconds - time.monotonic()))
        finally:
            for thread in threads:
                thread.join(timeout=90)
        if failures:
            raise RuntimeError(f"could not bring a process back: {failures[0]!r}") \
                from failures[0]
        if not all(event.is_set() for event in up.values()):
            raise RuntimeError("a process was still down 60 s after it was due back")

    # -- the end ----------------------------------------------------------------------

    def stop_runner(self) -> None:
        """SIGTERM the daemon: it finishes the models in flight into the outbox and exits."""
        assert self.runner is not None
        self.runner.send_signal(signal.SIGTERM)
        try:
            self.report.daemon_exit = self.runner.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.report.notes.append("the daemon did not stop within 60 s of SIGTERM")
            self.runner.kill()
            self.runner.wait(timeout=10)

    def flush(self) -> None:
        """`bench-runner outbox flush --now` until it delivers everything or time runs out."""
        deadline = time.monotonic() + self.config.drain_seconds
        while True:
            self.report.flushes += 1
            log_path = self.logs / f"flush-{self.report.flushes}.log"
            self.runner_logs.append(log_path)
            with open(log_path, "wb") as log:
                code = subprocess.run(
                    [BENCH_RUNNER, "outbox", "flush", "--now", "--log-level", "info"],
                    env=self.runner_env(), stdout=log, stderr=subprocess.STDOUT,
                    timeout=max(10.0, self.config.drain_seconds), check=False).returncode
            if code == 0 or time.monotonic() > deadline:
                if code != 0:
                    self.report.notes.append(f"last `outbox flush` exited {code}: "
                                             + log_path.read_text(errors="replace")[-500:])
                return
            time.sleep(1.0)

    def pending_count(self) -> int:
        """Record files in pending/ now."""
        return sum(1 for _ in (self.state / "outbox" / "pending").glob("*.json"))

    def wait_drained(self, limit: float) -> float | None:
        """Seconds until the daemon has emptied pending/ by itself; None if not in `limit`.

        Once the API is back, the first send it acknowledges makes every waiting record due
        (docs/reliability.md, backoff belongs to the destination), so one cycle does it.
        """
        started = time.monotonic()
        while self.pending_count():
            if time.monotonic() - started > limit:
                return None
            time.sleep(0.05)
        return time.monotonic() - started

    def wait_ready(self, limit: float = 30.0) -> None:
        """Block until the app's /ready says the database answers."""
        deadline = time.monotonic() + limit
        url = f"http://127.0.0.1:{self.app_port}/ready"
        while http_status(url) != 200:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the ingest app was not ready {limit} s after the chaos")
            time.sleep(0.2)

    def check(self) -> None:
        """Compare every id the outbox ever held with what the database stored."""
        self.watcher.stop()
        seen: dict[str, str | None] = dict(self.watcher.seen)
        for record_id, kind in ids_in_logs(self.runner_logs).items():
            if seen.get(record_id) is None:
                seen[record_id] = kind
        stored: dict[str, Counter] = {}
        with pymongo.MongoClient(self.db.uri, serverSelectionTimeoutMS=10000) as client:
            db = client[DB_NAME]
            for kind, (collection, key) in COLLECTION.items():
                stored[kind] = Counter(doc[key] for doc in db[collection].find({}, {key: 1}))
        report = self.report
        report.results = sum(kind == "result" for kind in seen.values())
        report.errors = sum(kind == "error" for kind in seen.values())
        for record_id, kind in sorted(seen.items()):
            copies = (stored[kind][record_id] if kind else
                      stored["result"][record_id] + stored["error"][record_id])
            if copies == 0:
                report.lost.append(f"{kind or 'record'} {record_id}")
            report.duplicates += max(0, copies - 1)
        for kind, counts in stored.items():
            report.unseen.extend(f"{kind} {i}" for i in sorted(counts) if i not in seen)
        for master_log in {m.log_path for m in self.masters}:
            for match in _ACCESS_STATUS.finditer(master_log.read_text(errors="replace")):
                report.statuses[int(match[2])] += 1
        outbox = self.state / "outbox"
        report.pending = sum(1 for p in (outbox / "pending").glob("*.json"))
        for path in sorted((outbox / "dead").glob("*.json")):
            if path.name.endswith(".reason.json"):
                continue
            reason = "no reason file"
            with contextlib.suppress(OSError, ValueError):
                doc = json.loads(Path(f"{path}.reason.json").read_text())
                reason = f"HTTP {doc.get('status')}: {doc.get('reason')}"
            report.dead.append(f"{path.name} {reason}")


def _seconds(value: float | None) -> str:
    return "never" if value is None else f"{value:.1f}s"


def _group_gone(pgid: int, limit: float) -> bool:
    """Wait until no process of group `pgid` is left; False if some still are after `limit`."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    return False


def run_soak(config: SoakConfig) -> SoakReport:
    """Soak the whole path under the seed's faults, bring it back, and check the promise."""
    faults = plan_faults(config.seed, config.seconds, config.mean_gap)
    started = time.monotonic()
    with Soak(config) as soak:
        soak.run_faults(faults)
        soak.wait_ready()
        soak.report.drained_in = soak.wait_drained(config.settle_seconds)
        soak.stop_runner()
        soak.report.left_for_flush = soak.pending_count()
        soak.flush()
        soak.check()
        soak.report.seconds = time.monotonic() - started
        return soak.report


def seed_from_env(default: int | None = None) -> int:
    """SOAK_SEED if set, else `default`, else a fresh random seed."""
    value = os.environ.get("SOAK_SEED", "").strip()
    if value:
        return int(value)
    return default if default is not None else random.SystemRandom().randrange(1, 10**6)
