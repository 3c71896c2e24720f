"""Removal detection (collector/reconcile.py) for every built-in connector, driven by the real executor against the
sandbox API over HTTP on 127.0.0.1 (mongomock-motor for the database, a test clock): an item removed upstream is
marked removed within one reconcile_interval, an item that reappears is restored, a listing interrupted midway (a
fault, a rate limit, a lost lease) or cut by a listing cap marks nothing, the quota is respected, and the change feed
gets its pointers and marks."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import httpx
import pytest

from collector import changes, outbox, plugins
from collector.executor import Executor
from collector.reconcile import LAST, RECONCILE, held_by, state_of
from collector.sandbox import Sandbox
from collector.sandbox.apis import bluesky, mastodon, reddit, spotify, youtube
from collector.states import Kind, Outcome
from collector.store import Store
from tests.conftest import make_settings
from tests.harness import claim_one

PAGE = 3  # the sandbox's page size: 7 items are 3 pages
SANDBOX_PAGE_CAP = PAGE  # the sandbox_server fixture's
ITEMS = 7
INTERVAL = 3600.0
SERVICES = ("github", "stackoverflow", "mastodon_favourites", "mastodon_bookmarks", "gitlab", "youtube", "spotify",
            "reddit_saved", "reddit_upvoted", "bluesky")


def upstream_id(service: str, box: Sandbox, token: str, n: int) -> str:
    """The id the connector stores for the sandbox's item n (each emulator derives its ids from n)."""
    if service.startswith("mastodon"):
        return mastodon.status_id(n)
    if service == "youtube":
        return youtube.video_id(n)
    if service == "spotify":
        return spotify.track_id(n)
    if service.startswith("reddit"):
        return reddit.fullname(n)
    if service == "bluesky":
        return str(bluesky.post_view(box.users[token], {"id": n, "at": 0})["uri"])
    return str(n)


def listing_requests(service: str, items: int) -> int:
    """What one listing of `items` costs in the sandbox: a page per PAGE items, plus Bluesky's last, empty page
    (its end is a page without a cursor), Mastodon's when the last page is full (rel="next" comes with a full page),
    GitLab's GET /user (no options.user_id)."""
    pages = max(math.ceil(items / PAGE), 1)
    extra = service == "bluesky" or service == "gitlab" or (service.startswith("mastodon") and items % PAGE == 0)
    return pages + int(extra)


@dataclass
class Net:
    service: str
    token: str
    name: str
    id: Any
    store: Store
    executor: Executor
    clock: Any
    box: Sandbox

    async def doc(self) -> dict[str, Any]:
        return await self.store.networks.find_one({"_id": self.id})

    async def run(self) -> Any:
        """Run the network when it is due (the clock moved there)."""
        doc = await self.doc()
        self.clock.now = max(self.clock.now, doc["scheduledTo"])
        claimed = await claim_one(self.store, doc["mode"], "me", self.clock.now, 60)
        assert claimed is not None
        result = await self.executor.run(*claimed)
        assert result.outcome.kind in (Kind.PAGE, Kind.NOT_MODIFIED), result.outcome
        return result

    async def until(self, done, runs: int = 60) -> None:
        for _ in range(runs):
            if done(await self.doc()):
                return
            await self.run()
        raise AssertionError(f"not reached in {runs} runs: {await self.doc()}")

    async def last(self) -> dict[str, Any] | None:
        return (await self.doc()).get(LAST)

    async def reconciled(self, runs: int = 60) -> dict[str, Any]:
        """Run until a reconciliation ends after this moment; its lastReconcile."""
        before = await self.last()
        await self.until(lambda d: d.get(LAST) and d.get(LAST) != before, runs)
        return await self.last()

    async def removed(self) -> set[str]:
        return {d["itemId"] async for d in self.store.items.find({"network": self.id, "removedAt": {"$exists": True}})}

    async def stored(self) -> set[str]:
        return {d["itemId"] async for d in self.store.items.find({"network": self.id})}

    def ids(self, *ns: int) -> set[str]:
        return {upstream_id(self.service, self.box, self.token, n) for n in ns}


def settings_for(url: str, **schedule: Any) -> Any:
    bases = {s: {"base_url": url} for s in SERVICES if not s.startswith("mastodon")}
    bases["stackoverflow"] = {"base_url": f"{url}/2.3"}
    return make_settings(services=bases, schedule={"jitter": 0, "reconcile_interval": INTERVAL, **schedule},
                         http={"total_timeout": 5.0})


@pytest.fixture
async def network(sandbox_server, mock_db, clock):
    counter = iter(range(1000))
    clients = []

    async def make(service: str, items: int = ITEMS, feed: bool = False, **schedule: Any) -> Net:
        n = next(counter)
        name = f"rec{n}x{id(mock_db) % 100000}"
        token = f"reconcile-{service}-{name}"
        sandbox_server.sandbox.add_user(service, token, items, name=name)
        url = sandbox_server.url
        options = {"mastodon_favourites": {"instance": url}, "mastodon_bookmarks": {"instance": url},
                   "gitlab": {"base_url": url}, "reddit_saved": {"username": name},
                   "reddit_upvoted": {"username": name}, "bluesky": {"actor": f"{name}.bsky.social"}}.get(service, {})
        store = Store(mock_db, feed=feed)
        await store.ensure_indexes()
        nid = await store.insert_network({"user": name, "service": service, "accessToken": token, "mode": "initial",
                                          "scheduledTo": clock.now, "options": options})
        client = httpx.AsyncClient()
        clients.append(client)
        executor = Executor(store, client, settings_for(url, **schedule), plugins.discover(), clock=clock,
                            rng=random.Random(3))
        net = Net(service, token, name, nid, store, executor, clock, sandbox_server.sandbox)
        await net.until(lambda d: d["mode"] == "normal")  # the back-fill
        assert await net.stored() == net.ids(*range(1, items + 1))
        return net

    yield make
    for client in clients:
        await client.aclose()


@pytest.mark.parametrize("service", SERVICES)
async def test_removal_is_detected_within_one_interval_and_a_reappearance_restores(network, service):
    net = await network(service)
    await net.run()  # the first normal run: the first reconciliation somewhere in the first interval
    first = state_of((await net.doc()).get(RECONCILE))["due"]
    assert net.clock.now <= first <= net.clock.now + timedelta(seconds=INTERVAL)
    last = await net.reconciled()
    assert last["complete"] and last["removed"] == 0 and last["listed"] == ITEMS, last
    assert last["requests"] == listing_requests(service, ITEMS)  # one listing: nothing seemed removed
    assert net.clock.now == first  # the network came back for it exactly when it was due

    removed_at = net.clock.now
    net.box.remove_items(net.token, [7, 4])  # the newest and one on the second page
    sent = net.box.requests[net.token]
    last = await net.reconciled()
    assert await net.removed() == net.ids(7, 4), last
    assert last["complete"] and last["removed"] == 2 and last["reason"] == "two listings agree", last
    assert net.clock.now - removed_at <= timedelta(seconds=INTERVAL)
    assert last["requests"] == 2 * listing_requests(service, ITEMS - 2)  # the confirming listing
    assert net.box.requests[net.token] - sent - last["requests"] >= 1  # the normal run that carried it, at least

    net.box.restore_items(net.token, [4])
    last = await net.reconciled()
    assert await net.removed() == net.ids(7)
    assert last["restored"] == 1 and last["removed"] == 0 and last["complete"], last
    assert not (await net.doc()).get("disabled")


async def test_a_fault_on_page_two_marks_nothing_and_the_listing_resumes_from_its_cursor(network, monkeypatch):
    net = await network("github")
    await net.reconciled()
    net.box.remove_items(net.token, [2])
    calls = []
    guarded = net.executor._guarded

    async def faulty(connector, ctx, now):
        if ctx.mode == "initial":
            calls.append(dict(ctx.cursor))
            if len(calls) == 2:  # the listing's second page meets a 500
                net.box.inject(net.token, "status", status=500)
        return await guarded(connector, ctx, now)

    monkeypatch.setattr(net.executor, "_guarded", faulty)
    await net.until(lambda d: len(calls) >= 2)
    doc = await net.doc()
    assert await net.removed() == set() and doc.get(LAST, {}).get("removed") == 0
    state = doc[RECONCILE]
    assert state["phase"] == 1 and state["cursor"] == calls[1] and "500" in state["stopped"], state
    assert doc["errors"] == 0 and doc["lastOutcome"]["kind"] in ("page", "not_modified")  # the normal run succeeded
    last = await net.reconciled()
    assert calls[2] == calls[1]  # resumed at page 2, not from the start
    assert await net.removed() == net.ids(2) and last["removed"] == 1


async def test_a_rate_limit_on_a_listing_page_marks_nothing_and_reaches_the_schedule(network, monkeypatch):
    net = await network("github")
    await net.reconciled()
    net.box.remove_items(net.token, [5])
    guarded = net.executor._guarded
    listed = []

    async def limited(connector, ctx, now):
        if ctx.mode == "initial":
            listed.append(1)
            if len(listed) == 2:
                net.box.inject(net.token, "retry_after", seconds=900)
        return await guarded(connector, ctx, now)

    monkeypatch.setattr(net.executor, "_guarded", limited)
    await net.until(lambda d: len(listed) >= 2)
    doc = await net.doc()
    assert await net.removed() == set()
    assert (doc["scheduledTo"] - net.clock.now).total_seconds() >= 900 and doc["rateLimitedUntil"]
    assert doc[RECONCILE]["phase"] == 1 and "rate_limited" in doc[RECONCILE]["stopped"]
    await net.reconciled()
    assert await net.removed() == net.ids(5)


async def test_a_lost_lease_marks_nothing(network, monkeypatch):
    net = await network("stackoverflow")
    await net.reconciled()
    net.box.remove_items(net.token, [3])
    guarded = net.executor._guarded
    state = {"listed": 0}

    async def stolen(connector, ctx, now):
        if ctx.mode == "initial":
            state["listed"] += 1
            if state["listed"] == 2:  # another process took the network over meanwhile
                await net.store.networks.update_one({"_id": net.id}, {"$set": {"lease.id": "someone-else"}})
        return await guarded(connector, ctx, now)

    monkeypatch.setattr(net.executor, "_guarded", stolen)
    doc = await net.doc()
    net.clock.now = state_of(doc.get(RECONCILE))["due"]
    await net.store.networks.update_one({"_id": net.id}, {"$set": {"scheduledTo": net.clock.now}})
    claimed = await claim_one(net.store, "normal", "me", net.clock.now, 60)
    result = await net.executor.run(*claimed)
    assert not result.saved and state["listed"] >= 4  # both listings ran, the lease was gone at the end
    assert await net.removed() == set()
    net.clock.now += timedelta(seconds=61)  # the thief's lease expires: the next run starts again
    await net.store.networks.update_one({"_id": net.id}, {"$set": {"scheduledTo": net.clock.now}})
    last = await net.reconciled()
    assert await net.removed() == net.ids(3) and last["removed"] == 1


async def test_a_listing_cap_marks_nothing(network, monkeypatch):
    monkeypatch.setattr(plugins.discover()["reddit_saved"].cls, "listing_cap", 5)
    net = await network("reddit_saved")
    net.box.remove_items(net.token, [1])
    last = await net.reconciled()
    assert not last["complete"] and "listing cap" in last["reason"] and last["listed"] == 6, last
    assert await net.removed() == set()
    assert last["requests"] == 2  # stopped at the cap, not paged on


async def test_the_page_cap_spreads_a_listing_over_runs_that_come_back_soon(network):
    net = await network("spotify", reconcile_pages=1)
    net.box.remove_items(net.token, [6])
    await net.until(lambda d: (d.get(RECONCILE) or {}).get("id"))
    doc = await net.doc()
    assert doc[RECONCILE]["pages"] == 1 and "reconcile_pages" in doc[RECONCILE]["stopped"]
    assert (doc["scheduledTo"] - net.clock.now).total_seconds() <= 1.0  # initial_pace, not the normal interval
    last = await net.reconciled()
    assert last["removed"] == 1 and await net.removed() == net.ids(6)


async def test_the_quota_is_respected(sandbox_server, network):
    # GitHub's sandbox: 5000 requests an hour per token; 304s cost nothing, as on GitHub
    net = await network("github", items=60, reconcile_pages=100, reconcile_quota=0.5)
    user = net.box.users[net.token]
    user.remaining = 2510  # what the API will say is left of 5000
    await net.run()
    await net.until(lambda d: (d.get(RECONCILE) or {}).get("stopped"))
    doc = await net.doc()
    assert "quota low" in doc[RECONCILE]["stopped"] and LAST not in doc
    assert user.remaining == 2499  # the pages sent while at least half remained; none after
    sent = net.box.requests[net.token]
    await net.run()  # held again: only the normal request (a 304)
    assert net.box.requests[net.token] == sent + 1 and user.remaining == 2499


async def test_removals_and_restorations_are_in_the_change_feed(network):
    net = await network("mastodon_favourites", feed=True)
    await net.reconciled()
    net.box.remove_items(net.token, [1, 2])
    last = await net.reconciled()
    assert last["removed"] == 2
    keys = [d["_id"] async for d in net.store.items.find({"removedAt": {"$exists": True}})]
    marked = [d async for d in net.store.items.find({outbox.REMOVED_BY: last["id"]})]
    assert sorted(d["_id"] for d in marked) == sorted(keys)
    pointers = [p async for p in net.store.pointers.find({"kind": outbox.REMOVED})]
    assert [sorted(p["keys"]) for p in pointers] == [sorted(keys)] and pointers[0]["run"] == last["id"]
    net.box.restore_items(net.token, [2])
    last = await net.reconciled()
    assert [d["itemId"] async for d in net.store.items.find({outbox.RESTORED_BY: last["id"]})] == list(net.ids(2))
    publisher = changes.Publisher(net.store.db, settings_for("http://unused"), net.clock)
    await publisher.publish()
    events = set()  # (what happened, item id): an event reports one item or several
    for event in await changes.read(net.store.db, net.name):
        for item in event.get("items") or ([event["item"]] if "item" in event else []):
            events.add((event["kind"].split(".")[-1], item["id"]))
    assert {("removed", i) for i in net.ids(1, 2)} | {("restored", i) for i in net.ids(2)} <= events


async def test_without_the_feed_nothing_is_pointed_or_marked(network):
    net = await network("github")
    await net.reconciled()
    net.box.remove_items(net.token, [1])
    await net.reconciled()
    assert await net.removed() == net.ids(1)
    assert await net.store.pointers.count_documents({}) == 0
    assert await net.store.items.count_documents({outbox.REMOVED_BY: {"$exists": True}}) == 0


async def test_an_interval_of_zero_never_reconciles(network):
    net = await network("github", reconcile_interval=0)
    sent = net.box.requests[net.token]
    for _ in range(5):
        await net.run()
    doc = await net.doc()
    assert RECONCILE not in doc and LAST not in doc and net.box.requests[net.token] == sent + 5


def test_junk_state_is_no_state():
    from datetime import UTC, datetime

    now = datetime(2026, 1, 1, tzinfo=UTC)
    assert state_of(None) == {} and state_of("x") == {} and state_of({"due": 5}) == {}
    assert state_of({"due": now, "id": 7, "phase": 1, "cursor": {}, "started": now}) == {"due": now}
    full = state_of({"id": "r", "phase": 2, "cursor": {"next": 2}, "started": now, "pages": "x"})
    assert full["phase"] == 2 and full["pages"] == 0 and full["due"] is None


def test_the_quota_share():
    from datetime import UTC, datetime

    from collector.sdk import RateLimit

    now = datetime(2026, 1, 1, tzinfo=UTC)
    assert held_by(None, 0.5, now, 1) is None
    assert held_by(RateLimit(remaining=60, limit=100), 0.5, now, 1) is None
    assert "quota low" in held_by(RateLimit(remaining=40, limit=100), 0.5, now, 1)
    assert held_by(RateLimit(remaining=40), 0.5, now, 1) is None  # no limit said: allowed
    assert held_by(RateLimit(retry_after=30), 0.5, now, 1) == "the API asked to wait"
    assert Outcome(Kind.PAGE).reconcile is None
