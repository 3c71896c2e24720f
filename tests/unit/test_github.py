"""The GitHub connector driven through the engine: claim -> Executor.run -> network state and items in MongoDB.

HTTP is mocked with respx against the replies Likeastore recorded, read from ../shared/fixtures/likeastore beside
the clone (the tests that need them skip, saying why, where they are absent; tests/conftest.py):
init.json (30 repos, newest first), normal.new.json (one new repo, 6522994, on top of the 30) and
normal.nonew.json (the same 30).
"""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import respx

from collector import sdk
from tests.conftest import fixture_json
from tests.harness import Engine, claim_one, engine_for

TOKEN = "ghp_secret123456"
API = "https://api.github.test"
STARRED = f"{API}/user/starred"
FIRST_PAGE_PARAMS = {"per_page": "100", "sort": "created", "direction": "desc"}
PAGE_2 = f"{STARRED}?per_page=100&sort=created&direction=desc&page=2"
LAST = PAGE_2  # a two-page history
ETAG = 'W/"5f1e8c2b0a7d"'
NEW_ETAG = 'W/"9a0b1c2d3e4f"'


def init() -> list[dict[str, Any]]:
    """init.json, read when a test needs it: without the recordings that test skips, saying why."""
    return fixture_json("github.connector.init.json")


def init_ids() -> list[str]:
    return [str(repo["id"]) for repo in init()]


def link(next_url: str | None = None, last_url: str | None = None) -> dict[str, str]:
    rels = [f'<{url}>; rel="{rel}"' for rel, url in (("next", next_url), ("last", last_url)) if url]
    return {"Link": ", ".join(rels)} if rels else {}


def older_repo(repo_id: int) -> dict[str, Any]:
    """A repository starred before everything in init.json (what page 2 of the history holds)."""
    repo = copy.deepcopy(init()[-1])
    repo.update(id=repo_id, name=f"old-{repo_id}", full_name=f"someone/old-{repo_id}",
                html_url=f"https://github.com/someone/old-{repo_id}")
    return repo


@pytest.fixture
async def engine(mock_db, settings, clock):
    async for engine in engine_for("github", TOKEN, mock_db, settings, clock):
        yield engine


def page_one(api: respx.MockRouter) -> respx.Route:
    """The first page of the starred list, newest star first, as many per page as GitHub allows."""
    return api.get(STARRED, params__eq=FIRST_PAGE_PARAMS)


def assert_sent_by_the_book(request: httpx.Request) -> None:
    assert request.headers["Authorization"] == f"Bearer {TOKEN}"
    assert request.headers["Accept"] == "application/vnd.github.star+json"
    assert TOKEN not in str(request.url)
    assert "token" not in request.url.params


async def finish_initial_sweep(engine: Engine, api: respx.MockRouter) -> None:
    """Back-fill a one-page history (init.json): the network ends in normal mode, stop at its top."""
    api.get(STARRED, params__eq=FIRST_PAGE_PARAMS, name="backfill").respond(200, json=init(), headers={"ETag": ETAG})
    await engine.add()
    await engine.run("initial")
    assert api.routes.pop("backfill").called  # from now on the test's own routes answer
    network = await engine.network()
    assert network["mode"] == "normal"
    assert network["cursor"] == {"etag": ETAG, "stop": "6522993"}


# -- initial mode: the back-fill ---------------------------------------------------------------


@pytest.mark.recorded
async def test_initial_first_page_stores_items_and_follows_the_next_link(engine, api):
    route = page_one(api).respond(200, json=init(), headers={"ETag": ETAG, **link(PAGE_2, LAST)})
    await engine.add()

    result = await engine.run("initial")

    assert result.saved and result.new_items == 30
    assert await engine.item_ids() == set(init_ids())
    network = await engine.network()
    assert network["mode"] == "initial"
    assert network["cursor"] == {"etag": ETAG, "next": PAGE_2, "stop": None, "top": "6522993"}
    assert network["errors"] == 0
    assert network["lastOutcome"]["kind"] == "page"
    assert network["stats"] == {"runs": 1, "page": 1, "items": 30}
    assert "lease" not in network
    assert await engine.due_in() == pytest.approx(engine.schedule.initial_pace)

    request = route.calls.last.request
    assert_sent_by_the_book(request)
    assert request.url.params["per_page"] == "100"
    assert "If-None-Match" not in request.headers


@pytest.mark.recorded
async def test_items_carry_the_repository_fields(engine, api):
    page_one(api).respond(200, json=init())
    await engine.add()
    await engine.run("initial")

    item = await engine.store.items.find_one({"itemId": "6522993"})
    repo = init()[0]
    assert item["title"] == repo["full_name"]
    assert item["url"] == repo["html_url"]
    assert item["author"] == repo["owner"]["login"]
    assert item["created"] == sdk.parse_time(repo["created_at"])  # plain repos: no starred_at
    assert item["raw"] == repo
    assert item["network"] == (await engine.network())["_id"]


@pytest.mark.recorded
async def test_star_json_entries_take_created_from_starred_at(engine, api):
    # newest star first, one a minute
    starred = [{"starred_at": f"2026-11-24T10:{59 - n:02d}:00Z", "repo": repo} for n, repo in enumerate(init())]
    page_one(api).respond(200, json=starred)
    await engine.add()

    result = await engine.run("initial")

    assert result.new_items == 30
    item = await engine.store.items.find_one({"itemId": "6522993"})
    assert item["created"] == datetime(2026, 11, 24, 10, 59, tzinfo=UTC)
    oldest = await engine.store.items.find_one({"itemId": init_ids()[-1]})
    assert oldest["created"] == datetime(2026, 11, 24, 10, 30, tzinfo=UTC)
    assert item["title"] == init()[0]["full_name"]
    assert item["author"] == init()[0]["owner"]["login"]
    assert item["raw"] == starred[0]
    assert (await engine.network())["cursor"]["stop"] == "6522993"


@pytest.mark.recorded
async def test_last_page_switches_to_normal_and_keeps_the_first_page_etag(engine, api):
    page_one(api).respond(200, json=init(), headers={"ETag": ETAG, **link(PAGE_2, LAST)})
    page_two = api.get(PAGE_2).respond(200, json=[older_repo(1001), older_repo(1000)],
                                       headers={"ETag": 'W/"page-two"', **link(last_url=LAST)})
    await engine.add()
    await engine.run("initial")

    result = await engine.run_when_due("initial")

    assert result.new_items == 2
    network = await engine.network()
    assert network["mode"] == "normal"
    assert network["cursor"] == {"etag": ETAG, "stop": "6522993"}
    assert await engine.item_ids() == {*init_ids(), "1001", "1000"}
    assert await engine.due_in() == pytest.approx(engine.schedule.normal_interval)
    assert network["lastOutcome"]["reason"].endswith("history exhausted: switching to normal")
    request = page_two.calls.last.request
    assert str(request.url) == PAGE_2
    assert_sent_by_the_book(request)
    assert "If-None-Match" not in request.headers


# -- normal mode: incremental runs -------------------------------------------------------------


async def test_normal_sends_the_etag_and_a_304_stores_nothing(engine, api):
    await engine.add(mode="normal", cursor={"etag": ETAG, "stop": "6522993"})
    route = api.get(STARRED, headers={"If-None-Match": ETAG}).respond(304, headers={"ETag": ETAG})

    result = await engine.run("normal")

    assert result.saved and result.new_items == 0
    assert await engine.items() == []
    network = await engine.network()
    assert network["mode"] == "normal"
    assert network["cursor"] == {"etag": ETAG, "stop": "6522993"}
    assert network["lastOutcome"]["kind"] == "not_modified"
    assert network["errors"] == 0
    assert await engine.due_in() == pytest.approx(engine.schedule.normal_interval)
    assert_sent_by_the_book(route.calls.last.request)


@pytest.mark.recorded
async def test_normal_with_one_new_star_stores_exactly_that_one(engine, api):
    await finish_initial_sweep(engine, api)
    new = fixture_json("github.connector.normal.new.json")
    route = api.get(STARRED, headers={"If-None-Match": ETAG}).respond(200, json=new, headers={"ETag": NEW_ETAG})

    result = await engine.run_when_due("normal")

    assert result.new_items == 1
    assert result.outcome.items == 1  # stopped at the known 6522993: the 30 below it are not even passed on
    assert await engine.item_ids() == {"6522994", *init_ids()}
    network = await engine.network()
    assert network["mode"] == "normal"
    assert network["cursor"] == {"etag": NEW_ETAG, "stop": "6522994"}
    assert network["stats"]["items"] == 31
    assert await engine.due_in() == pytest.approx(engine.schedule.normal_interval)
    assert route.call_count == 1


@pytest.mark.recorded
async def test_normal_without_new_stars_stores_nothing_new(engine, api):
    await finish_initial_sweep(engine, api)
    nonew = fixture_json("github.connector.normal.nonew.json")
    api.get(STARRED, headers={"If-None-Match": ETAG}).respond(200, json=nonew, headers={"ETag": NEW_ETAG})

    result = await engine.run_when_due("normal")

    assert result.new_items == 0 and result.outcome.items == 0
    assert len(await engine.items()) == 30
    network = await engine.network()
    assert network["cursor"] == {"etag": NEW_ETAG, "stop": "6522993"}
    assert network["lastOutcome"]["reason"] == "nothing new"


@pytest.mark.recorded
async def test_the_same_page_run_twice_stores_no_duplicates(engine, api, clock):
    """A run whose state write is lost (lease taken over) is run again: items are upserts."""
    page_one(api).respond(200, json=init(), headers={"ETag": ETAG, **link(PAGE_2, LAST)})
    network_id = await engine.add()
    doc, lease = await claim_one(engine.store, "initial", "test-owner", clock.now, 60)
    await engine.store.networks.update_one({"_id": network_id}, {"$set": {"lease.id": "someone-else"}})

    first = await engine.executor.run(doc, lease)
    assert not first.saved and first.new_items == 30
    assert (await engine.network())["cursor"] == {}  # the state write was dropped

    clock.advance(61)  # the other lease expires: the same page is due again
    second = await engine.run("initial")

    assert second.saved and second.new_items == 0
    assert len(await engine.items()) == 30
    assert await engine.store.items.count_documents({"itemId": "6522993"}) == 1


# -- rate limits -------------------------------------------------------------------------------


@pytest.mark.recorded
async def test_last_request_of_the_quota_stores_the_page_and_waits_for_the_reset(engine, api, clock):
    reset = clock.now + timedelta(hours=1)
    page_one(api).respond(200, json=init(), headers={
        "x-ratelimit-limit": "5000", "x-ratelimit-remaining": "0", "x-ratelimit-reset": str(int(reset.timestamp())),
        **link(PAGE_2, LAST)})
    await engine.add()

    result = await engine.run("initial")

    assert result.new_items == 30
    network = await engine.network()
    assert network["mode"] == "initial"
    assert network["cursor"]["next"] == PAGE_2
    assert network["scheduledTo"] == reset + timedelta(seconds=engine.schedule.rate_limit_slack)
    assert network["rateLimitedUntil"] == network["scheduledTo"]
    assert "rate limit low" in network["lastOutcome"]["reason"]


async def test_403_with_nothing_remaining_waits_for_the_reset(engine, api, clock):
    reset = clock.now + timedelta(hours=1)
    page_one(api).respond(403, json={"message": "API rate limit exceeded for user ID 1."}, headers={
        "x-ratelimit-limit": "5000", "x-ratelimit-remaining": "0", "x-ratelimit-reset": str(int(reset.timestamp()))})
    await engine.add(errors=2, cursor={"stop": "6522993"})

    result = await engine.run("initial")

    assert result.outcome.kind == "rate_limited"
    assert await engine.items() == []
    network = await engine.network()
    assert network["errors"] == 2  # a rate limit is not a failure
    assert network["mode"] == "initial"
    assert network["cursor"] == {"stop": "6522993"}
    assert network["scheduledTo"] == reset + timedelta(seconds=engine.schedule.rate_limit_slack)
    assert network["lastError"]["kind"] == "rate_limited"
    assert network["lastError"]["status"] == 403
    assert not network.get("disabled")


async def test_429_waits_retry_after(engine, api):
    page_one(api).respond(429, headers={"Retry-After": "120"})
    await engine.add()

    await engine.run("initial")

    network = await engine.network()
    assert network["errors"] == 0
    assert network["lastOutcome"]["kind"] == "rate_limited"
    assert await engine.due_in() == pytest.approx(120 + engine.schedule.rate_limit_slack)


SECONDARY = {"message": "You have exceeded a secondary rate limit. Please wait a few minutes before you try again.",
             "documentation_url": "https://docs.github.com/rest/overview/rate-limits-for-the-rest-api"}
# GitHub's older wording of the same limit: it used to be a transient error (30 s, counted toward disabling)
ABUSE = {"message": "You have triggered an abuse detection mechanism. Please wait a few minutes before you try again.",
         "documentation_url": "https://developer.github.com/v3/#abuse-rate-limits"}


@pytest.mark.parametrize("body", [SECONDARY, ABUSE], ids=["secondary", "abuse-detection"])
async def test_secondary_rate_limit_without_headers_waits_a_minute(engine, api, body):
    page_one(api).respond(403, json=body)
    await engine.add()

    result = await engine.run("initial")

    assert result.outcome.kind == "rate_limited"
    network = await engine.network()
    assert network["errors"] == 0 and network["rateLimitStreak"] == 1
    assert await engine.due_in() == pytest.approx(60 + engine.schedule.rate_limit_slack)


async def test_secondary_rate_limit_honours_a_longer_retry_after(engine, api):
    page_one(api).respond(403, headers={"Retry-After": "300"},
                          json={"message": "You have exceeded a secondary rate limit."})
    await engine.add()

    await engine.run("initial")

    assert await engine.due_in() == pytest.approx(300 + engine.schedule.rate_limit_slack)


@pytest.mark.recorded
async def test_repeated_secondary_limits_wait_exponentially_longer_then_park_and_a_success_resets(engine, api):
    """GitHub's "Rate limits for the REST API": without retry-after, wait at least a minute; if the request keeps
    failing on a secondary limit, wait an exponentially increasing time, and give up after a number of retries.
    The daemon used to retry every ~60 s for ever."""
    secondary = page_one(api).respond(403, json=SECONDARY)
    await engine.add()
    waits = []
    for _ in range(engine.schedule.park_after - 1):
        await engine.run_when_due("initial")
        waits.append(round(await engine.due_in() - engine.schedule.rate_limit_slack))
    assert waits == [60, 120, 240, 480, 960]
    network = await engine.network()
    assert network["rateLimitStreak"] == 5 and network["errors"] == 0 and not network.get("parkedAt")
    await engine.run_when_due("initial")  # the sixth in a row: parked (not disabled) for a long cool-down
    network = await engine.network()
    assert network["parkedReason"].startswith("parked after 6 rate limits in a row") and not network.get("disabled")
    assert await engine.due_in() == pytest.approx(engine.schedule.park_for)
    assert secondary.call_count == 6
    page_one(api).respond(200, json=fixture_json("github.connector.init.json"))
    await engine.run_when_due("initial")  # the cool-down over, a success: the streak and the park end
    network = await engine.network()
    assert "rateLimitStreak" not in network and "parkedAt" not in network and "parkedReason" not in network


# -- failures ----------------------------------------------------------------------------------


async def test_401_disables_the_network_as_unauthorized(engine, api, clock):
    page_one(api).respond(401, json={"message": "Bad credentials", "token": TOKEN})
    await engine.add()

    result = await engine.confirm_unauthorized("initial")

    assert result.outcome.kind == "unauthorized"
    network = await engine.network()
    assert network["disabled"] is True
    assert network["unauthorized"] is True
    assert network["scheduledTo"] is None
    assert network["disabledReason"].startswith("unauthorized: HTTP 401")
    assert "Bad credentials" in network["disabledReason"]
    assert network["lastError"]["kind"] == "unauthorized"
    for text in (network["disabledReason"], network["lastError"]["message"], network["lastOutcome"]["reason"]):
        assert TOKEN not in text
    assert await claim_one(engine.store, "initial", "test-owner", clock.now + timedelta(days=3650), 60) is None


async def test_500_is_retried_with_backoff(engine, api):
    page_one(api).respond(500, text="Internal Server Error")
    await engine.add(cursor={"stop": "6522993"})

    result = await engine.run("initial")

    assert result.outcome.kind == "transient"
    network = await engine.network()
    assert network["errors"] == 1
    assert network["mode"] == "initial"
    assert network["cursor"] == {"stop": "6522993"}
    assert network["lastError"]["kind"] == "http_5xx"
    assert network["lastError"]["status"] == 500
    assert not network.get("disabled")
    assert await engine.due_in() == pytest.approx(engine.schedule.backoff_base)


async def test_repeated_failures_disable_the_network(engine, api):
    """max_errors failures in a row that span disable_after (a day by default) since the first one."""
    page_one(api).respond(502)
    await engine.add(errors=engine.schedule.max_errors - 1,
                     failingSince=engine.clock.now - timedelta(seconds=engine.schedule.disable_after))

    await engine.run("initial")

    network = await engine.network()
    assert network["disabled"] is True
    assert not network["unauthorized"]
    assert network["errors"] == engine.schedule.max_errors
    assert network["scheduledTo"] is None


async def test_a_403_with_quota_left_is_a_permission_error(engine, api):
    """GitHub's "Rate limits for the REST API": a primary limit is a 403/429 with `x-ratelimit-remaining: 0`, a
    secondary one says so in its message (or sends retry-after). A 403 with neither is the token or the app
    lacking a permission: `forbidden`, disabled with the reason at once, not retried for a day."""
    page_one(api).respond(403, json={"message": "Resource not accessible by integration",
                                     "documentation_url": "https://docs.github.com/rest/activity/starring"},
                          headers={"x-ratelimit-limit": "5000", "x-ratelimit-remaining": "4990",
                                   "x-ratelimit-reset": "9999999999", "x-ratelimit-resource": "core"})
    await engine.add()

    result = await engine.run("initial")

    assert result.outcome.kind == "permanent" and result.outcome.error == "forbidden"
    network = await engine.network()
    assert network["disabled"] is True and not network["unauthorized"] and network["scheduledTo"] is None
    assert network["errors"] == 0 and network["lastError"]["kind"] == "forbidden"
    assert network["disabledReason"].startswith("forbidden: HTTP 403")
    assert "Resource not accessible by integration" in network["disabledReason"]


async def test_invalid_json_is_bad_json(engine, api):
    page_one(api).respond(200, text='[{"id": 1, "full_name": ', headers={"content-type": "application/json"})
    await engine.add()

    result = await engine.run("initial")

    assert result.outcome.kind == "transient"
    network = await engine.network()
    assert network["lastError"]["kind"] == "bad_json"
    assert network["errors"] == 1
    assert await engine.items() == []


async def test_an_unexpected_shape_is_bad_response(engine, api):
    page_one(api).respond(200, json={"message": "not a list"})
    await engine.add()

    await engine.run("initial")

    network = await engine.network()
    assert network["lastError"]["kind"] == "bad_response"
    assert await engine.items() == []


@pytest.mark.recorded
async def test_a_link_to_another_host_fails_and_the_token_never_goes_there(engine):
    elsewhere = "https://api.github.test.evil.example/user/starred?page=2"
    with respx.mock(assert_all_called=False) as api:  # the other host must stay uncalled
        page_one(api).respond(200, json=init(), headers=link(elsewhere))
        evil = api.get(host="api.github.test.evil.example").respond(200, json=[])
        await engine.add()

        result = await engine.run("initial")
        # even if the broken page were run again, the stored cursor leads nowhere else
        engine.clock.now = (await engine.network())["scheduledTo"]
        await engine.run("initial")

    assert result.outcome.kind == "transient"
    assert not evil.called
    network = await engine.network()
    assert network["lastError"]["kind"] == "bad_response"
    assert "outside the configured base URL" in network["lastError"]["message"]
    assert network["cursor"] == {}
    assert await engine.items() == []


@pytest.mark.recorded
async def test_a_stored_next_link_to_another_host_is_never_requested(engine):
    with respx.mock(assert_all_called=False) as api:
        evil = api.get(host="evil.example").respond(200, json=init())
        await engine.add(cursor={"next": "https://evil.example/user/starred?page=2", "stop": None, "top": "1"})

        result = await engine.run("initial")

    assert result.outcome.kind == "transient"
    assert not evil.called
    network = await engine.network()
    assert network["lastError"]["kind"] == "bad_response"
    assert network["errors"] == 1
    assert await engine.items() == []
