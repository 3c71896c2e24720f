"""Bluesky session refresh through the engine: an expired access JWT (the PDS's 400 ExpiredToken) makes the engine
call com.atproto.server.refreshSession on the network's PDS with the refresh JWT as the bearer token, store the
rotated pair and retry; refusals make the network unauthorized, junk is transient. Then against the sandbox API:
a network whose access JWT keeps expiring keeps collecting."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from collector.connectors.bluesky import BlueskyLikes, lifetime

from collector.sandbox import Sandbox, Server, tokens
from collector.sandbox.apis.bluesky import handle as sandbox_handle
from tests.conftest import make_settings
from tests.unit.test_bluesky import API, DID, PAGE1, body, limits, make_engine, page

REFRESH_URL = f"{API}/xrpc/com.atproto.server.refreshSession"
IAT = 1764068400


def b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def jwt(scope: str, lifetime_s: int | None = 7200, sub: str = DID, **extra: Any) -> str:
    claims: dict[str, Any] = {"scope": scope, "sub": sub, "iat": IAT, **extra}
    if lifetime_s is not None:
        claims["exp"] = IAT + lifetime_s
    return ".".join([b64({"typ": "at+jwt", "alg": "ES256K"}), b64(claims), "c2lnbmF0dXJlLW5vdC1jaGVja2Vk"])


OLD = jwt("com.atproto.appPass", jti="old")
NEW = jwt("com.atproto.appPass", jti="new")
REFRESH = jwt("com.atproto.refresh", 90 * 86400, jti="refresh-1")
ROTATED = jwt("com.atproto.refresh", 90 * 86400, jti="refresh-2")


@pytest.fixture
def settings():
    # no token_url, no client_id: none needed; respx mocks httpx's own transport (aiohttp: the real-server tests below)
    return make_settings(http={"transport": "httpx"}, services={"bluesky": {"base_url": API}})


@pytest.fixture
async def engine(mock_db, settings, clock):
    async for engine in make_engine(mock_db, settings, clock, token=OLD):
        yield engine


def likes_for(api, accept: str):
    """400 ExpiredToken (as the PDS answers an expired access JWT) for any token but `accept`."""

    def reply(request: httpx.Request) -> httpx.Response:
        if request.headers.get("Authorization") == f"Bearer {accept}":
            return httpx.Response(200, json=body(PAGE1, "1764000000000::c1"), headers=limits())
        return httpx.Response(400, json={"error": "ExpiredToken", "message": "Token has expired"}, headers=limits())

    return page(api).mock(side_effect=reply)


def session(access: str = NEW, refresh: str = ROTATED) -> dict[str, Any]:
    return {"accessJwt": access, "refreshJwt": refresh, "handle": "alice.bsky.social", "did": DID}


async def test_an_expired_access_jwt_refreshes_the_session_on_the_pds_and_retries(engine, api, clock):
    likes = likes_for(api, accept=NEW)
    refresh = api.post(REFRESH_URL).respond(200, json=session())
    await engine.add(refreshToken=REFRESH)

    result = await engine.run("initial")

    assert result.outcome.kind.value == "page" and result.new_items == len(PAGE1)
    assert likes.call_count == 2 and refresh.call_count == 1
    sent = refresh.calls[0].request
    assert sent.method == "POST" and str(sent.url) == REFRESH_URL
    assert sent.headers["Authorization"] == f"Bearer {REFRESH}" and sent.content == b""
    assert "content-type" not in sent.headers  # a procedure without input: no body, no form
    assert likes.calls[1].request.headers["Authorization"] == f"Bearer {NEW}"
    doc = await engine.network()
    assert doc["accessToken"] == NEW and doc["refreshToken"] == ROTATED
    assert (doc["tokenExpiresAt"] - clock.now).total_seconds() == 7200  # the new access JWT's exp - iat
    assert not doc.get("disabled") and not doc.get("unauthorized")
    recorded = json.dumps({k: v for k, v in doc.items() if k not in ("accessToken", "refreshToken",
                                                                      "previousRefreshToken")}, default=str)
    for secret in (OLD, NEW, REFRESH, ROTATED):
        assert secret not in recorded


@pytest.mark.parametrize("status, error, message", [
    (400, "ExpiredToken", "Token has been revoked"),  # a refresh JWT rotated out (past its grace period)
    (400, "ExpiredToken", "Token has expired"),  # a refresh JWT past its 90 days
    (400, "InvalidToken", "Token could not be verified"),
    (401, "AccountTakedown", "Account has been taken down"),
])
async def test_a_refused_refresh_makes_the_network_unauthorized(engine, api, status, error, message):
    likes = likes_for(api, accept=NEW)
    refresh = api.post(REFRESH_URL).respond(status, json={"error": error, "message": message})
    await engine.add(refreshToken=REFRESH)

    result = await engine.run("initial")

    assert result.outcome.kind.value == "unauthorized"
    assert likes.call_count == 1 and refresh.call_count == 1
    doc = await engine.network()
    assert doc["lastError"]["kind"] == "unauthorized"
    assert f"session refresh refused: HTTP {status} {error}" in doc["lastError"]["message"]
    assert doc["accessToken"] == OLD and doc["refreshToken"] == REFRESH  # nothing overwritten


@pytest.mark.parametrize("reply", [
    httpx.Response(200, text="<html>Bad Gateway</html>"),
    httpx.Response(200, json=[session()]),
    httpx.Response(200, json={"accessJwt": 5, "refreshJwt": ROTATED, "handle": "a.bsky.social", "did": DID}),
    httpx.Response(200, json={"accessJwt": NEW, "handle": "alice.bsky.social", "did": DID}),  # no refreshJwt
    httpx.Response(500, json={"error": "InternalServerError", "message": "Internal Server Error"}),
    httpx.Response(502, text="<html>Bad Gateway</html>"),
    httpx.Response(400, json={"error": "InvalidRequest", "message": "something else"}),
    httpx.Response(429, json={"error": "RateLimitExceeded", "message": "Rate Limit Exceeded"}),
])
async def test_a_junk_refresh_answer_is_transient_and_changes_nothing(engine, api, reply):
    likes_for(api, accept=NEW)
    api.post(REFRESH_URL).mock(return_value=reply)
    await engine.add(refreshToken=REFRESH)

    result = await engine.run("initial")

    assert result.outcome.kind.value == "transient"
    doc = await engine.network()
    assert doc["lastError"]["kind"] == "bad_response" and not doc.get("disabled")
    assert doc["accessToken"] == OLD and doc["refreshToken"] == REFRESH


async def test_without_a_refresh_jwt_an_expired_access_jwt_is_unauthorized_and_nothing_is_refreshed(engine, api):
    likes = likes_for(api, accept=NEW)
    await engine.add()

    result = await engine.run("initial")

    assert result.outcome.kind.value == "unauthorized" and likes.call_count == 1
    assert len(api.calls) == 1


def test_parse_refresh_reads_the_lexicon_output(settings):
    connector = BlueskyLikes(settings.service("bluesky"))
    got = connector.parse_refresh(httpx.Response(200, json={**session(), "didDoc": {}, "status": "active"}))
    assert got.access_token == NEW and got.refresh_token == ROTATED and got.expires_in == 7200
    assert lifetime(jwt("com.atproto.access", None)) is None  # no exp
    assert lifetime(jwt("com.atproto.access", -5)) is None  # nonsense
    assert lifetime("not-a-jwt") is None
    assert connector.parse_refresh(httpx.Response(200, json=session(access="opaque"))).expires_in is None


# -- against the sandbox API over HTTP ---------------------------------------------------------------


@pytest.fixture(scope="module")
def server():
    server = Server(Sandbox(page_cap=4)).start()
    yield server
    server.stop()


async def test_a_network_whose_access_jwt_keeps_expiring_keeps_collecting(server, mock_db, clock):
    sandbox = server.sandbox
    token, rt = f"bsky-expiring-{id(mock_db)}", f"bsky-refresh-{id(mock_db)}"
    user = sandbox.add_user("bluesky", token, 10, name="sandbox-expiring", refresh_token=rt, access_ttl=60)
    settings = make_settings(services={"bluesky": {"base_url": server.url}})
    async for engine in make_engine(mock_db, settings, clock, token=token):
        clock.now = datetime.now(UTC).replace(microsecond=0)
        await engine.add(refreshToken=rt, options={"actor": sandbox_handle(user)})
        runs = 0
        while (await engine.network())["mode"] == "initial":
            tokens.expire(sandbox, user)  # every run meets an expired access JWT
            result = await engine.run_when_due("initial") if runs else await engine.run("initial")
            doc = await engine.network()
            assert result.outcome.kind.value == "page", doc.get("lastError")
            assert doc["accessToken"] == user.session.access and doc["refreshToken"] == user.session.refresh
            runs += 1
            assert runs < 10
        assert runs == 4 and len(await engine.items()) == 10 == sandbox.stats()["unique_served"][token]
        sandbox.add_items(token, 2)
        tokens.expire(sandbox, user)
        result = await engine.run_when_due("normal")
        assert result.new_items == 2
        stats = sandbox.stats()
        assert stats["tokens"][token] == {"refreshes": 5, "refresh_reuse": 0}
        assert stats["stale_refused"] >= 5
        doc = await engine.network()
        assert not doc.get("disabled") and not doc.get("unauthorized") and doc["mode"] == "normal"
        assert (doc["tokenExpiresAt"] - clock.now).total_seconds() == 60  # the sandbox JWT's exp - iat
    assert not any(secret in target for target in sandbox.log for secret in (token, rt))


async def test_a_session_rotated_out_at_the_sandbox_is_unauthorized(server, mock_db, clock):
    sandbox = server.sandbox
    token, rt = f"bsky-rotated-{id(mock_db)}", f"bsky-rotated-rt-{id(mock_db)}"
    user = sandbox.add_user("bluesky", token, 3, name="sandbox-rotated", refresh_token=rt, access_ttl=60)
    assert not isinstance(tokens.refresh(sandbox, rt), str)  # another client refreshed first: rt is rotated out
    settings = make_settings(services={"bluesky": {"base_url": server.url}})
    async for engine in make_engine(mock_db, settings, clock, token=token):
        await engine.add(refreshToken=rt, options={"actor": sandbox_handle(user)})
        result = await engine.run("initial")
        assert result.outcome.kind.value == "unauthorized"
        doc = await engine.network()
        assert "ExpiredToken" in doc["lastError"]["message"] and doc["refreshToken"] == rt
    assert sandbox.stats()["tokens"][token]["refresh_reuse"] == 1
