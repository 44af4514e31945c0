"""flask --app ingest_app models ...: an operator curates `models` without touching MongoDB."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import replace

import pytest

from ingest_app import create_app
from ingest_app import health as model_health
from tests.support.ingest import REPO, gunicorn_env, result_payload

MODEL = "sim.fast-v1"


@pytest.fixture
def cli(app):
    runner = app.test_cli_runner()
    return lambda *args: runner.invoke(args=["models", *args])


def model(mongo_db, model_id: str = MODEL) -> dict:
    doc = mongo_db["models"].find_one({"provider": "bedrock", "model_id": model_id},
                                      {"_id": False, "created_at": False})
    for name in ("enabled", "deprecated"):
        if name in doc:
            doc[name] = stored_bool(doc[name])
    return doc


def stored_bool(value):
    """A stored flag as a bool: MongoDB keeps the boolean $set writes (asserted against
    TEST_MONGODB_URI); the test server (nx-27017) stores a boolean written by $set as 0 or 1."""
    if isinstance(value, bool):
        return value
    assert not os.environ.get("TEST_MONGODB_URI"), f"a flag stored as {value!r}"
    assert value in (0, 1), value
    return bool(value)


def test_add_lists_an_enabled_model_with_its_display_name(cli, mongo_db):
    result = cli("add", MODEL, "--display-name", "Sim Fast")
    assert (result.exit_code, result.output) == (0, f"added bedrock/{MODEL} (Sim Fast), enabled\n")
    assert model(mongo_db) == {"provider": "bedrock", "model_id": MODEL,
                               "display_name": "Sim Fast", "enabled": True, "deprecated": False,
                               "imported_from": "bench-ingest"}
    health = mongo_db["bench_model_health"].find_one({"model_id": MODEL})
    assert (health["enabled"], health["freshness_status"]) == (True, "never_run")


def test_adding_a_listed_model_again_is_a_one_line_error_and_changes_nothing(cli, mongo_db):
    cli("add", MODEL, "--display-name", "Sim Fast")
    result = cli("add", MODEL, "--display-name", "Other")
    assert result.exit_code == 1
    assert result.output.count("\n") == 1
    assert "already listed" in result.output and "models enable" in result.output
    assert model(mongo_db)["display_name"] == "Sim Fast"


def test_disable_enable_and_deprecate_change_the_document_and_its_health(cli, mongo_db,
                                                                         client, auth_headers):
    cli("add", MODEL, "--display-name", "Sim Fast")
    client.post("/ingest", json=result_payload(), headers=auth_headers)
    assert cli("disable", MODEL, "--reason", "quota spent").exit_code == 0
    assert (model(mongo_db)["enabled"], model(mongo_db)["disabled_reason"]) == \
        (False, "quota spent")
    health = mongo_db["bench_model_health"].find_one({"model_id": MODEL})
    assert (health["enabled"], health["freshness_status"], health["successes_24h"]) == \
        (False, "disabled", 1)

    assert cli("enable", MODEL).exit_code == 0
    assert model(mongo_db)["enabled"] is True and "disabled_reason" not in model(mongo_db)
    health = mongo_db["bench_model_health"].find_one({"model_id": MODEL})
    assert health["freshness_status"] == "fresh"

    result = cli("deprecate", MODEL, "--successor", "sim.fast-v2", "--date", "2026-12-31")
    assert result.exit_code == 0
    doc = model(mongo_db)
    assert (doc["deprecated"], doc["successor_model"], doc["deprecation_date"]) == \
        (True, "sim.fast-v2", "2026-12-31")
    assert mongo_db["bench_model_health"].find_one({"model_id": MODEL})["freshness_status"] == \
        "disabled"


@pytest.mark.parametrize("command", [["enable"], ["disable"], ["deprecate"]])
def test_changing_a_model_that_is_not_listed_says_how_to_add_it(cli, mongo_db, command):
    result = cli(*command, "sim.nowhere-v1")
    assert result.exit_code == 1
    assert result.output == ("Error: bedrock/sim.nowhere-v1 is not listed; add it first with "
                             "`flask --app ingest_app models add sim.nowhere-v1 "
                             "--display-name NAME`\n")
    assert mongo_db["models"].count_documents({}) == 0


def test_list_shows_state_freshness_and_display_name(cli, mongo_db, client, auth_headers):
    assert "no models listed" in cli("list").output
    cli("add", MODEL, "--display-name", "Sim Fast")
    cli("add", "sim.old-v1", "--display-name", "Sim Old")
    cli("deprecate", "sim.old-v1")
    mongo_db["models"].insert_one({"provider": "openai", "model_id": "gpt-x",
                                   "display_name": "GPT X", "enabled": False})
    client.post("/ingest", json=result_payload(), headers=auth_headers)
    assert model_health.settle(timeout=30)  # the recount runs after the write is answered
    lines = cli("list").output.splitlines()
    assert lines[0].split() == ["PROVIDER", "MODEL_ID", "STATE", "FRESHNESS", "LAST", "SUCCESS",
                                "DISPLAY", "NAME"]
    rows = [line.split()[:4] for line in lines[1:]]
    assert rows == [["bedrock", MODEL, "enabled", "fresh"],
                    ["bedrock", "sim.old-v1", "deprecated", "disabled"],
                    ["openai", "gpt-x", "disabled", "-"]]
    assert lines[1].endswith("Sim Fast")
    assert len(cli("list", "--provider", "openai").output.splitlines()) == 2


@pytest.mark.parametrize(("args", "message"), [
    (["add", MODEL, "--display-name", " "], "--display-name"),
    (["add", "two words", "--display-name", "X"], "without spaces"),
    (["deprecate", MODEL, "--date", "31/12/2026"], "YYYY-MM-DD"),
    (["add", MODEL], "--display-name"),
])
def test_bad_arguments_are_refused_with_the_reason_and_store_nothing(cli, mongo_db, args,
                                                                     message):
    result = cli(*args)
    assert result.exit_code == 2
    assert message in result.output
    assert mongo_db["models"].count_documents({}) == 0


def test_an_unreachable_database_is_one_line_that_says_what_to_check(ingest_settings):
    app = create_app(replace(ingest_settings, mongodb_uri="mongodb://127.0.0.1:9/",
                             db_timeout_seconds=0.3, connect_timeout_ms=300))
    try:
        result = app.test_cli_runner().invoke(args=["models", "list"])
    finally:
        app.extensions["bench_ingest.db"].close()
    assert result.exit_code == 1
    assert result.output.startswith("Error: the database did not answer")
    assert "check MONGODB_URI" in result.output
    assert result.output.count("\n") == 1


def test_help_teaches_the_commands_through_the_real_flask_command(mongo_uri, mongo_db_name):
    env = {**gunicorn_env(mongo_uri, mongo_db_name), "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-m", "flask", "--app", "ingest_app", "models",
                          "--help"], capture_output=True, text=True, env=env, cwd=REPO,
                         check=False, timeout=60)
    assert out.returncode == 0, out.stderr
    for word in ("list", "add", "enable", "disable", "deprecate", "refresh",
                 "INGEST_MODEL_GATE", "never by hand", "--display-name"):
        assert word in out.stdout
