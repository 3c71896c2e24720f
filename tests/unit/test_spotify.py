"""The Spotify saved-tracks connector driven through the engine (claim -> Executor.run -> network,
items, services), with respx replies shaped like the Web API paging object and its error bodies; then
over real HTTP against the sandbox emulator."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import respx
from collector.connectors.spotify import SpotifySavedTracks

from collector.plugins import Registered
from collector.sandbox import Sandbox
from collector.sandbox.apis import spotify as emulator
from tests.conftest import make_settings
from tests.harness import engine_for, sandboxed_engine

TOKEN = "BQDsecret-spotify-access-token"
API = "https://api.spotify.test"
TRACKS = f"{API}/v1/me/tracks"
JSON = {"content-type": "application/json; charset=utf-8"}
REGISTRY = {"spotify": Registered("spotify", SpotifySavedTracks, "collector", "test")}


def tid(n: int) -> str:
    return f"4iV5W9uYEdYUVa79A{n:05d}"


def saved(n: int) -> dict[str, Any]:
    return {"added_at": f"2026-10-{1 + n % 28:02d}T08:30:00Z", "track": {
        "id": tid(n), "name": f"Song {n}", "type": "track", "uri": f"spotify:track:{tid(n)}",
        "artists": [{"id": f"art{n}", "name": f"Singer {n % 5}", "type": "artist"},
                    {"id": "feat", "name": "Featuring", "type": "artist"}],
        "album": {"id": f"alb{n}", "name": f"Album {n}"}, "duration_ms": 201000, "is_local": False,
        "external_urls": {"spotify": f"https://open.spotify.com/track/{tid(n)}"},
        "href": f"https://api.spotify.com/v1/tracks/{tid(n)}"}}


def url(offset: int, limit: int = 50) -> str:
    return f"{TRACKS}?offset={offset}&limit={limit}"


def reply(numbers: list[int], offset: int = 0, total: int = 120, next_url: str | None = "auto") -> httpx.Response:
    if next_url == "auto":
        next_url = url(offset + 50) if offset + 50 < total else None
    return httpx.Response(200, headers=JSON, json={
        "href": url(offset), "items": [saved(n) for n in numbers], "limit": 50, "next": next_url,
        "offset": offset, "previous": url(max(offset - 50, 0)) if offset else None, "total": total})


def ids(numbers: list[int]) -> set[str]:
    return {tid(n) for n in numbers}


PAGE1, PAGE2, PAGE3 = list(range(120, 70, -1)), list(range(70, 20, -1)), list(range(20, 0, -1))  # newest first


@pytest.fixture
async def engine(mock_db, clock):
    settings = make_settings(services={"spotify": {"base_url": API}})
    async for engine in engine_for("spotify", TOKEN, mock_db, settings, clock, REGISTRY):
        yield engine


def page(api: respx.MockRouter, offset: int, **name: str) -> respx.Route:
    return api.get(TRACKS, params__eq={"offset": str(offset), "limit": "50"}, **name)


# -- initial mode: the back-fill ---------------------------------------------------------------


async def test_backfill_over_three_pages_follows_next_and_switches_to_normal(engine, api):
    routes = [page(api, 0).mock(return_value=reply(PAGE1, 0)), page(api, 50).mock(return_value=reply(PAGE2, 50)),
              page(api, 100).mock(return_value=reply(PAGE3, 100))]
    await engine.add()

    first = await engine.run("initial")
    assert first.new_items == 50
    network = await engine.network()
    assert network["mode"] == "initial"
    assert network["cursor"] == {"next": url(50), "stop": None, "top": tid(120)}
    assert await engine.due_in() == pytest.approx(engine.schedule.initial_pace)

    assert (await engine.run_when_due("initial")).new_items == 50
    assert (await engine.run_when_due("initial")).new_items == 20

    assert [r.call_count for r in routes] == [1, 1, 1]
    assert await engine.item_ids() == ids(PAGE1 + PAGE2 + PAGE3)
    assert len(await engine.items()) == 120
    network = await engine.network()
    assert network["mode"] == "normal"
    assert network["cursor"] == {"stop": tid(120)}
    assert await engine.due_in() == pytest.approx(engine.schedule.normal_interval)
    for route in routes:
        request = route.calls.last.request
        assert request.headers["Authorization"] == f"Bearer {TOKEN}"
        assert TOKEN not in str(request.url)


async def test_items_carry_the_track_fields(engine, api):
    page(api, 0).mock(return_value=reply([9], total=1))
    await engine.add()

    await engine.run("initial")

    item = await engine.store.items.find_one({"itemId": tid(9)})
    assert item["title"] == "Song 9"
    assert item["url"] == f"https://open.spotify.com/track/{tid(9)}"
    assert item["author"] == "Singer 4"  # the first artist
    assert item["created"] == datetime(2026, 10, 10, 8, 30, tzinfo=UTC)  # added_at
    assert item["raw"]["track"]["album"]["name"] == "Album 9"
    assert (await engine.network())["mode"] == "normal"


async def test_a_null_track_is_skipped_and_the_rest_is_stored(engine, api):
    body = reply([3, 2], total=3).json()
    body["items"].insert(1, {"added_at": "2026-10-01T00:00:00Z", "track": None})
    page(api, 0).respond(200, json=body, headers=JSON)
    await engine.add()

    result = await engine.run("initial")

    assert result.new_items == 2
    assert await engine.item_ids() == ids([3, 2])


# -- normal mode -------------------------------------------------------------------------------


async def test_normal_with_nothing_new_costs_one_request_and_stores_nothing(engine, api):
    route = page(api, 0).mock(return_value=reply(PAGE1))  # `next` is set: not followed
    await engine.add(mode="normal", cursor={"stop": tid(120)})

    result = await engine.run("normal")

    assert route.call_count == 1
    assert result.saved and result.new_items == 0 and result.outcome.items == 0
    assert await engine.items() == []
    network = await engine.network()
    assert network["cursor"] == {"stop": tid(120)}
    assert network["lastOutcome"]["reason"] == "nothing new"
    assert await engine.due_in() == pytest.approx(engine.schedule.normal_interval)


async def test_normal_stores_only_the_newly_saved_tracks(engine, api):
    page(api, 0).mock(return_value=reply([123, 122, 121, *PAGE1[:47]], total=123))
    await engine.add(mode="normal", cursor={"stop": tid(120)})

    result = await engine.run("normal")

    assert result.new_items == 3
    assert await engine.item_ids() == ids([123, 122, 121])
    network = await engine.network()
    assert network["mode"] == "normal"
    assert network["cursor"] == {"stop": tid(123)}


# -- limits ------------------------------------------------------------------------------------


async def test_a_429_waits_retry_after_and_pauses_the_whole_app(engine, api, clock):
    page(api, 50).respond(429, headers={**JSON, "Retry-After": "17"},
                          json={"error": {"status": 429, "message": "API rate limit exceeded"}})
    await engine.add(errors=2, cursor={"next": url(50), "stop": None, "top": tid(120)})

    result = await engine.run("initial")

    assert result.outcome.kind == "rate_limited"
    resume = clock.now + timedelta(seconds=17 + engine.schedule.rate_limit_slack)
    network = await engine.network()
    assert network["scheduledTo"] == resume
    assert network["errors"] == 2  # not a failure
    assert network["cursor"] == {"next": url(50), "stop": None, "top": tid(120)}
    assert network["lastError"]["kind"] == "rate_limited"
    assert await engine.store.paused_services(clock.now) == {"spotify": resume}  # the limit is the app's
    assert await engine.items() == []


async def test_a_spent_quota_without_retry_after_waits_a_minute(engine, api, clock):
    page(api, 0).respond(429, headers=JSON, json={"error": {"status": 429, "message": "Too many requests",
                                                            "reason": "QUOTA_EXCEEDED"}})
    await engine.add()

    await engine.run("initial")

    assert await engine.due_in() == pytest.approx(60 + engine.schedule.rate_limit_slack)
    assert "QUOTA_EXCEEDED" in (await engine.network())["lastError"]["message"]
    assert "spotify" in await engine.store.paused_services(clock.now)


# -- refusals and failures ---------------------------------------------------------------------


async def test_401_expired_token_disables_the_network_as_unauthorized(engine, api):
    page(api, 0).respond(401, headers={**JSON, "WWW-Authenticate": 'Bearer realm="spotify", error="invalid_token"'},
                         json={"error": {"status": 401, "message": "The access token expired"}})
    await engine.add()

    result = await engine.confirm_unauthorized("initial")

    assert result.outcome.kind == "unauthorized"
    network = await engine.network()
    assert network["disabled"] is True and network["unauthorized"] is True
    assert network["scheduledTo"] is None
    assert "The access token expired" in network["disabledReason"]
    assert TOKEN not in network["disabledReason"]


async def test_a_malformed_body_is_a_transient_bad_json(engine, api):
    page(api, 0).respond(200, text='{"href": "x", "items": [{"added_at": "2026-', headers=JSON)
    await engine.add()

    result = await engine.run("initial")

    assert result.outcome.kind == "transient"
    network = await engine.network()
    assert network["lastError"]["kind"] == "bad_json"
    assert network["errors"] == 1
    assert await engine.items() == []


@pytest.mark.parametrize("body", [{"href": "x", "total": 0}, [], {"items": "none"}])
async def test_an_unexpected_shape_is_a_transient_bad_response(engine, api, body):
    page(api, 0).respond(200, json=body, headers=JSON)
    await engine.add()

    await engine.run("initial")

    network = await engine.network()
    assert network["lastError"]["kind"] == "bad_response"
    assert await engine.items() == []


@pytest.mark.parametrize("elsewhere", ["https://api.spotify.test.evil.example/v1/me/tracks?offset=50&limit=50",
                                       "http://api.spotify.test/v1/me/tracks?offset=50", 50])
async def test_a_next_url_to_another_host_is_refused_and_never_called(engine, elsewhere):
    with respx.mock(assert_all_called=False) as api:
        page(api, 0).mock(return_value=reply(PAGE1, next_url=elsewhere))
        evil = api.route(host="api.spotify.test.evil.example").respond(200, json={})
        plain = api.route(scheme="http").respond(200, json={})
        await engine.add()

        result = await engine.run("initial")

    assert result.outcome.kind == "transient"
    assert not evil.called and not plain.called
    network = await engine.network()
    assert network["lastError"]["kind"] == "bad_response"
    expected = "outside the configured base URL" if isinstance(elsewhere, str) else "next must be a URL"
    assert expected in network["lastError"]["message"]
    assert network["cursor"] == {}
    assert await engine.items() == []


async def test_a_stored_next_url_to_another_host_is_never_requested(engine):
    with respx.mock(assert_all_called=False) as api:
        evil = api.route(host="evil.example").respond(200, json={})
        await engine.add(cursor={"next": "https://evil.example/v1/me/tracks?offset=50", "stop": None, "top": "x"})

        result = await engine.run("initial")

    assert result.outcome.kind == "transient"
    assert not evil.called
    assert (await engine.network())["lastError"]["kind"] == "bad_response"


# -- the sandbox emulator over real HTTP -------------------------------------------------------


@pytest.fixture
async def sandboxed(sandbox_server, mock_db, clock):
    async for engine in sandboxed_engine("spotify", sandbox_server, mock_db, clock, REGISTRY):
        yield engine


async def test_sandbox_backfill_then_new_tracks_over_http(sandboxed, sandbox_server):
    sandbox = sandbox_server.sandbox
    sandbox.add_user("spotify", sandboxed.token, items=8)
    await sandboxed.add()

    await sandboxed.run("initial")
    runs = 1
    while (await sandboxed.network())["mode"] == "initial":
        await sandboxed.run_when_due("initial")
        runs += 1
    assert runs == 3  # 3 + 3 + 2 at the sandbox's page cap, following `next`
    assert len(await sandboxed.items()) == sandbox.stats()["unique_served"][sandboxed.token] == 8

    before = sandbox.stats()["by_token"][sandboxed.token]
    assert (await sandboxed.run_when_due("normal")).new_items == 0
    assert sandbox.stats()["by_token"][sandboxed.token] == before + 1  # one request when nothing is new

    sandbox.add_items(sandboxed.token, 4)  # more than a page: the normal sweep takes two requests
    first = await sandboxed.run_when_due("normal")
    second = await sandboxed.run_when_due("normal")

    assert (first.new_items, second.new_items) == (3, 1)
    assert len(await sandboxed.items()) == sandbox.stats()["unique_served"][sandboxed.token] == 12
    item = await sandboxed.store.items.find_one({"itemId": emulator.track_id(12)})
    assert item["title"] == "Track 12" and item["author"] == "Artist 12"
    assert item["url"] == f"https://open.spotify.com/track/{emulator.track_id(12)}"
    assert not any(sandboxed.token in target for target in sandbox.log)


@pytest.mark.parametrize(("fault", "kind"), [({"kind": "unauthorized"}, "unauthorized"),
                                             ({"kind": "rate_limit", "seconds": 600}, "rate_limited"),
                                             ({"kind": "retry_after", "seconds": 40}, "rate_limited"),
                                             ({"kind": "status", "status": 502}, "transient")])
async def test_sandbox_faults_in_spotifys_shape(sandboxed, sandbox_server, clock, fault, kind):
    sandbox_server.sandbox.add_user("spotify", sandboxed.token, items=4)
    sandbox_server.sandbox.inject(sandboxed.token, **fault)
    await sandboxed.add()

    result = await sandboxed.run("initial")

    assert result.outcome.kind == kind
    if kind == "rate_limited":
        assert await sandboxed.due_in() >= fault["seconds"]
        assert "spotify" in await sandboxed.store.paused_services(clock.now)


def test_sandbox_user_window_spent_is_a_429_with_retry_after():
    sandbox = Sandbox(rate_limit=1, window=600)
    sandbox.add_user("spotify", "window-user", items=2)

    def get():
        return sandbox.handle("GET", "/v1/me/tracks?limit=50&offset=0", {"authorization": "Bearer window-user"}, b"")

    assert get().status == 200
    refused = get()
    assert refused.status == 429 and 590 <= int(refused.headers["retry-after"]) <= 601
    assert b'"message": "API rate limit exceeded"' in refused.body
