"""GET /openapi.json documents every route the app serves, and what each really answers."""

from __future__ import annotations

import re

import pytest

from ingest_app import read
from tests.support.ingest import TEST_READ_KEYS, failure_payload, result_payload

READER = {"X-API-Key": TEST_READ_KEYS["dashboard"]}
ERROR_REF = "#/components/schemas/ErrorAnswer"


@pytest.fixture
def spec(client) -> dict:
    answer = client.get("/openapi.json")
    assert answer.status_code == 200
    return answer.get_json()


def _operations(spec: dict):
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            yield path, method, operation


def _openapi_path(rule: str) -> str:
    return re.sub(r"<(?:[^:>]+:)?([^>]+)>", r"{\1}", rule)


def test_every_route_the_app_registers_is_documented(app, spec):
    registered = set()
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":  # the status page's stylesheet, not an API
            continue
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            registered.add((_openapi_path(rule.rule), method.lower()))
    documented = {(path, method) for path, method, _ in _operations(spec)}
    assert registered - documented == set()
    assert {("/results", "get"), ("/summary", "get"), ("/", "get"), ("/metrics", "get")
            } <= documented


def test_every_error_status_is_documented_in_the_one_error_shape(spec):
    for path, method, operation in _operations(spec):
        errors = {code: r for code, r in operation["responses"].items() if int(code) >= 400}
        assert "500" in errors, (path, method)
        for code, response in errors.items():
            schema = response["content"]["application/json"]["schema"]
            assert schema == {"$ref": ERROR_REF}, (path, method, code)
    body = spec["components"]["schemas"]["ErrorAnswer"]["properties"]["error"]
    assert body["$ref"].endswith("/ErrorBody")
    assert set(spec["components"]["schemas"]["ErrorBody"]["properties"]) == {
        "code", "message", "details", "request_id"}


def test_statuses_that_ask_to_retry_document_retry_after(spec):
    for path, _, operation in _operations(spec):
        for code in ("429", "503"):
            if code in operation["responses"]:
                assert "Retry-After" in operation["responses"][code]["headers"], (path, code)
    assert "429" in spec["paths"]["/ingest"]["post"]["responses"]
    assert "429" in spec["paths"]["/ingest/batch"]["post"]["responses"]


@pytest.mark.parametrize(("path", "accepted"), [
    ("/results", read.RESULTS_PARAMS),
    ("/summary", read.SUMMARY_PARAMS),
])
def test_read_routes_document_exactly_the_query_parameters_they_accept(spec, path, accepted):
    params = spec["paths"][path]["get"]["parameters"]
    assert {p["name"] for p in params} == set(accepted)
    assert all(p["in"] == "query" for p in params)


def test_read_routes_name_their_security_and_the_status_page_takes_basic(spec):
    for path in ("/results", "/summary", "/", "/metrics"):
        schemes = {name for entry in spec["paths"][path]["get"]["security"] for name in entry}
        assert {"ApiKey", "Bearer"} <= schemes
    assert {"Basic"} == {name for entry in spec["paths"]["/"]["get"]["security"]
                         for name in entry} - {"ApiKey", "Bearer"}


def test_documented_read_answers_match_what_the_routes_answer(client, auth_headers, spec):
    assert client.post("/ingest", json=result_payload(), headers=auth_headers).status_code == 201
    assert client.post("/ingest/error", json=failure_payload(),
                       headers=auth_headers).status_code == 201
    schemas = spec["components"]["schemas"]

    page = client.get("/results", headers=READER).get_json()
    assert set(page) == set(schemas["ResultsPage"]["properties"])
    assert set(page["results"][0]) <= set(schemas["StoredResult"]["properties"])
    assert {"received_at", "runner_id"} <= set(page["results"][0])

    summary = client.get("/summary", headers=READER).get_json()
    assert set(summary) == set(schemas["Summary"]["properties"])
    assert len(summary["models"]) == 2
    for row in summary["models"]:
        assert set(row) == set(schemas["ModelSummary"]["properties"])
        assert set(row["tokens_per_second"]) == set(schemas["Spread"]["properties"])


def test_the_document_is_as_strict_as_the_server_on_ids_integers_and_windows():
    import re

    from ingest_app import openapi
    from ingest_app.summary import WindowError, parse_window

    document = openapi.document()
    components = document["components"]["schemas"]
    for schema, field in (("Result", "result_id"), ("Failure", "error_id"),
                          ("WriteAnswer", "result_id")):
        prop = components[schema]["properties"][field]
        assert prop["format"] == "uuid" and re.fullmatch(prop["pattern"].strip("^$"),
                                                         "9F1C2B7E-0d7a-4a53-9c7e-1f2e3d4c5b6a")
        assert not re.fullmatch(prop["pattern"].strip("^$"), "not-a-uuid")
    for schema in components.values():
        for name, prop in schema.get("properties", {}).items():
            if prop.get("type") == "integer":
                assert prop["format"] == "int64", name
                assert prop["minimum"] >= -(2**63) and prop["maximum"] <= 2**63 - 1, name
    assert "differing_fields" in components["BatchItemAnswer"]["properties"]
    assert "rejected" in components["BatchItemAnswer"]["properties"]["status"]["enum"]

    window = next(p for p in document["paths"]["/summary"]["get"]["parameters"]
                  if p["name"] == "window")["schema"]["pattern"]
    candidates = [f"{n}{unit}" for unit in "mhd" for n in
                  (0, 1, 9, 10, 31, 32, 99, 743, 744, 745, 999, 44639, 44640, 44641, 99999)]
    candidates += ["", "01d", "1w", "1.5h", "-1d", "1d ", "24H"]
    for text in candidates:
        try:
            parse_window(text)
            accepted = True
        except WindowError:
            accepted = False
        assert bool(re.search(window, text)) == accepted, text
    until = next(p for p in document["paths"]["/results"]["get"]["parameters"]
                 if p["name"] == "until")
    assert "later than since" in until["description"]


def test_the_runner_routes_are_documented_as_they_answer(client, auth_headers, spec, mongo_db):
    from datetime import UTC, datetime

    from ingest_app.schemas import RUNNER_CONFIG_QUERY

    config = spec["paths"]["/runner-config"]["get"]
    assert {"200", "304", "401", "422", "429", "503", "500"} == set(config["responses"])
    assert "ETag" in config["responses"]["200"]["headers"]
    assert "ETag" in config["responses"]["304"]["headers"]
    params = {(p["in"], p["name"]) for p in config["parameters"]}
    assert params == {("query", n) for n in RUNNER_CONFIG_QUERY.fields} | \
        {("header", "If-None-Match")}
    catalog = spec["paths"]["/ingest/catalog"]["post"]
    assert {"201", "400", "401", "408", "413", "415", "422", "429", "503", "500"} == \
        set(catalog["responses"])
    assert catalog["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "/Catalog")
    schemas = spec["components"]["schemas"]

    mongo_db["models"].insert_one({"provider": "bedrock", "model_id": "sim.fast-v1",
                                   "request": {"omit_temperature": True, "top_k": 5}})
    answer = client.get("/runner-config", headers=auth_headers).get_json()
    assert set(answer) == set(schemas["RunnerConfig"]["properties"])
    meta = answer["model_metadata"]["sim.fast-v1"]
    assert set(schemas["ModelMetadata"]["properties"]) < set(meta)
    assert schemas["ModelMetadata"]["additionalProperties"] is True
    body = {"provider": "bedrock", "region": None, "started_at": datetime.now(UTC).isoformat(),
            "pagination_complete": False,
            "models": [{"model_id": "sim.fast-v1", "kind": "foundation"}]}
    stored = client.post("/ingest/catalog", json=body, headers=auth_headers).get_json()
    assert set(stored) == set(schemas["CatalogAnswer"]["properties"])
    assert set(stored["counts"]) == set(schemas["CatalogCounts"]["properties"])
    summary = client.get("/summary", headers=READER).get_json()
    assert set(summary["runners"][0]) == set(schemas["RunnerSeen"]["properties"])
