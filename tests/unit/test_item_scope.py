"""Item identity scoped to a server (issue 26): Mastodon status ids and GitLab project ids are each server's own, so
one user's networks on two servers must keep both sets of items, keyed [service, user, server, itemId] with the
server on the item as `server`; every other service keeps its [service, user, itemId] keys byte for byte.

Driven through the engine (claim -> Executor.run -> items), HTTP mocked with respx."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
import respx
from collector.connectors.github import GitHubStarred
from collector.connectors.gitlab import GitLabStarred
from collector.connectors.mastodon import MastodonBookmarks, MastodonFavourites

from collector import plugins
from collector.documents import item_key, key_prefix, refresh_update
from collector.executor import Executor
from collector.plugins import Registered
from collector.sdk import Connector, Context, Item, Page, Request
from collector.store import Store
from tests.conftest import make_settings
from tests.harness import Engine

CLASSES = {"mastodon_favourites": MastodonFavourites, "mastodon_bookmarks": MastodonBookmarks,
           "gitlab": GitLabStarred, "github": GitHubStarred}
REGISTRY = {name: Registered(name, cls, "collector", "test") for name, cls in CLASSES.items()}
ENDPOINTS = {"mastodon_favourites": "favourites", "mastodon_bookmarks": "bookmarks"}
SHARED_IDS = ["110000000000000003", "110000000000000002", "110000000000000001"]  # the same ids on both instances


@pytest.fixture
async def engine(mock_db, clock):
    settings = make_settings(services={"github": {"base_url": "https://api.github.test"}})
    store = Store(mock_db)
    await store.ensure_indexes()
    async with httpx.AsyncClient() as client:
        yield Engine(store, Executor(store, client, settings, REGISTRY, clock=clock), clock, settings, "", "tok_123456")


async def run_all(engine: Engine, service: str, networks: int) -> None:
    """Run each network once: every one stores 3 new items (with keys of one server only, a later network's items
    would overwrite an earlier one's, none of them new)."""
    for _ in range(networks):
        result = await engine.run("initial")
        assert result.outcome.kind == "page", result.outcome
        assert result.new_items == 3


def statuses(host: str) -> list[dict[str, Any]]:
    return [{"id": sid, "uri": f"https://{host}/users/a/statuses/{sid}", "url": f"https://{host}/@a/{sid}",
             "content": f"<p>{host} {sid}</p>", "created_at": "2026-01-02T03:04:05Z", "account": {"acct": "a"}}
            for sid in SHARED_IDS]


@pytest.mark.parametrize("service", sorted(ENDPOINTS))
async def test_two_instances_with_the_same_status_ids_keep_both_sets_of_items(engine, service):
    instances = {"https://one.social": "One.Social/", "https://two.example": "https://TWO.example:443"}
    with respx.mock(assert_all_called=True) as api:
        for origin, written in instances.items():
            host = origin.removeprefix("https://")
            link = f'<{origin}/api/v1/{ENDPOINTS[service]}?min_id=9>; rel="prev"'
            api.get(f"{origin}/api/v1/{ENDPOINTS[service]}").respond(200, json=statuses(host), headers={"Link": link})
            await engine.store.insert_network({"user": "u1", "service": service, "accessToken": "tok_123456",
                                               "mode": "initial", "scheduledTo": engine.clock.now, "cursor": {},
                                               "options": {"instance": written}})
        await run_all(engine, service, 2)

    items = await engine.store.items.find({"user": "u1", "service": service}).to_list(None)
    assert len(items) == 6  # before: 3, the second instance's statuses overwrote the first's
    for doc in items:
        assert doc["server"] in instances  # normalized: lower case, no default port, no slash
        assert doc["itemId"] in SHARED_IDS  # the API's own id, unchanged
        assert doc["_id"] == json.dumps([service, "u1", doc["server"], doc["itemId"]], separators=(",", ":"))
        assert doc["title"] == f"{doc['server'].removeprefix('https://')} {doc['itemId']}"


async def test_two_gitlab_servers_with_the_same_project_ids_keep_both_sets_of_items(engine):
    servers = {"https://gitlab.com": None, "https://code.example.org/gitlab": "https://code.example.org/gitlab/api/v4/"}
    with respx.mock(assert_all_called=True) as api:
        for server, written in servers.items():
            projects = [{"id": n, "path_with_namespace": f"{server} {n}", "web_url": f"{server}/p{n}"}
                        for n in (3, 2, 1)]
            api.get(f"{server}/api/v4/users/42/starred_projects").respond(200, json=projects, headers={"x-total": "3"})
            options: dict[str, Any] = {"user_id": 42, **({"base_url": written} if written else {})}
            await engine.store.insert_network({"user": "u1", "service": "gitlab", "accessToken": "tok_123456",
                                               "mode": "initial", "scheduledTo": engine.clock.now, "cursor": {},
                                               "options": options})
        await run_all(engine, "gitlab", 2)  # the first: the service's default server, gitlab.com

    items = await engine.store.items.find({"user": "u1", "service": "gitlab"}).to_list(None)
    assert len(items) == 6
    assert {(doc["server"], doc["itemId"]) for doc in items} == {(s, str(n)) for s in servers for n in (1, 2, 3)}
    for doc in items:
        assert doc["_id"] == json.dumps(["gitlab", "u1", doc["server"], doc["itemId"]], separators=(",", ":"))
        assert doc["title"] == f"{doc['server']} {doc['itemId']}"


async def test_github_keys_stay_byte_for_byte_what_they_were(engine):
    repos = [{"id": 1296269, "full_name": "octocat/Hello-World", "html_url": "https://github.com/octocat/Hello-World"}]
    with respx.mock(assert_all_called=True) as api:
        api.get("https://api.github.test/user/starred").respond(200, json=repos)
        await engine.store.insert_network({"user": "u1", "service": "github", "accessToken": "tok_123456",
                                           "mode": "initial", "scheduledTo": engine.clock.now, "cursor": {}})
        result = await engine.run("initial")

    assert result.new_items == 1
    [doc] = await engine.store.items.find({}).to_list(None)
    assert doc["_id"] == '["github","u1","1296269"]'
    assert "server" not in doc
    assert list(doc)[:5] == ["_id", "user", "service", "itemId", "network"]


def test_scoped_keys_are_four_element_arrays_and_unscoped_ones_unchanged():
    assert item_key("u", "github", "1") == '["github","u","1"]'
    assert key_prefix("u", "github") == '["github","u",'
    assert item_key("u", "gitlab", "1", scope="https://gitlab.com") == '["gitlab","u","https://gitlab.com","1"]'
    assert item_key("u", "gitlab", "1", key_prefix("u", "gitlab", "https://gitlab.com")) == \
        item_key("u", "gitlab", "1", scope="https://gitlab.com")
    # a scope can never make a key another item's: the parts are JSON strings, the arrays of different lengths
    assert item_key("u", "s", '1"]', scope="x") != item_key("u", "s", "x", scope=None)
    assert json.loads(item_key("u", "s", "1", scope='a","b')) == ["s", "u", 'a","b', "1"]


def test_a_refreshed_scoped_item_keeps_its_server_as_identity():
    scoped = {"_id": "k", "user": "u", "service": "s", "itemId": "1", "server": "https://x", "collectedAt": 1,
              "title": "t"}
    update = refresh_update(scoped)._doc
    assert update["$setOnInsert"] == {"user": "u", "service": "s", "server": "https://x", "itemId": "1",
                                      "collectedAt": 1}
    assert update["$set"] == {"title": "t"}
    plain = refresh_update({k: v for k, v in scoped.items() if k != "server"})._doc
    assert plain["$setOnInsert"] == {"user": "u", "service": "s", "itemId": "1", "collectedAt": 1}


class Scoped(Connector):
    service = "scoped"

    def item_scope(self, ctx: Context) -> str | None:
        return ctx.network.options.get("server")

    def request(self, ctx: Context) -> Request:
        return Request("https://x.test/")

    def parse(self, ctx: Context, response: httpx.Response) -> Page:
        return Page(items=[Item(id="1"), Item(id="2", scope="stale")], cursor={}, more=False)


class Inherits(Scoped):
    service = "inherits"


def context(options: dict[str, Any]) -> Context:
    from datetime import UTC, datetime

    from collector.model import Network

    net = Network("n", "u", "scoped", "initial", {}, 0, {}, options)
    return Context(network=net, mode="initial", cursor={}, now=datetime.now(UTC))


@pytest.mark.parametrize("cls", [Scoped, Inherits])
def test_the_sdk_stamps_every_parsed_item_with_the_connector_scope(cls):
    connector = cls(make_settings().service("scoped"))
    response = httpx.Response(200, request=httpx.Request("GET", "https://x.test/"))
    page = connector.parse(context({"server": "https://a.test"}), response)
    assert [(i.id, i.scope) for i in page.items] == [("1", "https://a.test"), ("2", "https://a.test")]
    unscoped = connector.parse(context({}), response)  # None: the items as the connector made them
    assert [(i.id, i.scope) for i in unscoped.items] == [("1", None), ("2", "stale")]


def test_only_the_per_server_connectors_scope_their_items():
    scoped = {name for name, reg in plugins.discover().items()
              if reg.cls is not None and reg.cls.item_scope is not Connector.item_scope}
    assert scoped == {"gitlab", "mastodon_bookmarks", "mastodon_favourites"}
