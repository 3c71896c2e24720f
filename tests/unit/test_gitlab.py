"""The GitLab starred-projects connector driven through the engine: claim -> Executor.run -> network
state and items. HTTP is mocked with respx, replies shaped as docs.gitlab.com shows them (projects in
the `simple=true` shape, offset pagination headers x-page/x-total/x-next-page and a Link header,
RateLimit-* with a Unix reset, 429 "Retry later" + Retry-After, {"message": "401 Unauthorized"}).
The last test runs the connector against the sandbox API over real HTTP.
"""

from __future__ import annotations

import email.utils
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import respx
from collector.connectors.gitlab import GitLabStarred, server_url

from collector.executor import Executor
from collector.plugins import Registered
from collector.store import Store
from tests.conftest import make_settings
from tests.harness import Engine

TOKEN = "glpat-secret123456abcdef"
OAUTH = "oauth-secret-0123456789"
API = "https://gitlab.test/api/v4"
STARRED = f"{API}/users/42/starred_projects"
FIRST = {"per_page": "100", "order_by": "id", "sort": "desc", "simple": "true"}
REGISTRY = {"gitlab": Registered("gitlab", GitLabStarred, "collector", "test")}
HISTORY = list(range(1250, 1000, -1))  # 250 starred projects, id-descending: pages of 100, 100, 50


def project(n: int) -> dict[str, Any]:
    """A project as `simple=true` returns it."""
    return {
        "id": n, "description": f"project {n}", "name": f"Project {n}",
        "name_with_namespace": f"Diaspora / Project {n}",
        "path": f"project-{n}", "path_with_namespace": f"diaspora/project-{n}", "created_at": "2013-09-30T13:46:02Z",
        "default_branch": "main", "tag_list": [], "topics": [],
        "ssh_url_to_repo": f"git@gitlab.example.com:diaspora/project-{n}.git",
        "http_url_to_repo": f"https://gitlab.example.com/diaspora/project-{n}.git",
        "web_url": f"https://gitlab.example.com/diaspora/project-{n}", "readme_url": None, "forks_count": 0,
        "avatar_url": None, "star_count": 3, "last_activity_at": "2013-09-30T13:46:02Z",
        "namespace": {"id": 3, "name": "Diaspora", "path": "diaspora", "kind": "group", "full_path": "diaspora",
                      "parent_id": None, "avatar_url": None, "web_url": "https://gitlab.example.com/groups/diaspora"},
    }


def page_url(n: int, base: str = STARRED) -> str:
    return f"{base}?order_by=id&page={n}&per_page=100&simple=true&sort=desc"


def paging(page: int, total: int, base: str = STARRED, link: bool = True) -> dict[str, str]:
    pages = max((total + 99) // 100, 1)
    headers = {"x-page": str(page), "x-per-page": "100", "x-total": str(total), "x-total-pages": str(pages),
               "x-next-page": str(page + 1) if page < pages else "", "x-prev-page": str(page - 1) if page > 1 else ""}
    rels = ([("prev", page - 1)] if page > 1 else []) + ([("next", page + 1)] if page < pages else [])
    if link:
        headers["Link"] = ", ".join(f'<{page_url(n, base)}>; rel="{rel}"' for rel, n in [*rels, ("first", 1),
                                                                                            ("last", pages)])
    return headers


def limits(remaining: int = 1990, reset: datetime | None = None) -> dict[str, str]:
    reset = reset or datetime(2026, 11, 25, 12, 1, tzinfo=UTC)
    return {"RateLimit-Limit": "2000", "RateLimit-Observed": str(2000 - remaining),
            "RateLimit-Remaining": str(remaining),
            "RateLimit-Reset": str(int(reset.timestamp())),
            "RateLimit-ResetTime": email.utils.format_datetime(reset, usegmt=True)}


def stars(ids: list[int], page: int) -> list[dict[str, Any]]:
    return [project(n) for n in ids[(page - 1) * 100:page * 100]]


def serve(api: respx.MockRouter, ids: list[int], name: str = "") -> list[respx.Route]:
    """Every page of a starred list `ids` (id-descending)."""
    pages = max((len(ids) + 99) // 100, 1)
    return [api.get(STARRED, params__eq=FIRST if n == 1 else {**FIRST, "page": str(n)}, name=f"{name}{n}" if name
                    else None).respond(200, json=stars(ids, n), headers={**limits(), **paging(n, len(ids))})
            for n in range(1, pages + 1)]


@pytest.fixture
def settings():
    return make_settings(services={"gitlab": {"base_url": "https://gitlab.test"}})


@pytest.fixture
async def engine(mock_db, settings, clock):
    store = Store(mock_db)
    await store.ensure_indexes()
    async with httpx.AsyncClient() as client:
        yield Engine(store, Executor(store, client, settings, REGISTRY, clock=clock), clock, settings, "gitlab", TOKEN)


async def walk(engine: Engine, mode: str) -> tuple[int, int]:
    """Run now, then whenever due, until the walk in progress ends: (runs, new items)."""
    runs = new = 0
    while True:
        result = await (engine.run(mode) if runs == 0 else engine.run_when_due(mode))
        runs, new = runs + 1, new + result.new_items
        assert result.outcome.kind == "page", (await engine.network()).get("lastError")
        if not result.outcome.more:
            return runs, new


async def backfill(engine: Engine, api: respx.MockRouter) -> dict[str, Any]:
    """Back-fill HISTORY for user 42 (given as an option); the routes are removed afterwards."""
    serve(api, HISTORY, name="backfill")
    await engine.add(options={"user_id": 42})
    assert await walk(engine, "initial") == (3, 250)
    for n in (1, 2, 3):
        assert api.routes.pop(f"backfill{n}").call_count == 1
    network = await engine.network()
    assert network["mode"] == "normal"
    engine.clock.now = network["scheduledTo"]
    return network["cursor"]


# -- initial mode: the back-fill ---------------------------------------------------------------


async def test_backfill_asks_the_user_id_once_then_walks_every_page(engine, api, clock):
    me = api.get(f"{API}/user").respond(200, json={"id": 42, "username": "jane", "name": "Jane", "state": "active"},
                                        headers=limits())
    pages = serve(api, HISTORY)
    await engine.add()

    first = await engine.run("initial")
    assert first.new_items == 0 and first.outcome.more
    network = await engine.network()
    assert network["cursor"] == {"user_id": 42} and network["mode"] == "initial"
    assert await engine.due_in() == pytest.approx(engine.schedule.initial_pace)
    start = engine.clock.now = network["scheduledTo"]
    assert await walk(engine, "initial") == (3, 250)

    assert len(await engine.items()) == 250
    assert await engine.item_ids() == {str(n) for n in HISTORY}
    network = await engine.network()
    assert network["mode"] == "normal"
    assert set(network["cursor"]) == {"user_id", "total", "head", "walked_at"}
    assert network["cursor"]["user_id"] == 42 and network["cursor"]["total"] == 250
    assert network["cursor"]["walked_at"] == start.timestamp()
    assert await engine.due_in() == pytest.approx(engine.schedule.normal_interval)
    assert me.call_count == 1
    for route in (me, *pages):
        assert route.call_count == 1
        request = route.calls.last.request
        assert request.headers["PRIVATE-TOKEN"] == TOKEN  # a personal access token
        assert "Authorization" not in request.headers
        assert TOKEN not in str(request.url)
    assert str(pages[1].calls.last.request.url) == page_url(2)


async def test_an_oauth_token_goes_as_bearer_and_a_username_is_escaped(engine, api):
    route = api.get(f"{API}/users/jane.doe%2Bx/starred_projects", params__eq=FIRST).respond(
        200, json=[project(7)], headers=paging(1, 1, base=f"{API}/users/jane.doe%2Bx/starred_projects"))
    await engine.add(accessToken=OAUTH, options={"user_id": "jane.doe+x"})

    result = await engine.run("initial")

    assert result.new_items == 1
    request = route.calls.last.request
    assert request.headers["Authorization"] == f"Bearer {OAUTH}"
    assert "PRIVATE-TOKEN" not in request.headers
    assert (await engine.network())["cursor"]["total"] == 1


async def test_items_carry_the_project_fields(engine, api):
    api.get(STARRED, params__eq=FIRST).respond(200, json=[project(7)], headers=paging(1, 1))
    await engine.add(options={"user_id": 42})
    await engine.run("initial")

    item = await engine.store.items.find_one({"itemId": "7"})
    assert item["title"] == "diaspora/project-7"
    assert item["url"] == "https://gitlab.example.com/diaspora/project-7"
    assert item["author"] == "diaspora"
    assert item["created"] == datetime(2013, 9, 30, 13, 46, 2, tzinfo=UTC)
    assert item["raw"] == project(7)


async def test_without_a_link_header_x_next_page_is_followed(engine, api):
    api.get(STARRED, params__eq=FIRST).respond(200, json=stars(HISTORY, 1), headers=paging(1, 250, link=False))
    two = api.get(STARRED, params__eq={**FIRST, "page": "2"}).respond(200, json=stars(HISTORY, 2),
                                                                     headers=paging(2, 250, link=False))
    await engine.add(options={"user_id": 42})

    await engine.run("initial")
    result = await engine.run_when_due("initial")

    assert result.new_items == 100 and two.called
    assert (await engine.network())["cursor"]["next"].endswith("page=3")


# -- normal mode -------------------------------------------------------------------------------


async def test_normal_with_nothing_new_costs_one_request_and_stores_nothing(engine, api):
    cursor = await backfill(engine, api)
    await engine.store.items.delete_many({})  # whatever the run stores would show
    first = api.get(STARRED, params__eq=FIRST).respond(200, json=stars(HISTORY, 1),
                                                       headers={**limits(), **paging(1, 250)})

    result = await engine.run("normal")

    assert result.saved and result.new_items == 0 and result.outcome.items == 0
    assert first.call_count == 1
    assert await engine.items() == []
    network = await engine.network()
    assert network["cursor"] == cursor
    assert network["lastOutcome"]["reason"] == "nothing new"
    assert await engine.due_in() == pytest.approx(engine.schedule.normal_interval)


async def test_a_new_star_on_page_one_rewalks_and_stores_only_it(engine, api):
    await backfill(engine, api)
    routes = serve(api, [1300, *HISTORY])

    assert await walk(engine, "normal") == (3, 1)

    assert [r.call_count for r in routes] == [1, 1, 1]
    assert len(await engine.items()) == 251
    network = await engine.network()
    assert network["mode"] == "normal" and network["cursor"]["total"] == 251
    assert "next" not in network["cursor"]


async def test_a_new_star_beyond_page_one_is_found_by_the_changed_total(engine, api):
    await backfill(engine, api)
    ids = [*HISTORY, 1000]  # page 1 is unchanged: the new star is on page 3
    serve(api, ids)

    assert await walk(engine, "normal") == (3, 1)
    assert "1000" in await engine.item_ids()
    assert (await engine.network())["cursor"]["total"] == 251


async def test_a_swap_on_page_one_is_caught_at_once_though_the_total_is_the_same(engine, api):
    await backfill(engine, api)
    serve(api, [1300, *HISTORY[:-1]])  # 1300 starred, 1001 unstarred

    assert await walk(engine, "normal") == (3, 1)
    assert "1300" in await engine.item_ids()


async def test_a_swap_beyond_page_one_waits_for_the_daily_rewalk(engine, api, clock):
    cursor = await backfill(engine, api)
    ids = sorted([*HISTORY[:-1], 999], reverse=True)  # 1001 unstarred, 999 starred: same total, same page 1
    routes = serve(api, ids)

    blind = await engine.run("normal")
    assert blind.new_items == 0 and routes[0].call_count == 1 and not routes[1].called  # the documented blind spot
    start = clock.now = datetime.fromtimestamp(cursor["walked_at"], UTC) + timedelta(days=1)
    assert await walk(engine, "normal") == (3, 1)

    assert "999" in await engine.item_ids()
    assert (await engine.network())["cursor"]["walked_at"] == start.timestamp()


# -- rate limits: per user, never the whole service --------------------------------------------


async def test_429_waits_retry_after_and_pauses_only_the_network(engine, api, clock):
    reset = clock.now + timedelta(seconds=45)
    api.get(STARRED, params__eq=FIRST).respond(429, text="Retry later\n", headers={
        "content-type": "text/plain", "Retry-After": "45", **limits(0, reset)})
    await engine.add(options={"user_id": 42}, errors=2)

    result = await engine.run("initial")

    assert result.outcome.kind == "rate_limited"
    network = await engine.network()
    assert network["errors"] == 2 and network["cursor"] == {}
    assert network["scheduledTo"] == reset + timedelta(seconds=engine.schedule.rate_limit_slack)
    assert network["lastError"]["status"] == 429
    assert await engine.store.paused_services(clock.now) == {}


async def test_429_with_retry_after_only(engine, api):
    api.get(STARRED, params__eq=FIRST).respond(429, text="Retry later\n", headers={"Retry-After": "120"})
    await engine.add(options={"user_id": 42})

    await engine.run("initial")

    assert await engine.due_in() == pytest.approx(120 + engine.schedule.rate_limit_slack)


async def test_nothing_remaining_stores_the_page_and_waits_for_the_unix_reset(engine, api, clock):
    reset = clock.now + timedelta(seconds=50)
    api.get(STARRED, params__eq=FIRST).respond(200, json=stars(HISTORY, 1),
                                               headers={**limits(0, reset), **paging(1, 250)})
    await engine.add(options={"user_id": 42})

    result = await engine.run("initial")

    assert result.new_items == 100
    network = await engine.network()
    assert network["cursor"]["next"] == page_url(2)
    assert network["scheduledTo"] == reset + timedelta(seconds=engine.schedule.rate_limit_slack)
    assert "rate limit low" in network["lastOutcome"]["reason"]
    assert await engine.store.paused_services(clock.now) == {}


# -- failures ----------------------------------------------------------------------------------


async def test_401_disables_the_network_as_unauthorized(engine, api):
    api.get(f"{API}/user").respond(401, json={"message": "401 Unauthorized"})
    await engine.add()

    result = await engine.confirm_unauthorized("initial")

    assert result.outcome.kind == "unauthorized"
    network = await engine.network()
    assert network["disabled"] is True and network["unauthorized"] is True
    assert "401 Unauthorized" in network["disabledReason"] and TOKEN not in network["disabledReason"]


async def test_a_token_without_the_api_scope_is_forbidden(engine, api):
    """A valid token without the scope: disabled as `forbidden` (not unauthorized: the token works)."""
    api.get(STARRED, params__eq=FIRST).respond(403, json={
        "error": "insufficient_scope", "scope": "read_api",
        "error_description": "The request requires higher privileges than provided by the access token."})
    await engine.add(options={"user_id": 42})

    await engine.run("initial")

    network = await engine.network()
    assert network["disabled"] is True and not network["unauthorized"] and network["scheduledTo"] is None
    assert network["lastError"]["kind"] == "forbidden" and "insufficient_scope" in network["disabledReason"]


async def test_an_unknown_user_disables_the_network(engine, api):
    api.get(STARRED, params__eq=FIRST).respond(404, json={"message": "404 User Not Found"})
    await engine.add(options={"user_id": 42})

    result = await engine.run("initial")

    assert result.outcome.kind == "permanent"
    network = await engine.network()
    assert network["disabled"] is True and not network["unauthorized"]
    assert "'42' not found" in network["disabledReason"]


@pytest.mark.parametrize("url, reply, kind", [
    (STARRED, httpx.Response(200, text='[{"id": 1, "name": ', headers={"content-type": "application/json"}),
     "bad_json"),
    (STARRED, httpx.Response(200, json={"message": "not a list"}), "bad_response"),
    (STARRED, httpx.Response(200, json=[{"name": "no id"}]), "bad_response"),
    (f"{API}/user", httpx.Response(200, json={"username": "no id"}), "bad_response"),
])
async def test_a_malformed_body_is_a_transient_failure(engine, api, url, reply, kind):
    api.get(url).mock(return_value=reply)
    await engine.add(options={"user_id": 42} if url == STARRED else {})

    result = await engine.run("initial")

    assert result.outcome.kind == "transient"
    network = await engine.network()
    assert network["lastError"]["kind"] == kind and network["errors"] == 1
    assert network["cursor"] == {}
    assert await engine.items() == []


async def test_a_next_link_to_another_host_is_refused_and_never_followed(engine):
    evil = "https://gitlab.test.evil.example/api/v4/users/42/starred_projects"
    with respx.mock(assert_all_called=False) as api:  # the other host must stay uncalled
        api.get(STARRED, params__eq=FIRST).respond(200, json=stars(HISTORY, 1), headers=paging(1, 250, base=evil))
        elsewhere = api.get(host="gitlab.test.evil.example").respond(200, json=[])
        await engine.add(options={"user_id": 42})

        result = await engine.run("initial")

    assert result.outcome.kind == "transient" and not elsewhere.called
    network = await engine.network()
    assert network["lastError"]["kind"] == "bad_response"
    assert "outside the configured base URL" in network["lastError"]["message"]
    assert network["cursor"] == {} and await engine.items() == []


async def test_a_stored_next_link_to_another_host_is_never_requested(engine):
    with respx.mock(assert_all_called=False) as api:
        evil = api.get(host="evil.example").respond(200, json=[])
        await engine.add(options={"user_id": 42}, cursor={"next": "https://evil.example/api/v4/users/42/starred"})

        result = await engine.run("initial")

    assert result.outcome.kind == "transient" and not evil.called
    assert (await engine.network())["lastError"]["kind"] == "bad_response"


async def test_a_self_hosted_server_from_the_network_options(engine, api):
    base = "https://code.example.org/gitlab/api/v4/users/42/starred_projects"
    route = api.get(base, params__eq=FIRST).respond(200, json=[project(7)], headers=paging(1, 1, base=base))
    await engine.add(options={"user_id": 42, "base_url": "https://code.example.org/gitlab/api/v4/"})

    result = await engine.run("initial")

    assert result.new_items == 1 and route.called


@pytest.mark.parametrize("base_url", ["http://gitlab.example.org", "https://u:p@gitlab.example.org",
                                      "https://gitlab.example.org/?x=1", "gopher://gitlab.example.org"])
async def test_an_unusable_server_url_disables_the_network(engine, base_url):
    with respx.mock(assert_all_called=False) as api:
        anywhere = api.route().respond(200, json=[])
        await engine.add(options={"user_id": 42, "base_url": base_url})

        result = await engine.run("initial")

    assert not anywhere.called and result.outcome.kind == "permanent"
    assert "GitLab base URL" in (await engine.network())["disabledReason"]


def test_server_urls():
    assert server_url("gitlab.com") == "https://gitlab.com"
    assert server_url("https://code.example.org/gitlab/") == "https://code.example.org/gitlab"
    assert server_url("https://gitlab.example.org/api/v4") == "https://gitlab.example.org"
    assert server_url("http://127.0.0.1:8900") == "http://127.0.0.1:8900"


# -- the sandbox API over real HTTP ------------------------------------------------------------


async def test_backfill_then_new_stars_against_the_sandbox(sandbox_server, mock_db, clock):
    token = f"glpat-sandbox-{id(mock_db)}"
    sandbox_server.sandbox.add_user("gitlab", token, 8)
    settings = make_settings(services={"gitlab": {"base_url": sandbox_server.url}})
    store = Store(mock_db)
    await store.ensure_indexes()
    async with httpx.AsyncClient() as client:
        executor = Executor(store, client, settings, REGISTRY, clock=clock)
        engine = Engine(store, executor, clock, settings, "gitlab", token)
        await engine.add()
        assert await walk(engine, "initial") == (4, 8)  # GET /user, then pages of 3, 3, 2
        assert (await engine.network())["mode"] == "normal"
        assert len(await engine.items()) == 8 == sandbox_server.sandbox.stats()["unique_served"][token]

        sandbox_server.sandbox.add_items(token, 2)
        engine.clock.now = (await engine.network())["scheduledTo"]
        assert await walk(engine, "normal") == (4, 2)  # page 1 changed: a re-walk of 3, 3, 3, 1
        stats = sandbox_server.sandbox.stats()
        assert len(await engine.items()) == 10 == stats["unique_served"][token]

        before = stats["by_token"][token]
        result = await engine.run_when_due("normal")
        assert result.new_items == 0 and (await engine.network())["lastOutcome"]["reason"] == "nothing new"
        assert sandbox_server.sandbox.stats()["by_token"][token] == before + 1  # one request when nothing is new
    assert not any(token in target for target in sandbox_server.sandbox.log)
