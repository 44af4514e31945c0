"""The runner steered from the server: the worklist, its faults, per-model settings, catalogue.

Every test runs the real CLI against a real HTTP server on a real socket (the scripted
stand-in of the ingest API, which serves GET /runner-config with an ETag) and the Bedrock
simulator spoken to by real boto3; what the simulator received is what is asserted.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner

from runner.bedrock import WARM_MODEL_ID
from runner.cli import ExitCode, main
from runner.simulator import TEMPERATURE_REFUSED, TEMPERATURE_WITH_THINKING
from runner.worklist import CACHE_NAME
from tests.support.mongo import free_port
from tests.support.runner import SCRIPTED_KEY, Scripted

REPO = Path(__file__).resolve().parents[1]
FAST = {"ttft": 0.03, "gap": 0.004, "tokens_per_delta": 4, "output_tokens": 16}
SIM = {"models": {
    "sim.a-v1": FAST,
    "sim.b-v1": FAST,
    # Claude Opus 4.7 and later: any temperature is refused.
    "sim.no-temp-v1": {**FAST, "refuses_temperature": True},
    # Extended thinking: a thinking block in the extra fields, then reasoning first.
    "sim.thinker-v1": {**FAST, "thinking": True, "reasoning_tokens": 12},
    # Offered in one region only.
    "sim.west-only-v1": {**FAST, "regions": ["us-west-2"]},
}}
THINKING = {"thinking": {"type": "enabled", "budget_tokens": 1024}}


def worklist(models, metadata=None, interval=60, **extra):
    return {"schema_version": 1, "provider": "bedrock", "runner": "runner-a",
            "interval_minutes": interval, "models": list(models),
            "model_metadata": metadata or {}, "generated_at": "2026-12-02T00:00:00Z", **extra}


@pytest.fixture
def env(tmp_path, scripted_ingest):
    return {"INGEST_API_URL": scripted_ingest.ingest_url, "INGEST_API_KEY": SCRIPTED_KEY,
            "BENCH_RUNNER_STATE_DIR": str(tmp_path / "state")}


@pytest.fixture
def sim(bedrock_sim):
    return bedrock_sim(SIM)


def once(env, *args):
    result = CliRunner().invoke(main, ["once", "--json", *args], env=env,
                                catch_exceptions=False)
    # With --json, stdout holds the JSON document and stderr the lines for people.
    doc = json.loads(result.stdout) if result.stdout.strip().startswith("{") else None
    return result, doc


def by_model(doc):
    return {r["model_name"]: r for r in doc["results"]}


def age_cache(env, hours):
    path = Path(env["BENCH_RUNNER_STATE_DIR"]) / CACHE_NAME
    doc = json.loads(path.read_text())
    doc["fetched_at"] = (datetime.now(UTC) - timedelta(hours=hours)).isoformat()
    path.write_text(json.dumps(doc))


# -- where the list comes from -------------------------------------------------------------


def test_the_servers_list_is_measured_and_the_run_says_where_it_came_from(
        env, sim, scripted_ingest):
    scripted_ingest.worklist = worklist(["sim.b-v1"])
    result, doc = once({**env, "BENCHMARK_MODELS": "sim.a-v1"})
    assert result.exit_code == ExitCode.OK, result.stderr
    assert set(by_model(doc)) == {"sim.b-v1"}
    assert doc["models_from"].startswith("runner-config http://")
    assert "models from runner-config" in result.stderr and "sim.b-v1" in result.stderr
    (get,) = scripted_ingest.gets("/runner-config")
    assert get.path == "/runner-config?provider=bedrock"
    assert get.headers["X-API-Key"] == SCRIPTED_KEY
    assert sim.calls("sim.a-v1") == 0


def test_models_option_and_the_override_win_without_asking_the_server(
        env, sim, scripted_ingest):
    scripted_ingest.worklist = worklist(["sim.b-v1"])
    _result, doc = once(env, "--models", "sim.a-v1")
    assert set(by_model(doc)) == {"sim.a-v1"} and doc["models_from"] == "--models"
    _result, doc = once({**env, "BENCHMARK_MODELS": "sim.a-v1",
                        "BENCHMARK_MODELS_OVERRIDE": "1"})
    assert set(by_model(doc)) == {"sim.a-v1"}
    assert "BENCHMARK_MODELS_OVERRIDE" in doc["models_from"]
    assert scripted_ingest.gets("/runner-config") == []
    assert sim.calls("sim.b-v1") == 0


def test_runner_config_url_overrides_the_derived_one(env, sim, scripted_ingest):
    scripted_ingest.worklist = worklist(["sim.a-v1"])
    url = f"{scripted_ingest.url}/runner-config?provider=bedrock&where=explicit"
    result, _doc = once({**env, "RUNNER_CONFIG_URL": url})
    assert result.exit_code == ExitCode.OK
    assert [g.path for g in scripted_ingest.gets("/runner-config")] == \
        ["/runner-config?provider=bedrock&where=explicit"]


def test_an_empty_list_from_the_server_is_nothing_to_do_exit_0(env, sim, scripted_ingest):
    scripted_ingest.worklist = worklist([])
    result, doc = once({**env, "BENCHMARK_MODELS": "sim.a-v1"})
    assert result.exit_code == ExitCode.OK
    assert doc["results"] == [] and "nothing to do" in doc["problems"][0]
    # BENCHMARK_MODELS is set, so the line says how to have it measured.
    assert "models add MODEL_ID" in doc["problems"][0]
    assert "BENCHMARK_MODELS_OVERRIDE=1" in doc["problems"][0]
    assert sim.calls("sim.a-v1") == 0
    assert scripted_ingest.posts("/ingest/batch") == []


def test_an_unchanged_list_is_a_304_and_comes_from_the_cache(env, sim, scripted_ingest):
    scripted_ingest.worklist = worklist(["sim.a-v1"])
    once(env)
    _result, doc = once(env)
    first, second = scripted_ingest.gets("/runner-config")
    assert "If-None-Match" not in first.headers
    assert second.headers["If-None-Match"].startswith('"')
    assert "(unchanged)" in doc["models_from"] and set(by_model(doc)) == {"sim.a-v1"}


def test_unknown_keys_are_kept_in_the_cache_and_never_fatal(env, sim, scripted_ingest):
    scripted_ingest.worklist = worklist(
        ["sim.a-v1"], {"sim.a-v1": {"omit_temperature": False, "future_knob": {"x": 1},
                                    "region": None}},
        future_top_level=[1, 2])
    result, _doc = once(env)
    assert result.exit_code == ExitCode.OK
    cached = json.loads((Path(env["BENCH_RUNNER_STATE_DIR"]) / CACHE_NAME).read_text())
    assert cached["answer"]["model_metadata"]["sim.a-v1"]["future_knob"] == {"x": 1}
    assert cached["answer"]["future_top_level"] == [1, 2]


def test_a_setting_of_the_wrong_type_is_ignored_with_a_warning(env, sim, scripted_ingest,
                                                               caplog):
    scripted_ingest.worklist = worklist(["sim.a-v1"], {"sim.a-v1": {"omit_temperature": "yes"}})
    result, doc = once(env)
    assert result.exit_code == ExitCode.OK
    assert by_model(doc)["sim.a-v1"]["temperature"] == 0.1
    assert "omit_temperature is not what it should be" in caplog.text


# -- faults ----------------------------------------------------------------------------------


def test_a_refused_key_never_falls_back_exit_7(env, sim, scripted_ingest):
    scripted_ingest.worklist = worklist(["sim.a-v1"])
    once(env)  # a good answer cached
    scripted_ingest.script("/runner-config", Scripted(401, {"error": {"code": "unauthorized",
                                                                     "message": "no"}}))
    result, _doc = once({**env, "BENCHMARK_MODELS": "sim.b-v1"})
    assert result.exit_code == ExitCode.AUTH
    assert "refused the key" in result.stderr and "INGEST_API_KEY" in result.stderr
    assert sim.calls("sim.b-v1") == 0 and sim.calls("sim.a-v1") == 1
    scripted_ingest.script("/runner-config", Scripted(403, {"error": {"code": "forbidden",
                                                                     "message": "no"}}))
    assert once(env)[0].exit_code == ExitCode.AUTH
    assert sim.calls("sim.a-v1") == 1


def test_a_503_uses_the_fresh_cache(env, sim, scripted_ingest):
    scripted_ingest.worklist = worklist(["sim.b-v1"])
    once(env)
    scripted_ingest.script("/runner-config", Scripted(503, {"error": {"code": "unavailable",
                                                                     "message": "db"}}))
    result, doc = once({**env, "BENCHMARK_MODELS": "sim.a-v1"})
    assert result.exit_code == ExitCode.OK
    assert doc["models_from"].startswith("the cached runner-config")
    assert "HTTP 503" in result.stderr
    assert set(by_model(doc)) == {"sim.b-v1"}


def test_a_stale_cache_falls_back_to_benchmark_models(env, sim, scripted_ingest):
    scripted_ingest.worklist = worklist(["sim.b-v1"])
    once(env)
    age_cache(env, 7)  # the default grace window is 6 h
    scripted_ingest.script("/runner-config", Scripted(503, {"error": {"code": "x",
                                                                     "message": "x"}}))
    result, doc = once({**env, "BENCHMARK_MODELS": "sim.a-v1"})
    assert result.exit_code == ExitCode.OK
    assert doc["models_from"] == "BENCHMARK_MODELS (fallback)"
    assert "past BENCH_RUNNER_WORKLIST_GRACE_HOURS=6" in result.stderr
    assert set(by_model(doc)) == {"sim.a-v1"}
    # A wider window, set by the operator, takes the same cache.
    scripted_ingest.script("/runner-config", Scripted(503, {"error": {"code": "x",
                                                                     "message": "x"}}))
    result, doc = once({**env, "BENCH_RUNNER_WORKLIST_GRACE_HOURS": "8"})
    assert set(by_model(doc)) == {"sim.b-v1"}


def test_stale_cache_and_no_benchmark_models_measures_nothing_and_says_why(
        env, sim, scripted_ingest):
    scripted_ingest.worklist = worklist(["sim.b-v1"])
    once(env)
    age_cache(env, 7)
    scripted_ingest.script("/runner-config", Scripted(503, {"error": {"code": "x",
                                                                     "message": "x"}}))
    result, _doc = once(env)
    assert result.exit_code == ExitCode.CONFIG
    (line,) = result.stderr.strip().splitlines()
    assert "no models to measure" in line and "HTTP 503" in line and "7.0 h old" in line
    assert sim.calls("sim.b-v1") == 1  # only the first run's


def test_a_garbled_answer_uses_the_cache(env, sim, scripted_ingest):
    scripted_ingest.worklist = worklist(["sim.b-v1"])
    once(env)
    for garbage in (b"<html><title>Bad Gateway</title></html>", b'{"models": "sim.a-v1"}',
                    b'{"models": ["sim.a-v1"], "model_metadata": {"sim.a-v1": 5}}', b"[1,"):
        scripted_ingest.script("/runner-config", Scripted(200, raw=garbage))
        result, doc = once(env)
        assert result.exit_code == ExitCode.OK
        assert doc["models_from"].startswith("the cached runner-config"), garbage
        assert "not a worklist" in result.stderr
    assert sim.calls("sim.a-v1") == 0


def test_a_server_down_falls_back_and_the_results_wait_in_the_outbox(env, sim):
    down = f"http://127.0.0.1:{free_port()}/ingest"
    result, doc = once({**env, "INGEST_API_URL": down, "BENCHMARK_MODELS": "sim.a-v1"})
    assert result.exit_code == ExitCode.PENDING
    assert doc["models_from"] == "BENCHMARK_MODELS (fallback)"
    assert "no answer from" in result.stderr and "no cached answer" in result.stderr
    assert doc["delivery"]["pending"] == 1


def test_a_worklist_server_that_hangs_times_out_to_the_cache(env, sim, scripted_ingest,
                                                             monkeypatch):
    scripted_ingest.worklist = worklist(["sim.b-v1"])
    once(env)
    from dataclasses import replace

    from runner import settings as cfg

    real_load = cfg.load
    monkeypatch.setattr(cfg, "load", lambda **kw: replace(real_load(**kw),
                                                          http_timeout=(1.0, 0.5)))
    scripted_ingest.script("/runner-config", Scripted(200, raw=b"{}", delay=2.0))
    result, doc = once(env)
    assert result.exit_code == ExitCode.OK
    assert "ReadTimeout" in result.stderr
    assert doc["models_from"].startswith("the cached runner-config")


# -- per-model settings, applied for real ----------------------------------------------------


def test_a_model_measured_with_and_without_temperature(env, sim, scripted_ingest):
    scripted_ingest.worklist = worklist(["sim.a-v1", "sim.no-temp-v1"],
                                        {"sim.no-temp-v1": {"omit_temperature": True}})
    result, doc = once(env)
    assert result.exit_code == ExitCode.OK, result.stderr
    results = by_model(doc)
    assert results["sim.a-v1"]["temperature"] == 0.1
    assert results["sim.no-temp-v1"]["temperature"] is None
    (with_temp,) = sim.requests("sim.a-v1")
    (without,) = sim.requests("sim.no-temp-v1")
    assert with_temp["inferenceConfig"] == {"maxTokens": 64, "temperature": 0.1}
    assert without["inferenceConfig"] == {"maxTokens": 64}
    stored = {d["model_name"]: d for d in scripted_ingest.stored.values()}
    assert stored["sim.no-temp-v1"]["temperature"] is None
    assert stored["sim.a-v1"]["reasoning_effort"] is None


def test_without_omit_temperature_bedrock_refuses_in_its_own_words(env, sim, scripted_ingest):
    scripted_ingest.worklist = worklist(["sim.no-temp-v1"])
    result, doc = once(env)
    assert result.exit_code == ExitCode.MODEL_FAILED
    (failure,) = doc["failures"]
    assert failure["error_kind"] == "invalid_request"
    assert TEMPERATURE_REFUSED in failure["message"]


def test_a_thinking_model_gets_its_fields_and_stores_its_reasoning_effort(
        env, sim, scripted_ingest):
    scripted_ingest.worklist = worklist(
        ["sim.thinker-v1"], {"sim.thinker-v1": {"omit_temperature": True,
                                                "additional_model_request_fields": THINKING}})
    result, doc = once(env)
    assert result.exit_code == ExitCode.OK, result.stderr
    (request,) = sim.requests("sim.thinker-v1")
    assert request["additionalModelRequestFields"] == THINKING
    assert "temperature" not in request["inferenceConfig"]
    result_doc = by_model(doc)["sim.thinker-v1"]
    assert result_doc["reasoning_effort"] == "budget_tokens=1024"
    assert result_doc["temperature"] is None
    # It reasoned first, as asked: reasoning deltas before any text.
    assert result_doc["reasoning_tokens"] and \
        result_doc["time_to_first_any_token"] < result_doc["time_to_first_token"]
    (stored,) = scripted_ingest.stored.values()
    assert stored["reasoning_effort"] == "budget_tokens=1024"


def test_thinking_beside_a_temperature_is_refused_as_bedrock_does(env, sim, scripted_ingest):
    scripted_ingest.worklist = worklist(
        ["sim.thinker-v1"], {"sim.thinker-v1": {"additional_model_request_fields": THINKING}})
    _result, doc = once(env)
    (failure,) = doc["failures"]
    assert TEMPERATURE_WITH_THINKING in failure["message"]


def test_a_model_of_another_region_is_called_there_on_a_warm_client(env, sim, scripted_ingest):
    scripted_ingest.worklist = worklist(
        ["sim.a-v1", "sim.west-only-v1"], {"sim.west-only-v1": {"region": "us-west-2"}})
    result, doc = once(env)
    assert result.exit_code == ExitCode.OK, result.stderr
    results = by_model(doc)
    assert results["sim.a-v1"]["region"] == "us-east-1"
    assert results["sim.west-only-v1"]["region"] == "us-west-2"
    requests = sim.stats()["requests"]
    west = [i for i, r in enumerate(requests) if r["region"] == "us-west-2"]
    model_call = next(i for i, r in enumerate(requests) if r["model"] == "sim.west-only-v1")
    # The us-west-2 client was warmed before the model's timed call, and only it went there.
    assert requests[west[0]]["model"] == WARM_MODEL_ID and west[0] < model_call
    assert requests[model_call]["region"] == "us-west-2"
    assert {r["region"] for r in requests if r["model"] == "sim.a-v1"} == {"us-east-1"}


def test_a_one_region_model_called_elsewhere_is_an_invalid_id(env, sim, scripted_ingest):
    scripted_ingest.worklist = worklist(["sim.west-only-v1"])
    _result, doc = once(env)
    (failure,) = doc["failures"]
    assert failure["region"] == "us-east-1"
    assert "The provided model identifier is invalid." in failure["message"]


def test_profiles_in_the_metadata_restrict_what_a_model_runs(env, sim, scripted_ingest):
    scripted_ingest.worklist = worklist(["sim.a-v1", "sim.b-v1"],
                                        {"sim.b-v1": {"profiles": ["cloud-long-v1"]}})
    result, doc = once(env, "--profiles", "cloud-default-v1,cloud-long-v1")
    assert result.exit_code == ExitCode.OK, result.stderr
    runs = sorted((r["model_name"], r["benchmark_profile_id"]) for r in doc["results"])
    assert runs == [("sim.a-v1", "cloud-default-v1"), ("sim.a-v1", "cloud-long-v1"),
                    ("sim.b-v1", "cloud-long-v1")]


# -- the daemon --------------------------------------------------------------------------------


def _daemon_env(env, sim):
    full = {k: v for k, v in os.environ.items()
            if not k.startswith(("INGEST_", "BENCHMARK_", "BENCH_RUNNER_"))}
    return {**full, **env, **sim.env}


def test_the_daemon_picks_up_a_change_between_cycles(env, sim, scripted_ingest):
    scripted_ingest.worklist = worklist(["sim.a-v1"])
    proc = subprocess.Popen(
        [str(Path(os.sys.executable).with_name("bench-runner")), "daemon", "--interval",
         "0.005", "--profiles", "cloud-default-v1"], env=_daemon_env(env, sim), cwd=REPO,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def stored_models():
        return {d["model_name"] for d in list(scripted_ingest.stored.values())}

    try:
        deadline = time.monotonic() + 60
        while "sim.a-v1" not in stored_models() and time.monotonic() < deadline:
            time.sleep(0.05)
        scripted_ingest.worklist = worklist(["sim.b-v1"], {"sim.b-v1": {
            "omit_temperature": True}})
        while "sim.b-v1" not in stored_models() and time.monotonic() < deadline:
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert {"sim.a-v1", "sim.b-v1"} <= stored_models()
    b = [d for d in scripted_ingest.stored.values() if d["model_name"] == "sim.b-v1"]
    assert all(d["temperature"] is None for d in b)
    assert all("temperature" not in r["inferenceConfig"] for r in sim.requests("sim.b-v1"))
    assert "models from runner-config" in err and "(pinned)" in err


def _daemon_in_process(env, args, monkeypatch, cycles=1):
    """Run the daemon in this process for `cycles` cycles; returns the waits it chose (s)."""
    from runner import cli

    waits = []

    def wait(self, seconds):
        waits.append(seconds)
        if len(waits) >= cycles:
            self.set()

    monkeypatch.setattr(cli._StopSignal, "wait", wait)
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        result = CliRunner().invoke(main, ["daemon", "--profiles", "cloud-default-v1", *args],
                                    env=env, catch_exceptions=False)
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)
    return result, waits


def test_the_daemon_follows_the_servers_interval_unless_pinned(env, sim, scripted_ingest,
                                                               monkeypatch):
    scripted_ingest.worklist = worklist(["sim.a-v1"], interval=7)
    result, waits = _daemon_in_process({**env, "BENCH_RUNNER_CATALOG_HOURS": "0"}, [],
                                       monkeypatch)
    assert result.exit_code == 0
    assert 6 * 60 < waits[0] <= 7 * 60
    result, waits = _daemon_in_process({**env, "BENCH_RUNNER_CATALOG_HOURS": "0"},
                                       ["--interval", "2"], monkeypatch)
    assert 60 < waits[0] <= 2 * 60
    result, waits = _daemon_in_process({**env, "BENCH_RUNNER_CATALOG_HOURS": "0",
                                        "BENCH_RUNNER_INTERVAL": "3"}, [], monkeypatch)
    assert 2 * 60 < waits[0] <= 3 * 60


def test_the_daemon_stops_with_exit_7_when_the_worklist_refuses_the_key(
        env, sim, scripted_ingest, monkeypatch):
    scripted_ingest.script("/runner-config", Scripted(401, {"error": {"code": "unauthorized",
                                                                     "message": "no"}}))
    result, _waits = _daemon_in_process({**env, "BENCHMARK_MODELS": "sim.a-v1"}, [],
                                        monkeypatch)
    assert result.exit_code == ExitCode.AUTH
    assert sim.calls("sim.a-v1") == 0


# -- the catalogue -------------------------------------------------------------------------------


CATALOG_SIM = {"models": {
    "sim.a-v1": FAST,
    "sim.embed-v1": {**FAST, "output_modalities": ["EMBEDDING"], "streaming": False},
    "sim.retired-v1": {"error": "end_of_life", "lifecycle": "LEGACY"},
    "sim.profile-only-v1": {**FAST, "error": "on_demand_not_supported"},
    "us.sim.profile-only-v1": FAST,
    "eu.sim.profile-only-v1": FAST,
    "global.sim.profile-only-v1": FAST,
}, "catalog": {"page_size": 1}}


def post(env):
    return CliRunner().invoke(main, ["models", "--post"], env=env, catch_exceptions=False)


def test_models_post_sends_every_page_of_the_catalogue_and_reposts(env, bedrock_sim,
                                                                   scripted_ingest):
    bedrock_sim(CATALOG_SIM)
    result = post(env)
    assert result.exit_code == 0, result.stderr
    assert "catalogue posted: 7 entries" in result.stdout
    (body,) = scripted_ingest.catalogs
    assert body["provider"] == "bedrock" and body["region"] == "us-east-1"
    assert body["pagination_complete"] is True
    datetime.fromisoformat(body["started_at"])
    entries = {m["model_id"]: m for m in body["models"]}
    # Three profiles, one a page: all three pages read.
    assert {"us.sim.profile-only-v1", "eu.sim.profile-only-v1",
            "global.sim.profile-only-v1"} <= set(entries)
    assert entries["sim.embed-v1"]["output_modalities"] == ["EMBEDDING"]
    assert entries["sim.embed-v1"]["streaming"] is False
    assert entries["sim.retired-v1"]["lifecycle_status"] == "LEGACY"
    assert entries["sim.profile-only-v1"]["needs_profile"] is True
    assert entries["sim.profile-only-v1"]["inference_types"] == ["INFERENCE_PROFILE"]
    assert entries["us.sim.profile-only-v1"]["kind"] == "inference-profile"
    assert entries["sim.a-v1"] == {
        "model_id": "sim.a-v1", "name": "sim.a-v1", "provider_name": "Simulated",
        "kind": "foundation", "input_modalities": ["TEXT"], "output_modalities": ["TEXT"],
        "inference_types": ["ON_DEMAND"], "lifecycle_status": "ACTIVE",
        "needs_profile": False, "streaming": True}
    assert post(env).exit_code == 0
    first, second = scripted_ingest.catalogs
    assert first["models"] == second["models"]


def test_a_page_that_fails_posts_the_catalogue_as_incomplete(env, bedrock_sim, scripted_ingest):
    bedrock_sim({**CATALOG_SIM, "catalog": {"page_size": 1, "fail_page": 2}})
    result = post(env)
    assert result.exit_code == 0, result.stderr
    assert "listing incomplete" in result.stdout
    (body,) = scripted_ingest.catalogs
    assert body["pagination_complete"] is False
    assert len([m for m in body["models"] if m["kind"] == "inference-profile"]) == 1


@pytest.mark.parametrize(("status", "code"), [(503, ExitCode.ERROR), (401, ExitCode.AUTH)])
def test_a_failed_post_is_one_clear_line(env, bedrock_sim, scripted_ingest, status, code):
    bedrock_sim(CATALOG_SIM)
    scripted_ingest.script("/ingest/catalog", *[Scripted(status, {"error": {
        "code": "x", "message": "the server said no"}})] * 3)
    result = post(env)
    assert result.exit_code == code
    (line,) = result.stderr.strip().splitlines()
    assert f"catalogue not posted (7 entries): HTTP {status}: the server said no" in line


def test_the_daemon_posts_the_catalogue_when_due_and_a_failure_loses_no_result(
        env, bedrock_sim, scripted_ingest, monkeypatch, caplog):
    bedrock_sim(CATALOG_SIM)
    scripted_ingest.worklist = worklist(["sim.a-v1"])
    scripted_ingest.script("/ingest/catalog", *[Scripted(500, {"error": {
        "code": "x", "message": "boom"}})] * 3)
    result, _ = _daemon_in_process(env, ["--interval", "0"], monkeypatch)
    assert result.exit_code == 0
    assert "catalogue not posted" in caplog.text
    assert {d["model_name"] for d in scripted_ingest.stored.values()} == {"sim.a-v1"}
    # Not stored: the next cycle tries again, and then it is not due for 12 h.
    scripted_ingest.unscript()
    _daemon_in_process(env, ["--interval", "0"], monkeypatch, cycles=2)
    assert len(scripted_ingest.catalogs) == 1
    assert len(scripted_ingest.stored) == 3
