"""The OpenAPI document of every route, generated from the marshmallow schemas."""

from __future__ import annotations

import functools
from typing import Any

from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin

import bench_contract as contract

from . import jsonbody, schemas

_JSON = "application/json"

# What each error status means on the routes that can answer it; every one has the one shape.
_ERRORS = {
    "400": "not JSON, not an object, invalid UTF-8, duplicate keys, "
           "NaN/Infinity/out-of-range numbers, broken chunked framing, or a body that did not "
           "arrive whole in time",
    "401": "key missing, wrong, or in the query string",
    "409": "the same id with different content; the stored one is kept",
    "413": f"body over the limit ({contract.MAX_BODY_BYTES} bytes by default)",
    "415": "not application/json, or a Content-Encoding",
    "422": "invalid or unknown fields, each named in details.fields",
    "408": "the headers did not all arrive within INGEST_REQUEST_TIMEOUT_SECONDS (answered by "
           "the gunicorn worker; empty request_id)",
    "429": "too many requests for this key, or too many wrong keys from this address; retry "
           "after Retry-After seconds",
    "503": "database unavailable or slow (database_unavailable), or, on a read, every read slot "
           "taken (read_capacity_exhausted); retry after Retry-After seconds",
    "500": "a bug; logged under the request id, never a database outage",
}
_WRITE_ERRORS = ("400", "401", "408", "409", "413", "415", "422", "429", "503", "500")
_READ_ERRORS = ("401", "422", "429", "503", "500")
_WRITE_SECURITY = [{"ApiKey": []}, {"Bearer": []}]
_READ_NOTE = (" Needs a read or write key unless the app runs with INGEST_PUBLIC_READ=true;"
              " a key in the query string is always refused (401).")


def _json(schema: str, description: str) -> dict[str, Any]:
    return {"description": description, "content": {_JSON: {"schema": schema}}}


def _errors(codes: tuple[str, ...], **overrides: str) -> dict[str, Any]:
    return {code: _json("ErrorAnswer", overrides.get(code, _ERRORS[code])) for code in codes}


def _retry_after() -> dict[str, Any]:
    return {"Retry-After": {"description": "whole seconds to wait before trying again",
                            "schema": {"type": "integer", "minimum": 1}}}


def _write_operation(summary: str, body: str, answer: str, id_field: str) -> dict[str, Any]:
    responses = {
        "201": _json(answer, "stored (acknowledged by the database)"),
        "200": _json(answer, f"the same {id_field} with the same content is already stored"),
        **_errors(_WRITE_ERRORS,
                  **{"409": f"the same {id_field} with different content; the stored one is "
                            "kept"}),
    }
    for code in ("429", "503"):
        responses[code]["headers"] = _retry_after()
    return {
        "summary": summary,
        "security": _WRITE_SECURITY,
        "requestBody": {"required": True, "content": {_JSON: {"schema": body}}},
        "responses": responses,
    }


def _read_operation(summary: str, answer: dict[str, Any], query: type | None,
                    errors: tuple[str, ...] = _READ_ERRORS, *, page: bool = False
                    ) -> dict[str, Any]:
    security = _WRITE_SECURITY + ([{"Basic": []}] if page else [])
    operation: dict[str, Any] = {
        "summary": summary,
        "description": summary + "." + _READ_NOTE,
        "security": security,
        "responses": {"200": answer, **_errors(errors)},
    }
    for code in ("429", "503"):
        if code in operation["responses"]:
            operation["responses"][code]["headers"] = _retry_after()
    if query is not None:
        operation["parameters"] = [{"in": "query", "schema": query}]
    return operation


@functools.cache
def document() -> dict[str, Any]:
    """The OpenAPI 3 document (built once per process)."""
    spec = APISpec(
        title="bench-ingest",
        version=contract.installed_version(),
        openapi_version="3.0.3",
        plugins=[MarshmallowPlugin()],
        info={"description": "Takes benchmark results from runners and stores each exactly once. "
                             "Every error answer has one shape (ErrorAnswer)."},
    )
    spec.components.security_scheme("ApiKey", {"type": "apiKey", "in": "header",
                                               "name": "X-API-Key"})
    spec.components.security_scheme("Bearer", {"type": "http", "scheme": "bearer"})
    spec.components.security_scheme("Basic", {
        "type": "http", "scheme": "basic",
        "description": "status page only, for browsers: any user name, the key as password"})
    for name, schema in (
        ("Result", schemas.ResultSchema),
        ("Failure", schemas.FailureSchema),
        ("Batch", schemas.BatchSchema),
        ("WriteAnswer", schemas.WriteAnswerSchema),
        ("BatchAnswer", schemas.BatchAnswerSchema),
        ("ErrorAnswer", schemas.ErrorAnswerSchema),
        ("StatusAnswer", schemas.StatusAnswerSchema),
        ("StoredResult", schemas.StoredResultSchema),
        ("ResultsPage", schemas.ResultsPageSchema),
        ("ModelSummary", schemas.ModelSummarySchema),
        ("Summary", schemas.SummarySchema),
        ("RunnerConfig", schemas.RunnerConfigSchema),
        ("Catalog", schemas.CatalogSchema),
        ("CatalogAnswer", schemas.CatalogAnswerSchema),
    ):
        spec.components.schema(name, schema=schema)

    spec.path("/ingest", operations={"post": _write_operation(
        "Store one benchmark result", "Result", "WriteAnswer", "result_id")})
    spec.path("/ingest/error", operations={"post": _write_operation(
        "Store one failed attempt", "Failure", "WriteAnswer", "error_id")})
    batch = _write_operation(f"Store up to {contract.MAX_BATCH_ITEMS} results", "Batch",
                             "BatchAnswer", "result_id")
    batch["responses"].pop("201")
    batch["responses"].pop("409")
    batch["responses"]["200"] = _json(
        "BatchAnswer", "one status per item, in order: created, duplicate, conflict, rejected")
    spec.path("/ingest/batch", operations={"post": batch})

    catalog = _write_operation("Store one listing of the provider's models and inference "
                               "profiles", "Catalog", "CatalogAnswer", "model_id")
    for code in ("200", "409"):
        catalog["responses"].pop(code)
    catalog["responses"]["201"] = _json(
        "CatalogAnswer", "stored: each entry upserted into provider_catalog, one "
                         "bench_discovery_runs record appended")
    spec.path("/ingest/catalog", operations={"post": catalog})
    config = _write_operation("The calling runner's worklist", "RunnerConfig", "RunnerConfig",
                              "model_id")
    del config["requestBody"]
    config["description"] = (
        "The models the calling runner (the name of its write key) measures for the provider, "
        "and how. Sent with an ETag; If-None-Match with that ETag is answered 304.")
    config["parameters"] = [
        {"in": "query", "schema": schemas.RunnerConfigQuerySchema},
        {"in": "header", "name": "If-None-Match", "required": False,
         "schema": {"type": "string"},
         "description": "the ETag of the answer the runner holds"},
    ]
    etag = {"ETag": {"description": "a hash of the answer without generated_at",
                     "schema": {"type": "string"}}}
    config["responses"] = {
        "200": {**_json("RunnerConfig", "the worklist"), "headers": etag},
        "304": {"description": "unchanged since the ETag sent in If-None-Match", "headers": etag},
        **_errors(("401", "422", "429", "503", "500"),
                  **{"401": "key missing, wrong, read-only, or in the query string",
                     "422": "an unknown provider or another query parameter"}),
    }
    for code in ("429", "503"):
        config["responses"][code]["headers"] = _retry_after()
    spec.path("/runner-config", operations={"get": config})

    spec.path("/health", operations={"get": {
        "summary": "The process is up (no database call)",
        "responses": {"200": _json("StatusAnswer", "up"), **_errors(("500",))}}})
    ready = {"summary": "The database answers a ping within the time cap",
             "responses": {"200": _json("StatusAnswer", "ready"),
                           **_errors(("503", "500"), **{"503": "database unavailable"})}}
    ready["responses"]["503"]["headers"] = _retry_after()
    spec.path("/ready", operations={"get": ready})
    spec.path("/openapi.json", operations={"get": {
        "summary": "This document",
        "responses": {"200": {"description": "the OpenAPI document",
                              "content": {_JSON: {"schema": {"type": "object"}}}},
                      **_errors(("500",))}}})

    spec.path("/results", operations={"get": _read_operation(
        "Stored results newest first, filtered, a page at a time",
        _json("ResultsPage", "one page; pass `next` as cursor for the one after"),
        schemas.ResultsQuerySchema)})
    spec.path("/summary", operations={"get": _read_operation(
        "One row per provider and model over a window (default 24h)",
        _json("Summary", "the window and one row per model"),
        schemas.WindowQuerySchema)})
    spec.path("/", operations={"get": _read_operation(
        "The status page: a table and a tok/s sparkline per model, and the window's failures",
        {"description": "the status page",
         "content": {"text/html": {"schema": {"type": "string"}}}},
        schemas.WindowQuerySchema, page=True)})
    metrics = _read_operation(
        "Prometheus metrics of every worker",
        {"description": "Prometheus text exposition format",
         "content": {"text/plain": {"schema": {"type": "string"}}}},
        None, ("401", "429", "500"))
    metrics["description"] = ("Prometheus metrics of every worker. Needs a read or write key, "
                              "even with INGEST_PUBLIC_READ=true.")
    spec.path("/metrics", operations={"get": metrics})
    return _as_strict_as_the_server(spec.to_dict())


# The server's own UUID check (schemas.UUIDString); any case, stored lower.
_UUID_PATTERN = r"^[0-9A-Fa-f]{8}-([0-9A-Fa-f]{4}-){3}[0-9A-Fa-f]{12}$"
_ID_FIELDS = ("result_id", "error_id")
_UUID_SCHEMAS = ("Result", "Failure", "WriteAnswer")


def _as_strict_as_the_server(document: dict[str, Any]) -> dict[str, Any]:
    """What marshmallow's fields do not say: ids are UUIDs, integers fit 64 bits.

    Without these, a schema-valid request could be refused (422, or 400 for an integer
    past 64 bits), which is the document being looser than the server.
    """
    for schema_name, schema in document["components"]["schemas"].items():
        for name, prop in schema.get("properties", {}).items():
            # Not on a rejected batch item, which echoes the id as sent, nor on a stored
            # result, which shows what an older writer stored.
            if (name in _ID_FIELDS and prop.get("type") == "string"
                    and schema_name in _UUID_SCHEMAS):
                prop.update(format="uuid", pattern=_UUID_PATTERN)
            if prop.get("type") == "integer":
                prop["format"] = "int64"
                prop.setdefault("minimum", jsonbody.INT64_MIN)
                prop.setdefault("maximum", jsonbody.INT64_MAX)
    return document
