"""The wire server of the integration tests (the session's mongo-java-server, or $MONGODB_URI), re-exported; and a
server of a module's own for the scenarios that make database outages."""

import os

import pytest

from tests.harness import load_devdb
from tests.integration.conftest import sync_db, wire_uri  # noqa: F401


@pytest.fixture(scope="module")
def own_wire_server():
    """A wire server of the module's own (scripts/devdb.py), for scenarios that stop it and start it again on the same
    port (a database outage); skipped where devdb cannot start one, failed with COLLECTOR_REQUIRE_WIRE=1."""
    try:
        server = load_devdb().start_server(use_env=False)
    except Exception as exc:
        reason = f"NO OWN SERVER: the scenario needs a server of its own from scripts/devdb.py ({exc})"
        if os.environ.get("COLLECTOR_REQUIRE_WIRE") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    try:
        yield server
    finally:
        server.stop()
