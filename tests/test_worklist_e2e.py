"""The runner steered by the real ingest app: gunicorn on a real socket, its `models`
collection on the test database, the Bedrock simulator spoken to by real boto3.

A model is listed and configured as the admin command stores it (a `models` document
with its `request` settings); what the runner then measures, what the simulator
received and what the app stored are what is asserted.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from runner.cli import ExitCode
from tests.support.ingest import TEST_KEYS

REPO = Path(__file__).resolve().parents[1]
BENCH_RUNNER = str(Path(sys.executable).with_name("bench-runner"))
FAST = {"ttft": 0.03, "gap": 0.004, "tokens_per_delta": 4, "output_tokens": 16}
SIM = {"models": {
    "sim.a-v1": FAST,
    "sim.b-v1": FAST,
    "sim.no-temp-v1": {**FAST, "refuses_temperature": True},
    "sim.thinker-v1": {**FAST, "thinking": True, "reasoning_tokens": 12},
    "sim.west-only-v1": {**FAST, "regions": ["us-west-2"]},
    "sim.profile-only-v1": {**FAST, "error": "on_demand_not_supported"},
    "us.sim.profile-only-v1": FAST,
}}
THINKING = {"thinking": {"type": "enabled", "budget_tokens": 1024}}


def listed(db, model_id, **request):
    db["models"].insert_one({"provider": "bedrock", "model_id": model_id,
                             "display_name": model_id, **({"request": request} if request
                                                          else {})})


@pytest.fixture
def sim(bedrock_sim):
    return bedrock_sim(SIM)


def runner_env(ingest_server, sim, tmp_path, **extra):
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("INGEST_", "BENCHMARK_", "BENCH_RUNNER_"))}
    env.update(sim.env)
    env.update(INGEST_API_URL=ingest_server.ingest_url, INGEST_API_KEY=ingest_server.key,
               BENCH_RUNNER_STATE_DIR=str(tmp_path / "state"), **extra)
    return env


def once(env, *args):
    proc = subprocess.run([BENCH_RUNNER, "once", "--json", *args], env=env,
                          capture_output=True, text=True, timeout=120, cwd=REPO)
    return proc, json.loads(proc.stdout) if proc.stdout.startswith("{") else None


def stored(ingest_server):
    return {d["model_name"]: d for d in ingest_server.db["metrics_cloud_v2"].find({})}


def test_the_apps_worklist_is_measured_as_each_model_is_configured(ingest_server, sim,
                                                                  tmp_path):
    db = ingest_server.db
    listed(db, "sim.a-v1")
    listed(db, "sim.no-temp-v1", omit_temperature=True)
    listed(db, "sim.thinker-v1", omit_temperature=True,
           additional_model_request_fields=THINKING)
    listed(db, "sim.west-only-v1", region="us-west-2")
    db["models"].insert_one({"provider": "bedrock", "model_id": "sim.b-v1",
                             "display_name": "B", "enabled": False})
    proc, doc = once(runner_env(ingest_server, sim, tmp_path, BENCHMARK_MODELS="sim.b-v1"))
    assert proc.returncode == ExitCode.OK, proc.stderr
    assert doc["models_from"] == f"runner-config {ingest_server.url}/runner-config?provider=bedrock"
    docs = stored(ingest_server)
    assert set(docs) == {"sim.a-v1", "sim.no-temp-v1", "sim.thinker-v1", "sim.west-only-v1"}
    assert (docs["sim.a-v1"]["temperature"], docs["sim.a-v1"]["reasoning_effort"],
            docs["sim.a-v1"]["region"]) == (0.1, None, "us-east-1")
    assert docs["sim.no-temp-v1"]["temperature"] is None
    assert (docs["sim.thinker-v1"]["temperature"], docs["sim.thinker-v1"]["reasoning_effort"]) \
        == (None, "budget_tokens=1024")
    assert docs["sim.thinker-v1"]["reasoning_tokens"]
    assert docs["sim.west-only-v1"]["region"] == "us-west-2"
    (thinker,) = sim.requests("sim.thinker-v1")
    assert thinker["additionalModelRequestFields"] == THINKING
    assert thinker["inferenceConfig"] == {"maxTokens": 64}
    assert [r["region"] for r in sim.requests("sim.west-only-v1")] == ["us-west-2"]
    assert sim.calls("sim.b-v1") == 0  # disabled on the server; BENCHMARK_MODELS not used


def test_an_empty_worklist_from_the_app_is_nothing_to_do(ingest_server, sim, tmp_path):
    proc, doc = once(runner_env(ingest_server, sim, tmp_path, BENCHMARK_MODELS="sim.a-v1"))
    assert proc.returncode == ExitCode.OK, proc.stderr
    assert doc["results"] == [] and sim.calls("sim.a-v1") == 0


def test_a_key_the_app_refuses_is_exit_7_with_nothing_measured(ingest_server, sim, tmp_path):
    listed(ingest_server.db, "sim.a-v1")
    env = runner_env(ingest_server, sim, tmp_path, BENCHMARK_MODELS="sim.a-v1")
    env["INGEST_API_KEY"] = "revoked-0123456789abcdefghijklmnopqrstuvw"
    proc, _ = once(env)
    assert proc.returncode == ExitCode.AUTH
    assert "refused the key" in proc.stderr
    assert sim.calls("sim.a-v1") == 0


def test_the_daemon_follows_the_app_between_cycles(ingest_server, sim, tmp_path):
    db = ingest_server.db
    listed(db, "sim.a-v1")
    env = runner_env(ingest_server, sim, tmp_path, BENCH_RUNNER_CATALOG_HOURS="0")
    proc = subprocess.Popen([BENCH_RUNNER, "daemon", "--interval", "0.005", "--profiles",
                             "cloud-default-v1"], env=env, cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while "sim.a-v1" not in stored(ingest_server) and time.monotonic() < deadline:
            time.sleep(0.1)
        # The operator disables one model and configures another: no login, no restart.
        db["models"].update_one({"model_id": "sim.a-v1"}, {"$set": {"enabled": False}})
        listed(db, "sim.no-temp-v1", omit_temperature=True)
        while "sim.no-temp-v1" not in stored(ingest_server) and time.monotonic() < deadline:
            time.sleep(0.1)
        calls_of_a = sim.calls("sim.a-v1")
        before = len(sim.requests("sim.no-temp-v1"))
        while len(sim.requests("sim.no-temp-v1")) < before + 2 and \
                time.monotonic() < deadline:
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert stored(ingest_server)["sim.no-temp-v1"]["temperature"] is None
    # Once disabled, sim.a-v1 was asked for again at most by the cycle already under way.
    assert sim.calls("sim.a-v1") <= calls_of_a + 1
    assert all("temperature" not in r["inferenceConfig"]
               for r in sim.requests("sim.no-temp-v1"))


def test_the_catalogue_is_stored_by_the_app_and_reposted_idempotently(ingest_server, sim,
                                                                       tmp_path):
    env = runner_env(ingest_server, sim, tmp_path)
    for _ in range(2):
        proc = subprocess.run([BENCH_RUNNER, "models", "--post"], env=env, capture_output=True,
                              text=True, timeout=60, cwd=REPO)
        assert proc.returncode == 0, proc.stderr
        assert "catalogue posted" in proc.stdout
    db = ingest_server.db
    entries = {d["model_id"]: d for d in db["provider_catalog"].find({})}
    assert {"sim.a-v1", "sim.profile-only-v1", "us.sim.profile-only-v1"} <= set(entries)
    assert entries["sim.profile-only-v1"]["needs_profile"] in (True, 1)  # nx-27017: 0/1
    runs = list(db["bench_discovery_runs"].find({}).sort("received_at", 1))
    assert len(runs) == 2
    assert runs[1]["counts"]["new"] == 0 and runs[0]["counts"]["new"] == len(entries)
    assert runs[0]["runner"] == "runner-a" and runs[0]["status"] == "complete"
    assert TEST_KEYS["runner-a"] not in json.dumps(runs, default=str)
