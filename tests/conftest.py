"""Shared fixtures: one MongoDB-protocol server for the whole test run, a database per test.

Fixtures of each part live in tests/support/ and are registered here.
"""

from __future__ import annotations

import contextlib
import os
import uuid

import pymongo
import pytest

from tests.support.mongo import MongoServer

pytest_plugins = ["tests.support.ingest", "tests.support.simulator", "tests.support.runner"]


@pytest.fixture(autouse=True)
def _clean_aws_env(monkeypatch):
    """No test ever sees the machine's AWS settings or talks to real AWS."""
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)


@pytest.fixture(scope="session")
def mongo_server(tmp_path_factory):
    """The nx-27017 server of this test run, or None when TEST_MONGODB_URI names a real one."""
    if os.environ.get("TEST_MONGODB_URI"):
        yield None
        return
    server = MongoServer(tmp_path_factory.mktemp("mongo"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def mongo_uri(mongo_server) -> str:
    """Where the test database server listens."""
    return os.environ.get("TEST_MONGODB_URI") or mongo_server.uri


@pytest.fixture
def mongo_db_name() -> str:
    """A database name no other test uses."""
    return f"t_{uuid.uuid4().hex[:12]}"


@pytest.fixture
def mongo_db(mongo_uri, mongo_db_name):
    """A pymongo handle on this test's own database, dropped afterwards."""
    client = pymongo.MongoClient(mongo_uri, serverSelectionTimeoutMS=5000)
    yield client[mongo_db_name]
    client.drop_database(mongo_db_name)
    client.close()


@pytest.fixture
def killable_mongo(tmp_path):
    """A private nx-27017 server a test may kill, freeze and restart."""
    if os.environ.get("TEST_MONGODB_URI"):
        pytest.skip("kills its own server; not run against TEST_MONGODB_URI")
    server = MongoServer(tmp_path / "mongo")
    server.start()
    yield server
    with contextlib.suppress(AssertionError, ProcessLookupError):
        server.thaw()
    server.stop()
