"""OAuth2 refresh (RFC 6749 section 6) through the engine: on a 401, a network that carries a
refresh token gets a new access token once from the configured token endpoint, stores it at once
and retries; without one (or without a token endpoint) it becomes unauthorized as before."""

from __future__ import annotations

import base64
import json
from typing import Any
from urllib.parse import parse_qs

import httpx
import pytest

from tests.conftest import fixture_json, make_settings
from tests.harness import engine_for

API = "https://api.github.test"
STARRED = f"{API}/user/starred"
TOKEN_URL = "https://auth.example.test/oauth/token"
OLD, NEW, REFRESH, ROTATED = "gho_old_access_1111", "gho_new_access_2222", "ghr_refresh_3333", "ghr_rotated_4444"
SECRET = "client-secret-5555"
pytestmark = pytest.mark.recorded  # every test is served init.json, a page Likeastore recorded (tests/conftest.py)


def recorded_page() -> list[dict[str, Any]]:
    return fixture_json("github.connector.init.json")


def oauth_settings(token_url: str | None = TOKEN_URL):
    github = {"base_url": API, "client_id": "app-id", "client_secret": SECRET}
    if token_url:
        github["token_url"] = token_url
    return make_settings(services={"github": github})


@pytest.fixture
async def engine(mock_db, clock):
    async for engine in engine_for("github", OLD, mock_db, oauth_settings(), clock):
        yield engine


@pytest.fixture
async def plain_engine(mock_db, clock):
    async for engine in engine_for("github", OLD, mock_db, oauth_settings(token_url=None), clock):
        yield engine


def starred(api, *, accept: str):
    """401 for any token but `accept`, the page for that one."""
    page = recorded_page()

    def reply(request: httpx.Request) -> httpx.Response:
        if request.headers.get("Authorization") == f"Bearer {accept}":
            return httpx.Response(200, json=page)
        return httpx.Response(401, json={"message": "Bad credentials"})

    return api.get(STARRED).mock(side_effect=reply)


async def test_a_401_refreshes_the_token_stores_it_and_retries(engine, api, caplog):
    route = starred(api, accept=NEW)
    token = api.post(TOKEN_URL).mock(return_value=httpx.Response(200, json={
        "access_token": NEW, "token_type": "bearer", "expires_in": 28800, "refresh_token": ROTATED}))
    await engine.add(refreshToken=REFRESH)

    result = await engine.run()

    assert result.outcome.kind.value == "page" and result.new_items == len(recorded_page())
    assert route.call_count == 2 and token.call_count == 1
    sent = token.calls[0].request
    assert parse_qs(sent.content.decode()) == {"grant_type": ["refresh_token"], "refresh_token": [REFRESH]}
    assert sent.headers["Authorization"] == "Basic " + base64.b64encode(f"app-id:{SECRET}".encode()).decode()
    assert route.calls[1].request.headers["Authorization"] == f"Bearer {NEW}"
    doc = await engine.network()
    assert doc["accessToken"] == NEW and doc["refreshToken"] == ROTATED
    assert doc["tokenRefreshedAt"] == engine.clock.now
    assert (doc["tokenExpiresAt"] - engine.clock.now).total_seconds() == 28800
    assert not doc.get("disabled") and doc["errors"] == 0
    assert len(await engine.item_ids()) == len(recorded_page())


async def test_a_refresh_that_keeps_the_refresh_token_stores_only_the_access_token(engine, api):
    starred(api, accept=NEW)
    api.post(TOKEN_URL).mock(return_value=httpx.Response(200, json={"access_token": NEW, "token_type": "bearer"}))
    await engine.add(refreshToken=REFRESH)
    await engine.run()
    doc = await engine.network()
    assert doc["accessToken"] == NEW and doc["refreshToken"] == REFRESH and "tokenExpiresAt" not in doc


async def test_a_refused_refresh_makes_the_network_unauthorized(engine, api):
    route = starred(api, accept=NEW)
    token = api.post(TOKEN_URL).mock(return_value=httpx.Response(400, json={
        "error": "invalid_grant", "error_description": "The refresh token is invalid"}))
    await engine.add(refreshToken=REFRESH)

    result = await engine.confirm_unauthorized()

    assert result.outcome.kind.value == "unauthorized"
    assert route.call_count == 2 and token.call_count == 2  # the recheck refreshes again before it confirms
    doc = await engine.network()
    assert doc["disabled"] is True and doc["unauthorized"] is True
    assert "token refresh refused: invalid_grant" in doc["disabledReason"]
    assert doc["accessToken"] == OLD and doc["refreshToken"] == REFRESH  # nothing overwritten


async def test_a_refreshed_token_refused_too_is_tried_once(engine, api):
    route = starred(api, accept="nobody")
    token = api.post(TOKEN_URL).mock(return_value=httpx.Response(200, json={"access_token": NEW}))
    await engine.add(refreshToken=REFRESH)

    result = await engine.run()

    assert result.outcome.kind.value == "unauthorized"
    assert route.call_count == 2 and token.call_count == 1
    doc = await engine.network()
    assert "refreshed token was refused too" in doc["lastError"]["message"] and doc["unauthorized"]
    assert doc["accessToken"] == NEW  # stored before the retry: it is the newest the provider gave


async def test_a_token_endpoint_outage_is_transient(engine, api):
    starred(api, accept=NEW)
    api.post(TOKEN_URL).mock(return_value=httpx.Response(503, text="unavailable"))
    await engine.add(refreshToken=REFRESH)

    result = await engine.run()

    assert result.outcome.kind.value == "transient"
    doc = await engine.network()
    assert doc["errors"] == 1 and not doc.get("disabled")
    assert doc["lastError"]["kind"] == "bad_response"
    assert "token endpoint answered HTTP 503" in doc["lastError"]["message"]
    assert doc["accessToken"] == OLD


async def test_without_a_refresh_token_a_401_is_unauthorized_and_no_refresh_is_tried(engine, api):
    route = starred(api, accept=NEW)
    await engine.add()

    result = await engine.run()

    assert result.outcome.kind.value == "unauthorized"
    assert route.call_count == 1 and len(api.calls) == 1  # the token endpoint (unmocked) was not called


async def test_without_a_token_endpoint_a_401_is_unauthorized(plain_engine, api):
    route = starred(api, accept=NEW)
    await plain_engine.add(refreshToken=REFRESH)

    result = await plain_engine.run()

    assert result.outcome.kind.value == "unauthorized" and route.call_count == 1
    assert (await plain_engine.network())["refreshToken"] == REFRESH


async def test_no_token_or_secret_in_what_the_run_records_or_logs(engine, api, capsys):
    from collector import logs

    logs.configure("json", "debug")
    starred(api, accept="nobody")
    api.post(TOKEN_URL).mock(return_value=httpx.Response(200, json={"access_token": NEW, "refresh_token": ROTATED}))
    await engine.add(refreshToken=REFRESH)
    await engine.run()
    doc = await engine.network()
    recorded = json.dumps({k: doc.get(k) for k in ("lastError", "lastOutcome", "disabledReason")}, default=str)
    out = capsys.readouterr()
    for secret in (OLD, NEW, REFRESH, ROTATED, SECRET):
        assert secret not in recorded
        assert secret not in out.out + out.err
    assert "access token refreshed" in out.out + out.err
