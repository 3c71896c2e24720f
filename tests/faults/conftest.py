"""The wire server of the integration tests (the session's mongo-java-server, or $MONGODB_URI), re-exported."""

from tests.integration.conftest import sync_db, wire_uri  # noqa: F401
