"""The whole path with real processes: simulator -> `bench-runner once` -> gunicorn -> nx-27017.

Nothing here runs in-process: the runner is the installed console script in a
subprocess, the ingest app is gunicorn with the repository's config, the
database is a private nx-27017 this module may kill, and boto3 talks to the
Bedrock simulator over a socket. docs/reliability.md scenarios 2 (database killed,
then back) and 5 (ingest API down during a run) are checked end to end.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pymongo
import pytest

import bench_contract as contract
from runner.cli import ExitCode
from tests.support.ingest import TEST_KEYS, gunicorn_env, http_status
from tests.support.mongo import free_port

REPO = Path(__file__).resolve().parent.parent
BENCH_RUNNER = str(Path(sys.executable).with_name("bench-runner"))
RUNNER_NAME = "runner-a"

# Quick models, so a run takes about a second; one retired model fails on purpose.
SIM_CONFIG = {"models": {
    "sim.fast-v1": {"ttft": 0.05, "gap": 0.005, "tokens_per_delta": 8, "output_tokens": 32},
    "sim.steady-v1": {"ttft": 0.08, "gap": 0.005, "tokens_per_delta": 4, "output_tokens": 24},
    "sim.retired-v1": {"error": "end_of_life"},
    # Slow enough that the database can be killed while it is being measured.
    "sim.slow-v1": {"ttft": 0.8, "gap": 0.01, "tokens_per_delta": 4, "output_tokens": 16},
}}
GOOD = ("sim.fast-v1", "sim.steady-v1")
FAILING = "sim.retired-v1"

pytestmark = pytest.mark.timeout(180)


# --- real processes ----------------------------------------------------------------


@contextlib.contextmanager
def ingest_app(port: int, mongo_uri: str, db_name: str) -> Iterator[str]:
    """gunicorn serving the ingest app on a fixed loopback port, so it can come back there."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MONGODB_", "INGEST_", "GUNICORN_", "PROMETHEUS_", "WEB_"))}
    env.update(gunicorn_env(mongo_uri, db_name,
                            # A dead database is told quickly, and retried soon.
                            MONGODB_TIMEOUT_SECONDS="1", INGEST_RETRY_AFTER_SECONDS="1"))
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory(prefix="e2e-gunicorn-") as tmp:
        env.update(GUNICORN_BIND=f"127.0.0.1:{port}", WEB_CONCURRENCY="2",
                   PROMETHEUS_MULTIPROC_DIR=tmp)
        log_path = Path(tmp) / "gunicorn.log"
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "gunicorn", "-c", str(REPO / "gunicorn.conf.py"),
                 "ingest_app:create_app()"],
                cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True)
        try:
            deadline = time.monotonic() + 20
            while http_status(f"{url}/health") != 200:
                assert proc.poll() is None, log_path.read_text(errors="replace")[-3000:]
                assert time.monotonic() < deadline, "gunicorn did not come up"
                time.sleep(0.1)
            yield url
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(timeout=10)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)


def wait_ready(url: str, limit: float = 20.0) -> None:
    """Block until the app says its database answers."""
    deadline = time.monotonic() + limit
    while http_status(f"{url}/ready") != 200:
        assert time.monotonic() < deadline, "the ingest app never became ready"
        time.sleep(0.1)


def runner_argv(models: tuple[str, ...] | list[str]) -> list[str]:
    """`bench-runner once` for these models, with its report as JSON on stdout."""
    return [BENCH_RUNNER, "once", "--json", "--log-level", "info", "--models", ",".join(models)]


def runner_env(ingest_url: str, state_dir: Path) -> dict[str, str]:
    """The runner's environment: this test's ingest app, outbox and (via os.environ) simulator."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("INGEST_", "BENCHMARK_", "BENCH_RUNNER_"))}
    env.update(INGEST_API_URL=f"{ingest_url}/ingest", INGEST_API_KEY=TEST_KEYS[RUNNER_NAME],
               BENCH_RUNNER_STATE_DIR=str(state_dir))
    return env


def run_once(models, ingest_url: str, state_dir: Path) -> tuple[int, dict]:
    """Run `bench-runner once` to the end; its exit code and JSON report."""
    proc = subprocess.run(runner_argv(models), env=runner_env(ingest_url, state_dir),
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.stdout.strip(), proc.stderr
    return proc.returncode, json.loads(proc.stdout)


def outbox_ids(state_dir: Path, folder: str) -> set[str]:
    """Ids of the records in one outbox folder."""
    directory = state_dir / "outbox" / folder
    return {json.loads(p.read_text())["id"] for p in directory.glob("*.json")
            if not p.name.endswith(".reason.json")}


def let_backoff_pass(state_dir: Path) -> None:
    """Move every pending record's next attempt into the past.

    Stands for the hour between two timer runs: after a failed delivery the
    outbox waits 15-30 s before the next attempt, longer than a test should.
    """
    for path in (state_dir / "outbox" / "pending").glob("*.json"):
        doc = json.loads(path.read_text())
        doc["next_attempt_at"] = 0.0
        doc["retry_after_until"] = 0.0
        path.write_text(json.dumps(doc))


@pytest.fixture
def sim(bedrock_sim):
    """The Bedrock simulator with this module's models, boto3 pointed at it."""
    return bedrock_sim(SIM_CONFIG)


@pytest.fixture
def db_name() -> str:
    """A database of this test's own on the private server."""
    return f"e2e_{uuid.uuid4().hex[:10]}"


@pytest.fixture
def db(killable_mongo, db_name):
    """A pymongo handle on the test's database (reconnects after the server restarts)."""
    client = pymongo.MongoClient(killable_mongo.uri, serverSelectionTimeoutMS=10000)
    yield client[db_name]
    client.close()


def results(db) -> pymongo.collection.Collection:
    """The results collection under its default name."""
    return db["metrics_cloud_v2"]


def errors(db) -> pymongo.collection.Collection:
    """The errors collection under its default name."""
    return db["errors_cloud"]


# --- the tests ----------------------------------------------------------------------


def test_a_run_stores_results_and_failures_with_the_contracts_fields_and_types(
        sim, killable_mongo, db, db_name, tmp_path):
    state = tmp_path / "state"
    with ingest_app(free_port(), killable_mongo.uri, db_name) as url:
        started = datetime.now(UTC).replace(tzinfo=None) - timedelta(seconds=1)
        code, report = run_once((*GOOD, FAILING), url, state)

        assert code == ExitCode.MODEL_FAILED
        sent = {r["result_id"]: r for r in report["results"]}
        assert {r["model_name"] for r in sent.values()} == set(GOOD)

        stored = list(results(db).find())
        assert {d["result_id"] for d in stored} == set(sent)
        for doc in stored:
            fields = set(doc) - {"_id"}
            assert set(contract.RESULT_REQUIRED) <= fields
            assert fields <= set(contract.RESULT_FIELDS) | set(contract.SERVER_RESULT_FIELDS)
            for name in ("run_ts", "gen_ts", "received_at"):
                assert isinstance(doc[name], datetime), name  # BSON dates, not strings
                assert started <= doc[name] <= datetime.now(UTC).replace(tzinfo=None)
            assert doc["run_ts"] <= doc["gen_ts"] <= doc["received_at"]
            assert doc["runner_id"] == RUNNER_NAME and doc["provider"] == "bedrock"
            assert isinstance(doc["output_tokens"], int) and doc["output_tokens"] > 0
            assert isinstance(doc["generate_time"], float)
            assert doc["tokens_per_second"] == pytest.approx(
                doc["output_tokens"] / doc["generate_time"])
            assert doc["time_to_first_token"] > 0
            # The dashboard's schema v2 fields, in the types it reads.
            assert doc["metrics_schema_version"] == 2
            assert doc["request_mode"] == "bedrock_converse_stream"
            assert doc["ttft_available"] is True
            assert doc["generated_output_tokens"] == doc["visible_output_tokens"] == \
                doc["output_tokens"]
            assert doc["visible_tokens_per_second"] == pytest.approx(
                doc["visible_output_tokens"] / doc["generate_time"])
            assert isinstance(doc["generated_tokens_per_second"], float)
            # Fewer than 64 visible tokens: an explicit null, not a missing field.
            assert "time_to_64_visible_tokens_seconds" in doc
            assert doc["time_to_64_visible_tokens_seconds"] is None
            assert (doc["sample_role"], doc["protocol_version"]) == ("published", 1)
            assert str(uuid.UUID(doc["result_id"])) == doc["result_id"]
            # What was sent is what was stored (dates at BSON's millisecond precision).
            payload = sent[doc["result_id"]]
            assert doc["output_tokens"] == payload["output_tokens"]
            assert abs(doc["run_ts"].replace(tzinfo=UTC)
                       - datetime.fromisoformat(payload["run_ts"])) < timedelta(milliseconds=1)

        failures = list(errors(db).find())
        assert len(failures) == 1
        failure = failures[0]
        assert set(contract.ERROR_REQUIRED) <= set(failure)
        assert set(failure) - {"_id"} <= set(contract.ERROR_FIELDS) | set(
            contract.SERVER_ERROR_FIELDS)
        assert failure["model_name"] == FAILING
        assert failure["error_kind"] == "model_unavailable"
        assert failure["stage"] in contract.STAGES
        assert isinstance(failure["ts"], datetime) and isinstance(failure["received_at"], datetime)
        assert failure["runner_id"] == RUNNER_NAME and failure["fingerprint"]
        assert outbox_ids(state, "pending") == set() and outbox_ids(state, "dead") == set()

        # A run where every model answers says so with 0.
        code, report = run_once(GOOD, url, state)
        assert code == ExitCode.OK, report["problems"]
        assert results(db).count_documents({}) == 4
        assert errors(db).count_documents({}) == 1


def test_results_wait_in_pending_while_the_ingest_app_is_down_and_land_once_when_it_is_back(
        sim, killable_mongo, db, db_name, tmp_path):
    state = tmp_path / "state"
    port = free_port()
    with ingest_app(port, killable_mongo.uri, db_name) as url:
        wait_ready(url)
    # The app is stopped: nothing listens on its port during this run.
    code, report = run_once((*GOOD, FAILING), url, state)

    assert code == ExitCode.PENDING
    waiting = outbox_ids(state, "pending")
    measured = {r["result_id"] for r in report["results"]}
    failed = {f["error_id"] for f in report["failures"]}
    assert len(measured) == 2 and len(failed) == 1
    assert waiting == measured | failed
    assert results(db).count_documents({}) == 0

    let_backoff_pass(state)
    with ingest_app(port, killable_mongo.uri, db_name) as url:
        code, report = run_once((*GOOD, FAILING), url, state)

    # The waiting records went first; this run's own went too.
    assert code == ExitCode.MODEL_FAILED, report["problems"]
    assert outbox_ids(state, "pending") == set() and outbox_ids(state, "dead") == set()
    for result_id in measured | {r["result_id"] for r in report["results"]}:
        assert results(db).count_documents({"result_id": result_id}) == 1
    for error_id in failed | {f["error_id"] for f in report["failures"]}:
        assert errors(db).count_documents({"error_id": error_id}) == 1
    assert results(db).count_documents({}) == 4
    assert errors(db).count_documents({}) == 2


def test_results_measured_while_the_database_is_killed_land_once_after_it_restarts(
        sim, killable_mongo, db, db_name, tmp_path):
    state = tmp_path / "state"
    models = ("sim.slow-v1", *GOOD, FAILING)
    with ingest_app(free_port(), killable_mongo.uri, db_name) as url:
        wait_ready(url)
        runner = subprocess.Popen(runner_argv(models), env=runner_env(url, state),
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            # Kill the database while the first model is still streaming.
            deadline = time.monotonic() + 30
            while sim.calls("sim.slow-v1") == 0:
                assert runner.poll() is None, runner.communicate()
                assert time.monotonic() < deadline, "the runner never called the simulator"
                time.sleep(0.02)
            killable_mongo.stop()
            out, err = runner.communicate(timeout=120)
        finally:
            if runner.poll() is None:
                runner.kill()
                runner.communicate()
        report = json.loads(out)

        assert runner.returncode == ExitCode.PENDING, err
        assert "pending" in err  # the runner says where its results are
        measured = {r["result_id"] for r in report["results"]}
        failed = {f["error_id"] for f in report["failures"]}
        assert len(measured) == 3 and len(failed) == 1
        assert outbox_ids(state, "pending") == measured | failed

        killable_mongo.start()
        wait_ready(url)
        assert results(db).count_documents({}) == 0
        let_backoff_pass(state)
        code, report = run_once(GOOD, url, state)

    assert code == ExitCode.OK, report["problems"]
    assert outbox_ids(state, "pending") == set()
    for result_id in measured:
        assert results(db).count_documents({"result_id": result_id}) == 1
    for error_id in failed:
        assert errors(db).count_documents({"error_id": error_id}) == 1
    assert results(db).count_documents({}) == 3 + 2


@pytest.mark.timeout(120)
def test_demo_runs_the_whole_pipeline_and_exits_zero(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "demo.py"), "--workdir", str(tmp_path / "demo")],
        env=env, capture_output=True, text=True, timeout=110, check=False)
    logs = "".join(f"\n--- {log.name}\n{log.read_text(errors='replace')[-2000:]}"
                   for log in sorted((tmp_path / "demo").glob("*.log")))
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:] + logs
    out = proc.stdout
    counts = re.search(r"metrics_cloud_v2: (\d+) documents\s+errors_cloud: (\d+) documents", out)
    assert counts and int(counts[1]) > 0 and int(counts[2]) > 0, out
    assert "sim.retired-v1: model_unavailable" in out
    assert "demo: OK" in out and "services stopped" in out
    # Every model measured was listed first, enabled, so the dashboard does not file it as
    # disabled: with the admin command, under the provider its records are stored with.
    measured = re.search(r"== bench-runner once --models (\S+) ==", out)[1].split(",")
    for provider, model in [("bedrock", m) for m in measured] + [
            ("openai", "sim-chat-fast"), ("anthropic", "claude-sim-thinker")]:
        assert re.search(rf"added {provider}/{re.escape(model)} \(.+\), enabled", out), out
    assert "(Sim Profile Only V1 (US))" in out  # a profile's name tells it from the bare id
    # Everything it started is gone: the database's port no longer answers.
    mongo_port = int(out.split("mongodb://127.0.0.1:", 1)[1].split("/", 1)[0])
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", mongo_port), timeout=1).close()


@pytest.mark.timeout(120)
def test_demo_stops_everything_it_started_on_ctrl_c(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    demo = subprocess.Popen(
        [sys.executable, "-u", str(REPO / "scripts" / "demo.py"), "--keep",
         "--workdir", str(tmp_path / "demo")],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        lines = []
        for line in demo.stdout:
            lines.append(line)
            if "Ctrl-C stops them" in line:
                break
        out = "".join(lines)
        assert "Ctrl-C stops them" in out, out
        ports = [int(p) for p in re.findall(r"127\.0\.0\.1:(\d+)", out)]
        # database, ingest app, the Bedrock, OpenAI-compatible and Anthropic simulators
        assert len(set(ports)) == 5, out
        demo.send_signal(signal.SIGINT)
        rest, _ = demo.communicate(timeout=60)
    finally:
        if demo.poll() is None:
            demo.kill()
        demo.communicate()  # also closes the pipe when the demo ended early
    assert demo.returncode == 0, out + rest
    assert "services stopped" in rest
    for port in set(ports):
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=1).close()


def systemd_environment_file(path: Path) -> dict[str, str]:
    """KEY=value assignments as systemd's EnvironmentFile= reads them (comments skipped)."""
    env = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";")):
            key, _, value = line.partition("=")
            env[key.strip()] = value.strip()
    return env


def test_runner_with_the_shipped_env_file_keeps_its_outbox_in_systemds_state_directory(
        sim, ingest_server, tmp_path):
    # What bench-runner.service gives the process: the env file, $STATE_DIRECTORY,
    # and a user without a home. Only the blanks an operator must fill are filled.
    env = systemd_environment_file(REPO / "deploy" / "runner.env.example")
    env.update(INGEST_API_URL=ingest_server.ingest_url, INGEST_API_KEY=ingest_server.key)
    # The models come from the app's worklist, as the shipped file means them to.
    ingest_server.db["models"].insert_many([
        {"provider": "bedrock", "model_id": m, "display_name": m} for m in GOOD])
    state = tmp_path / "var-lib-bench-runner"
    state.mkdir(mode=0o700)
    env.update(PATH=os.environ["PATH"], HOME="/nonexistent", LANG="C.UTF-8",
               STATE_DIRECTORY=str(state))
    # The test's AWS settings stand in for the instance role; the simulator's endpoint too.
    env.update({k: v for k, v in os.environ.items() if k.startswith("AWS_")
                and k not in ("AWS_REGION", "AWS_DEFAULT_REGION")})
    env.update(sim.env)
    proc = subprocess.run([BENCH_RUNNER, "once"], env=env, capture_output=True, text=True,
                          timeout=120, check=False)

    assert proc.returncode == ExitCode.OK, proc.stdout + proc.stderr
    assert (state / "outbox" / "pending").is_dir()
    assert outbox_ids(state, "pending") == set()
    stored = list(ingest_server.db["metrics_cloud_v2"].find(
        {}, {"model_name": 1, "region": 1, "benchmark_profile_id": 1}))
    # The shipped file runs what the dashboard reads: each model under both profiles.
    for profile in ("cloud-default-v1", "cloud-long-v1"):
        assert sorted(d["model_name"] for d in stored
                      if d["benchmark_profile_id"] == profile) == sorted(GOOD)
    assert len(stored) == 2 * len(GOOD)
    # AWS_REGION from the file reached boto3.
    assert {d["region"] for d in stored} == {env["AWS_REGION"]}


def test_profiles_are_stamped_and_only_published_ones_reach_the_public_collection(
        sim, ingest_server, tmp_path):
    env = runner_env(ingest_server.url, tmp_path / "state")
    argv = [*runner_argv(GOOD), "--profiles",
            "cloud-default-v1,cloud-long-v1,cloud-reasoning-v1"]
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120,
                          check=False)
    assert proc.returncode == ExitCode.OK, proc.stderr
    public = list(ingest_server.db["metrics_cloud_v2"].find())
    probe = list(ingest_server.db["metrics_cloud_probe"].find())
    assert sorted((d["benchmark_profile_id"], d["requested_tokens"], d["sample_role"])
                  for d in public) == sorted(
        [("cloud-default-v1", 64, "published")] * 2 + [("cloud-long-v1", 512, "published")] * 2)
    assert sorted((d["benchmark_profile_id"], d["requested_tokens"], d["sample_role"])
                  for d in probe) == [("cloud-reasoning-v1", 2048, "shadow")] * 2
    for doc in public + probe:
        assert doc["protocol_version"] == 1 and doc["temperature"] == 0.1
        assert doc["model_name"] in GOOD
    # The table says which profile each row is.
    assert "cloud-reasoning-v1" in proc.stderr


def test_bedrock_and_an_openai_compatible_host_store_rows_of_one_shape_in_one_app(
        sim, openai_sim, killable_mongo, db, db_name, tmp_path):
    chat = openai_sim({"models": {
        "sim-chat-a": {"ttft": 0.05, "gap": 0.002, "tokens_per_delta": 1, "output_tokens": 80},
        "sim-chat-r": {"ttft": 0.05, "gap": 0.002, "tokens_per_delta": 2,
                       "reasoning_tokens": 16, "output_tokens": 24},
        "sim-chat-gone": {"error": "model_not_found"},
    }})
    with ingest_app(free_port(), killable_mongo.uri, db_name) as url:
        bedrock_code, _ = run_once(GOOD, url, tmp_path / "bedrock-state")
        proc = subprocess.run(
            [BENCH_RUNNER, "once", "--json", "--provider", "together", "--models",
             "sim-chat-a,sim-chat-r,sim-chat-gone"],
            env={**runner_env(url, tmp_path / "together-state"), **chat.env,
                 "TOGETHER_API_KEY": "tgp_" + "z" * 40},
            capture_output=True, text=True, timeout=120, check=False)
    assert bedrock_code == ExitCode.OK
    assert proc.returncode == ExitCode.MODEL_FAILED, proc.stderr
    stored = {d["model_name"]: d for d in results(db).find({}, {"_id": False})}
    assert set(stored) == {*GOOD, "sim-chat-a", "sim-chat-r"}
    # The same fields, but the two only Bedrock has (docs/contract.md section 6).
    shapes = {frozenset(stored[m]) for m in GOOD}
    assert shapes == {frozenset(stored["sim-chat-a"]) | {"region", "server_latency_ms"}}
    chat_row = stored["sim-chat-a"]
    assert (chat_row["provider"], chat_row["request_mode"]) == (
        "together", "openai_chat_completions_stream")
    assert chat_row["runner_id"] == RUNNER_NAME and isinstance(chat_row["run_ts"], datetime)
    assert chat_row["time_to_64_visible_tokens_seconds"] > chat_row["time_to_first_token"] > 0
    reasoner = stored["sim-chat-r"]
    assert (reasoner["visible_output_tokens"], reasoner["reasoning_tokens"]) == (24, 16)
    assert reasoner["time_to_first_any_token"] < reasoner["time_to_first_token"]
    failure = errors(db).find_one({"model_name": "sim-chat-gone"})
    assert (failure["provider"], failure["error_kind"], failure["provider_error_code"]) == (
        "together", "model_unavailable", "model_not_found")
    assert "tgp_" not in json.dumps([*stored.values(), failure], default=str)


def test_bedrock_and_anthropic_store_rows_of_one_shape_in_one_app(
        sim, anthropic_sim, killable_mongo, db, db_name, tmp_path):
    claude = anthropic_sim({"models": {
        "claude-e2e-a": {"ttft": 0.05, "gap": 0.002, "tokens_per_delta": 1,
                         "output_tokens": 80},
        "claude-e2e-t": {"ttft": 0.05, "gap": 0.002, "tokens_per_delta": 2,
                         "reasoning_tokens": 16, "output_tokens": 24},
        "claude-e2e-busy": {"error": "overloaded", "retry_after": 0},
    }})
    with ingest_app(free_port(), killable_mongo.uri, db_name) as url:
        bedrock_code, _ = run_once(GOOD, url, tmp_path / "bedrock-state")
        proc = subprocess.run(
            [BENCH_RUNNER, "once", "--json", "--provider", "anthropic", "--models",
             "claude-e2e-a,claude-e2e-t,claude-e2e-busy"],
            env={**runner_env(url, tmp_path / "anthropic-state"), **claude.env},
            capture_output=True, text=True, timeout=120, check=False)
    assert bedrock_code == ExitCode.OK
    assert proc.returncode == ExitCode.MODEL_FAILED, proc.stderr
    stored = {d["model_name"]: d for d in results(db).find({}, {"_id": False})}
    assert set(stored) == {*GOOD, "claude-e2e-a", "claude-e2e-t"}
    # The same fields, but the two only Bedrock has (docs/contract.md section 6).
    shapes = {frozenset(stored[m]) for m in GOOD}
    assert shapes == {frozenset(stored["claude-e2e-a"]) | {"region", "server_latency_ms"}}
    row = stored["claude-e2e-a"]
    assert (row["provider"], row["request_mode"]) == ("anthropic", "anthropic_messages_stream")
    assert row["temperature"] is None  # anthropic-version 2026-10-21 takes none
    assert row["time_to_64_visible_tokens_seconds"] > row["time_to_first_token"] > 0
    thinker = stored["claude-e2e-t"]
    assert (thinker["visible_output_tokens"], thinker["reasoning_tokens"]) == (24, 16)
    assert thinker["time_to_first_any_token"] < thinker["time_to_first_token"]
    failure = errors(db).find_one({"model_name": "claude-e2e-busy"})
    assert (failure["provider"], failure["error_kind"], failure["provider_error_code"],
            failure["http_status"], failure["attempts"]) == (
        "anthropic", "transient", "overloaded_error", 529, 3)
    assert claude.env["ANTHROPIC_API_KEY"] not in json.dumps([*stored.values(), failure],
                                                             default=str) + proc.stderr
