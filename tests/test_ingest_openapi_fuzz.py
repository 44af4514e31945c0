"""Schemathesis over GET /openapi.json: the server keeps the document's promises.

Every operation is called with generated requests (valid ones, bounded in number),
in-process on the test's own database, with a write key. Any 5xx, a status the
document does not list, or an answer that does not match its documented schema
fails the test, and so does a request the document calls valid that the server
refuses as invalid (docs/contract.md section 2).
"""

from __future__ import annotations

from datetime import datetime

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    positive_data_acceptance,
    response_schema_conformance,
    status_code_conformance,
)

from ingest_app import openapi
from ingest_app.timestamps import parse_rfc3339
from tests.support.ingest import TEST_KEYS

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance]
# On the read routes a query the document calls valid must not be refused as invalid
# (422): the document is as strict as the server there. Write bodies carry rules across
# fields (ttft_available goes with time_to_first_token, timestamps within the sender's
# plausible clock) that JSON Schema cannot state; their 422s are documented and tested
# field by field in test_ingest_input.py.
READ_CHECKS = [*CHECKS, positive_data_acceptance]


# The document GET /openapi.json serves (test_ingest_openapi.py checks they are one).
schema = schemathesis.openapi.from_dict(openapi.document())


def _moment(text: object) -> datetime | None:
    try:
        return parse_rfc3339(str(text))
    except ValueError:
        return None


@pytest.mark.timeout(300)
@schema.parametrize()
@settings(max_examples=60, deadline=None, derandomize=True, database=None,
          suppress_health_check=list(HealthCheck))
def test_every_generated_request_gets_a_documented_answer(case, app):
    query = case.query or {}
    # A cursor is valid only as handed out (signed), and since < until relates two
    # parameters: both are in the document's descriptions, beyond what a schema can state,
    # and their 422s are tested in test_read_api.py.
    query.pop("cursor", None)
    since, until = _moment(query.get("since")), _moment(query.get("until"))
    if since and until and since >= until:
        query.pop("until")
    checks = READ_CHECKS if case.method == "GET" else CHECKS
    case.call_and_validate(app=app, headers={"X-API-Key": TEST_KEYS["runner-a"]},
                           checks=checks)
