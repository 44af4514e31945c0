"""Which database errors keep a record waiting (503) and which are bugs (500)."""

import pytest
from pymongo.errors import (
    AutoReconnect,
    BulkWriteError,
    DuplicateKeyError,
    NetworkTimeout,
    OperationFailure,
    ServerSelectionTimeoutError,
    WriteConcernError,
    WTimeoutError,
)

from ingest_app.db import is_outage

_WC = {"code": 100, "errmsg": "waiting for replication timed out"}


@pytest.mark.parametrize("exc", [
    ServerSelectionTimeoutError("no servers"),
    AutoReconnect("connection reset"),
    NetworkTimeout("timed out"),
    WTimeoutError("replication timed out", 64, {}),
    WriteConcernError("not enough data-bearing nodes", 100, {}),
    BulkWriteError({"writeErrors": [], "writeConcernErrors": [_WC], "nInserted": 3}),
    OperationFailure("Authentication failed.", 18),
    OperationFailure("not authorized on llm-bench to execute command insert", 13),
], ids=lambda e: type(e).__name__ + str(getattr(e, "code", "")))
def test_unreachable_slow_or_refusing_database_is_an_outage_the_runner_retries(exc):
    assert is_outage(exc)


@pytest.mark.parametrize("exc", [
    DuplicateKeyError("E11000 duplicate key", 11000),
    OperationFailure("BadValue", 2),
    BulkWriteError({"writeErrors": [{"index": 0, "code": 2, "errmsg": "bad"}],
                    "writeConcernErrors": []}),
], ids=lambda e: type(e).__name__ + str(getattr(e, "code", "")))
def test_an_error_about_the_request_itself_is_not_an_outage(exc):
    assert not is_outage(exc)
