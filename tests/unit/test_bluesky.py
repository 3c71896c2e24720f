"""The Bluesky likes connector driven through the engine: claim -> Executor.run -> network, items, services.

HTTP is mocked with respx; replies are shaped as a PDS sends them for app.bsky.feed.getActorLikes:
{"feed": [{"post": postView}], "cursor"?} (no cursor at the end), ratelimit-limit/remaining/reset
(Unix seconds)/policy headers, XRPC errors {"error": ..., "message": ...} (expired and invalid
tokens as HTTP 400). The last tests run against the sandbox API over HTTP.
"""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import respx
from collector.connectors.bluesky import BlueskyLikes, token_did

from collector import http, sdk
from collector.documents import mongo_safe
from collector.executor import Executor
from collector.plugins import Registered
from collector.sandbox.apis.bluesky import handle as sandbox_handle
from collector.store import Store
from tests.conftest import Clock, make_settings
from tests.harness import Engine

API = "https://pds.bsky.test"
LIKES = f"{API}/xrpc/app.bsky.feed.getActorLikes"
DID = "did:plc:ewvi7nxzyoun6zhxrhs64oiz"
REGISTRY = {"bluesky": Registered("bluesky", BlueskyLikes, "collector", "test")}
RESET = int(Clock().now.timestamp()) + 300  # the window ends 300 s after the test clock's start


def b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def jwt(sub: str) -> str:
    """An access JWT as createSession hands it out (the signature is not ours to check)."""
    return ".".join([b64({"typ": "at+jwt", "alg": "HS256"}),
                     b64({"scope": "com.atproto.appPass", "sub": sub, "iat": 1764068400, "exp": 1764075600,
                          "aud": "did:web:morel.us-east.host.bsky.network"}), "c2lnbmF0dXJlLW5vdC1jaGVja2Vk"])


TOKEN = jwt(DID)


def limits(remaining: int = 2990, reset: int = RESET) -> dict[str, str]:
    return {"ratelimit-limit": "3000", "ratelimit-remaining": str(remaining), "ratelimit-reset": str(reset),
            "ratelimit-policy": "3000;w=300"}


def liked(n: int, text: str | None = None, author: str | None = None) -> dict[str, Any]:
    author_did = f"did:plc:author{n:04d}xxxxxxxxxxxxxx"
    rkey = f"3kz{n:010d}"
    record = {"$type": "app.bsky.feed.post", "text": f"Post number {n} & friends" if text is None else text,
              "langs": ["en"], "createdAt": f"2026-11-{10 + n % 10:02d}T08:00:00.000Z"}
    return {"post": {
        "uri": f"at://{author_did}/app.bsky.feed.post/{rkey}",
        "cid": f"bafyreib{n:052d}",
        "author": {"did": author_did, "handle": author or f"poster{n}.bsky.social", "displayName": f"Poster {n}",
                   "labels": []},
        "record": record, "replyCount": 0, "repostCount": 1, "likeCount": 5, "quoteCount": 0,
        "indexedAt": record["createdAt"],
        "viewer": {"like": f"at://{DID}/app.bsky.feed.like/3la{n:010d}"}, "labels": []}}


def uris(entries: list[dict[str, Any]]) -> set[str]:
    return {e["post"]["uri"] for e in entries}


PAGE1 = [liked(n) for n in (18, 17, 16)]
PAGE2 = [liked(n) for n in (15, 14, 13)]
PAGE3 = [liked(n) for n in (12, 11)]
TOP = PAGE1[0]["post"]["uri"]
C1, C2 = "1764000000000::bafyreic1", "1763000000000::bafyreic2"


@pytest.fixture
def settings():
    # respx mocks httpx's own transport (httpcore): the daemon's clients over it here
    return make_settings(http={"transport": "httpx"}, services={"bluesky": {"base_url": API}})


async def make_engine(mock_db, settings, clock, token: str = TOKEN):
    store = Store(mock_db)
    await store.ensure_indexes()
    async with http.make_client(settings) as client:
        yield Engine(store, Executor(store, client, settings, REGISTRY, clock=clock), clock, settings, "bluesky", token)


@pytest.fixture
async def engine(mock_db, settings, clock):
    async for engine in make_engine(mock_db, settings, clock):
        yield engine


def page(api: respx.MockRouter, cursor: str | None = None, actor: str = DID, **name: str) -> respx.Route:
    params = {"actor": actor, "limit": "100", **({"cursor": cursor} if cursor else {})}
    return api.get(LIKES, params__eq=params, **name)


def body(entries: list[dict[str, Any]], cursor: str | None = None) -> dict[str, Any]:
    return {"feed": entries, **({"cursor": cursor} if cursor else {})}


def assert_sent_by_the_book(request) -> None:
    assert request.headers["Authorization"] == f"Bearer {TOKEN}"
    assert TOKEN not in str(request.url)


# -- initial mode: the back-fill ---------------------------------------------------------------


async def test_initial_backfill_over_three_pages_stores_every_item_once_and_switches_to_normal(engine, api):
    one = page(api).respond(200, json=body(PAGE1, C1), headers=limits())
    two = page(api, C1).respond(200, json=body(PAGE2, C2), headers=limits())
    three = page(api, C2).respond(200, json=body(PAGE3), headers=limits())  # no cursor: the end
    await engine.add()  # no options.actor: the DID of the token holder

    first = await engine.run("initial")
    network = await engine.network()
    assert first.new_items == 3 and network["mode"] == "initial"
    assert network["cursor"] == {"next": C1, "stop": None, "top": TOP}
    second = await engine.run_when_due("initial")
    third = await engine.run_when_due("initial")

    assert (second.new_items, third.new_items) == (3, 2)
    assert await engine.item_ids() == uris(PAGE1 + PAGE2 + PAGE3)
    assert len(await engine.items()) == 8
    network = await engine.network()
    assert network["mode"] == "normal"
    assert network["cursor"] == {"stop": TOP}
    assert await engine.due_in() == pytest.approx(engine.schedule.normal_interval)
    for route in (one, two, three):
        assert route.call_count == 1
        assert_sent_by_the_book(route.calls.last.request)


async def test_items_carry_the_post_fields(engine, api):
    page(api).respond(200, json=body([*PAGE1, liked(9, text="", author="handle.invalid")]), headers=limits())
    await engine.add()
    await engine.run("initial")

    item = await engine.store.items.find_one({"itemId": TOP})
    assert item["title"] == "Post number 18 & friends"
    assert item["url"] == "https://bsky.app/profile/poster18.bsky.social/post/3kz0000000018"
    assert item["author"] == "poster18.bsky.social"
    assert item["created"] == sdk.parse_time("2026-11-18T08:00:00.000Z")
    assert item["raw"] == mongo_safe(PAGE1[0])  # stored with `$type` as `\uff04type` (see store.mongo_safe)
    assert item["raw"]["post"]["record"]["\uff04type"] == "app.bsky.feed.post"
    bare = await engine.store.items.find_one({"itemId": liked(9)["post"]["uri"]})
    assert bare["title"] is None  # an image-only post has no text
    assert bare["url"] == "https://bsky.app/profile/did:plc:author0009xxxxxxxxxxxxxx/post/3kz0000000009"


@pytest.mark.parametrize("option, actor", [("alice.bsky.social", "alice.bsky.social"),
                                           ("@alice.bsky.social", "alice.bsky.social"),
                                           ("did:plc:abcdefghijklmnopqrstuvwx", "did:plc:abcdefghijklmnopqrstuvwx")])
async def test_options_actor_names_the_account(engine, api, option, actor):
    route = page(api, actor=actor).respond(200, json=body(PAGE3), headers=limits())
    await engine.add(options={"actor": option})

    result = await engine.run("initial")

    assert result.new_items == 2 and route.called


async def test_without_an_actor_or_a_did_in_the_token_the_network_is_disabled(mock_db, settings, clock):
    async for engine in make_engine(mock_db, settings, clock, token="an-opaque-token-without-claims"):
        with respx.mock(assert_all_called=False) as api:
            route = api.get(host="pds.bsky.test")
            await engine.add()
            result = await engine.run("initial")
        assert result.outcome.kind == "permanent" and not route.called
        network = await engine.network()
        assert network["disabled"] is True and not network["unauthorized"]
        assert "options.actor" in network["disabledReason"]


def test_token_did_reads_only_a_did_subject():
    assert token_did(TOKEN) == DID
    assert token_did(jwt("alice")) is None
    assert token_did("a.b.c") is None
    assert token_did("not-a-jwt") is None


async def test_a_malformed_actor_option_is_refused(engine):
    with respx.mock(assert_all_called=False) as api:
        route = api.get(host="pds.bsky.test")
        await engine.add(options={"actor": "not a handle/../x"})
        result = await engine.run("initial")
    assert result.outcome.kind == "permanent" and not route.called


# -- normal mode: incremental runs -------------------------------------------------------------


async def test_normal_with_nothing_new_costs_one_request_and_stores_nothing(engine, api):
    route = page(api).respond(200, json=body(PAGE1, C1), headers=limits())
    await engine.add(mode="normal", cursor={"stop": TOP})

    result = await engine.run("normal")

    assert route.call_count == 1
    assert result.new_items == 0 and await engine.items() == []
    network = await engine.network()
    assert network["cursor"] == {"stop": TOP}
    assert network["lastOutcome"]["reason"] == "nothing new"
    assert await engine.due_in() == pytest.approx(engine.schedule.normal_interval)


async def test_normal_with_new_items_stores_only_those(engine, api):
    fresh = [liked(20), liked(19)]
    route = page(api).respond(200, json=body(fresh + PAGE1, C1), headers=limits())
    await engine.add(mode="normal", cursor={"stop": TOP})

    result = await engine.run("normal")

    assert route.call_count == 1
    assert result.new_items == 2
    assert await engine.item_ids() == uris(fresh)
    assert (await engine.network())["cursor"] == {"stop": fresh[0]["post"]["uri"]}


async def test_a_page_emptied_by_filters_is_followed_while_its_cursor_moves(engine, api):
    """The AppView drops blocked and deleted posts after paging: a page may be empty yet not the last."""
    page(api).respond(200, json=body([], C1), headers=limits())
    page(api, C1).respond(200, json=body(PAGE3, C2), headers=limits())
    page(api, C2).respond(200, json=body([], C2), headers=limits())  # the same cursor again: the end
    await engine.add()

    first = await engine.run("initial")
    assert first.outcome.more and (await engine.network())["cursor"] == {"next": C1, "stop": None, "top": None}
    await engine.run_when_due("initial")
    last = await engine.run_when_due("initial")

    assert not last.outcome.more
    assert await engine.item_ids() == uris(PAGE3)
    network = await engine.network()
    assert network["mode"] == "normal"
    assert network["cursor"] == {"stop": PAGE3[0]["post"]["uri"]}


async def test_normal_mode_over_emptied_pages_keeps_its_stop(engine, api):
    fresh = liked(30)
    page(api).respond(200, json=body([], C1), headers=limits())
    page(api, C1).respond(200, json=body([fresh, *PAGE1], C2), headers=limits())
    await engine.add(mode="normal", cursor={"stop": TOP})

    await engine.run("normal")
    assert (await engine.network())["cursor"] == {"next": C1, "stop": TOP, "top": None}
    result = await engine.run_when_due("normal")

    assert result.new_items == 1 and await engine.item_ids() == {fresh["post"]["uri"]}
    assert (await engine.network())["cursor"] == {"stop": fresh["post"]["uri"]}


async def test_a_sweep_of_emptied_pages_only_keeps_the_old_stop(engine, api):
    page(api).respond(200, json=body([], C1), headers=limits())
    page(api, C1).respond(200, json=body([]), headers=limits())
    await engine.add(mode="normal", cursor={"stop": TOP})

    await engine.run("normal")
    await engine.run_when_due("normal")

    assert await engine.items() == []
    assert (await engine.network())["cursor"] == {"stop": TOP}  # not None: the next run is still one request


# -- rate limits -------------------------------------------------------------------------------


async def test_429_with_nothing_remaining_waits_for_the_reset_and_pauses_the_service(engine, api, clock, mock_db):
    page(api).respond(429, json={"error": "RateLimitExceeded", "message": "Rate Limit Exceeded"},
                      headers=limits(remaining=0))
    await engine.add(errors=2, cursor={"stop": TOP})

    result = await engine.run("initial")

    assert result.outcome.kind == "rate_limited" and result.outcome.status == 429
    network = await engine.network()
    due = clock.now + timedelta(seconds=300 + engine.schedule.rate_limit_slack)
    assert network["scheduledTo"] == due
    assert network["errors"] == 2 and network["cursor"] == {"stop": TOP}
    assert (await mock_db.services.find_one({"_id": "bluesky"}))["pausedUntil"] == due  # the limit is per IP


async def test_the_last_request_of_the_window_stores_the_page_then_waits(engine, api, clock, mock_db):
    page(api).respond(200, json=body(PAGE1, C1), headers=limits(remaining=0))
    await engine.add()

    result = await engine.run("initial")

    assert result.new_items == 3
    network = await engine.network()
    due = clock.now + timedelta(seconds=300 + engine.schedule.rate_limit_slack)
    assert network["scheduledTo"] == due and network["cursor"]["next"] == C1
    assert (await mock_db.services.find_one({"_id": "bluesky"}))["pausedUntil"] == due


async def test_429_with_retry_after_waits_that_long(engine, api):
    page(api).respond(429, json={"error": "RateLimitExceeded", "message": "Rate Limit Exceeded"},
                      headers={"Retry-After": "90"})
    await engine.add()

    await engine.run("initial")

    network = await engine.network()
    assert network["lastOutcome"]["kind"] == "rate_limited" and network["errors"] == 0
    assert await engine.due_in() == pytest.approx(90 + engine.schedule.rate_limit_slack)


# -- failures ----------------------------------------------------------------------------------


@pytest.mark.parametrize("status, error, message", [
    (400, "ExpiredToken", "Token has expired"),  # the PDS: an expired access JWT is a 400
    (400, "ExpiredToken", "Token has been revoked"),
    (400, "InvalidToken", "Token could not be verified"),
    (401, "ExpiredToken", "Token has expired"),  # the entryway / AppView
    (401, "AuthMissing", "Authentication Required"),
])
async def test_token_errors_disable_the_network_as_unauthorized(engine, api, status, error, message):
    page(api).respond(status, json={"error": error, "message": message}, headers=limits())
    await engine.add()

    result = await engine.confirm_unauthorized("initial")

    assert result.outcome.kind == "unauthorized"
    network = await engine.network()
    assert network["disabled"] is True and network["unauthorized"] is True
    assert error in network["disabledReason"]
    for text in (network["disabledReason"], network["lastError"]["message"], network["lastOutcome"]["reason"]):
        assert TOKEN not in text


async def test_another_accounts_likes_are_a_client_error_not_a_token_problem(engine, api):
    page(api).respond(400, json={"error": "InvalidRequest", "message": "Profile not found"}, headers=limits())
    await engine.add()

    await engine.run("initial")

    network = await engine.network()
    assert not network.get("unauthorized")
    assert network["errors"] == 1 and network["lastError"]["kind"] == "client_error"


async def test_500_is_retried_with_backoff(engine, api):
    page(api).respond(500, json={"error": "InternalServerError", "message": "Internal Server Error"})
    await engine.add()

    await engine.run("initial")

    network = await engine.network()
    assert network["lastError"]["kind"] == "http_5xx" and network["errors"] == 1
    assert await engine.due_in() == pytest.approx(engine.schedule.backoff_base)


async def test_invalid_json_is_bad_json(engine, api):
    page(api).respond(200, text='{"feed": [{"post": ', headers={"content-type": "application/json", **limits()})
    await engine.add()

    result = await engine.run("initial")

    assert result.outcome.kind == "transient"
    assert (await engine.network())["lastError"]["kind"] == "bad_json"
    assert await engine.items() == []


@pytest.mark.parametrize("reply", [
    [PAGE1],  # not an object
    {"cursor": C1},  # no feed
    {"feed": {"0": PAGE1[0]}},  # feed not a list
    {"feed": PAGE1, "cursor": 17},  # a cursor that is not a string
    {"feed": [{"post": {"uri": "https://bsky.app/x"}}]},  # not an at:// URI
])
async def test_an_unexpected_shape_is_bad_response(engine, api, reply):
    page(api).respond(200, json=reply, headers=limits())
    await engine.add()

    await engine.run("initial")

    network = await engine.network()
    assert network["lastError"]["kind"] == "bad_response"
    assert network["cursor"] == {}
    assert await engine.items() == []


async def test_the_cursor_never_takes_the_token_to_another_host(engine):
    """Bluesky pages by an opaque cursor, not by link: whatever it holds stays a parameter to the base URL."""
    with respx.mock(assert_all_called=False) as api:
        evil = api.get(host="evil.example").respond(200, json=body(PAGE1))
        ours = api.get(LIKES).respond(200, json=body(PAGE3), headers=limits())
        await engine.add(cursor={"next": "https://evil.example/xrpc/app.bsky.feed.getActorLikes", "stop": None,
                                 "top": TOP})

        await engine.run("initial")

    assert not evil.called
    request = ours.calls.last.request
    assert request.url.host == "pds.bsky.test"
    assert request.url.params["cursor"] == "https://evil.example/xrpc/app.bsky.feed.getActorLikes"


# -- the sandbox API over real HTTP ------------------------------------------------------------


SANDBOX_PAGE_CAP = 4  # the sandbox_server fixture's


async def sandbox_engine(sandbox_server, mock_db, clock, token: str):
    settings = make_settings(services={"bluesky": {"base_url": sandbox_server.url}})
    async for engine in make_engine(mock_db, settings, clock, token=token):
        # the sandbox's resets are real Unix times: the test clock is set to real time once the engine (its
        # client pool) is built, not before (a slow build used to put the two clocks seconds apart: a flaky wait)
        clock.now = datetime.now(UTC).replace(microsecond=0)
        yield engine


async def test_sandbox_backfill_then_new_items_in_normal_mode(sandbox_server, mock_db, clock):
    sandbox = sandbox_server.sandbox
    token = f"sandbox-bluesky-{id(mock_db)}"
    user = sandbox.add_user("bluesky", token, 10, name="sandbox-carol")
    async for engine in sandbox_engine(sandbox_server, mock_db, clock, token):
        await engine.add(options={"actor": sandbox_handle(user)})
        runs = 0
        while (await engine.network())["mode"] == "initial":
            result = await engine.run_when_due("initial") if runs else await engine.run("initial")
            assert result.outcome.kind == "page", (await engine.network()).get("lastError")
            runs += 1
            assert runs < 10
        assert runs == 4  # 4 + 4 + 2, then the empty page without a cursor
        assert len(await engine.items()) == 10 == sandbox.stats()["unique_served"][token]

        sandbox.add_items(token, 3)
        before = sandbox.stats()["by_token"][token]
        result = await engine.run_when_due("normal")
        assert result.new_items == 3
        assert sandbox.stats()["by_token"][token] == before + 1  # one request
        quiet = await engine.run_when_due("normal")
        assert quiet.new_items == 0 and sandbox.stats()["by_token"][token] == before + 2
        assert len(await engine.items()) == 13 == sandbox.stats()["unique_served"][token]
    assert not any(token in target for target in sandbox.log)


@pytest.mark.parametrize("fault, kind, error", [
    ({"kind": "rate_limit", "seconds": 300}, "rate_limited", "rate_limited"),
    ({"kind": "unauthorized"}, "unauthorized", "unauthorized"),
    ({"kind": "status", "status": 502}, "transient", "http_5xx"),
    ({"kind": "malformed"}, "transient", "bad_json"),
])
async def test_sandbox_faults_end_in_their_states(sandbox_server, mock_db, clock, fault, kind, error):
    token = f"sandbox-bluesky-{fault['kind']}-{id(mock_db)}"
    user = sandbox_server.sandbox.add_user("bluesky", token, 5, name=f"sandbox-{fault['kind'].replace('_', '-')}")
    sandbox_server.sandbox.inject(token, **fault)
    async for engine in sandbox_engine(sandbox_server, mock_db, clock, token):
        await engine.add(options={"actor": sandbox_handle(user)})
        result = await engine.run("initial")
        network = await engine.network()
        assert result.outcome.kind == kind, network.get("lastError")
        assert network["lastError"]["kind"] == error
        if kind == "rate_limited":
            assert 295 <= await engine.due_in() <= 302 + engine.schedule.rate_limit_slack
            assert await mock_db.services.find_one({"_id": "bluesky"})


async def test_sandbox_limit_headers_riding_on_a_page_store_it_then_pause(sandbox_server, mock_db, clock):
    token = f"sandbox-bluesky-ride-{id(mock_db)}"
    user = sandbox_server.sandbox.add_user("bluesky", token, 6, name="sandbox-ride")
    async for engine in sandbox_engine(sandbox_server, mock_db, clock, token):
        reset = int(clock.now.timestamp()) + 120
        sandbox_server.sandbox.inject(token, "headers", status=200,
                                      headers={"ratelimit-remaining": "0", "ratelimit-reset": str(reset)})
        await engine.add(options={"actor": sandbox_handle(user)})
        result = await engine.run("initial")
        assert result.outcome.kind == "page" and result.new_items == 4
        assert await engine.due_in() == pytest.approx(120 + engine.schedule.rate_limit_slack)
        assert await mock_db.services.find_one({"_id": "bluesky"})
        assert len(await engine.items()) == sandbox_server.sandbox.stats()["unique_served"][token] == 4
