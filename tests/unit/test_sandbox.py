"""The sandbox API over real HTTP on 127.0.0.1, driven by the real executor: each injected fault
ends in its documented state, and the sandbox's counters say what was served."""

from __future__ import annotations

import httpx
import pytest

from collector import plugins
from collector.executor import Executor
from collector.sandbox import FULL
from collector.sandbox.payloads import github_repository
from collector.states import Kind
from collector.store import Store
from tests.conftest import make_settings
from tests.harness import claim_one, sandbox_api


@pytest.fixture
async def run(sandbox_server, mock_db, clock):
    settings = make_settings(http={"total_timeout": 1.0, "max_body_bytes": 100_000},
                             services={"github": {"base_url": sandbox_server.url},
                                       "stackoverflow": {"base_url": f"{sandbox_server.url}/2.3"}})
    store = Store(mock_db)
    await store.ensure_indexes()
    counter = iter(range(10_000))

    async def go(service: str, fault: dict | None = None, items: int = 5):
        token = f"sandbox-token-{service}-{next(counter)}-{id(mock_db)}"
        sandbox_server.sandbox.add_user(service, token, items)
        if fault:
            sandbox_server.sandbox.inject(token, **fault)
        await store.networks.insert_one({"user": token[-12:], "service": service, "accessToken": token,
                                         "mode": "initial", "scheduledTo": clock.now})
        doc, lease = await claim_one(store, "initial", "me", clock.now, 60)
        async with httpx.AsyncClient() as client:
            result = await Executor(store, client, settings, plugins.discover(), clock=clock).run(doc, lease)
        return result, await store.networks.find_one({"_id": doc["_id"]}), token

    return go


@pytest.mark.parametrize("service", ["github", "stackoverflow"])
async def test_a_clean_page_is_served_and_counted(run, sandbox_server, service):
    result, net, token = await run(service, items=5)
    assert result.outcome.kind is Kind.PAGE and result.new_items == 3 and net["cursor"]["next"]
    stats = sandbox_server.sandbox.stats()
    assert stats["served"][token] == 3 and stats["by_token"][token] == 1
    assert not any(token in target for target in sandbox_server.sandbox.log)  # tokens never travel in URLs


@pytest.mark.parametrize("service, fault, kind, error", [
    ("github", {"kind": "status", "status": 500}, Kind.TRANSIENT, "http_5xx"),
    ("github", {"kind": "status", "status": 503}, Kind.TRANSIENT, "http_5xx"),
    ("github", {"kind": "rate_limit", "seconds": 600}, Kind.RATE_LIMITED, "rate_limited"),
    ("stackoverflow", {"kind": "rate_limit", "seconds": 600}, Kind.RATE_LIMITED, "rate_limited"),
    ("github", {"kind": "retry_after", "seconds": 30}, Kind.RATE_LIMITED, "rate_limited"),
    ("github", {"kind": "unauthorized"}, Kind.UNAUTHORIZED, "unauthorized"),
    ("stackoverflow", {"kind": "unauthorized"}, Kind.UNAUTHORIZED, "unauthorized"),
    ("github", {"kind": "malformed"}, Kind.TRANSIENT, "bad_json"),
    ("github", {"kind": "truncated"}, Kind.TRANSIENT, "bad_json"),
    ("github", {"kind": "wrong_type"}, Kind.TRANSIENT, "bad_json"),
    ("github", {"kind": "oversize", "size": 1_000_000}, Kind.TRANSIENT, "too_large"),
    ("github", {"kind": "timeout", "seconds": 3}, Kind.TRANSIENT, "timeout"),
    ("github", {"kind": "drip", "seconds": 5}, Kind.TRANSIENT, "timeout"),
    ("github", {"kind": "reset"}, Kind.TRANSIENT, "connection"),
    ("stackoverflow", {"kind": "status", "status": 503}, Kind.TRANSIENT, "http_5xx"),
    ("stackoverflow", {"kind": "timeout", "seconds": 3}, Kind.TRANSIENT, "timeout"),
])
async def test_each_fault_ends_in_its_documented_state(run, sandbox_server, clock, service, fault, kind, error):
    result, net, token = await run(service, fault)
    assert result.outcome.kind is kind, net.get("lastError")
    assert net["lastError"]["kind"] == error
    recorded = {k: v for k, v in net.items() if k != "accessToken"}
    assert token not in str(recorded)  # the reason never carries the token
    assert sandbox_server.sandbox.stats()["served"].get(token, 0) == 0  # a failed request hands out nothing
    if kind is Kind.RATE_LIMITED:
        assert net["errors"] == 0
        assert (net["scheduledTo"] - clock.now).total_seconds() >= fault["seconds"]
    if kind is Kind.UNAUTHORIZED:  # marked; a second 401 after unauthorized_recheck disables it
        assert net["unauthorized"] and net["authFailures"] == 1 and not net.get("disabled")


def test_control_api(sandbox_server):
    base = f"{sandbox_server.url}/_sandbox"
    assert httpx.post(f"{base}/users", json={"service": "github", "token": "ctl-token-1", "items": 4}).json() == {
        "token": "ctl-token-1", "items": 4}
    assert httpx.post(f"{base}/users/ctl-token-1/add", json={"count": 2}).json() == {"items": 6}
    assert httpx.post(f"{base}/users/ctl-token-1/faults", json={"kind": "nope"}).status_code == 400
    assert httpx.post(f"{base}/users/ctl-token-1/faults", json={"kind": "status", "status": 502}).status_code == 200
    api = httpx.Client(base_url=sandbox_server.url, headers={"Authorization": "Bearer ctl-token-1"})
    assert api.get("/user/starred").status_code == 502
    page = api.get("/user/starred", params={"per_page": 100})
    assert page.status_code == 200 and [r["repo"]["id"] for r in page.json()] == [6, 5, 4]  # newest first
    assert api.get("/user/starred", headers={"If-None-Match": page.headers["etag"]}).status_code == 304
    assert httpx.post(f"{base}/users/ctl-token-1/revoke").json() == {"revoked": True}
    assert api.get("/user/starred").status_code == 401
    stats = httpx.get(f"{base}/stats").json()
    assert stats["by_token"]["ctl-token-1"] == 4 and stats["served"]["ctl-token-1"] == 3
    assert stats["faults"]["status"] >= 1


async def test_stackexchange_backoff_field_delays_and_pauses_the_service(run, sandbox_server, clock, mock_db):
    result, net, _token = await run("stackoverflow", {"kind": "backoff", "seconds": 45})
    assert result.outcome.kind is Kind.PAGE and result.new_items == 3  # the page itself is fine
    assert (net["scheduledTo"] - clock.now).total_seconds() >= 45
    paused = await mock_db.services.find_one({"_id": "stackoverflow"})
    assert (paused["pausedUntil"] - clock.now).total_seconds() >= 45


def test_stackexchange_daily_quota_is_each_user_s_own(sandbox_server):
    """With an access token the quota is the user/app pair's (api.stackexchange.com/docs/throttle)."""
    sandbox_server.sandbox.add_user("stackoverflow", "quota-user-1", 5, quota=1)
    sandbox_server.sandbox.add_user("stackoverflow", "quota-user-2", 5)
    spent = httpx.Client(base_url=sandbox_server.url, headers={"X-API-Access-Token": "quota-user-1"})
    first = spent.get("/2.3/me/favorites")
    assert first.status_code == 200 and first.json()["quota_remaining"] == 0
    second = spent.get("/2.3/me/favorites")
    assert second.status_code == 400 and second.json()["error_name"] == "throttle_violation"
    other = httpx.get(f"{sandbox_server.url}/2.3/me/favorites", headers={"X-API-Access-Token": "quota-user-2"})
    assert other.status_code == 200 and other.json()["quota_remaining"] == sandbox_server.sandbox.quota_max - 1


@pytest.mark.recorded
def test_recorded_repositories_are_served_under_each_item_s_own_id_and_names():
    from tests.conftest import fixture_json

    recorded = fixture_json("github.connector.init.json")
    with sandbox_api() as server:
        server.sandbox.add_user("github", "rec-token", 4)
        bad = httpx.post(f"{server.url}/_sandbox/repos", json={"repos": []})
        assert bad.status_code == 400
        assert httpx.post(f"{server.url}/_sandbox/repos", json={"repos": recorded}).json() == {"repos": 30}
        page = httpx.get(f"{server.url}/user/starred", headers={"Authorization": "Bearer rec-token",
                                                                 "Accept": "application/vnd.github.star+json"}).json()
        assert [e["repo"]["id"] for e in page] == [4, 3, 2, 1]
        for entry in page:
            repo, n = entry["repo"], entry["repo"]["id"]
            template = recorded[n % 30]
            assert repo["full_name"] == f"owner{n % 97}/repo-{n}" and repo["owner"]["login"] == f"owner{n % 97}"
            assert repo["clone_url"] == template["clone_url"] and len(repo) == len(template)  # every recorded field
        httpx.post(f"{server.url}/_sandbox/repos", json={"repos": None})
        compact = httpx.get(f"{server.url}/user/starred", headers={"Authorization": "Bearer rec-token"}).json()
        assert set(compact[0]["repo"]) == {"id", "full_name", "html_url", "owner", "created_at"}


def test_full_size_repositories_are_the_generated_ones_under_each_item_s_id():
    with sandbox_api() as server:
        server.sandbox.add_user("github", "full-token", 4)
        assert httpx.post(f"{server.url}/_sandbox/repos", json={"repos": "fuller"}).status_code == 400
        assert httpx.post(f"{server.url}/_sandbox/repos", json={"repos": FULL}).json() == {"repos": FULL}
        reply = httpx.get(f"{server.url}/user/starred", headers={"Authorization": "Bearer full-token",
                                                                  "Accept": "application/vnd.github.star+json"})
        page = reply.json()
        assert [e["repo"]["id"] for e in page] == [4, 3, 2, 1] and all(e["starred_at"] for e in page)
        assert [e["repo"] for e in page] == [github_repository(n) for n in (4, 3, 2, 1)]
        assert len(reply.content) > 4 * 4_000  # full size on the wire: ~5.5 KB a repository
        assert httpx.post(f"{server.url}/_sandbox/reset").json() == {"ok": True}
        server.sandbox.add_user("github", "full-token", 1)
        again = httpx.get(f"{server.url}/user/starred", headers={"Authorization": "Bearer full-token"}).json()
        assert again[0]["repo"] == github_repository(1)  # a reset keeps what kind of repositories are served


async def test_the_github_connector_stores_full_size_repositories_as_served(run, sandbox_server, mock_db):
    sandbox_server.sandbox.repos = FULL
    try:
        result, net, _token = await run("github", items=5)
    finally:
        sandbox_server.sandbox.repos = None
    assert result.outcome.kind is Kind.PAGE and result.new_items == 3 and net["cursor"]["next"]
    items = {doc["itemId"]: doc async for doc in mock_db.items.find({})}
    assert set(items) == {"5", "4", "3"}
    for item_id, item in items.items():
        repo = github_repository(int(item_id))
        assert item["title"] == repo["full_name"] and item["url"] == repo["html_url"]
        assert item["author"] == repo["owner"]["login"]
        assert item["raw"]["repo"] == repo and item["raw"]["starred_at"]  # every field kept as GitHub sent it
