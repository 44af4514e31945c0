"""Test fixtures for the ingest side (registered in tests/conftest.py).

`app`/`client` run the Flask app in-process on the test's own database; `run_gunicorn`
and `ingest_server` run the real thing (gunicorn, the repo's gunicorn.conf.py) on a
free loopback port for tests where workers, sockets or timeouts matter.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from ingest_app import create_app
from ingest_app import health as model_health
from ingest_app.settings import Settings
from runner.records import Failure, Result
from tests.support.mongo import free_port

REPO = Path(__file__).resolve().parents[2]

TEST_KEYS = {
    "runner-a": "ka-0123456789abcdefghijklmnopqrstuvwxyzAB",
    "runner-b": "kb-0123456789abcdefghijklmnopqrstuvwxyzAB",
}
# A key that may read (GET /results, /summary) but never write.
TEST_READ_KEYS = {"dashboard": "kr-0123456789abcdefghijklmnopqrstuvwxyzAB"}


def result_payload(**overrides: Any) -> dict[str, Any]:
    """A valid POST /ingest body (fresh result_id, run_ts now), with fields overridden."""
    now = datetime.now(UTC)
    payload = Result(
        provider="bedrock", model_name="sim.fast-v1", region="us-east-1",
        run_ts=now - timedelta(seconds=2), gen_ts=now, output_tokens=64,
        generate_time=1.5, tokens_per_second=42.667, input_tokens=18,
        token_source="provider_usage", time_to_first_token=0.15,
        time_to_first_any_token=0.15, decode_tokens_per_second=47.5, server_latency_ms=1400,
        stop_reason="max_tokens", request_id="req-1", chunk_count=16,
        benchmark_profile_id="cloud-default-v1", requested_tokens=64, temperature=0.1,
    ).to_payload()
    payload.update(overrides)
    return payload


def failure_payload(**overrides: Any) -> dict[str, Any]:
    """A valid POST /ingest/error body (fresh error_id, ts now), with fields overridden."""
    payload = Failure(
        provider="bedrock", model_name="sim.retired-v1", ts=datetime.now(UTC), stage="call",
        error_kind="model_unavailable", message="This model version has reached the end of "
        "its life. Request id 9f1c2b7e-0d7a-4a53-9c7e-1f2e3d4c5b6a",
        exc_type="ResourceNotFoundException", http_status=404, region="us-east-1",
    ).to_payload()
    payload.update(overrides)
    return payload


def keys_env(keys: dict[str, str]) -> str:
    """The INGEST_API_KEYS form of a name -> key mapping."""
    return ",".join(f"{name}:{key}" for name, key in keys.items())


@pytest.fixture
def ingest_settings(mongo_uri, mongo_db_name) -> Settings:
    """Settings for an app on this test's own database with TEST_KEYS (and TEST_READ_KEYS)."""
    return Settings(
        mongodb_uri=mongo_uri,
        mongodb_db=mongo_db_name,
        api_keys=tuple(TEST_KEYS.items()),
        read_keys=tuple(TEST_READ_KEYS.items()),
    )


@pytest.fixture(autouse=True)
def _health_threads_end_with_their_test():
    """An app a test made for itself ends its health thread with the test, as `app` does.

    Left running, the thread of an app whose database a test stopped keeps failing its
    recount, and every later test that waits on health.settle() waits in vain.
    """
    before = set(model_health.Updater.registry)
    yield
    with model_health.Updater.registry_lock:
        leaked = [model_health.Updater.registry.pop(key)
                  for key in list(model_health.Updater.registry) if key not in before]
    for updater in leaked:
        updater.stop(timeout=2)
        # Its last recount may have opened a client again after the test closed the app's.
        updater.app.extensions["bench_ingest.db"].close()


@pytest.fixture
def app(ingest_settings, mongo_db):
    """The Flask app on this test's database (dropped afterwards by mongo_db)."""
    application = create_app(ingest_settings)
    yield application
    model_health.close(application, timeout=5)
    application.extensions["bench_ingest.db"].close()


@pytest.fixture
def client(app):
    """A Flask test client of `app`."""
    with app.test_client() as test_client:
        yield test_client


@pytest.fixture
def auth_headers() -> dict[str, str]:
    """runner-a's key as an X-API-Key header."""
    return {"X-API-Key": TEST_KEYS["runner-a"]}


@dataclass
class Gunicorn:
    """A running gunicorn master: where it listens, its pid and its log file."""

    url: str
    pid: int
    log_path: Path
    proc: subprocess.Popen | None = field(default=None, repr=False, compare=False)

    def log(self) -> str:
        """Everything gunicorn and the app have written so far."""
        return self.log_path.read_text(errors="replace")

    def worker_pids(self) -> set[int]:
        """The pids of the master's live workers."""
        out = subprocess.run(
            ["ps", "-o", "pid=", "--ppid", str(self.pid)],
            capture_output=True, text=True, check=False,
        ).stdout
        return {int(p) for p in out.split()}


def spawn_gunicorn(
    env: dict[str, str], *, port: int, workdir: Path, workers: int = 2, timeout: int = 30,
    threads: int = 4, app: str = "ingest_app:create_app()", log_name: str = "gunicorn.log",
    extra_args: tuple[str, ...] = (),
) -> Gunicorn:
    """Start `app` under gunicorn with the repo's config on 127.0.0.1:`port`; do not wait.

    `extra_args` go on gunicorn's command line, where they override the config file.

    The master leads its own process group (its pid), so the group outlives a killed master
    and `stop_gunicorn` can still reach workers left behind. The log is appended to, so a
    master started again on the same port and workdir keeps one log.
    """
    child_env = {
        k: v for k, v in os.environ.items()
        if not k.startswith(("MONGODB_", "INGEST_", "GUNICORN_", "PROMETHEUS_", "WEB_"))
    }
    child_env.update(
        GUNICORN_BIND=f"127.0.0.1:{port}",
        WEB_CONCURRENCY=str(workers),
        GUNICORN_THREADS=str(threads),
        GUNICORN_TIMEOUT=str(timeout),
        PROMETHEUS_MULTIPROC_DIR=str(Path(workdir, "metrics")),
    )
    child_env.update(env)
    Path(child_env["PROMETHEUS_MULTIPROC_DIR"]).mkdir(exist_ok=True)
    log_path = Path(workdir, log_name)
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", str(REPO / "gunicorn.conf.py"),
             *extra_args, app],
            cwd=REPO, env=child_env, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return Gunicorn(url=f"http://127.0.0.1:{port}", pid=proc.pid, log_path=log_path, proc=proc)


@contextlib.contextmanager
def start_gunicorn(
    env: dict[str, str], *, workers: int = 2, timeout: int = 30, threads: int = 4,
    app: str = "ingest_app:create_app()", extra_args: tuple[str, ...] = (),
) -> Iterator[Gunicorn]:
    """Run `app` under gunicorn with the repo's config on a free loopback port; stop it after."""
    with tempfile.TemporaryDirectory(prefix="gunicorn-test-") as tmp:
        server = spawn_gunicorn(env, port=free_port(), workdir=Path(tmp), workers=workers,
                                timeout=timeout, threads=threads, app=app,
                                extra_args=extra_args)
        try:
            wait_healthy(server)
            yield server
        finally:
            stop_gunicorn(server)


@contextlib.contextmanager
def run_gunicorn(env: dict[str, str], *, workers: int = 2, timeout: int = 30) -> Iterator[str]:
    """Run the ingest app under real gunicorn; yield its base URL (http://127.0.0.1:PORT)."""
    with start_gunicorn(env, workers=workers, timeout=timeout) as server:
        yield server.url


def http_status(url: str) -> int | None:
    """Status of a GET, or None when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=3) as answer:
            return answer.status
    except urllib.error.HTTPError as error:
        error.close()
        return error.code
    except OSError:
        return None


def wait_healthy(server: Gunicorn, limit: float = 20.0) -> None:
    """Block until gunicorn answers /health with 200; RuntimeError with its log if it cannot."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if server.proc is not None and server.proc.poll() is not None:
            raise RuntimeError(
                f"gunicorn exited with {server.proc.returncode}:\n{server.log()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{server.url}/health", timeout=2) as answer:
                if answer.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.1)
    raise RuntimeError(f"gunicorn not healthy after {limit}s:\n{server.log()[-3000:]}")


def stop_gunicorn(server: Gunicorn) -> None:
    """SIGTERM the master and wait; then SIGKILL whatever is left of its process group."""
    proc = server.proc
    if proc is not None and proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
    # Workers that outlived their master (it was killed) must not linger either.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(server.pid, signal.SIGKILL)


def gunicorn_env(mongo_uri: str, db_name: str, **extra: str) -> dict[str, str]:
    """The environment of an ingest app on this database with TEST_KEYS, without a rate limit.

    One key sends everything here, faster than any runner (the load benchmark most of all);
    the limit's own tests set INGEST_RATE_LIMIT through `extra`.
    """
    return {
        "MONGODB_URI": mongo_uri,
        "MONGODB_DB": db_name,
        "INGEST_API_KEYS": keys_env(TEST_KEYS),
        "INGEST_READ_KEYS": keys_env(TEST_READ_KEYS),
        "INGEST_RATE_LIMIT": "0",
        **extra,
    }


@dataclass
class IngestServer:
    """A running ingest app: base URL, POST /ingest URL, runner-a's key, the test database."""

    url: str
    ingest_url: str
    key: str
    db: object
    gunicorn: Gunicorn


@pytest.fixture
def ingest_server(mongo_uri, mongo_db_name, mongo_db) -> Iterator[IngestServer]:
    """gunicorn running the ingest app on this test's database with TEST_KEYS."""
    with start_gunicorn(gunicorn_env(mongo_uri, mongo_db_name)) as server:
        yield IngestServer(
            url=server.url,
            ingest_url=f"{server.url}/ingest",
            key=TEST_KEYS["runner-a"],
            db=mongo_db,
            gunicorn=server,
        )
