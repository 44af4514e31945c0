"""bench-runner as a user meets it: help, config errors, output and exit codes."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from runner.cli import ExitCode, main
from runner.outbox import Outbox
from tests.support.mongo import free_port, wait_for_port
from tests.support.runner import SCRIPTED_KEY, Scripted, make_failure, make_result

REPO = Path(__file__).resolve().parents[1]
BENCH_RUNNER = str(Path(sys.executable).with_name("bench-runner"))
FAST = {"ttft": 0.05, "gap": 0.005, "tokens_per_delta": 4, "output_tokens": 16}
SIM = {"models": {
    "sim.a-v1": FAST,
    "sim.b-v1": FAST,
    "sim.retired-v1": {"error": "end_of_life", "lifecycle": "LEGACY"},
    "sim.profile-only-v1": {**FAST, "error": "on_demand_not_supported"},
    "us.sim.profile-only-v1": FAST,
}}


@pytest.fixture
def env(tmp_path, scripted_ingest):
    """The runner's environment for a working run, on this test's state dir."""
    return {
        "INGEST_API_URL": scripted_ingest.ingest_url,
        "INGEST_API_KEY": SCRIPTED_KEY,
        "BENCH_RUNNER_STATE_DIR": str(tmp_path / "state"),
        "BENCHMARK_MODELS": "sim.a-v1",
        # The host's own list, not the server's worklist (tests/test_worklist.py has that).
        "BENCHMARK_MODELS_OVERRIDE": "1",
    }


@pytest.fixture
def sim(bedrock_sim):
    return bedrock_sim(SIM)


def invoke(args, env):
    return CliRunner().invoke(main, args, env=env, catch_exceptions=False)


def run_cli(args, env, timeout=60):
    """bench-runner as a real process, with the test's environment (simulator included)."""
    full = {k: v for k, v in os.environ.items()
            if not k.startswith(("INGEST_", "BENCHMARK_", "BENCH_RUNNER_"))}
    full.update(env)
    return subprocess.run([BENCH_RUNNER, *args], env=full, capture_output=True, text=True,
                          timeout=timeout, cwd=REPO)


# -- help ---------------------------------------------------------------------


def test_once_help_names_every_option_with_its_env_var_and_default():
    result = invoke(["once", "--help"], {})
    assert result.exit_code == 0
    text = " ".join(result.output.split())
    for env_var in ("INGEST_API_URL", "BENCHMARK_MODELS", "BENCH_RUNNER_STATE_DIR",
                    "AWS_REGION", "BENCH_RUNNER_CONCURRENCY", "BENCH_RUNNER_MAX_PENDING",
                    "INGEST_API_KEY"):
        assert env_var in text
    for default in ("default: 64", "default: 0.1", "default: cloud-default-v1",
                    "default: 1;", "default: bedrock", "default: 10000"):
        assert default in text
    for code in ExitCode:
        assert f"{int(code)} " in text


def test_top_level_help_lists_commands_and_exit_codes():
    result = invoke(["--help"], {})
    for command in ("once", "daemon", "models", "outbox", "simulate"):
        assert command in result.output
    assert "check INGEST_API_KEY" in result.output


@pytest.mark.parametrize("command", [[], ["once"], ["simulate"], ["models"]])
def test_help_does_not_import_an_sdk_or_requests(command):
    code = ("import sys; from runner.cli import main\n"
            f"try:\n    main({command!r} + ['--help'])\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in ('boto3', 'botocore', 'requests', 'openai', 'anthropic', "
            "'httpx', 'httpx2', 'pydantic') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=REPO, timeout=30, check=True).stdout
    assert out.strip().splitlines()[-1] == "[]"


# -- configuration errors -------------------------------------------------------


@pytest.mark.parametrize(("missing", "named"), [
    ("BENCHMARK_MODELS", "no models"),
    ("INGEST_API_URL", "INGEST_API_URL is not set"),
    ("INGEST_API_KEY", "INGEST_API_KEY is not set"),
])
def test_missing_setting_is_one_line_and_exit_2_before_any_call(
        env, scripted_ingest, sim, missing, named):
    del env[missing]
    result = invoke(["once"], env)
    assert result.exit_code == ExitCode.CONFIG
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert named in lines[0]
    # Without BENCHMARK_MODELS the worklist was asked for (this stand-in has none: 404);
    # nothing was sent and no model was called.
    asked = ["/runner-config?provider=bedrock"] if missing == "BENCHMARK_MODELS" else []
    assert [r.path for r in scripted_ingest.requests] == asked
    assert sim.stats()["calls"] == {}


def test_every_problem_is_named_on_the_one_line(tmp_path):
    result = invoke(["once"], {"BENCH_RUNNER_STATE_DIR": str(tmp_path)})
    (line,) = result.stderr.strip().splitlines()
    assert "no models" in line and "INGEST_API_URL" in line and "INGEST_API_KEY" in line


@pytest.mark.parametrize(("variable", "value"), [
    ("BENCH_RUNNER_CONCURRENCY", "0"),
    ("BENCH_RUNNER_CONCURRENCY", "65"),
    ("BENCH_RUNNER_MAX_PENDING", "0"),
    ("BENCH_RUNNER_MAX_PENDING", "many"),
])
def test_a_bad_number_in_the_environment_is_named_and_exit_2_before_any_call(
        env, scripted_ingest, sim, variable, value):
    result = invoke(["once"], {**env, variable: value})
    assert result.exit_code == ExitCode.CONFIG
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("Error: ") and variable in last and value in last
    assert scripted_ingest.requests == []
    assert sim.stats()["calls"] == {}


def test_no_aws_credentials_is_a_config_error(env, scripted_ingest, sim, monkeypatch):
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    result = invoke(["once"], env)
    assert result.exit_code == ExitCode.CONFIG
    assert "No AWS credentials found" in result.stderr
    assert scripted_ingest.requests == []


def test_changed_prompt_without_a_new_profile_id_is_refused(env, sim):
    result = invoke(["once", "--max-tokens", "128"], env)
    assert result.exit_code == ExitCode.CONFIG
    assert "--profile-id" in result.stderr


def test_the_key_never_appears_in_output(env, sim, scripted_ingest):
    scripted_ingest.script("/ingest/batch", Scripted(401, {"error": {"code": "unauthorized",
                                                                     "message": "no"}}))
    result = invoke(["once", "--log-level", "debug"], env)
    assert result.exit_code == ExitCode.AUTH
    assert SCRIPTED_KEY not in result.output
    assert SCRIPTED_KEY not in result.stderr


# -- once -------------------------------------------------------------------------


def test_once_prints_a_line_per_model_and_a_table_and_exits_0(env, sim, scripted_ingest):
    result = invoke(["once", "--models", "sim.a-v1,sim.b-v1", "--concurrency", "2"], env)
    assert result.exit_code == ExitCode.OK, result.stderr
    lines = result.output.splitlines()
    assert any(line.startswith("sim.a-v1: ok  TTFT 0.0") for line in lines)
    assert any(line.startswith("sim.b-v1: ok") for line in lines)
    header = next(line for line in lines if line.startswith("MODEL"))
    assert header.split() == ["MODEL", "OUTCOME", "TTFT", "s", "TOK/S", "TOKENS"]
    row = next(line for line in lines if line.startswith("sim.a-v1 "))
    assert row.split()[1] == "ok"
    assert row.split()[-1] == "16"
    assert "delivered 2 (0 already stored), dead-lettered 0, pending 0" in result.output
    assert len(scripted_ingest.stored) == 2


def test_once_json_prints_results_for_scripts(env, sim, scripted_ingest):
    result = invoke(["once", "--models", "sim.a-v1,sim.retired-v1", "--json"], env)
    doc = json.loads(result.stdout)
    assert doc["exit_code"] == ExitCode.MODEL_FAILED == result.exit_code
    assert [r["model_name"] for r in doc["results"]] == ["sim.a-v1"]
    assert doc["results"][0]["output_tokens"] == 16
    assert [f["error_kind"] for f in doc["failures"]] == ["model_unavailable"]
    assert doc["delivery"]["pending"] == 0
    assert "sim.a-v1: ok" in result.stderr  # progress goes to stderr, JSON alone on stdout


def test_on_demand_refusal_is_reported_with_the_profile_hint(env, sim, scripted_ingest):
    result = invoke(["once", "--models", "sim.profile-only-v1"], env)
    assert result.exit_code == ExitCode.MODEL_FAILED
    assert "FAILED invalid_request" in result.output
    assert "inference" in result.output.lower()


@pytest.mark.parametrize(("answer", "code", "message"), [
    (Scripted(401, {"error": {"code": "unauthorized", "message": "no"}}), ExitCode.AUTH,
     "check INGEST_API_KEY"),
    (Scripted(422, {"error": {"code": "invalid", "message": "bad"}}), ExitCode.DEAD,
     "outbox status"),
    (Scripted(503, None, {"Retry-After": "120"}), ExitCode.PENDING, "wait in pending/"),
])
def test_once_exit_code_says_what_happened_to_delivery(env, sim, scripted_ingest, answer,
                                                       code, message):
    scripted_ingest.script("/ingest/batch", answer)
    result = run_cli(["once"], {**env, **sim.env})
    assert result.returncode == code, result.stderr
    assert message in result.stderr


def test_a_timers_run_posts_the_catalogue_after_its_results_and_not_again_within_the_window(
        env, sim, scripted_ingest):
    # Under the systemd timer no daemon runs: the run itself keeps the server's catalogue.
    first = run_cli(["once"], {**env, **sim.env})
    assert first.returncode == ExitCode.OK, first.stderr
    assert "catalogue posted" in first.stderr
    assert len(scripted_ingest.catalogs) == 1
    assert {"sim.a-v1", "us.sim.profile-only-v1"} <= {
        m["model_id"] for m in scripted_ingest.catalogs[0]["models"]}
    paths = [r.path for r in scripted_ingest.requests]
    assert paths.index("/ingest/catalog") > paths.index("/ingest/batch")  # measured first
    again = run_cli(["once"], {**env, **sim.env})
    assert again.returncode == ExitCode.OK, again.stderr
    assert "catalogue" not in again.stderr
    assert len(scripted_ingest.catalogs) == 1
    assert len(scripted_ingest.stored) == 2


def test_a_timers_run_posts_no_catalogue_when_the_setting_says_never(env, sim, scripted_ingest):
    result = run_cli(["once"], {**env, **sim.env, "BENCH_RUNNER_CATALOG_HOURS": "0"})
    assert result.returncode == ExitCode.OK, result.stderr
    assert scripted_ingest.catalogs == [] and scripted_ingest.posts("/ingest/catalog") == []


def test_a_failed_catalogue_post_is_one_line_and_leaves_the_runs_exit_code(env, sim,
                                                                            scripted_ingest):
    scripted_ingest.script("/ingest/catalog", *[Scripted(  # the client's own retries too
        503, {"error": {"code": "database_unavailable", "message": "down"}})] * 10)
    result = run_cli(["once"], {**env, **sim.env})
    assert result.returncode == ExitCode.OK, result.stderr
    assert [line for line in result.stderr.splitlines() if "catalogue" in line] == [
        line for line in result.stderr.splitlines() if line.startswith(
            "bench-runner: catalogue not posted")], result.stderr
    assert "catalogue not posted" in result.stderr and "503" in result.stderr
    assert len(scripted_ingest.stored) == 1  # the result was delivered all the same
    scripted_ingest.unscript()
    retried = run_cli(["once"], {**env, **sim.env})  # not stored: the next run tries again
    assert "catalogue posted" in retried.stderr
    assert len(scripted_ingest.catalogs) == 1


def test_once_with_the_api_down_exits_4_and_the_next_run_delivers(env, sim, scripted_ingest):
    down = {**env, **sim.env, "INGEST_API_URL": f"http://127.0.0.1:{free_port()}/ingest"}
    first = run_cli(["once"], down)
    assert first.returncode == ExitCode.PENDING
    assert "pending 1" in first.stdout
    flushed = invoke(["outbox", "flush", "--now"], env)
    assert flushed.exit_code == ExitCode.OK
    assert "delivered 1" in flushed.output
    assert len(scripted_ingest.stored) == 1


def test_once_with_a_full_outbox_measures_nothing_and_exits_6(env, sim, tmp_path):
    down = {**env, **sim.env, "INGEST_API_URL": f"http://127.0.0.1:{free_port()}/ingest",
            "BENCH_RUNNER_MAX_PENDING": "1"}
    box = Outbox(tmp_path / "state")
    box.put(make_result())
    result = run_cli(["once"], down)
    assert result.returncode == ExitCode.OUTBOX_FULL
    assert "bound of 1" in result.stderr
    assert box.pending_count() == 1
    assert sim.stats()["calls"].get("sim.a-v1", 0) == 0


def test_as_a_process_a_clean_run_exits_0_and_a_config_error_exits_2(env, sim,
                                                                     scripted_ingest):
    ok = run_cli(["once"], {**env, **sim.env})
    assert ok.returncode == ExitCode.OK, ok.stderr
    assert "sim.a-v1: ok" in ok.stdout
    no_key = {k: v for k, v in {**env, **sim.env}.items() if k != "INGEST_API_KEY"}
    bad = run_cli(["once"], no_key)
    assert bad.returncode == ExitCode.CONFIG
    assert bad.stderr.strip().startswith("Error: configuration: INGEST_API_KEY is not set")
    assert len(bad.stderr.strip().splitlines()) == 1
    assert len(scripted_ingest.stored) == 1


def test_a_failed_model_exits_3_after_its_failure_is_delivered(env, sim, scripted_ingest):
    result = run_cli(["once", "--models", "sim.a-v1,sim.retired-v1"], {**env, **sim.env})
    assert result.returncode == ExitCode.MODEL_FAILED
    assert "sim.retired-v1: FAILED model_unavailable" in result.stdout
    assert [p.json()["model_name"] for p in scripted_ingest.posts("/ingest/error")] == \
        ["sim.retired-v1"]


# -- outbox commands ------------------------------------------------------------------


def test_outbox_status_shows_counts_age_and_dead_reasons(env, scripted_ingest, tmp_path):
    box = Outbox(tmp_path / "state")
    box.put(make_result())
    box.put(make_failure())
    scripted_ingest.script("/ingest/error", Scripted(422, {"error": {"code": "invalid",
                                                                     "message": "bad"}}))
    flushed = invoke(["outbox", "flush"], env)
    assert flushed.exit_code == ExitCode.DEAD
    box.put(make_result())
    result = invoke(["outbox", "status"], env)
    assert result.exit_code == 0
    assert "pending: 1 (oldest 0s old" in result.output
    assert "dead: 1" in result.output
    assert "HTTP 422" in result.output
    doc = json.loads(invoke(["outbox", "status", "--json"], env).output)
    assert (doc["pending"], doc["dead"]) == (1, 1)


def test_outbox_requeue_then_flush_delivers_what_a_bad_key_refused(env, scripted_ingest,
                                                                    tmp_path):
    box = Outbox(tmp_path / "state")
    box.put(make_result())
    scripted_ingest.script("/ingest/batch", Scripted(401, None))
    assert invoke(["outbox", "flush"], env).exit_code == ExitCode.AUTH
    assert "moved 1 record(s)" in invoke(["outbox", "requeue"], env).output
    assert invoke(["outbox", "flush"], env).exit_code == ExitCode.OK
    assert len(scripted_ingest.stored) == 1


# -- models and simulate ----------------------------------------------------------


def test_models_lists_the_catalogue_and_marks_profile_only_models(sim):
    result = invoke(["models", "--region", "us-east-1"], {})
    assert result.exit_code == 0, result.stderr
    assert "sim.a-v1" in result.output
    row = next(line for line in result.output.splitlines()
               if line.startswith("sim.profile-only-v1 "))
    assert "needs an inference-profile id" in row
    doc = json.loads(invoke(["models", "--region", "us-east-1", "--json"], {}).output)
    assert {e["model_id"] for e in doc} >= {"sim.a-v1", "sim.b-v1"}


def test_models_lists_what_an_openai_compatible_host_serves(openai_sim):
    openai_sim()
    result = invoke(["models", "--provider", "openai", "--json"], {})
    assert result.exit_code == 0, result.output
    assert [e["model_id"] for e in json.loads(result.output)] == [
        "sim-chat-fast", "sim-chat-reasoner", "sim-chat-retired"]


def test_simulate_serves_until_sigterm(tmp_path):
    port = free_port()
    proc = subprocess.Popen([BENCH_RUNNER, "simulate", "--port", str(port)], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for_port("127.0.0.1", port)
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0
    assert f"AWS_ENDPOINT_URL_BEDROCK_RUNTIME=http://127.0.0.1:{port}" in err


def test_simulate_serves_the_openai_compatible_protocol_the_runner_measures(
        env, scripted_ingest, tmp_path):
    proc = subprocess.Popen([BENCH_RUNNER, "simulate", "--provider", "openai-compatible",
                             "--port", "0"], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    killer = threading.Timer(30, proc.kill)
    killer.start()
    try:
        line = proc.stderr.readline()
        while "export OPENAI_COMPATIBLE_BASE_URL" not in line and line:
            line = proc.stderr.readline()
        match = re.search(r"OPENAI_COMPATIBLE_BASE_URL=(http://127\.0\.0\.1:\d+/v1)", line)
        assert match, line
        done = run_cli(["once", "--provider", "groq", "--json"],
                       {**env, "BENCHMARK_MODELS": "sim-chat-fast,sim-chat-retired",
                        "OPENAI_COMPATIBLE_BASE_URL": match.group(1),
                        "GROQ_API_KEY": "gsk_" + "demo" * 6})
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=10)
    finally:
        killer.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert done.returncode == int(ExitCode.MODEL_FAILED), done.stderr
    report = json.loads(done.stdout)
    assert [(r["provider"], r["model_name"]) for r in report["results"]] == [
        ("groq", "sim-chat-fast")]
    assert [(f["provider"], f["error_kind"]) for f in report["failures"]] == [
        ("groq", "model_unavailable")]
    assert report["delivery"]["delivered"] == 2
    assert "gsk_demo" not in done.stdout + done.stderr


def test_simulate_serves_the_anthropic_protocol_the_runner_measures(env, scripted_ingest):
    proc = subprocess.Popen([BENCH_RUNNER, "simulate", "--provider", "anthropic", "--port", "0"],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    killer = threading.Timer(30, proc.kill)
    killer.start()
    try:
        line = proc.stderr.readline()
        while "export ANTHROPIC_BASE_URL" not in line and line:
            line = proc.stderr.readline()
        match = re.search(r"ANTHROPIC_BASE_URL=(http://127\.0\.0\.1:\d+) "
                          r"ANTHROPIC_API_KEY=(\S+)", line)
        assert match, line
        done = run_cli(["once", "--provider", "anthropic", "--json"],
                       {**env, "BENCHMARK_MODELS": "claude-sim-thinker,claude-sim-gone",
                        "ANTHROPIC_BASE_URL": match.group(1),
                        "ANTHROPIC_API_KEY": match.group(2)})
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=10)
    finally:
        killer.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert done.returncode == int(ExitCode.MODEL_FAILED), done.stderr
    report = json.loads(done.stdout)
    (result,) = report["results"]
    assert (result["provider"], result["model_name"]) == ("anthropic", "claude-sim-thinker")
    (stored,) = [doc for doc in scripted_ingest.stored.values() if "result_id" in doc]
    assert stored["request_mode"] == "anthropic_messages_stream"
    assert stored["reasoning_tokens"] > 0 and stored["temperature"] is None
    assert [(f["provider"], f["error_kind"]) for f in report["failures"]] == [
        ("anthropic", "model_unavailable")]
    assert report["delivery"]["delivered"] == 2
    assert match.group(2) not in done.stdout + done.stderr


def test_anthropic_without_its_key_is_one_line_and_exit_2(env):
    result = run_cli(["once", "--provider", "anthropic", "--models", "claude-x"],
                     {**env, "ANTHROPIC_API_KEY": ""})
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "Error: No Anthropic API key: set ANTHROPIC_API_KEY in the runner's environment."]


def test_an_unknown_provider_is_exit_2_naming_the_choices(env):
    result = run_cli(["once", "--provider", "azure"], env)
    assert result.returncode == 2
    assert "openai-compatible" in result.stderr and "groq" in result.stderr


def test_a_preset_without_its_key_is_one_line_and_exit_2(env, tmp_path):
    result = run_cli(["once", "--provider", "cerebras"], {**env, "CEREBRAS_API_KEY": ""})
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "Error: CEREBRAS_API_KEY is not set: it holds the cerebras API key (the environment "
        "only, never an option)"]


def test_simulate_on_port_0_tells_the_port_the_kernel_picked():
    proc = subprocess.Popen([BENCH_RUNNER, "simulate", "--port", "0"], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # A simulator that never speaks is killed, which ends the reads below: no hang.
    killer = threading.Timer(15, proc.kill)
    killer.start()
    try:
        line = proc.stderr.readline()
        while "export AWS_ENDPOINT_URL" not in line and line:
            line = proc.stderr.readline()
        match = re.search(r"AWS_ENDPOINT_URL_BEDROCK_RUNTIME=http://127\.0\.0\.1:(\d+) "
                          r"AWS_ENDPOINT_URL_BEDROCK=http://127\.0\.0\.1:(\d+)", line)
        assert match, line
        assert match.group(1) == match.group(2) != "0"
        wait_for_port("127.0.0.1", int(match.group(1)), timeout=5)
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=10)
    finally:
        killer.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0


# -- daemon -----------------------------------------------------------------------------


def test_daemon_runs_cycles_until_sigterm_and_stops_cleanly(env, sim, scripted_ingest):
    full = {k: v for k, v in os.environ.items()
            if not k.startswith(("INGEST_", "BENCHMARK_", "BENCH_RUNNER_"))}
    full.update(env)
    full.update(sim.env)
    proc = subprocess.Popen([BENCH_RUNNER, "daemon", "--interval", "0.01"], env=full,
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while len(scripted_ingest.stored) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert len(scripted_ingest.stored) >= 2
    assert proc.returncode == 0
    assert "daemon stopped after" in err
    assert Outbox(Path(env["BENCH_RUNNER_STATE_DIR"])).pending_count() == 0


def test_daemon_survives_a_bad_cycle(env, sim, scripted_ingest, monkeypatch, caplog):
    caplog.set_level(logging.INFO)
    calls = []

    def flaky_cycle(settings, provider, outbox, client, **kw):
        calls.append(kw)
        if len(calls) == 1:
            raise RuntimeError("the first cycle breaks")
        report = real_cycle(settings, provider, outbox, client, **kw)
        os.kill(os.getpid(), signal.SIGTERM)  # stop after the second cycle
        return report

    from runner import cycle as cycle_module

    real_cycle = cycle_module.run_cycle
    monkeypatch.setattr(cycle_module, "run_cycle", flaky_cycle)
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        # One profile, so one cycle is one run_cycle call.
        result = invoke(["daemon", "--interval", "0", "--profiles", "cloud-default-v1"], env)
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)
    assert result.exit_code == 0
    assert len(calls) == 2
    assert "cycle 1 failed" in caplog.text
    assert "RuntimeError: the first cycle breaks" in caplog.text
    assert "cycle 2 exit=0" in caplog.text
    assert "daemon stopped after 2 cycle(s)" in caplog.text
    # The broken cycle is reported where failures are read, not only logged.
    (error,) = [p.json() for p in scripted_ingest.posts("/ingest/error")]
    assert (error["model_name"], error["stage"]) == ("sim.a-v1", "setup")
    assert "RuntimeError: the first cycle breaks" in error["message"]


# -- settings -------------------------------------------------------------------------


def test_state_dir_follows_systemd_then_the_user_state_dir(tmp_path):
    from runner.settings import default_state_dir, load

    assert default_state_dir({"STATE_DIRECTORY": "/var/lib/bench-runner:/other"}) == \
        Path("/var/lib/bench-runner")
    assert default_state_dir({}).name == "bench-runner"
    explicit = load(state_dir=tmp_path, environ={"STATE_DIRECTORY": "/var/lib/x"})
    assert explicit.state_dir == tmp_path


def test_models_are_split_trimmed_and_deduplicated():
    from runner.settings import load

    settings = load(state_dir="/tmp/x", models=" a, b,,a ,c ", environ={})
    assert settings.models == ("a", "b", "c")


# -- start-up ---------------------------------------------------------------------------


def test_help_does_not_look_up_the_installed_version():
    # importlib.metadata costs ~20 ms of start-up; --help never needs the version.
    code = ("import sys; from runner.cli import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "print('importlib.metadata' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=REPO, timeout=30, check=True).stdout
    assert out.strip().splitlines()[-1] == "False"


def test_version_is_the_installed_one_in_records_and_in_the_version_option():
    from importlib.metadata import version

    import runner
    from tests.support.runner import make_failure, make_result

    installed = version("bench-ingest")
    assert runner.__version__ == installed
    assert make_result().runner_version == make_failure().runner_version == installed
    assert installed in invoke(["--version"], {}).output


# -- errors a user meets are one line -------------------------------------------------------


def test_simulate_on_a_busy_port_is_one_line_naming_the_option():
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = CliRunner().invoke(main, ["simulate", "--port", str(port)])
    assert result.exit_code == 1
    assert isinstance(result.exception, SystemExit)
    (line,) = [ln for ln in result.stderr.splitlines() if ln.startswith("Error:")]
    assert f"127.0.0.1:{port}" in line and "--port" in line


def test_simulate_with_a_bad_config_is_one_line(tmp_path):
    config = tmp_path / "sim.json"
    config.write_text(json.dumps({"models": {"m": {"ttft": 0.1, "colour": "blue"}}}))
    result = CliRunner().invoke(main, ["simulate", "--port", "0", "--config", str(config)])
    assert result.exit_code == 1
    assert isinstance(result.exception, SystemExit)
    (line,) = [ln for ln in result.stderr.splitlines() if ln.startswith("Error:")]
    assert "colour" in line and str(config) in line


def test_requeue_while_another_run_drains_is_one_line(env, monkeypatch):
    from runner.outbox import OutboxBusy

    def busy(self):
        raise OutboxBusy("another process is draining the outbox")

    monkeypatch.setattr(Outbox, "requeue_dead", busy)
    result = CliRunner().invoke(main, ["outbox", "requeue"], env=env)
    assert result.exit_code == 1
    assert isinstance(result.exception, SystemExit)
    (line,) = result.stderr.strip().splitlines()
    assert "another process is draining" in line and "try again" in line


def test_daemon_exits_7_when_the_ingest_api_refuses_the_key(env, sim, scripted_ingest):
    # Every later cycle would measure results only to dead-letter them: stop and say why.
    refused = Scripted(401, {"error": {"code": "unauthorized", "message": "no"}})
    scripted_ingest.script("/ingest/batch", *[refused] * 20)
    result = run_cli(["daemon", "--interval", "0"], {**env, **sim.env}, timeout=30)
    assert result.returncode == ExitCode.AUTH
    assert "INGEST_API_KEY" in result.stderr.strip().splitlines()[-1]
    assert len(scripted_ingest.posts("/ingest/batch")) == 1
    assert SCRIPTED_KEY not in result.stderr


# SIGINT (Ctrl-C) stops the run the same way but exits 130: see
# test_ctrl_c_during_once_says_interrupted_and_exits_130.
@pytest.mark.parametrize("sig", [signal.SIGTERM])
def test_once_stopped_mid_run_keeps_the_result_in_flight_and_starts_no_new_model(
        env, bedrock_sim, scripted_ingest, sig):
    # systemctl stop, a start timeout or Ctrl-C: the model being measured is finished and
    # delivered (it was called and billed), the rest are listed as not measured.
    sim = bedrock_sim({"models": {"sim.slow-v1": {**FAST, "ttft": 1.0}, "sim.a-v1": FAST}})
    full = {k: v for k, v in os.environ.items()
            if not k.startswith(("INGEST_", "BENCHMARK_", "BENCH_RUNNER_"))}
    full.update(env)
    full.update(sim.env)
    full["BENCHMARK_MODELS"] = "sim.slow-v1,sim.a-v1"
    proc = subprocess.Popen([BENCH_RUNNER, "once"], env=full, cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 20
        while sim.calls("sim.slow-v1") == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        proc.send_signal(sig)
        _out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == ExitCode.MODEL_FAILED, err
    assert [d["model_name"] for d in scripted_ingest.stored.values()] == ["sim.slow-v1"]
    assert sim.calls("sim.a-v1") == 0
    assert "not measured: sim.a-v1" in err
    assert "Traceback" not in err


def test_a_credential_error_that_quotes_a_key_is_printed_redacted(env, sim, tmp_path,
                                                                  monkeypatch):
    # botocore puts a credential_process's stderr into its error message as it is.
    config = tmp_path / "aws-config"
    config.write_text("[default]\ncredential_process = sh -c "
                      "'echo token refused for AKIAIOSFODNN7EXAMPLE >&2; exit 1'\n")
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    result = invoke(["once"], env)
    assert result.exit_code == ExitCode.CONFIG
    (line,) = result.stderr.strip().splitlines()
    assert "Cannot load AWS credentials" in line
    assert "AKIAIOSFODNN7EXAMPLE" not in line


# -- mistakes a newcomer makes (docs/reliability.md, user mistakes) ------------------------


@pytest.mark.parametrize("models,expected", [
    ("sim.a-v1; sim.b-v1", "BENCHMARK_MODELS=sim.a-v1,sim.b-v1"),
    ("sim.a-v1 sim.b-v1", "BENCHMARK_MODELS=sim.a-v1,sim.b-v1"),
    ('["sim.a-v1"]', "BENCHMARK_MODELS=sim.a-v1"),
    ("sim.a-v1,'sim.b-v1'", "BENCHMARK_MODELS=sim.a-v1,sim.b-v1"),
])
def test_models_in_another_form_are_a_config_error_that_shows_the_expected_form(
        env, sim, scripted_ingest, models, expected):
    result = invoke(["once"], {**env, **sim.env, "BENCHMARK_MODELS": models})
    assert result.exit_code == ExitCode.CONFIG
    (line,) = result.stderr.strip().splitlines()
    assert "BENCHMARK_MODELS" in line
    assert "comma-separated" in line and line.endswith(expected)
    assert sim.stats()["calls"] == {}
    assert scripted_ingest.requests == []


def test_an_unknown_model_id_points_at_bench_runner_models(env, sim, scripted_ingest):
    result = invoke(["once", "--models", "sim.no-such-v1"], {**env, **sim.env})
    assert result.exit_code == ExitCode.MODEL_FAILED
    assert "sim.no-such-v1: FAILED" in result.output
    assert "bench-runner models" in result.output
    (stored,) = scripted_ingest.stored.values()
    assert "bench-runner models" in stored["message"]


def test_ctrl_c_during_once_says_interrupted_and_exits_130(env, bedrock_sim, scripted_ingest):
    # The model in flight is still finished and delivered; the run then says it was
    # interrupted, with the shell's code for SIGINT, not "some model failed".
    sim = bedrock_sim({"models": {"sim.slow-v1": {**FAST, "ttft": 1.0}, "sim.a-v1": FAST}})
    full = {k: v for k, v in os.environ.items()
            if not k.startswith(("INGEST_", "BENCHMARK_", "BENCH_RUNNER_"))}
    full.update(env)
    full.update(sim.env)
    full["BENCHMARK_MODELS"] = "sim.slow-v1,sim.a-v1"
    proc = subprocess.Popen([BENCH_RUNNER, "once"], env=full, cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 20
        while sim.calls("sim.slow-v1") == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        _out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == ExitCode.INTERRUPTED == 130, err
    assert "interrupted" in err
    assert [d["model_name"] for d in scripted_ingest.stored.values()] == ["sim.slow-v1"]
    assert sim.calls("sim.a-v1") == 0
    assert "not measured: sim.a-v1" in err
    assert "Traceback" not in err


@pytest.mark.parametrize("url", ["http://ingest.example.org/ingest",
                                 "http://10.1.2.3:8000/ingest"])
def test_a_plain_http_url_to_another_host_is_refused_unless_allowed(env, url):
    refused = invoke(["outbox", "flush"], {**env, "INGEST_API_URL": url})
    assert refused.exit_code == ExitCode.CONFIG
    (line,) = refused.stderr.strip().splitlines()
    assert "https://" in line and "BENCH_RUNNER_ALLOW_HTTP" in line
    assert SCRIPTED_KEY not in refused.output
    allowed = invoke(["outbox", "flush"], {**env, "INGEST_API_URL": url,
                                           "BENCH_RUNNER_ALLOW_HTTP": "1"})
    assert allowed.exit_code == ExitCode.OK
    assert "clear text" in allowed.stderr


@pytest.mark.parametrize("url", ["http://127.0.0.1:9/ingest", "http://localhost:9/ingest",
                                 "http://[::1]:9/ingest"])
def test_a_plain_http_url_to_this_host_needs_no_setting(env, url):
    result = invoke(["outbox", "flush"], {**env, "INGEST_API_URL": url})
    assert result.exit_code == ExitCode.OK
    assert "clear text" not in result.stderr


def test_no_log_level_shows_a_credential(env, sim, scripted_ingest):
    # botocore's own debug lines print the signed headers: the session token and the
    # access key id in the Authorization header.
    secrets = {"AWS_ACCESS_KEY_ID": "AKIAIOSFODNN7EXAMPLE",
               "AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
               "AWS_SESSION_TOKEN": "IQoJb3JpZ2luX2VjEXAMPLETOKENFwoGZXIvYXdzEXAMPLE"}
    result = run_cli(["once", "--log-level", "debug"], {**env, **sim.env, **secrets})
    assert result.returncode == ExitCode.OK, result.stderr[-2000:]
    assert "botocore" in result.stderr  # the debug lines are there
    for secret in [*secrets.values(), SCRIPTED_KEY]:
        assert secret not in result.stderr
        assert secret not in result.stdout
def test_an_unknown_profile_is_a_one_line_config_error(env, sim, scripted_ingest):
    result = invoke(["once", "--profiles", "cloud-default-v1,cloud-huge-v9"], env)
    assert result.exit_code == ExitCode.CONFIG
    (line,) = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert "cloud-huge-v9" in line and "cloud-long-v1" in line
    assert scripted_ingest.requests == []


def test_help_says_what_each_profile_costs_in_tokens():
    for command in ("once", "daemon"):
        # Without whitespace: click may wrap a line at a profile id's hyphen.
        text = "".join(invoke([command, "--help"], {}).output.split())
        assert "cloud-default-v1upto64outputtokens" in text
        assert "cloud-long-v1upto512outputtokens" in text
        assert "cloud-reasoning-v1upto2048outputtokens" in text
