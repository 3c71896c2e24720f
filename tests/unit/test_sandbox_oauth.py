"""The sandbox's expiring, rotating tokens (collector/sandbox/tokens.py), its token endpoint (POST /oauth/token),
Bluesky's refreshSession and the revocation storm, over real HTTP; then the engine refreshing a GitHub network
through the sandbox's token endpoint."""

from __future__ import annotations

import base64
import json
import time
import uuid
from typing import Any

import httpx
import pytest

from collector.sandbox import tokens
from collector.sandbox.apis.bluesky import did, handle
from tests.conftest import make_settings
from tests.harness import engine_for


@pytest.fixture
def http(sandbox_server):
    with httpx.Client(base_url=sandbox_server.url, timeout=10) as client:
        yield client


def name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def starred(http: httpx.Client, token: str) -> httpx.Response:
    return http.get("/user/starred", headers={"Authorization": f"Bearer {token}"})


def refresh(http: httpx.Client, token: str, **extra: str) -> httpx.Response:
    return http.post("/oauth/token", data={"grant_type": "refresh_token", "refresh_token": token, **extra})


def user(sandbox_server, service: str = "github", **fields: Any) -> tuple[str, str]:
    token, rt = name(f"at-{service}"), name(f"rt-{service}")
    sandbox_server.sandbox.add_user(service, token, 5, name=token, refresh_token=rt, **fields)
    return token, rt


def claims(jwt: str) -> dict[str, Any]:
    part = jwt.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))


# -- the token endpoint ------------------------------------------------------------------------


def test_strict_rotation_gives_a_new_pair_and_the_old_refresh_token_is_a_counted_reuse(sandbox_server, http):
    token, rt = user(sandbox_server, access_ttl=600, rotation="strict")
    assert starred(http, token).status_code == 200

    got = refresh(http, rt, client_id="app")
    assert got.status_code == 200 and got.headers["cache-control"] == "no-store"
    body = got.json()
    assert body.keys() == {"access_token", "token_type", "expires_in", "refresh_token"}
    assert body["token_type"] == "bearer" and body["expires_in"] == 600 and body["refresh_token"] != rt

    assert starred(http, token).status_code == 401  # superseded, in GitHub's shape
    assert starred(http, token).json()["message"] == "Bad credentials"
    assert starred(http, body["access_token"]).status_code == 200
    before = sandbox_server.sandbox.stats()["refresh_reuse"]
    again = refresh(http, rt)
    assert again.status_code == 400 and again.json()["error"] == "invalid_grant"
    stats = sandbox_server.sandbox.stats()
    assert stats["refresh_reuse"] == before + 1
    assert stats["tokens"][token] == {"refreshes": 1, "refresh_reuse": 1}
    # the user is still the one it was created as: counters and items stay under its own token
    assert stats["by_token"][token] == 4  # two pages served, two refusals
    assert stats["served"][token] == 6 and body["access_token"] not in stats["by_token"]
    assert refresh(http, body["refresh_token"]).status_code == 200


def test_without_rotation_the_refresh_token_is_kept(sandbox_server, http):
    _, rt = user(sandbox_server, access_ttl=600, rotation="none")
    first = refresh(http, rt).json()
    second = refresh(http, rt).json()
    assert "refresh_token" not in first and "refresh_token" not in second
    assert first["access_token"] != second["access_token"]
    assert starred(http, first["access_token"]).status_code == 401  # superseded by the second
    assert starred(http, second["access_token"]).status_code == 200


def test_on_use_rotation_keeps_the_previous_pair_until_the_new_access_token_is_used(sandbox_server, http):
    token, rt = user(sandbox_server, access_ttl=600, rotation="on_use")
    pair = refresh(http, rt).json()
    assert starred(http, token).status_code == 200  # the previous access token still works...
    assert starred(http, pair["access_token"]).status_code == 200  # ...until the new one is used
    assert starred(http, token).status_code == 401
    before = sandbox_server.sandbox.stats()["refresh_reuse"]
    assert refresh(http, rt).json()["error"] == "invalid_grant"
    assert sandbox_server.sandbox.stats()["refresh_reuse"] == before + 1
    assert refresh(http, pair["refresh_token"]).status_code == 200


def test_on_use_rotation_forgives_a_pair_that_was_never_used(sandbox_server, http):
    _, rt = user(sandbox_server, access_ttl=600, rotation="on_use")
    lost = refresh(http, rt).json()  # say the client crashed before storing it
    again = refresh(http, rt).json()
    assert again["refresh_token"] != lost["refresh_token"]
    assert starred(http, again["access_token"]).status_code == 200
    assert refresh(http, lost["refresh_token"]).status_code == 400  # the unused one went away


def test_grace_rotation_gives_the_same_successor_within_the_grace_period(sandbox_server, http):
    _, rt = user(sandbox_server, access_ttl=600, rotation="grace", grace=0.5)
    first = refresh(http, rt).json()
    again = refresh(http, rt).json()
    assert again["refresh_token"] == first["refresh_token"] and again["access_token"] != first["access_token"]
    time.sleep(0.6)
    assert refresh(http, rt).json()["error"] == "invalid_grant"
    assert refresh(http, first["refresh_token"]).status_code == 200


def test_an_access_token_expires_after_its_lifetime(sandbox_server, http):
    token, rt = user(sandbox_server, access_ttl=0.4)
    before = sandbox_server.sandbox.stats()["stale_refused"]
    assert starred(http, token).status_code == 200
    time.sleep(0.45)
    assert starred(http, token).status_code == 401
    assert sandbox_server.sandbox.stats()["stale_refused"] == before + 1
    fresh = refresh(http, rt).json()
    assert fresh["expires_in"] == 1  # at least a second, in whole seconds
    assert starred(http, fresh["access_token"]).status_code == 200


@pytest.mark.parametrize("send, status, error", [
    (lambda h, rt: h.get("/oauth/token"), 405, "invalid_request"),
    (lambda h, rt: h.post("/oauth/token", json={"grant_type": "refresh_token", "refresh_token": rt}), 400,
     "invalid_request"),
    (lambda h, rt: h.post("/oauth/token", data={"grant_type": "password", "username": "u"}), 400,
     "unsupported_grant_type"),
    (lambda h, rt: h.post("/oauth/token", data={"grant_type": "refresh_token"}), 400, "invalid_request"),
    (lambda h, rt: refresh(h, "nobody's"), 400, "invalid_grant"),
])
def test_token_endpoint_errors_are_rfc6749_errors(sandbox_server, http, send, status, error):
    _, rt = user(sandbox_server, access_ttl=600)
    got = send(http, rt)
    assert got.status_code == status and got.json()["error"] == error


def test_a_revoked_grant_cannot_be_refreshed(sandbox_server, http):
    token, rt = user(sandbox_server, access_ttl=600)
    assert http.post(f"/_sandbox/users/{token}/revoke").status_code == 200
    assert refresh(http, rt).json()["error"] == "invalid_grant"


# -- the control API ----------------------------------------------------------------------------


def test_control_api_creates_expires_and_shows_a_users_tokens(sandbox_server, http):
    token, rt = name("ctl"), name("ctl-rt")
    made = http.post("/_sandbox/users", json={"service": "github", "token": token, "items": 2,
                                              "refresh_token": rt, "access_ttl": 300, "rotation": "strict"})
    assert made.status_code == 200
    assert made.json()["refresh_token"] == rt and made.json()["rotation"] == "strict"
    assert made.json()["access_ttl"] == 300
    new = refresh(http, rt).json()
    shown = http.get(f"/_sandbox/users/{new['access_token']}/tokens").json()  # any of its access tokens names it
    assert shown["token"] == token and shown["access_token"] == new["access_token"]
    assert shown["refresh_token"] == new["refresh_token"] and shown["refreshes"] == 1
    assert http.post(f"/_sandbox/users/{new['access_token']}/expire").json()["expired"] is True
    assert starred(http, new["access_token"]).status_code == 401
    assert http.post(f"/_sandbox/users/{new['access_token']}/add", json={"count": 2}).json() == {"items": 4}

    plain = name("plain")
    http.post("/_sandbox/users", json={"service": "github", "token": plain})
    assert http.post(f"/_sandbox/users/{plain}/expire").status_code == 400
    bad = http.post("/_sandbox/users", json={"service": "github", "token": name("x"), "access_ttl": 1,
                                             "rotation": "sometimes"})
    assert bad.status_code == 400 and "rotation" in bad.json()["message"]


def test_bulk_users_can_have_expiring_tokens(sandbox_server, http):
    prefix = name("bulk") + "-"
    made = http.post("/_sandbox/bulk", json={"service": "github", "prefix": prefix, "count": 3, "items": 1,
                                             "access_ttl": 60, "refresh_prefix": f"{prefix}rt"})
    assert made.json() == {"users": 3}
    assert refresh(http, f"{prefix}rt2").status_code == 200
    assert starred(http, f"{prefix}2").status_code == 401 and starred(http, f"{prefix}1").status_code == 200


# -- the revocation storm -----------------------------------------------------------------------


def test_a_storm_refuses_one_service_then_ends_and_is_counted(sandbox_server, http):
    gh, _ = user(sandbox_server)
    se = name("se")
    sandbox_server.sandbox.add_user("stackoverflow", se, 2)
    before = sandbox_server.sandbox.stats()["storm_refused"].get("github", 0)
    got = http.post("/_sandbox/storm", json={"service": "github", "seconds": 0.5})
    assert got.status_code == 200 and got.json()["service"] == "github"
    assert sandbox_server.sandbox.stats()["storms"]["github"] > 0
    refused = starred(http, gh)
    assert refused.status_code == 401 and refused.json()["message"] == "Bad credentials"
    assert http.get("/2.3/me/favorites", headers={"x-api-access-token": se}).status_code == 200
    time.sleep(0.55)
    assert starred(http, gh).status_code == 200  # the token was never revoked
    assert sandbox_server.sandbox.stats()["storm_refused"]["github"] == before + 1
    assert "github" not in sandbox_server.sandbox.stats()["storms"]


def test_a_storm_of_every_service_speaks_each_apis_language_and_leaves_token_endpoints_alone(sandbox_server, http):
    spotify, bluesky, so, hn = name("sp"), name("bs"), name("so"), name("hn")
    sandbox_server.sandbox.add_user("spotify", spotify, 2)
    sandbox_server.sandbox.add_user("bluesky", bluesky, 2, name=bluesky)
    sandbox_server.sandbox.add_user("stackoverflow", so, 2)
    sandbox_server.sandbox.add_user("hackernews", hn, 2, name=hn)
    _, rt = user(sandbox_server, access_ttl=600)
    http.post("/_sandbox/storm", json={"seconds": 30})
    try:
        got = http.get("/v1/me/tracks", headers={"Authorization": f"Bearer {spotify}"})
        assert got.status_code == 401 and got.json() == {"error": {"status": 401, "message": "Invalid access token"}}
        got = http.get("/xrpc/app.bsky.feed.getActorLikes", params={"actor": f"{bluesky}.bsky.social"},
                       headers={"Authorization": f"Bearer {bluesky}"})
        assert got.status_code == 400 and got.json() == {"error": "ExpiredToken", "message": "Token has been revoked"}
        got = http.get("/2.3/me/favorites", headers={"x-api-access-token": so})
        assert got.status_code == 400 and got.json()["error_name"] == "invalid_access_token"
        assert http.get("/api/v1/search_by_date", params={"tags": f"author_{hn}"}).json()["hits"]  # no tokens there
        assert refresh(http, rt).status_code == 200
    finally:
        http.post("/_sandbox/storm", json={"seconds": 0})
    assert http.get("/v1/me/tracks", headers={"Authorization": f"Bearer {spotify}"}).status_code == 200


# -- Bluesky: com.atproto.server.refreshSession ------------------------------------------------


def likes(http: httpx.Client, user_name: str, token: str) -> httpx.Response:
    return http.get("/xrpc/app.bsky.feed.getActorLikes", params={"actor": f"{user_name}.bsky.social"},
                    headers={"Authorization": f"Bearer {token}"})


def test_refresh_session_rotates_strictly_with_pds_shaped_jwts(sandbox_server, http):
    token, rt = name("bsky"), name("bsky-rt")
    bsky = sandbox_server.sandbox.add_user("bluesky", token, 3, name=token, refresh_token=rt, access_ttl=120)
    assert bsky.session is not None and bsky.session.rotation == "strict"  # Bluesky's default here

    got = http.post("/xrpc/com.atproto.server.refreshSession", headers={"Authorization": f"Bearer {rt}"})
    assert got.status_code == 200
    out = got.json()
    assert out.keys() == {"accessJwt", "refreshJwt", "handle", "did"}
    assert out["did"] == did(bsky) and out["handle"] == handle(bsky)
    access, refreshed = claims(out["accessJwt"]), claims(out["refreshJwt"])
    assert access["sub"] == did(bsky) and access["scope"] == "com.atproto.access"
    assert access["exp"] - access["iat"] == 120
    assert refreshed["scope"] == "com.atproto.refresh" and refreshed["jti"]

    assert likes(http, token, out["accessJwt"]).status_code == 200
    assert likes(http, token, token).json() == {"error": "ExpiredToken", "message": "Token has been revoked"}
    before = sandbox_server.sandbox.stats()["refresh_reuse"]
    reused = http.post("/xrpc/com.atproto.server.refreshSession", headers={"Authorization": f"Bearer {rt}"})
    assert reused.status_code == 400
    assert reused.json() == {"error": "ExpiredToken", "message": "Token has been revoked"}
    assert sandbox_server.sandbox.stats()["refresh_reuse"] == before + 1

    tokens.expire(sandbox_server.sandbox, bsky)
    assert likes(http, token, out["accessJwt"]).json() == {"error": "ExpiredToken", "message": "Token has expired"}


@pytest.mark.parametrize("method, auth, status, error", [
    ("POST", None, 401, "AuthMissing"),
    ("GET", "refresh", 400, "InvalidRequest"),
    ("POST", "access", 400, "InvalidToken"),  # an access JWT where the refresh JWT belongs
    ("POST", "unknown", 400, "InvalidToken"),
])
def test_refresh_session_errors(sandbox_server, http, method, auth, status, error):
    token, rt = name("bsky-err"), name("bsky-err-rt")
    sandbox_server.sandbox.add_user("bluesky", token, 1, name=token, refresh_token=rt, access_ttl=120)
    bearer = {"refresh": rt, "access": token, "unknown": "eyJ.eyJ.sig"}.get(auth or "")
    got = http.request(method, "/xrpc/com.atproto.server.refreshSession",
                       headers={"Authorization": f"Bearer {bearer}"} if bearer else {})
    assert got.status_code == status and got.json()["error"] == error


# -- the engine against the token endpoint ---------------------------------------------------------


async def test_the_engine_refreshes_a_github_network_at_the_sandbox_token_endpoint(sandbox_server, mock_db, clock):
    token, rt = user(sandbox_server, access_ttl=3600, rotation="strict")
    url = sandbox_server.url
    settings = make_settings(services={"github": {"base_url": url, "token_url": f"{url}/oauth/token",
                                                  "client_id": "sandbox-app", "client_secret": "sandbox-secret"}})
    async for engine in engine_for("github", token, mock_db, settings, clock):
        await engine.add(refreshToken=rt)
        assert (await engine.run()).outcome.kind.value == "page"
        tokens.expire(sandbox_server.sandbox, sandbox_server.sandbox.users[token])
        result = await engine.run_when_due("initial")
        assert result.outcome.kind.value == "page", (await engine.network()).get("lastError")
        doc = await engine.network()
        session = sandbox_server.sandbox.users[token].session
        assert doc["accessToken"] == session.access != token and doc["refreshToken"] == session.refresh != rt
        assert (doc["tokenExpiresAt"] - clock.now).total_seconds() == 3600
        assert sandbox_server.sandbox.stats()["tokens"][token] == {"refreshes": 1, "refresh_reuse": 0}
        assert not doc.get("disabled")
