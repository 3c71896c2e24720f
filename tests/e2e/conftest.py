from tests.integration.conftest import wire_uri  # noqa: F401  (the same wire server)
