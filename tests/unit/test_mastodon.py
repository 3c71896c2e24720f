"""The Mastodon connectors (favourites and bookmarks) driven through the engine: claim -> Executor.run
-> network state and items. HTTP is mocked with respx, replies shaped as docs.joinmastodon.org shows
them (Status entities, internal favourite/bookmark ids only in the Link header, X-RateLimit-* with an
ISO 8601 reset, `{"error": ...}` bodies). Every test runs for both services; the last one runs both
against the sandbox API over real HTTP.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import respx
from collector.connectors.mastodon import MastodonBookmarks, MastodonFavourites, instance_url

from collector.executor import Executor
from collector.model import RunNetwork
from collector.plugins import Registered
from collector.sandbox import Sandbox, Server
from collector.sdk import Item
from collector.store import Store
from tests.conftest import make_settings
from tests.harness import Engine

TOKEN = "mastodon_token_secret123456"
API = "https://mastodon.test"
CLASSES = {"mastodon_favourites": MastodonFavourites, "mastodon_bookmarks": MastodonBookmarks}
REGISTRY = {name: Registered(name, cls, "collector", "test") for name, cls in CLASSES.items()}
ENDPOINTS = {"mastodon_favourites": "favourites", "mastodon_bookmarks": "bookmarks"}


def status_id(entry: int) -> str:
    """Status ids follow no order of the favourites (an old status can be favourited last)."""
    return str(109_000_000_000_000_000 + (entry * 7_919) % 1_000_003)


def status(entry: int, **over: Any) -> dict[str, Any]:
    """A Status entity as the docs show it; `entry` is the internal favourite/bookmark id."""
    sid = status_id(entry)
    return {
        "id": sid, "created_at": "2019-11-23T07:35:52.000Z", "in_reply_to_id": None,
        "in_reply_to_account_id": None, "sensitive": False, "spoiler_text": "", "visibility": "unlisted",
        "language": "en", "uri": f"https://cybre.space/users/haskal/statuses/{sid}",
        "url": f"https://cybre.space/@haskal/{sid}", "replies_count": 0, "reblogs_count": 1,
        "favourites_count": 1, "favourited": True, "reblogged": False, "muted": False, "bookmarked": False,
        "content": f"<p>toot {entry}</p>", "reblog": None,
        "account": {"id": "297420", "username": "haskal", "acct": "haskal@cybre.space",
                    "display_name": "soft nb friend :blobcatsleep:"},
        "media_attachments": [], "mentions": [], "tags": [], "emojis": [], "card": None, "poll": None, **over,
    }


class Mastodon(Engine):
    url: str

    def link(self, next_max: int | None = None, prev_min: int | None = None, host: str = API) -> dict[str, str]:
        rels = []
        if next_max is not None:
            rels.append(f'<{host}/api/v1/{ENDPOINTS[self.service]}?limit=40&max_id={next_max}>; rel="next"')
        if prev_min is not None:
            rels.append(f'<{host}/api/v1/{ENDPOINTS[self.service]}?limit=40&min_id={prev_min}>; rel="prev"')
        return {"Link": ", ".join(rels)} if rels else {}

    def page(self, api: respx.MockRouter, **params: str) -> respx.Route:
        return api.get(self.url, params__eq={"limit": "40", **params})


def limits(remaining: int = 299, reset: datetime | None = None) -> dict[str, str]:
    reset = reset or datetime(2026, 11, 25, 12, 5, tzinfo=UTC)
    return {"X-RateLimit-Limit": "300", "X-RateLimit-Remaining": str(remaining),
            "X-RateLimit-Reset": reset.strftime("%Y-%m-%dT%H:%M:%S.%f") + "Z"}


@pytest.fixture(params=sorted(CLASSES))
def service(request) -> str:
    return request.param


@pytest.fixture
def settings():
    return make_settings(services={name: {"base_url": API} for name in CLASSES})


@pytest.fixture
async def engine(mock_db, settings, clock, service):
    store = Store(mock_db)
    await store.ensure_indexes()
    async with httpx.AsyncClient() as client:
        engine = Mastodon(store, Executor(store, client, settings, REGISTRY, clock=clock), clock, settings, service,
                          TOKEN)
        engine.url = f"{API}/api/v1/{ENDPOINTS[service]}"
        yield engine


def assert_sent_by_the_book(request: httpx.Request) -> None:
    assert request.headers["Authorization"] == f"Bearer {TOKEN}"
    assert TOKEN not in str(request.url)
    assert request.url.params["limit"] == "40"


# -- initial mode: the back-fill ---------------------------------------------------------------


async def test_backfill_over_three_pages_stores_every_status_once_and_switches_to_normal(engine, api):
    first = engine.page(api).respond(200, json=[status(n) for n in range(1000, 960, -1)],
                                     headers={**limits(), **engine.link(961, 1000)})
    second = engine.page(api, max_id="961").respond(200, json=[status(n) for n in range(960, 920, -1)],
                                                    headers={**limits(), **engine.link(921, 960)})
    third = engine.page(api, max_id="921").respond(200, json=[status(n) for n in range(920, 915, -1)],
                                                   headers={**limits(), **engine.link(prev_min=920)})
    await engine.add()

    one = await engine.run("initial")
    assert one.new_items == 40
    network = await engine.network()
    assert network["mode"] == "initial"
    assert network["cursor"] == {"max_id": "961", "min_id": "1000"}  # Link ids, not status ids
    assert await engine.due_in() == pytest.approx(engine.schedule.initial_pace)
    two = await engine.run_when_due("initial")
    three = await engine.run_when_due("initial")

    assert (two.new_items, three.new_items) == (40, 5)
    assert await engine.item_ids() == {status_id(n) for n in range(1000, 915, -1)}
    assert len(await engine.items()) == 85
    network = await engine.network()
    assert network["mode"] == "normal"
    assert network["cursor"] == {"min_id": "1000"}  # the newest entry when the back-fill began
    assert network["lastOutcome"]["reason"].endswith("history exhausted: switching to normal")
    assert await engine.due_in() == pytest.approx(engine.schedule.normal_interval)
    for route in (first, second, third):
        assert route.call_count == 1
        assert_sent_by_the_book(route.calls.last.request)


async def test_an_empty_history_switches_to_normal_from_the_very_first_entry(engine, api):
    engine.page(api).respond(200, json=[], headers=limits())
    await engine.add()

    result = await engine.run("initial")

    assert result.saved and result.new_items == 0
    network = await engine.network()
    assert network["mode"] == "normal"
    assert network["cursor"] == {"min_id": "0"}


async def test_items_carry_the_status_fields(engine, api):
    long = "<p>" + "word " * 60 + "</p>"
    statuses = [
        status(3, content='<p>Hello <span class="h-card"><a href="x">@bob</a></span> &amp; you<br>next &lt;b&gt;</p>'
                          "<p>para</p>"),
        status(2, content=long),
        status(1, spoiler_text="spoilers &amp; more", content="<p>hidden</p>", url=None),
    ]
    engine.page(api).respond(200, json=statuses, headers=engine.link(prev_min=3))
    await engine.add()
    await engine.run("initial")

    first = await engine.store.items.find_one({"itemId": status_id(3)})
    assert first["title"] == "Hello @bob & you next <b> para"
    assert first["url"] == f"https://cybre.space/@haskal/{status_id(3)}"
    assert first["author"] == "haskal@cybre.space"
    assert first["created"] == datetime(2019, 11, 23, 7, 35, 52, tzinfo=UTC)
    assert first["raw"] == statuses[0]
    second = await engine.store.items.find_one({"itemId": status_id(2)})
    assert len(second["title"]) == 120 and second["title"].endswith("…")
    third = await engine.store.items.find_one({"itemId": status_id(1)})
    assert third["title"] == "spoilers & more"  # the content warning, not what it hides
    assert third["url"] == f"https://cybre.space/users/haskal/statuses/{status_id(1)}"  # no url: the uri


# -- normal mode: only what is new -------------------------------------------------------------


async def test_normal_with_nothing_new_costs_one_request_and_stores_nothing(engine, api):
    route = engine.page(api, min_id="1000").respond(200, json=[], headers=limits())
    await engine.add(mode="normal", cursor={"min_id": "1000"})

    result = await engine.run("normal")

    assert result.saved and result.new_items == 0
    assert route.call_count == 1
    assert_sent_by_the_book(route.calls.last.request)
    assert await engine.items() == []
    network = await engine.network()
    assert network["cursor"] == {"min_id": "1000"}
    assert network["lastOutcome"]["reason"] == "nothing new"
    assert await engine.due_in() == pytest.approx(engine.schedule.normal_interval)


async def test_normal_stores_only_the_new_statuses_and_moves_min_id(engine, api):
    route = engine.page(api, min_id="1000").respond(200, json=[status(1002), status(1001)],
                                                    headers={**limits(), **engine.link(prev_min=1002)})
    await engine.add(mode="normal", cursor={"min_id": "1000"})

    result = await engine.run("normal")

    assert result.new_items == 2 and route.call_count == 1
    assert await engine.item_ids() == {status_id(1002), status_id(1001)}
    network = await engine.network()
    assert network["cursor"] == {"min_id": "1002"}
    assert network["lastOutcome"]["reason"] == "2 items, caught up"
    assert await engine.due_in() == pytest.approx(engine.schedule.normal_interval)


async def test_normal_after_a_full_page_asks_again_at_once(engine, api):
    # 45 new: min_id gives the 40 just above 1000 (newest first), then the 5 above those
    engine.page(api, min_id="1000").respond(200, json=[status(n) for n in range(1040, 1000, -1)],
                                            headers=engine.link(1001, 1040))
    engine.page(api, min_id="1040").respond(200, json=[status(n) for n in range(1045, 1040, -1)],
                                            headers=engine.link(prev_min=1045))
    await engine.add(mode="normal", cursor={"min_id": "1000"})

    first = await engine.run("normal")
    assert first.new_items == 40
    assert (await engine.network())["cursor"] == {"min_id": "1040"}
    assert await engine.due_in() == pytest.approx(engine.schedule.initial_pace)
    second = await engine.run_when_due("normal")

    assert second.new_items == 5
    assert len(await engine.items()) == 45
    assert (await engine.network())["cursor"] == {"min_id": "1045"}
    assert await engine.due_in() == pytest.approx(engine.schedule.normal_interval)


async def test_a_status_favourited_again_is_stored_once_and_min_id_still_moves(engine, api):
    """Unfavourite + favourite again gives a new internal id to a known status: a sweep stopping at
    known status ids would stop there; min_id just passes it."""
    engine.page(api, min_id="1000").respond(200, json=[status(990, id=status_id(1001))],
                                            headers=engine.link(prev_min=1001))
    await engine.add(mode="normal", cursor={"min_id": "1000"})
    known = RunNetwork.read(await engine.network()).key
    await engine.store.save_items(known, [Item(id=status_id(1001), scope=API)], engine.clock.now)

    result = await engine.run("normal")

    assert result.new_items == 0 and result.outcome.items == 1
    assert len(await engine.items()) == 1
    assert (await engine.network())["cursor"] == {"min_id": "1001"}


async def test_a_page_without_a_prev_link_fails_rather_than_losing_the_place(engine, api):
    engine.page(api, min_id="1000").respond(200, json=[status(1001)])
    await engine.add(mode="normal", cursor={"min_id": "1000"})

    result = await engine.run("normal")

    assert result.outcome.kind == "transient"
    network = await engine.network()
    assert network["lastError"]["kind"] == "bad_response"
    assert network["cursor"] == {"min_id": "1000"}


# -- rate limits: per token/account, never the whole service -----------------------------------


async def test_429_waits_until_the_iso_reset_and_pauses_only_the_network(engine, api, clock):
    reset = clock.now + timedelta(minutes=4, seconds=30)
    engine.page(api).respond(429, json={"error": "Too many requests"}, headers=limits(0, reset))
    await engine.add(errors=1, cursor={})

    result = await engine.run("initial")

    assert result.outcome.kind == "rate_limited"
    network = await engine.network()
    assert network["errors"] == 1
    assert network["scheduledTo"] == reset + timedelta(seconds=engine.schedule.rate_limit_slack)
    assert network["lastError"]["kind"] == "rate_limited" and network["lastError"]["status"] == 429
    assert await engine.store.paused_services(clock.now) == {}  # other users of the service go on


async def test_429_with_retry_after_waits_that_long(engine, api):
    engine.page(api).respond(429, json={"error": "Too many requests"}, headers={"Retry-After": "120"})
    await engine.add()

    await engine.run("initial")

    assert (await engine.network())["lastOutcome"]["kind"] == "rate_limited"
    assert await engine.due_in() == pytest.approx(120 + engine.schedule.rate_limit_slack)


async def test_the_last_request_of_the_window_stores_the_page_and_waits_for_the_reset(engine, api, clock):
    reset = clock.now + timedelta(minutes=3)
    engine.page(api).respond(200, json=[status(1000), status(999)],
                             headers={**limits(0, reset), **engine.link(999, 1000)})
    await engine.add()

    result = await engine.run("initial")

    assert result.new_items == 2
    network = await engine.network()
    assert network["cursor"] == {"max_id": "999", "min_id": "1000"}
    assert network["scheduledTo"] == reset + timedelta(seconds=engine.schedule.rate_limit_slack)
    assert "rate limit low" in network["lastOutcome"]["reason"]
    assert await engine.store.paused_services(clock.now) == {}


# -- failures ----------------------------------------------------------------------------------


async def test_401_disables_the_network_as_unauthorized(engine, api):
    engine.page(api).respond(401, json={"error": "The access token is invalid"})
    await engine.add()

    result = await engine.confirm_unauthorized("initial")

    assert result.outcome.kind == "unauthorized"
    network = await engine.network()
    assert network["disabled"] is True and network["unauthorized"] is True
    assert "The access token is invalid" in network["disabledReason"]
    assert TOKEN not in network["disabledReason"]
    assert network["scheduledTo"] is None


async def test_a_token_without_the_read_scope_is_forbidden(engine, api):
    engine.page(api).respond(403, json={"error": "This action is outside the authorized scopes"})
    await engine.add()

    await engine.run("initial")

    network = await engine.network()
    assert network["disabled"] is True and not network["unauthorized"] and network["scheduledTo"] is None
    assert network["lastError"]["kind"] == "forbidden" and network["errors"] == 0
    scope = f"read:{ENDPOINTS[engine.service]}"
    assert network["disabledReason"].startswith(f"forbidden: HTTP 403: the token lacks the {scope}")


@pytest.mark.parametrize("reply, kind", [
    (httpx.Response(200, text='[{"id": "1", "content": ', headers={"content-type": "application/json"}), "bad_json"),
    (httpx.Response(200, json={"error": "not a list"}), "bad_response"),
    (httpx.Response(200, json=[{"content": "<p>no id</p>"}]), "bad_response"),
    (httpx.Response(200, json=["109000000000000001"]), "bad_response"),
])
async def test_a_malformed_body_is_a_transient_failure(engine, api, reply, kind):
    engine.page(api, max_id="5").mock(return_value=reply)
    await engine.add(cursor={"max_id": "5", "min_id": "9"})

    result = await engine.run("initial")

    assert result.outcome.kind == "transient"
    network = await engine.network()
    assert network["lastError"]["kind"] == kind
    assert network["errors"] == 1
    assert network["cursor"] == {"max_id": "5", "min_id": "9"}
    assert await engine.items() == []


@pytest.mark.parametrize("foreign", ["next", "prev"])
async def test_a_link_to_another_host_is_refused_and_never_followed(engine, foreign):
    evil = "https://mastodon.test.evil.example"
    hosts = {"next": evil if foreign == "next" else API, "prev": evil if foreign == "prev" else API}
    path = f"/api/v1/{ENDPOINTS[engine.service]}?limit=40"
    link = f'<{hosts["next"]}{path}&max_id=1>; rel="next", <{hosts["prev"]}{path}&min_id=9>; rel="prev"'
    with respx.mock(assert_all_called=False) as api:  # the other host must stay uncalled
        engine.page(api).respond(200, json=[status(9)], headers={"Link": link})
        elsewhere = api.get(host="mastodon.test.evil.example").respond(200, json=[])
        await engine.add()

        result = await engine.run("initial")

    assert result.outcome.kind == "transient"
    assert not elsewhere.called
    network = await engine.network()
    assert network["lastError"]["kind"] == "bad_response"
    assert "outside" in network["lastError"]["message"]
    assert network["cursor"] == {}
    assert await engine.items() == []


async def test_the_network_instance_option_wins_over_the_configured_base_url(engine, api):
    other = f"https://other.social/api/v1/{ENDPOINTS[engine.service]}"
    route = api.get(other, params__eq={"limit": "40"}).respond(200, json=[status(5)], headers={
        "Link": f'<https://other.social/api/v1/{ENDPOINTS[engine.service]}?limit=40&min_id=5>; rel="prev"'})
    await engine.add(options={"instance": "other.social/"})

    result = await engine.run("initial")

    assert result.new_items == 1 and route.called
    assert (await engine.network())["cursor"] == {"min_id": "5"}


@pytest.mark.parametrize("instance", [
    "http://mastodon.social", "ftp://mastodon.social", "https://alice:pw@mastodon.social",
    "https://mastodon.social/@alice", "https://mastodon.social/?x=1", 42,
])
async def test_an_unusable_instance_disables_the_network_with_the_reason(engine, instance):
    with respx.mock(assert_all_called=False) as api:
        anywhere = api.route().respond(200, json=[])
        await engine.add(options={"instance": instance})

        result = await engine.run("initial")

    assert not anywhere.called
    assert result.outcome.kind == "permanent"
    network = await engine.network()
    assert network["disabled"] is True and not network["unauthorized"]
    assert "instance" in network["disabledReason"]


async def test_without_any_instance_nothing_is_sent_anywhere(mock_db, clock, service):
    store = Store(mock_db)
    await store.ensure_indexes()
    settings = make_settings()  # no base_url for the service, no options.instance
    with respx.mock(assert_all_called=False) as api:
        anywhere = api.route().respond(200, json=[])
        async with httpx.AsyncClient() as client:
            engine = Engine(store, Executor(store, client, settings, REGISTRY, clock=clock), clock, settings, service,
                            TOKEN)
            await engine.add()
            result = await engine.run("initial")

    assert not anywhere.called
    assert result.outcome.kind == "permanent"
    assert "set options.instance" in (await engine.network())["disabledReason"]


def test_instance_urls():
    assert instance_url("https://mastodon.social/") == "https://mastodon.social"
    assert instance_url(" mastodon.social ") == "https://mastodon.social"
    assert instance_url("http://127.0.0.1:8900") == "http://127.0.0.1:8900"
    assert instance_url("http://localhost:3000") == "http://localhost:3000"
    assert instance_url("https://MASTODON.social:8443") == "https://mastodon.social:8443"


# -- the sandbox API over real HTTP ------------------------------------------------------------


@pytest.fixture(scope="module")
def server():
    server = Server(Sandbox(page_cap=3)).start()
    yield server
    server.stop()


async def test_backfill_then_new_items_against_the_sandbox(server, mock_db, clock, service):
    token = f"sandbox-{service}-{id(mock_db)}"
    server.sandbox.add_user(service, token, 8)
    settings = make_settings(services={name: {"base_url": server.url} for name in CLASSES})
    store = Store(mock_db)
    await store.ensure_indexes()
    async with httpx.AsyncClient() as client:
        executor = Executor(store, client, settings, REGISTRY, clock=clock)
        engine = Engine(store, executor, clock, settings, service, token)
        await engine.add()
        runs = 0
        while (await engine.network())["mode"] == "initial":
            result = await engine.run_when_due("initial")
            assert result.outcome.kind == "page", (await engine.network()).get("lastError")
            runs += 1
        assert runs == 3  # 3 + 3 + 2
        assert len(await engine.items()) == 8 == server.sandbox.stats()["unique_served"][token]

        server.sandbox.add_items(token, 4)
        while True:
            result = await engine.run_when_due("normal")
            assert result.outcome.kind == "page", (await engine.network()).get("lastError")
            if not result.outcome.more:
                break
        stats = server.sandbox.stats()
        assert len(await engine.items()) == 12 == stats["unique_served"][token]
        assert stats["served"][token] == 12  # nothing fetched twice

        before = stats["by_token"][token]
        result = await engine.run_when_due("normal")
        assert result.new_items == 0 and (await engine.network())["lastOutcome"]["reason"] == "nothing new"
        assert server.sandbox.stats()["by_token"][token] == before + 1  # one request when nothing is new
    assert not any(token in target for target in server.sandbox.log)
