"""The wire server: $MONGODB_URI when set, else mongo-java-server started by scripts/devdb.py for the session.

When no server can be had the tests skip with one loud reason, unless COLLECTOR_REQUIRE_WIRE=1
(set by .ci/run), where that is a failure: CI never counts a skipped storage test as passing.
"""

from __future__ import annotations

import contextlib
import os
import uuid

import pytest

from tests.harness import load_devdb


@pytest.fixture(scope="session")
def wire_uri():
    if os.environ.get("MONGODB_URI"):
        yield os.environ["MONGODB_URI"]
        return
    try:
        server = load_devdb().start_server()
    except Exception as exc:
        reason = f"NO WIRE SERVER: integration tests need MONGODB_URI or the test database of scripts/devdb.py ({exc})"
        if os.environ.get("COLLECTOR_REQUIRE_WIRE") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    try:
        yield server.uri
    finally:
        server.stop()


@contextlib.asynccontextmanager
async def fresh_database(uri: str):
    """A database of its own on the wire server, dropped afterwards."""
    from pymongo import AsyncMongoClient

    client = AsyncMongoClient(uri, tz_aware=True, serverSelectionTimeoutMS=10_000)
    name = f"collector_it_{uuid.uuid4().hex[:10]}"
    try:
        yield client[name]
    finally:
        await client.drop_database(name)
        await client.close()


@pytest.fixture
async def wire_db(wire_uri):
    async with fresh_database(wire_uri) as db:
        yield db


@pytest.fixture(params=["mongomock", "wire"])
async def any_db(request):
    """Storage tests run on both: mongomock-motor and the real wire server."""
    if request.param == "mongomock":
        from mongomock_motor import AsyncMongoMockClient

        yield AsyncMongoMockClient(tz_aware=True)["collector_test"]
    else:
        async with fresh_database(request.getfixturevalue("wire_uri")) as db:
            yield db


@pytest.fixture
def sync_db(wire_uri):
    """A database of its own for tests that drive daemon processes and read back synchronously."""
    from pymongo import MongoClient

    client = MongoClient(wire_uri, tz_aware=True)
    name = f"collector_it_{uuid.uuid4().hex[:10]}"
    try:
        yield client[name]
    finally:
        client.drop_database(name)
        client.close()
