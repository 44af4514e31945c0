"""flask --app ingest_app models ...: an operator curates `models` without touching MongoDB."""

from __future__ import annotations

import json
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
    # The recount runs after the write is answered.
    assert model_health.settle(timeout=30, database=mongo_db.name)
    lines = cli("list").output.splitlines()
    assert lines[0].split() == ["PROVIDER", "MODEL_ID", "STATE", "FRESHNESS", "LAST", "SUCCESS",
                                "DISPLAY", "NAME"]
    rows = [line.split()[:4] for line in lines[1:] if not line.startswith(" ")]
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


@pytest.mark.parametrize("command", [["models", "list"], ["ensure-indexes"]])
def test_an_admin_command_without_the_apps_environment_is_one_line_and_exit_2(command):
    secret = "Zq3v_Xb8-k2LmN4pQ7rS9tU1wY5aC6dE8fG0hJ2kL4m"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MONGODB_", "INGEST_"))}
    env["INGEST_API_KEYS"] = secret  # its name forgotten, and MONGODB_URI not set
    out = subprocess.run([sys.executable, "-m", "flask", "--app", "ingest_app", *command],
                         capture_output=True, text=True, env=env, cwd=REPO, check=False,
                         timeout=60)
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr and out.stdout == ""
    assert out.stderr.count("\n") == 1, out.stderr
    assert out.stderr.startswith("Error: invalid ingest settings: MONGODB_URI is missing")
    assert "INGEST_API_KEYS: entry 1 is not name:key" in out.stderr
    assert "docs/configuration.md" in out.stderr
    assert secret not in out.stderr


# --- request settings and runners (models configure, add) ------------------------------

THINKING = '{"thinking": {"type": "enabled", "budget_tokens": 1024}}'


def worklist(client, key: str = "runner-a") -> dict:
    from tests.support.ingest import TEST_KEYS

    answer = client.get("/runner-config", headers={"X-API-Key": TEST_KEYS[key]})
    assert answer.status_code == 200
    return answer.get_json()


def test_configure_sets_the_request_and_the_next_worklist_carries_it(cli, mongo_db, client):
    cli("add", MODEL, "--display-name", "Sim Fast")
    mongo_db["models"].update_one({"model_id": MODEL}, {"$set": {"dashboard_rank": 3}})
    result = cli("configure", MODEL, "--omit-temperature", "--request-field", THINKING,
                 "--region", "us-west-2", "--profiles", "cloud-reasoning-v1",
                 "--runners", "runner-b")
    assert result.exit_code == 0, result.output
    assert result.output == (
        f"configured bedrock/{MODEL}: no temperature; request fields "
        '{"thinking":{"budget_tokens":1024,"type":"enabled"}}; region us-west-2; '
        "profiles cloud-reasoning-v1; runners runner-b\n")
    doc = model(mongo_db)
    assert doc["request"] == {"omit_temperature": True,
                              "additional_model_request_fields": json.loads(THINKING),
                              "region": "us-west-2", "profiles": ["cloud-reasoning-v1"]}
    assert (doc["runners"], doc["dashboard_rank"], doc["display_name"]) == \
        (["runner-b"], 3, "Sim Fast")
    assert worklist(client)["models"] == []
    listed = worklist(client, "runner-b")
    assert listed["models"] == [MODEL]
    assert listed["model_metadata"][MODEL] == doc["request"]

    # One option changes one setting; the others stay as they were.
    assert cli("configure", MODEL, "--send-temperature", "--all-runners").exit_code == 0
    doc = model(mongo_db)
    assert doc["request"]["omit_temperature"] in (False, 0)
    assert doc["request"]["region"] == "us-west-2" and "runners" not in doc
    assert worklist(client)["model_metadata"][MODEL]["omit_temperature"] is False
    result = cli("configure", MODEL, "--clear-request-fields", "--no-region", "--all-profiles")
    assert result.output == (f"configured bedrock/{MODEL}: the profiles as they are, "
                             "on every runner\n")
    assert worklist(client)["model_metadata"][MODEL] == {
        "omit_temperature": False, "additional_model_request_fields": None, "region": None,
        "profiles": None}


def test_configure_keeps_request_keys_it_does_not_know(cli, mongo_db, client):
    cli("add", MODEL, "--display-name", "Sim Fast")
    mongo_db["models"].update_one({"model_id": MODEL}, {"$set": {"request": {"top_k": 5}}})
    assert cli("configure", MODEL, "--region", "eu-west-1").exit_code == 0
    assert model(mongo_db)["request"]["top_k"] == 5
    meta = worklist(client)["model_metadata"][MODEL]
    assert (meta["top_k"], meta["region"]) == (5, "eu-west-1")
    assert "other settings top_k" in cli("list").output


def test_add_takes_the_same_options_and_list_shows_them(cli, mongo_db, client):
    result = cli("add", MODEL, "--display-name", "Sim Fast", "--omit-temperature",
                 "--runners", "runner-a,runner-b")
    assert result.exit_code == 0, result.output
    assert result.output == (f"added bedrock/{MODEL} (Sim Fast), enabled; no temperature; "
                             "runners runner-a,runner-b\n")
    assert model(mongo_db)["request"] == {"omit_temperature": True,
                                          "additional_model_request_fields": None,
                                          "region": None, "profiles": None}
    cli("add", "sim.plain-v1", "--display-name", "Sim Plain")
    assert "request" not in model(mongo_db, "sim.plain-v1")
    lines = cli("list").output.splitlines()
    assert lines[1].split()[1] == MODEL
    assert lines[2] == "    no temperature; runners runner-a,runner-b"
    assert lines[3].split()[1] == "sim.plain-v1" and len(lines) == 4
    assert worklist(client)["models"] == [MODEL, "sim.plain-v1"]


@pytest.mark.parametrize(("args", "message"), [
    (["--request-field", "{thinking: 1}"], "--request-field is not JSON"),
    (["--request-field", "[1, 2]"], "must be a JSON object"),
    (["--request-field", '{"$where": 1}'], "Keys must not start with '$'"),
    (["--profiles", "cloud-default-v1,cloud-huge-v9"], "unknown profile cloud-huge-v9"),
    (["--runners", "runner-z"], "runner-z is not a key name of INGEST_API_KEYS"),
    (["--region", "Mars"], "is not a region name"),
    (["--region", "us-east-1", "--no-region"], "give --region or --no-region, not both"),
    (["--request-field", "{}", "--clear-request-fields"], "not both"),
    (["--profiles", "cloud-default-v1", "--all-profiles"], "not both"),
    (["--runners", "runner-a", "--all-runners"], "not both"),
    ([], "nothing to change"),
])
def test_a_bad_setting_is_one_line_and_changes_nothing(cli, mongo_db, args, message):
    cli("add", MODEL, "--display-name", "Sim Fast")
    before = model(mongo_db)
    result = cli("configure", MODEL, *args)
    assert result.exit_code == 2, result.output
    assert result.output.startswith("Error: ") and result.output.count("\n") == 1
    assert message in result.output
    assert model(mongo_db) == before
    if args:
        added = cli("add", "sim.other-v1", "--display-name", "Other", *args)
        assert (added.exit_code, added.output.count("\n")) == (2, 1), added.output
        assert mongo_db["models"].count_documents({}) == 1


def test_configuring_a_model_that_is_not_listed_says_how_to_add_it(cli, mongo_db):
    result = cli("configure", "sim.nowhere-v1", "--omit-temperature")
    assert (result.exit_code, result.output.count("\n")) == (1, 1)
    assert "is not listed; add it first" in result.output
    assert mongo_db["models"].count_documents({}) == 0


# --- the catalogue the runners posted (models catalogue) -------------------------------


def post_catalogue(client, *ids: str, region: str = "us-east-1", complete: bool = True) -> None:
    from datetime import UTC, datetime

    from tests.support.ingest import TEST_KEYS

    body = {"provider": "bedrock", "region": region, "started_at": datetime.now(UTC).isoformat(),
            "pagination_complete": complete,
            "models": [{"model_id": m, "name": m.upper(), "kind": "inference-profile"
                        if m.split(".")[0] in ("us", "eu", "global") else "foundation",
                        "lifecycle_status": "ACTIVE"} for m in ids]}
    answer = client.post("/ingest/catalog", json=body,
                         headers={"X-API-Key": TEST_KEYS["runner-a"]})
    assert answer.status_code == 201, answer.get_json()


def test_catalogue_lists_what_is_not_listed_yet_and_flags_spellings_of_one_model(
        cli, mongo_db, client):
    assert "no catalogue posted yet" in cli("catalogue").output
    post_catalogue(client, "sim.fast-v1", "us.sim.fast-v1", "global.sim.fast-v1",
                   "sim.steady-v1", "Sim.Steady-V1", "sim.new-v1")
    post_catalogue(client, "sim.new-v1", region="eu-west-1")
    cli("add", "sim.fast-v1", "--display-name", "Sim Fast")
    cli("add", "us.sim.fast-v1", "--display-name", "Sim Fast (US)")
    cli("add", "sim.STEADY-v1", "--display-name", "Sim Steady")
    result = cli("catalogue")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split() == ["PROVIDER", "MODEL_ID", "KIND", "REGIONS", "LIFECYCLE", "LAST",
                                "SEEN", "NAME"]
    rows = [line.split()[:5] for line in lines[1:5]]
    assert rows == [
        ["bedrock", "Sim.Steady-V1", "foundation", "us-east-1", "ACTIVE"],
        ["bedrock", "global.sim.fast-v1", "inference-profile", "us-east-1", "ACTIVE"],
        ["bedrock", "sim.new-v1", "foundation", "eu-west-1,us-east-1", "ACTIVE"],
        ["bedrock", "sim.steady-v1", "foundation", "us-east-1", "ACTIVE"],
    ]
    assert lines[5].startswith("4 catalogue entries not listed")
    groups = lines[lines.index("") + 2:]
    assert groups == [
        "  bedrock: global.sim.fast-v1 (catalogue), sim.fast-v1 (listed), us.sim.fast-v1 "
        "(listed)  <- listed 2 times: shows 2 times",
        "  bedrock: Sim.Steady-V1 (catalogue), sim.STEADY-v1 (listed), sim.steady-v1 "
        "(catalogue)",
    ]
    assert cli("catalogue", "--provider", "openai").output.startswith("no catalogue posted")


def test_catalogue_says_so_when_everything_is_listed(cli, mongo_db, client):
    post_catalogue(client, "sim.fast-v1")
    cli("add", "sim.fast-v1", "--display-name", "Sim Fast")
    assert cli("catalogue").output == "every catalogue entry is listed\n"


def test_catalogue_names_the_models_the_latest_complete_listing_no_longer_holds(
        cli, mongo_db, client):
    post_catalogue(client, "sim.fast-v1", "sim.old-v1", "sim.spare-v1")
    post_catalogue(client, "sim.old-v1", region="eu-west-1")
    cli("add", "sim.old-v1", "--display-name", "Sim Old")
    # A partial listing proves nothing missing.
    post_catalogue(client, "sim.fast-v1", complete=False)
    assert "gone from" not in cli("catalogue").output
    post_catalogue(client, "sim.fast-v1", "sim.spare-v1")
    lines = cli("catalogue").output.splitlines()
    start = lines.index("gone from the provider's catalogue (not in the latest complete "
                        "listing of its region; disable or deprecate a listed one):")
    gone = [line.split(" (")[0] for line in lines[start + 1:] if line.startswith("  ")]
    # Still listed in eu-west-1, gone from us-east-1.
    assert gone == ["  bedrock/us-east-1: sim.old-v1"]
    assert "(listed, last seen" in lines[start + 1]
