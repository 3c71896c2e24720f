"""The Reddit connectors (saved, upvoted) driven through the engine: claim -> Executor.run -> network, items, services.

HTTP is mocked with respx; replies are shaped as oauth.reddit.com sends them: a Listing
{"kind": "Listing", "data": {"after", "before", "dist", "modhash", "geo_filter", "children"}} with
t3 (post) / t1 (comment) children, X-Ratelimit-Used/Remaining (a float)/Reset (seconds from now),
errors {"message": ..., "error": <status>}. The last test runs against the sandbox API over HTTP.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import httpx
import pytest
import respx
from collector.connectors.reddit import RedditSaved, RedditUpvoted

from collector import http, sdk
from collector.executor import Executor
from collector.plugins import Registered
from collector.sandbox import Sandbox, Server
from collector.sandbox.apis.reddit import base36
from collector.store import Store
from tests.conftest import make_settings
from tests.harness import Engine

TOKEN = "reddit-oauth-secret-0123456789"
API = "https://oauth.reddit.test"
USER = "alice_r"
SAVED = f"{API}/user/{USER}/saved"
UPVOTED = f"{API}/user/{USER}/upvoted"
UA = "linux:collector-tests:0.1 (by /u/collector_ops)"
REGISTRY = {"reddit_saved": Registered("reddit_saved", RedditSaved, "collector", "test"),
            "reddit_upvoted": Registered("reddit_upvoted", RedditUpvoted, "collector", "test")}
LIMITS = {"x-ratelimit-used": "4", "x-ratelimit-remaining": "596.0", "x-ratelimit-reset": "412"}
FIRST = {"limit": "100", "raw_json": "1"}


def post(n: int, **over: Any) -> dict[str, Any]:
    short = base36(n)
    data = {"id": short, "name": f"t3_{short}", "title": f"Post {n} & <friends>", "author": f"redditor{n}",
            "author_fullname": f"t2_{base36(n + 7)}", "subreddit": "python", "subreddit_name_prefixed": "r/python",
            "permalink": f"/r/python/comments/{short}/post_{n}/", "url": f"https://example.com/{n}",
            "created_utc": 1764000000.0 + n, "score": 10, "num_comments": 2, "over_18": False, "is_self": False}
    return {"kind": "t3", "data": {**data, **over}}


def comment(n: int) -> dict[str, Any]:
    short = base36(n)
    return {"kind": "t1", "data": {
        "id": short, "name": f"t1_{short}", "body": f"Comment {n}", "author": f"commenter{n}",
        "link_id": "t3_abc", "link_title": "The thread & its title", "subreddit": "python",
        "permalink": f"/r/python/comments/abc/the_thread/{short}/", "created_utc": 1764000000.0 + n, "score": 3}}


def listing(things: list[dict[str, Any]], after: str | None = None) -> dict[str, Any]:
    return {"kind": "Listing", "data": {"after": after, "dist": len(things), "modhash": None, "geo_filter": "",
                                        "children": things, "before": None}}


def ids(things: list[dict[str, Any]]) -> set[str]:
    return {t["data"]["name"] for t in things}


# newest first: three pages of a saved listing (8 things, one a comment)
PAGE1 = [post(108), comment(107), post(106)]
PAGE2 = [post(105), post(104), post(103)]
PAGE3 = [post(102), post(101)]
TOP = "t3_" + base36(108)


@pytest.fixture
def settings():
    # respx mocks httpx's own transport (httpcore): the daemon's clients over it here
    return make_settings(http={"user_agent": UA, "transport": "httpx"},
                         services={"reddit_saved": {"base_url": API}, "reddit_upvoted": {"base_url": API}})


async def make_engine(mock_db, settings, clock, service: str = "reddit_saved"):
    store = Store(mock_db)
    await store.ensure_indexes()
    async with http.make_client(settings) as client:  # the daemon's client: it sends settings.http.user_agent
        yield Engine(store, Executor(store, client, settings, REGISTRY, clock=clock), clock, settings, service, TOKEN)


@pytest.fixture
async def engine(mock_db, settings, clock):
    async for engine in make_engine(mock_db, settings, clock):
        yield engine


def page(api: respx.MockRouter, after: str | None = None, url: str = SAVED, **name: str) -> respx.Route:
    return api.get(url, params__eq={**FIRST, "after": after} if after else FIRST, **name)


def assert_sent_by_the_book(request) -> None:
    assert request.headers["Authorization"] == f"Bearer {TOKEN}"
    assert request.headers["User-Agent"] == UA  # Reddit's API rules: a unique, descriptive User-Agent
    assert TOKEN not in str(request.url)


async def add(engine: Engine, **fields: Any) -> Any:
    return await engine.add(options={"username": USER}, **fields)


# -- initial mode: the back-fill ---------------------------------------------------------------


async def test_initial_backfill_over_three_pages_stores_every_item_once_and_switches_to_normal(engine, api):
    one = page(api).respond(200, json=listing(PAGE1, after=PAGE1[-1]["data"]["name"]), headers=LIMITS)
    two = page(api, PAGE1[-1]["data"]["name"]).respond(200, json=listing(PAGE2, after=PAGE2[-1]["data"]["name"]),
                                                       headers=LIMITS)
    three = page(api, PAGE2[-1]["data"]["name"]).respond(200, json=listing(PAGE3), headers=LIMITS)
    await add(engine)

    first = await engine.run("initial")
    network = await engine.network()
    assert first.new_items == 3 and network["mode"] == "initial"
    assert network["cursor"] == {"next": PAGE1[-1]["data"]["name"], "stop": None, "top": TOP}
    assert await engine.due_in() == pytest.approx(engine.schedule.initial_pace)
    second = await engine.run_when_due("initial")
    third = await engine.run_when_due("initial")

    assert (second.new_items, third.new_items) == (3, 2)
    assert await engine.item_ids() == ids(PAGE1 + PAGE2 + PAGE3)
    assert len(await engine.items()) == 8
    network = await engine.network()
    assert network["mode"] == "normal"
    assert network["cursor"] == {"stop": TOP}
    assert network["lastOutcome"]["reason"].endswith("history exhausted: switching to normal")
    assert await engine.due_in() == pytest.approx(engine.schedule.normal_interval)
    for route in (one, two, three):
        assert route.call_count == 1
        assert_sent_by_the_book(route.calls.last.request)


async def test_items_carry_post_and_comment_fields(engine, api):
    page(api).respond(200, json=listing(PAGE1), headers=LIMITS)
    await add(engine)
    await engine.run("initial")

    item = await engine.store.items.find_one({"itemId": TOP})
    assert item["title"] == "Post 108 & <friends>"  # raw_json=1: as typed, not &amp;-escaped
    assert item["url"] == f"https://www.reddit.com/r/python/comments/{base36(108)}/post_108/"
    assert item["author"] == "redditor108"
    assert item["created"] == sdk.parse_time(1764000108.0)
    assert item["raw"] == PAGE1[0]["data"]
    reply = await engine.store.items.find_one({"itemId": "t1_" + base36(107)})
    assert reply["title"] == "The thread & its title"  # a comment is titled by its thread
    assert reply["url"] == f"https://www.reddit.com/r/python/comments/abc/the_thread/{base36(107)}/"
    assert reply["author"] == "commenter107"


async def test_upvoted_reads_its_own_listing(mock_db, settings, clock, api):
    route = page(api, url=UPVOTED).respond(200, json=listing(PAGE3), headers=LIMITS)
    async for engine in make_engine(mock_db, settings, clock, "reddit_upvoted"):
        await add(engine)
        result = await engine.run("initial")
        assert result.new_items == 2
        assert await engine.item_ids() == ids(PAGE3)
        assert (await engine.network())["mode"] == "normal"
    assert_sent_by_the_book(route.calls.last.request)


# -- normal mode: incremental runs -------------------------------------------------------------


async def test_normal_with_nothing_new_costs_one_request_and_stores_nothing(engine, api):
    route = page(api).respond(200, json=listing(PAGE1, after=PAGE1[-1]["data"]["name"]), headers=LIMITS)
    await add(engine, mode="normal", cursor={"stop": TOP})

    result = await engine.run("normal")

    assert route.call_count == 1
    assert result.new_items == 0 and result.outcome.items == 0
    assert await engine.items() == []
    network = await engine.network()
    assert network["cursor"] == {"stop": TOP}
    assert network["lastOutcome"]["reason"] == "nothing new"
    assert await engine.due_in() == pytest.approx(engine.schedule.normal_interval)


async def test_normal_with_new_items_stores_only_those(engine, api):
    fresh = [post(110), comment(109)]
    route = page(api).respond(200, json=listing(fresh + PAGE1[:1], after=TOP), headers=LIMITS)
    await add(engine, mode="normal", cursor={"stop": TOP})

    result = await engine.run("normal")

    assert route.call_count == 1
    assert result.new_items == 2
    assert await engine.item_ids() == ids(fresh)
    network = await engine.network()
    assert network["mode"] == "normal"
    assert network["cursor"] == {"stop": "t3_" + base36(110)}
    assert network["lastOutcome"]["reason"] == "2 items, caught up"


async def test_normal_follows_after_until_the_known_item(engine, api):
    fresh = [post(n) for n in (115, 114, 113)]
    page(api).respond(200, json=listing(fresh, after=fresh[-1]["data"]["name"]), headers=LIMITS)
    page(api, fresh[-1]["data"]["name"]).respond(200, json=listing([post(112), *PAGE1], after="t3_zz"),
                                                 headers=LIMITS)
    await add(engine, mode="normal", cursor={"stop": TOP})

    await engine.run("normal")
    assert (await engine.network())["cursor"]["next"] == fresh[-1]["data"]["name"]
    result = await engine.run_when_due("normal")

    assert result.new_items == 1
    assert await engine.item_ids() == ids([*fresh, post(112)])
    assert (await engine.network())["cursor"] == {"stop": "t3_" + base36(115)}


# -- rate limits -------------------------------------------------------------------------------


async def test_429_with_nothing_remaining_waits_for_the_reset_and_pauses_the_service(engine, api, clock, mock_db):
    page(api).respond(429, json={"message": "Too Many Requests", "error": 429}, headers={
        "x-ratelimit-used": "600", "x-ratelimit-remaining": "0.0", "x-ratelimit-reset": "300"})
    await add(engine, errors=1, cursor={"stop": TOP})

    result = await engine.run("initial")

    assert result.outcome.kind == "rate_limited"
    network = await engine.network()
    due = clock.now + timedelta(seconds=300 + engine.schedule.rate_limit_slack)
    assert network["scheduledTo"] == due
    assert network["errors"] == 1 and network["cursor"] == {"stop": TOP}
    assert network["lastError"]["kind"] == "rate_limited" and network["lastError"]["status"] == 429
    paused = await mock_db.services.find_one({"_id": "reddit_saved"})  # one quota per OAuth client id
    assert paused["pausedUntil"] == due


async def test_the_last_request_of_the_window_stores_the_page_then_waits(engine, api, clock, mock_db):
    page(api).respond(200, json=listing(PAGE1, after=PAGE1[-1]["data"]["name"]), headers={
        "x-ratelimit-used": "600", "x-ratelimit-remaining": "0.0", "x-ratelimit-reset": "120"})
    await add(engine)

    result = await engine.run("initial")

    assert result.new_items == 3
    network = await engine.network()
    due = clock.now + timedelta(seconds=120 + engine.schedule.rate_limit_slack)
    assert network["scheduledTo"] == due and network["rateLimitedUntil"] == due
    assert network["cursor"]["next"] == PAGE1[-1]["data"]["name"]
    assert "rate limit low" in network["lastOutcome"]["reason"]
    assert (await mock_db.services.find_one({"_id": "reddit_saved"}))["pausedUntil"] == due


async def test_a_fractional_remaining_above_the_floor_does_not_wait(engine, api):
    page(api).respond(200, json=listing(PAGE3), headers={
        "x-ratelimit-used": "598", "x-ratelimit-remaining": "2.0", "x-ratelimit-reset": "120"})
    await add(engine)

    await engine.run("initial")

    assert await engine.due_in() == pytest.approx(engine.schedule.normal_interval)
    assert "rateLimitedUntil" not in await engine.network()


async def test_429_with_retry_after_waits_that_long(engine, api):
    page(api).respond(429, json={"message": "Too Many Requests", "error": 429}, headers={"Retry-After": "45"})
    await add(engine)

    await engine.run("initial")

    network = await engine.network()
    assert network["lastOutcome"]["kind"] == "rate_limited" and network["errors"] == 0
    assert await engine.due_in() == pytest.approx(45 + engine.schedule.rate_limit_slack)


async def test_429_without_headers_waits_a_minute_for_the_whole_service(engine, api, mock_db, clock):
    page(api).respond(429, json={"message": "Too Many Requests", "error": 429})
    await add(engine)

    await engine.run("initial")

    assert await engine.due_in() == pytest.approx(60 + engine.schedule.rate_limit_slack)
    paused = await mock_db.services.find_one({"_id": "reddit_saved"})
    assert (paused["pausedUntil"] - clock.now).total_seconds() == pytest.approx(60 + engine.schedule.rate_limit_slack)


# -- failures ----------------------------------------------------------------------------------


async def test_401_disables_the_network_as_unauthorized(engine, api, clock):
    page(api).respond(401, json={"message": "Unauthorized", "error": 401}, headers=LIMITS)
    await add(engine)

    result = await engine.confirm_unauthorized("initial")

    assert result.outcome.kind == "unauthorized"
    network = await engine.network()
    assert network["disabled"] is True and network["unauthorized"] is True
    assert network["scheduledTo"] is None
    assert network["disabledReason"].startswith("unauthorized: HTTP 401")
    for text in (network["disabledReason"], network["lastError"]["message"], network["lastOutcome"]["reason"]):
        assert TOKEN not in text


async def test_403_for_someone_elses_listing_is_forbidden(engine, api):
    """Reddit answers 403 for another user's saved/upvoted listing: the same request can never succeed."""
    page(api).respond(403, json={"message": "Forbidden", "error": 403}, headers=LIMITS)
    await add(engine)

    await engine.run("initial")

    network = await engine.network()
    assert network["disabled"] is True and network["scheduledTo"] is None
    assert network["lastError"]["kind"] == "forbidden"
    assert not network.get("unauthorized")


async def test_a_missing_username_disables_the_network_without_a_request(engine):
    with respx.mock(assert_all_called=False) as api:
        route = api.get(host="oauth.reddit.test")
        await engine.add()  # no options.username

        result = await engine.run("initial")

    assert result.outcome.kind == "permanent"
    assert not route.called
    network = await engine.network()
    assert network["disabled"] is True and not network["unauthorized"]
    assert "options.username" in network["disabledReason"]


async def test_a_username_that_is_not_one_is_refused(engine):
    with respx.mock(assert_all_called=False) as api:
        route = api.get(host="oauth.reddit.test")
        await engine.add(options={"username": "../api/v1/me"})

        result = await engine.run("initial")

    assert result.outcome.kind == "permanent" and not route.called


async def test_invalid_json_is_bad_json(engine, api):
    page(api).respond(200, text='{"kind": "Listing", "data": {"children": [', headers={
        "content-type": "application/json; charset=UTF-8", **LIMITS})
    await add(engine)

    result = await engine.run("initial")

    assert result.outcome.kind == "transient"
    network = await engine.network()
    assert network["lastError"]["kind"] == "bad_json" and network["errors"] == 1
    assert await engine.items() == []


@pytest.mark.parametrize("body", [
    [listing(PAGE1)],  # not an object
    {"kind": "t3", "data": PAGE1[0]["data"]},  # not a Listing
    {"kind": "Listing", "data": {"children": {"0": PAGE1[0]}, "after": None}},  # children not a list
    {"kind": "Listing", "data": {"children": PAGE1, "after": 42}},  # a cursor that is not a fullname
    listing([{"kind": "t3", "data": {"title": "no fullname"}}]),
])
async def test_an_unexpected_shape_is_bad_response(engine, api, body):
    page(api).respond(200, json=body, headers=LIMITS)
    await add(engine)

    await engine.run("initial")

    network = await engine.network()
    assert network["lastError"]["kind"] == "bad_response"
    assert network["cursor"] == {}
    assert await engine.items() == []


async def test_the_after_cursor_never_takes_the_token_to_another_host(engine):
    """Reddit pages by fullname, not by link: whatever `after` holds stays a parameter to the base URL."""
    with respx.mock(assert_all_called=False) as api:
        evil = api.get(host="evil.example").respond(200, json=listing(PAGE1))
        ours = api.get(SAVED).respond(200, json=listing(PAGE3), headers=LIMITS)
        await add(engine, cursor={"next": "https://evil.example/user/x/saved", "stop": None, "top": TOP})

        await engine.run("initial")

    assert not evil.called
    request = ours.calls.last.request
    assert request.url.host == "oauth.reddit.test"
    assert request.url.params["after"] == "https://evil.example/user/x/saved"


# -- the sandbox API over real HTTP ------------------------------------------------------------


async def test_sandbox_backfill_then_new_items_in_normal_mode(mock_db, clock):
    server = Server(Sandbox(page_cap=4)).start()
    try:
        sandbox = server.sandbox
        token = f"sandbox-reddit-{id(mock_db)}"
        sandbox.add_user("reddit_saved", token, 10, name="sandbox_alice")
        settings = make_settings(http={"user_agent": UA}, services={"reddit_saved": {"base_url": server.url}})
        async for engine in make_engine(mock_db, settings, clock):
            engine.token = token
            await engine.add(options={"username": "sandbox_alice"})
            runs = 0
            while (await engine.network())["mode"] == "initial":
                result = await engine.run_when_due("initial") if runs else await engine.run("initial")
                assert result.outcome.kind == "page", (await engine.network()).get("lastError")
                runs += 1
                assert runs < 10
            assert runs == 3  # 4 + 4 + 2
            assert len(await engine.items()) == 10 == sandbox.stats()["unique_served"][token]

            sandbox.add_items(token, 3)
            before = sandbox.stats()["by_token"][token]
            result = await engine.run_when_due("normal")
            assert result.new_items == 3
            assert sandbox.stats()["by_token"][token] == before + 1  # one request
            quiet = await engine.run_when_due("normal")
            assert quiet.new_items == 0 and sandbox.stats()["by_token"][token] == before + 2

            stored = len(await engine.items())
            assert stored == 13 == sandbox.stats()["unique_served"][token]
            titles = {item["title"] for item in await engine.items()}
            assert "Post 13 & <friends>" in titles  # raw_json=1 was sent: no &amp;
        assert not any(token in target for target in sandbox.log)
    finally:
        server.stop()


async def test_sandbox_rate_limit_fault_pauses_the_service_until_the_reset(mock_db, clock):
    server = Server(Sandbox(page_cap=4)).start()
    try:
        token = f"sandbox-reddit-limited-{id(mock_db)}"
        server.sandbox.add_user("reddit_saved", token, 5, name="sandbox_bob")
        server.sandbox.inject(token, "rate_limit", seconds=300)
        settings = make_settings(http={"user_agent": UA}, services={"reddit_saved": {"base_url": server.url}})
        async for engine in make_engine(mock_db, settings, clock):
            engine.token = token
            await engine.add(options={"username": "sandbox_bob"})
            result = await engine.run("initial")
            assert result.outcome.kind == "rate_limited" and result.outcome.status == 429
            wait = await engine.due_in()
            assert 295 <= wait <= 302 + engine.schedule.rate_limit_slack
            assert await mock_db.services.find_one({"_id": "reddit_saved"})
    finally:
        server.stop()


async def test_sandbox_limit_headers_riding_on_a_page_store_it_then_pause(mock_db, clock):
    server = Server(Sandbox(page_cap=4)).start()
    try:
        token = f"sandbox-reddit-ride-{id(mock_db)}"
        server.sandbox.add_user("reddit_saved", token, 6, name="sandbox_ride")
        server.sandbox.inject(token, "headers", status=200, headers={
            "x-ratelimit-used": "100", "x-ratelimit-remaining": "0.0", "x-ratelimit-reset": "120"})
        settings = make_settings(http={"user_agent": UA}, services={"reddit_saved": {"base_url": server.url}})
        async for engine in make_engine(mock_db, settings, clock):
            engine.token = token
            await engine.add(options={"username": "sandbox_ride"})
            result = await engine.run("initial")
            assert result.outcome.kind == "page" and result.new_items == 4
            assert await engine.due_in() == pytest.approx(120 + engine.schedule.rate_limit_slack)
            assert await mock_db.services.find_one({"_id": "reddit_saved"})
            assert len(await engine.items()) == server.sandbox.stats()["unique_served"][token] == 4
    finally:
        server.stop()


async def test_a_relative_reset_counts_from_the_answer_not_from_when_the_run_began(engine, api, clock, mock_db):
    """x-ratelimit-reset is seconds from the answer: a request that took 20 s must not shorten the wait."""
    began = clock.now

    def slow(request):
        clock.advance(20)  # the answer came 20 s after the run began
        return httpx.Response(200, json=listing(PAGE1, after=PAGE1[-1]["data"]["name"]), headers={
            "x-ratelimit-used": "600", "x-ratelimit-remaining": "0.0", "x-ratelimit-reset": "120"})

    page(api).mock(side_effect=slow)
    await add(engine)
    await engine.run("initial")
    due = began + timedelta(seconds=20 + 120 + engine.schedule.rate_limit_slack)
    network = await engine.network()
    assert network["lastOutcome"]["kind"] == "page", network["lastOutcome"]
    assert network["scheduledTo"] == due and network["rateLimitedUntil"] == due
    assert (await mock_db.services.find_one({"_id": "reddit_saved"}))["pausedUntil"] == due
