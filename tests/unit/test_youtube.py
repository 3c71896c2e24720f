"""The YouTube liked-videos connector driven through the engine (claim -> Executor.run -> network,
items, services), with respx replies shaped like the YouTube Data API v3 videoListResponse and its
Google error bodies; then over real HTTP against the sandbox emulator."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import respx
from collector.connectors.youtube import YouTubeLiked, quota_reset

from collector.plugins import Registered
from collector.sandbox import Sandbox
from collector.sandbox.apis import youtube as emulator
from tests.conftest import make_settings
from tests.harness import engine_for, sandboxed_engine

TOKEN = "ya29.a0AfH6SMB-secret-token"
API = "https://youtube.googleapis.test"
VIDEOS = f"{API}/youtube/v3/videos"
JSON = {"content-type": "application/json; charset=UTF-8"}
REGISTRY = {"youtube": Registered("youtube", YouTubeLiked, "collector", "test")}


def video(n: int) -> dict[str, Any]:
    return {"kind": "youtube#video", "etag": f"etag{n}", "id": f"vid{n:08d}",
            "snippet": {"publishedAt": f"2026-0{1 + n % 9}-0{1 + n % 9}T10:00:00Z", "channelId": f"UC{n:022d}",
                        "title": f"Video number {n}", "description": "...", "channelTitle": f"Channel {n % 7}",
                        "categoryId": "10", "liveBroadcastContent": "none"}}


def reply(numbers: list[int], next_token: str | None = None) -> httpx.Response:
    body: dict[str, Any] = {"kind": "youtube#videoListResponse", "etag": "xyz",
                            "items": [video(n) for n in numbers],
                            "pageInfo": {"totalResults": 120, "resultsPerPage": 50}}
    if next_token:
        body["nextPageToken"] = next_token
    return httpx.Response(200, json=body, headers=JSON)


def error(status: int, reason: str, message: str, domain: str = "youtube.quota", **headers: str) -> httpx.Response:
    return httpx.Response(status, headers={**JSON, **headers}, json={"error": {
        "code": status, "message": message, "errors": [{"message": message, "domain": domain, "reason": reason}]}})


QUOTA_MESSAGE = ("The request cannot be completed because you have exceeded your "
                 '<a href="/youtube/v3/getting-started#quota">quota</a>.')
PAGE1, PAGE2, PAGE3 = list(range(120, 70, -1)), list(range(70, 20, -1)), list(range(20, 0, -1))  # newest like first


def ids(numbers: list[int]) -> set[str]:
    return {f"vid{n:08d}" for n in numbers}


@pytest.fixture
async def engine(mock_db, clock):
    settings = make_settings(services={"youtube": {"base_url": API}})
    async for engine in engine_for("youtube", TOKEN, mock_db, settings, clock, REGISTRY):
        yield engine


def first_page(api: respx.MockRouter, **name: str) -> respx.Route:
    return api.get(VIDEOS, params__eq={"myRating": "like", "part": "snippet", "maxResults": "50"}, **name)


def page_after(api: respx.MockRouter, token: str) -> respx.Route:
    return api.get(VIDEOS, params__contains={"pageToken": token})


# -- initial mode: the back-fill ---------------------------------------------------------------


async def test_backfill_over_three_pages_stores_every_video_once_and_switches_to_normal(engine, api):
    one = first_page(api).mock(return_value=reply(PAGE1, "CDIQAA"))
    two = page_after(api, "CDIQAA").mock(return_value=reply(PAGE2, "CGQQAA"))
    three = page_after(api, "CGQQAA").mock(return_value=reply(PAGE3))
    await engine.add()

    first = await engine.run("initial")
    assert first.new_items == 50
    network = await engine.network()
    assert network["mode"] == "initial"
    assert network["cursor"] == {"next": "CDIQAA", "stop": None, "top": "vid00000120"}
    assert await engine.due_in() == pytest.approx(engine.schedule.initial_pace)

    assert (await engine.run_when_due("initial")).new_items == 50
    last = await engine.run_when_due("initial")

    assert last.new_items == 20
    assert [one.call_count, two.call_count, three.call_count] == [1, 1, 1]
    assert await engine.item_ids() == ids(PAGE1 + PAGE2 + PAGE3)
    assert len(await engine.items()) == 120
    network = await engine.network()
    assert network["mode"] == "normal"
    assert network["cursor"] == {"stop": "vid00000120"}
    assert await engine.due_in() == pytest.approx(engine.schedule.normal_interval)
    for route in (one, two, three):
        request = route.calls.last.request
        assert request.headers["Authorization"] == f"Bearer {TOKEN}"
        assert TOKEN not in str(request.url)
        assert request.url.params["myRating"] == "like"
        assert request.url.params["maxResults"] == "50"


async def test_items_carry_the_video_fields(engine, api):
    first_page(api).mock(return_value=reply([7]))
    await engine.add()

    await engine.run("initial")

    item = await engine.store.items.find_one({"itemId": "vid00000007"})
    assert item["title"] == "Video number 7"
    assert item["url"] == "https://www.youtube.com/watch?v=vid00000007"
    assert item["author"] == "Channel 0"
    assert item["created"] == datetime(2026, 8, 8, 10, 0, tzinfo=UTC)
    assert item["raw"]["snippet"]["channelId"] == f"UC{7:022d}"


# -- normal mode -------------------------------------------------------------------------------


async def test_normal_with_nothing_new_costs_one_request_and_stores_nothing(engine, api):
    route = first_page(api).mock(return_value=reply(PAGE1, "CDIQAA"))  # more pages exist: not fetched
    await engine.add(mode="normal", cursor={"stop": "vid00000120"})

    result = await engine.run("normal")

    assert route.call_count == 1
    assert result.saved and result.new_items == 0 and result.outcome.items == 0
    assert await engine.items() == []
    network = await engine.network()
    assert network["cursor"] == {"stop": "vid00000120"}
    assert network["lastOutcome"]["reason"] == "nothing new"
    assert await engine.due_in() == pytest.approx(engine.schedule.normal_interval)


async def test_normal_stores_only_the_new_likes(engine, api):
    first_page(api).mock(return_value=reply([122, 121, *PAGE1[:48]], "CDIQAA"))
    await engine.add(mode="normal", cursor={"stop": "vid00000120"})

    result = await engine.run("normal")

    assert result.new_items == 2
    assert await engine.item_ids() == ids([122, 121])
    network = await engine.network()
    assert network["mode"] == "normal"
    assert network["cursor"] == {"stop": "vid00000122"}


async def test_normal_follows_pages_until_the_known_video(engine, api):
    first_page(api).mock(return_value=reply(list(range(250, 200, -1)), "CDIQAA"))
    page_after(api, "CDIQAA").mock(return_value=reply([200, 199, 120, 119], "CGQQAA"))
    await engine.add(mode="normal", cursor={"stop": "vid00000120"})

    first = await engine.run("normal")
    assert first.new_items == 50
    assert (await engine.network())["cursor"] == {"next": "CDIQAA", "stop": "vid00000120", "top": "vid00000250"}
    second = await engine.run_when_due("normal")

    assert second.new_items == 2
    assert await engine.item_ids() == ids([*range(250, 200, -1), 200, 199])
    assert (await engine.network())["cursor"] == {"stop": "vid00000250"}


# -- limits ------------------------------------------------------------------------------------


@pytest.mark.parametrize("reason", ["quotaExceeded", "dailyLimitExceeded"])
async def test_a_spent_daily_quota_pauses_the_service_until_midnight_pacific(engine, api, clock, reason):
    page_after(api, "CDIQAA").mock(return_value=error(403, reason, QUOTA_MESSAGE))
    await engine.add(errors=1, cursor={"next": "CDIQAA", "stop": None, "top": "vid00000120"})

    result = await engine.run("initial")

    assert result.outcome.kind == "rate_limited"
    # 2026-11-25 12:00 UTC is 04:00 PST: the quota comes back at 00:00 PST, 08:00 UTC the next day
    resume = datetime(2026, 11, 26, 8, 0, tzinfo=UTC) + timedelta(seconds=engine.schedule.rate_limit_slack)
    network = await engine.network()
    assert network["scheduledTo"] == resume
    assert network["errors"] == 1  # not a failure
    assert network["cursor"] == {"next": "CDIQAA", "stop": None, "top": "vid00000120"}
    assert reason in network["lastError"]["message"]
    assert await engine.store.paused_services(clock.now) == {"youtube": resume}
    assert not network.get("disabled")


@pytest.mark.parametrize(("now", "midnight"), [
    (datetime(2026, 11, 25, 12, 0, tzinfo=UTC), datetime(2026, 11, 26, 8, 0, tzinfo=UTC)),  # PST
    (datetime(2026, 7, 1, 6, 59, tzinfo=UTC), datetime(2026, 7, 1, 7, 0, tzinfo=UTC)),  # PDT, a minute to go
    (datetime(2026, 3, 8, 6, 0, tzinfo=UTC), datetime(2026, 3, 8, 8, 0, tzinfo=UTC)),  # Mar 7 22:00 PST
    (datetime(2026, 3, 8, 12, 0, tzinfo=UTC), datetime(2026, 3, 9, 7, 0, tzinfo=UTC)),  # DST began: 23-hour day
    (datetime(2026, 11, 1, 12, 0, tzinfo=UTC), datetime(2026, 11, 2, 8, 0, tzinfo=UTC)),  # DST ended: 25-hour day
])
def test_the_quota_resets_at_midnight_pacific_time_with_dst(now, midnight):
    assert quota_reset(now) == midnight
    assert quota_reset(now).tzinfo is UTC


@pytest.mark.parametrize("status", [403, 429])
@pytest.mark.parametrize("reason", ["rateLimitExceeded", "userRateLimitExceeded"])
async def test_a_short_rate_limit_waits_a_minute_for_this_network_only(engine, api, clock, status, reason):
    first_page(api).mock(return_value=error(status, reason, "Rate Limit Exceeded", domain="usageLimits"))
    await engine.add()

    result = await engine.run("initial")

    assert result.outcome.kind == "rate_limited"
    assert await engine.due_in() == pytest.approx(60 + engine.schedule.rate_limit_slack)
    assert (await engine.network())["errors"] == 0
    assert await engine.store.paused_services(clock.now) == {}


async def test_a_rate_limit_with_retry_after_waits_that_long(engine, api):
    first_page(api).mock(return_value=error(403, "userRateLimitExceeded", "Rate Limit Exceeded",
                                            domain="usageLimits", **{"Retry-After": "300"}))
    await engine.add()

    await engine.run("initial")

    assert await engine.due_in() == pytest.approx(300 + engine.schedule.rate_limit_slack)


async def test_a_429_with_another_reason_is_still_a_rate_limit_not_a_refusal(engine, api):
    first_page(api).mock(return_value=error(429, "RESOURCE_EXHAUSTED", "Resource has been exhausted",
                                            domain="global"))
    await engine.add()

    result = await engine.run("initial")

    assert result.outcome.kind == "rate_limited"
    assert not (await engine.network()).get("unauthorized")
    assert await engine.due_in() == pytest.approx(60 + engine.schedule.rate_limit_slack)


# -- refusals and failures ---------------------------------------------------------------------


async def test_401_auth_error_disables_the_network_as_unauthorized(engine, api):
    first_page(api).mock(return_value=error(
        401, "authError", "Request had invalid authentication credentials. Expected OAuth 2 access token.",
        domain="global", **{"WWW-Authenticate": 'Bearer realm="https://accounts.google.com/"'}))
    await engine.add()

    result = await engine.confirm_unauthorized("initial")

    assert result.outcome.kind == "unauthorized"
    network = await engine.network()
    assert network["disabled"] is True and network["unauthorized"] is True
    assert network["scheduledTo"] is None
    assert "authError" in network["disabledReason"]
    assert TOKEN not in network["disabledReason"]


@pytest.mark.parametrize("reason", ["insufficientPermissions", "forbidden", "authenticatedUserAccountSuspended"])
async def test_other_403_reasons_are_forbidden(engine, api, reason):
    first_page(api).mock(return_value=error(403, reason, "Access forbidden.", domain="global"))
    await engine.add()

    result = await engine.run("initial")

    assert result.outcome.kind == "permanent" and result.outcome.error == "forbidden"
    network = await engine.network()
    assert network["disabled"] is True and not network["unauthorized"] and network["scheduledTo"] is None
    assert network["disabledReason"].startswith("forbidden: HTTP 403") and reason in network["disabledReason"]


async def test_an_api_not_enabled_for_the_project_is_no_users_fault(engine, api):
    first_page(api).mock(return_value=error(403, "accessNotConfigured", "YouTube Data API v3 has not been used "
                                            "in project 123 before or it is disabled.", domain="usageLimits"))
    await engine.add()

    result = await engine.run("initial")

    assert result.outcome.kind == "transient"
    network = await engine.network()
    assert network["lastError"]["kind"] == "forbidden"
    assert network["errors"] == 1 and not network.get("unauthorized")


async def test_a_malformed_body_is_a_transient_bad_json(engine, api):
    first_page(api).respond(200, text='{"kind": "youtube#videoListResponse", "items": [{"id": ', headers=JSON)
    await engine.add()

    result = await engine.run("initial")

    assert result.outcome.kind == "transient"
    network = await engine.network()
    assert network["lastError"]["kind"] == "bad_json"
    assert network["errors"] == 1
    assert await engine.items() == []


@pytest.mark.parametrize("body", [{"kind": "youtube#videoListResponse"}, [], {"items": [{"snippet": {}}]}])
async def test_an_unexpected_shape_is_a_transient_bad_response(engine, api, body):
    first_page(api).respond(200, json=body, headers=JSON)
    await engine.add()

    await engine.run("initial")

    network = await engine.network()
    assert network["lastError"]["kind"] == "bad_response"
    assert await engine.items() == []
    if body == []:
        assert "expected a JSON dict, got list" in network["lastError"]["message"]


async def test_a_page_token_never_takes_the_request_to_another_host(engine):
    sneaky = "https://evil.example/steal?x=1"
    with respx.mock(assert_all_called=False) as api:
        evil = api.route(host="evil.example").respond(200, json={})
        first_page(api).mock(return_value=reply(PAGE1, sneaky))
        later = page_after(api, sneaky).mock(return_value=reply(PAGE2))
        await engine.add()

        await engine.run("initial")
        await engine.run_when_due("initial")

    assert not evil.called
    assert later.called and later.calls.last.request.url.host == "youtube.googleapis.test"
    assert await engine.item_ids() == ids(PAGE1 + PAGE2)


# -- the sandbox emulator over real HTTP -------------------------------------------------------


@pytest.fixture
async def sandboxed(sandbox_server, mock_db, clock):
    async for engine in sandboxed_engine("youtube", sandbox_server, mock_db, clock, REGISTRY):
        yield engine


async def test_sandbox_backfill_then_new_likes_over_http(sandboxed, sandbox_server):
    sandbox = sandbox_server.sandbox
    sandbox.add_user("youtube", sandboxed.token, items=8)
    await sandboxed.add()

    result = await sandboxed.run("initial")
    runs = 1
    while (await sandboxed.network())["mode"] == "initial":
        result = await sandboxed.run_when_due("initial")
        runs += 1
    assert result.outcome.kind == "page"
    assert runs == 3  # 3 + 3 + 2 at the sandbox's page cap
    stats = sandbox.stats()
    assert len(await sandboxed.items()) == stats["unique_served"][sandboxed.token] == 8

    before = sandbox.stats()["by_token"][sandboxed.token]
    nothing = await sandboxed.run_when_due("normal")
    assert nothing.new_items == 0
    assert sandbox.stats()["by_token"][sandboxed.token] == before + 1  # one request when nothing is new

    sandbox.add_items(sandboxed.token, 2)
    fresh = await sandboxed.run_when_due("normal")

    assert fresh.new_items == 2
    assert len(await sandboxed.items()) == sandbox.stats()["unique_served"][sandboxed.token] == 10
    item = await sandboxed.store.items.find_one({"itemId": emulator.video_id(10)})
    assert item["url"] == f"https://www.youtube.com/watch?v={emulator.video_id(10)}"
    assert item["title"] == "Video 10"
    assert not any(sandboxed.token in target for target in sandbox.log)


async def test_sandbox_app_quota_spent_pauses_the_service(sandboxed, sandbox_server, clock):
    sandbox = sandbox_server.sandbox
    sandbox.add_user("youtube", sandboxed.token, items=4)
    quota = emulator.app_quota(sandbox)
    quota["remaining"], before = 0, quota["remaining"]
    try:
        await sandboxed.add()
        result = await sandboxed.run("initial")
    finally:
        quota["remaining"] = before

    assert result.outcome.kind == "rate_limited"
    paused = await sandboxed.store.paused_services(clock.now)
    assert paused["youtube"] == quota_reset(clock.now) + timedelta(seconds=sandboxed.schedule.rate_limit_slack)
    assert sandbox.stats()["served"].get(sandboxed.token, 0) == 0


@pytest.mark.parametrize(("fault", "kind"), [({"kind": "unauthorized"}, "unauthorized"),
                                             ({"kind": "rate_limit", "seconds": 600}, "rate_limited"),
                                             ({"kind": "status", "status": 503}, "transient")])
async def test_sandbox_faults_in_googles_shape(sandboxed, sandbox_server, clock, fault, kind):
    sandbox_server.sandbox.add_user("youtube", sandboxed.token, items=4)
    sandbox_server.sandbox.inject(sandboxed.token, **fault)
    await sandboxed.add()

    result = await sandboxed.run("initial")

    assert result.outcome.kind == kind
    if kind == "rate_limited":
        assert await sandboxed.due_in() >= 600
        assert await sandboxed.store.paused_services(clock.now) == {}


def test_sandbox_user_window_spent_is_a_user_rate_limit():
    sandbox = Sandbox(rate_limit=1, window=600)
    sandbox.add_user("youtube", "window-user", items=2)

    def get():
        return sandbox.handle("GET", "/youtube/v3/videos?myRating=like&part=snippet&maxResults=50",
                              {"authorization": "Bearer window-user"}, b"")

    assert get().status == 200
    refused = get()
    assert refused.status == 403 and 590 <= int(refused.headers["retry-after"]) <= 601
    assert b'"reason": "userRateLimitExceeded"' in refused.body


async def test_short_rate_limits_in_a_row_wait_longer_each_time(engine, api, clock):
    """rateLimitExceeded names no reset: from a minute, doubling while it repeats (no constant 60 s retry)."""
    route = first_page(api).mock(return_value=error(403, "rateLimitExceeded", "Rate Limit Exceeded",
                                                    domain="usageLimits"))
    await engine.add()
    waits = []
    for _ in range(3):
        await engine.run_when_due("initial")
        waits.append(round(await engine.due_in() - engine.schedule.rate_limit_slack))
    assert waits == [60, 120, 240] and route.call_count == 3
    assert (await engine.network())["rateLimitStreak"] == 3


async def test_a_page_with_no_items_and_a_next_page_token_does_not_end_the_backfill(engine, api):
    """The discovery document (youtube.v3.json, VideoListResponse) gives `items` ("type": "array") and
    `nextPageToken` ("The token that can be used as the value of the pageToken parameter to retrieve the next
    page in the result set.") as separate properties: a page whose likes were all filtered out (deleted,
    private videos) has no items and still a token. The back-fill follows it to the older likes."""
    first_page(api).mock(return_value=reply(PAGE1, "CDIQAA"))
    page_after(api, "CDIQAA").mock(return_value=reply([], "CGQQAA"))  # emptied by the API's filters
    page_after(api, "CGQQAA").mock(return_value=reply(PAGE3))
    await engine.add()

    await engine.run("initial")
    emptied = await engine.run_when_due("initial")
    assert emptied.outcome.kind == "page" and emptied.outcome.more
    assert (await engine.network())["cursor"] == {"next": "CGQQAA", "stop": None, "top": "vid00000120"}
    last = await engine.run_when_due("initial")

    assert not last.outcome.more and await engine.item_ids() == ids(PAGE1) | ids(PAGE3)
    network = await engine.network()
    assert network["mode"] == "normal" and network["cursor"] == {"stop": "vid00000120"}


async def test_a_next_page_token_that_repeats_the_one_sent_ends_the_sweep(engine, api):
    """An API answering with the token it was asked for would be asked the same page forever: the sweep ends
    there (history exhausted, normal mode), a documented state, after one request."""
    first_page(api).mock(return_value=reply(PAGE1, "CDIQAA"))
    looping = page_after(api, "CDIQAA").mock(return_value=reply([], "CDIQAA"))
    await engine.add()

    await engine.run("initial")
    last = await engine.run_when_due("initial")

    assert last.outcome.kind == "page" and not last.outcome.more and looping.call_count == 1
    network = await engine.network()
    assert network["mode"] == "normal" and network["cursor"] == {"stop": "vid00000120"}
