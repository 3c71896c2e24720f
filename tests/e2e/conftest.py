from tests.integration.conftest import sync_db, wire_uri  # noqa: F401  (the same wire server)
