"""A 403 that is no rate limit is a permission error: `forbidden`, the network disabled with the reason at once
(RFC 9110 15.5.4: "the client SHOULD NOT automatically repeat the request with the same credentials"), never
retried as an outage; a 403 that is a limit stays a rate limit (tests/unit/test_github.py SECONDARY cases,
tests/unit/test_youtube.py quotaExceeded / rateLimitExceeded)."""
from __future__ import annotations

import random
from datetime import UTC, datetime

import httpx
import pytest

from collector.config import Schedule
from collector.states import PERMANENT_KINDS, TRANSIENT_KINDS, Kind, Outcome, State, transition
from tests.unit.test_spotify import engine, page  # noqa: F401  (the Spotify engine fixture)

NOW = datetime(2026, 6, 1, tzinfo=UTC)


@pytest.mark.parametrize("mode", ["initial", "normal"])
def test_state_row_permanent_403_not_a_limit_disables_as_forbidden(mode):
    """collector/states.py: | permanent | 403, not a limit | same | never | same | yes, forbidden |"""
    outcome = Outcome(Kind.PERMANENT, error="forbidden", status=403,
                      message='HTTP 403: {"message": "Resource not accessible by integration"}')
    t = transition(State(mode, errors=2), outcome, NOW, Schedule(), random.Random(1))
    assert t.mode == mode and t.scheduled_to is None and t.errors == 2
    assert t.disabled and not t.unauthorized and not t.success
    assert t.reason.startswith("forbidden: HTTP 403") and t.error is not None and t.error["kind"] == "forbidden"


def test_forbidden_is_a_permanent_kind():
    assert "forbidden" in PERMANENT_KINDS and "forbidden" not in TRANSIENT_KINDS


async def test_spotify_403_is_forbidden(engine, api):  # noqa: F811
    """Spotify's OpenAPI (sonallux/spotify-web-api), GET /me/tracks 403: "Bad OAuth request (wrong consumer key,
    bad nonce, expired timestamp...). Unfortunately, re-authenticating the user won't help here." (also a user
    not added to a Development Mode app)."""
    page(api, 0).mock(return_value=httpx.Response(403, json={"error": {
        "status": 403, "message": "User not registered in the Developer Dashboard"}}))
    await engine.add()

    result = await engine.run("initial")

    assert result.outcome.kind == "permanent" and result.outcome.error == "forbidden"
    network = await engine.network()
    assert network["disabled"] is True and not network["unauthorized"] and network["scheduledTo"] is None
    assert "User not registered" in network["disabledReason"] and network["errors"] == 0
