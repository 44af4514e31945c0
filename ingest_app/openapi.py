"""The OpenAPI document of the write API, generated from the marshmallow schemas."""

from __future__ import annotations

import functools
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin

import bench_contract as contract

from . import schemas

_JSON = "application/json"


def _error(description: str) -> dict[str, Any]:
    return {"description": description,
            "content": {_JSON: {"schema": "ErrorAnswer"}}}


def _write_operation(summary: str, body: str, answer: str, id_field: str) -> dict[str, Any]:
    return {
        "summary": summary,
        "security": [{"ApiKey": []}, {"Bearer": []}],
        "requestBody": {"required": True, "content": {_JSON: {"schema": body}}},
        "responses": {
            "201": {"description": "stored (acknowledged by the database)",
                    "content": {_JSON: {"schema": answer}}},
            "200": {"description": f"the same {id_field} with the same content is already stored",
                    "content": {_JSON: {"schema": answer}}},
            "400": _error("not JSON, not an object, invalid UTF-8, duplicate keys, "
                          "NaN/Infinity/out-of-range numbers"),
            "401": _error("key missing, wrong, or in the query string"),
            "409": _error(f"the same {id_field} with different content; the stored one is kept"),
            "413": _error(f"body over the limit ({contract.MAX_BODY_BYTES} bytes by default)"),
            "415": _error("not application/json, or a Content-Encoding"),
            "422": _error("invalid or unknown fields, each named in details.fields"),
            "503": _error("database unavailable or slow; retry after Retry-After seconds"),
        },
    }


def _version() -> str:
    try:
        return version("bench-ingest")
    except PackageNotFoundError:  # a source tree that was never installed
        return "0.0.0+unknown"


@functools.cache
def document() -> dict[str, Any]:
    """The OpenAPI 3 document (built once per process)."""
    spec = APISpec(
        title="bench-ingest",
        version=_version(),
        openapi_version="3.0.3",
        plugins=[MarshmallowPlugin()],
        info={"description": "Takes benchmark results from runners and stores each exactly once."},
    )
    spec.components.security_scheme("ApiKey", {"type": "apiKey", "in": "header",
                                               "name": "X-API-Key"})
    spec.components.security_scheme("Bearer", {"type": "http", "scheme": "bearer"})
    for name, schema in (
        ("Result", schemas.ResultSchema),
        ("Failure", schemas.FailureSchema),
        ("Batch", schemas.BatchSchema),
        ("WriteAnswer", schemas.WriteAnswerSchema),
        ("BatchAnswer", schemas.BatchAnswerSchema),
        ("ErrorAnswer", schemas.ErrorAnswerSchema),
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
    batch["responses"]["200"] = {
        "description": "one status per item, in order: created, duplicate, conflict, rejected",
        "content": {_JSON: {"schema": "BatchAnswer"}},
    }
    spec.path("/ingest/batch", operations={"post": batch})
    spec.path("/health", operations={"get": {
        "summary": "The process is up", "responses": {"200": {"description": "up"}}}})
    spec.path("/ready", operations={"get": {
        "summary": "The database answers a ping",
        "responses": {"200": {"description": "ready"},
                      "503": _error("database unavailable")}}})
    return spec.to_dict()
