"""Storage behaviour on both mongomock-motor and the real wire server."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest

from collector.app import make_store
from collector.documents import item_key
from collector.model import NetworkKey
from collector.sdk import Item
from collector.store import Store
from tests.conftest import make_settings
from tests.harness import claim_one


@pytest.fixture
async def store(any_db):
    store = Store(any_db)
    await store.ensure_indexes()
    await store.ensure_indexes()  # idempotent: every process runs it at start
    return store


async def add(store, clock, **doc):
    base = {"user": "u", "service": "github", "accessToken": "t0ken", "mode": "initial", "scheduledTo": clock.now}
    base.update(doc)
    return await store.insert_network(base)


async def test_claim_takes_the_most_overdue_first_and_sets_a_lease(store, clock):
    late = await add(store, clock, user="late", scheduledTo=clock.now - timedelta(hours=1))
    await add(store, clock, user="now")
    doc, lease = await claim_one(store, "initial", "me", clock.now, 60)
    assert doc["_id"] == late and doc["lease"]["owner"] == "me" and doc["lease"]["id"] == lease.id
    assert doc["lease"]["until"] == clock.now + timedelta(seconds=60)


async def test_claim_skips_what_is_not_due(store, clock):
    await add(store, clock, user="future", scheduledTo=clock.now + timedelta(seconds=1))
    await add(store, clock, user="disabled", disabled=True)
    await add(store, clock, user="other-mode", mode="normal")
    await add(store, clock, user="paused-service", service="stackoverflow")
    await add(store, clock, user="never", scheduledTo=None)
    await add(store, clock, user="leased", lease={"id": "x", "owner": "o", "until": clock.now + timedelta(seconds=5)})
    assert await claim_one(store, "initial", "me", clock.now, 60, exclude_services={"stackoverflow"}) is None


async def test_an_expired_lease_is_reclaimable(store, clock):
    await add(store, clock, lease={"id": "x", "owner": "dead", "until": clock.now - timedelta(seconds=1)})
    doc, _lease = await claim_one(store, "initial", "me", clock.now, 60)
    assert doc["lease"]["owner"] == "me"


async def test_each_network_is_claimed_once_under_concurrent_claims(store, clock):
    for i in range(30):
        await add(store, clock, user=f"u{i}")

    async def claimer(owner: str) -> list:
        won = []
        while (claim := await claim_one(store, "initial", owner, clock.now, 60)) is not None:
            won.append(claim[0]["_id"])
        return won

    got = [nid for won in await asyncio.gather(*[claimer(f"p{i}") for i in range(40)]) for nid in won]
    # a claimer that lost every round of a try to racers gives up (the daemon looks again at its next tick): one
    # look after the race takes whatever the racers left, so each network must be claimed exactly once in all
    got += await claimer("late")
    assert len(got) == 30 and len(set(got)) == 30


async def test_state_save_is_guarded_by_the_lease(store, clock):
    nid = await add(store, clock)
    _doc, mine = await claim_one(store, "initial", "me", clock.now, 60)
    later = clock.now + timedelta(seconds=61)
    _doc, theirs = await claim_one(store, "initial", "them", later, 60)
    assert not await store.save_state(nid, mine, {"mode": "normal"})
    assert (await store.get_network(nid))["mode"] == "initial"
    assert await store.save_state(nid, theirs, {"mode": "normal", "errors": 0}, inc={"stats.runs": 1})
    net = await store.get_network(nid)
    assert net["mode"] == "normal" and "lease" not in net and net["stats"]["runs"] == 1


async def test_renew_and_release(store, clock):
    nid = await add(store, clock)
    _doc, lease = await claim_one(store, "initial", "me", clock.now, 60)
    assert await store.renew_many([(nid, lease)], clock.now + timedelta(seconds=50), 60) == 1
    assert (await store.get_network(nid))["lease"]["until"] == clock.now + timedelta(seconds=110)
    assert await store.release(nid, lease)
    assert "lease" not in await store.get_network(nid)
    assert not await store.release(nid, lease)


def items(n, start=0):
    return [Item(id=str(i), title=f"t{i}", url=f"https://x/{i}") for i in range(start, start + n)]


async def test_items_are_idempotent_upserts(store, clock, any_db):
    net = NetworkKey("n1", "u", "github")
    assert await store.save_items(net, items(50), clock.now) == 50
    later = clock.now + timedelta(minutes=5)
    assert await store.save_items(net, items(60), later) == 10  # a re-run of the same page + 10 new
    assert await any_db.items.count_documents({}) == 60
    first = await any_db.items.find_one({"itemId": "0"})
    assert first["collectedAt"] == clock.now and first["updatedAt"] == later
    # the same item id for another user or service is another item
    assert await store.save_items(NetworkKey("n2", "v", "github"), items(1), clock.now) == 1


async def test_raw_payloads_with_dollar_and_dot_keys_are_stored(store, clock, any_db):
    """Bluesky records carry `$type`, some APIs dotted keys: a server refuses such keys in a document,
    so the raw payload's keys are stored with full-width `$` and `.` instead (and nothing is lost)."""
    raw = {"$type": "app.bsky.feed.post", "embed": {"$type": "x", "images": [{"a.b": 1, "$ref": "r"}]}, "ok": 2}
    net = NetworkKey("n1", "u", "bluesky")
    assert await store.save_items(net, [Item(id="p1", title="t", raw=raw)], clock.now) == 1
    doc = await any_db.items.find_one({"itemId": "p1"})
    assert doc["raw"] == {"\uff04type": "app.bsky.feed.post", "ok": 2,
                          "embed": {"\uff04type": "x", "images": [{"a\uff0eb": 1, "\uff04ref": "r"}]}}


async def test_concurrent_upserts_of_the_same_new_items_store_each_once(clock, any_db):
    store = await make_store(any_db, make_settings())  # as the daemon makes it
    net = NetworkKey("n1", "u", "github")
    new = await asyncio.gather(*[store.save_items(net, items(100), clock.now) for _ in range(4)])
    assert await any_db.items.count_documents({}) == 100
    assert sum(new) == 100  # each item counted new by exactly one of the racing writers


async def test_an_item_is_unique_by_its_id(store, any_db):
    from pymongo.errors import DuplicateKeyError

    doc = {"_id": item_key("u", "s", "1"), "user": "u", "service": "s", "itemId": "1"}
    await any_db.items.insert_one(dict(doc))
    with pytest.raises(DuplicateKeyError):
        await any_db.items.insert_one(dict(doc))
    assert item_key("u", "s", "1") != item_key("u", "s", "2") != item_key(1, "s", "1")


async def test_a_unique_item_index_of_an_earlier_version_is_kept(any_db):
    await any_db.items.create_index([("user", 1), ("service", 1), ("itemId", 1)], name="item_key", unique=True)
    await Store(any_db).ensure_indexes()  # no conflict with the existing definition
    assert (await any_db.items.index_information())["item_key"]["unique"]


async def test_service_pause_only_moves_forward(store, clock):
    await store.pause_service("stackoverflow", clock.now + timedelta(hours=2), "quota", clock.now)
    await store.pause_service("stackoverflow", clock.now + timedelta(hours=1), "backoff", clock.now)
    paused = await store.paused_services(clock.now)
    assert paused["stackoverflow"] == clock.now + timedelta(hours=2)
    assert await store.paused_services(clock.now + timedelta(hours=3)) == {}


async def test_operator_actions(store, clock):
    nid = await add(store, clock, mode="normal", cursor={"stop": "9"}, errors=5, disabled=True, unauthorized=True,
                    disabledReason="unauthorized: Bad credentials", scheduledTo=None)
    later = clock.now + timedelta(minutes=1)
    assert await store.enable(nid, later)
    net = await store.get_network(nid)
    assert (net["disabled"], net["unauthorized"], net["errors"], net["scheduledTo"]) == (False, False, 0, later)
    assert "disabledReason" not in net and net["mode"] == "normal" and net["cursor"] == {"stop": "9"}
    assert await store.disable(nid, "customer left", later)
    net = await store.get_network(nid)
    assert net["disabled"] and net["disabledReason"] == "operator: customer left" and net["scheduledTo"] is None
    assert await store.reset(nid, later)
    net = await store.get_network(nid)
    assert (net["mode"], net["cursor"], net["disabled"], net["scheduledTo"]) == ("initial", {}, False, later)
    assert not await store.enable("no-such-network", later)


async def test_an_array_mode_is_claimed_by_no_scheduler_and_repaired_as_malformed(store, clock):
    """Found by the property test: a `mode` of ['initial', 'normal', 'x'] matched BOTH modes' due queries, and,
    scheduled far ahead, was never repaired nor disabled."""
    odd = await add(store, clock, user="odd", mode=["initial", "normal", "x"])
    later = await add(store, clock, user="later", mode=["normal"], scheduledTo=clock.now + timedelta(days=400))
    for mode in ("initial", "normal"):
        assert await store.claim_many(mode, "me", clock.now, 60, 10) == []
    repaired = dict(await store.repair(clock.now, ("initial", "normal")))
    assert set(repaired) == {odd, later}
    for nid in (odd, later):
        net = await store.get_network(nid)
        assert net["disabled"] is True and net["scheduledTo"] is None
        assert net["disabledReason"].startswith("malformed: field 'mode'")


async def test_list_networks_filters_by_state_and_redacts(store, clock):
    await add(store, clock, user="ok")
    await add(store, clock, user="off", disabled=True, disabledReason="operator: x")
    await add(store, clock, user="401", disabled=True, unauthorized=True)
    await add(store, clock, user="limited", parkedAt=clock.now, parkedReason="parked after 6 rate limits in a row")
    users = {state: sorted(d["user"] for d in await store.list_networks(state=state))
             for state in ("active", "disabled", "unauthorized", "parked")}
    assert users == {"active": ["limited", "ok"], "disabled": ["off"], "unauthorized": ["401"], "parked": ["limited"]}
    listed = await store.list_networks(user="ok")
    assert [d["accessToken"] for d in listed] == ["[redacted]"]
    with pytest.raises(ValueError, match="state must be one of"):
        await store.list_networks(state="asleep")


async def test_slots_stamped_junk_ones_repaired_and_partitioned_claims_on_both_engines(store, clock):
    """The slot queries on each engine (mongomock and the wire server): missing ones stamped, a junk one (a string,
    a double, out of range, an array, an object) found by the repair's filter and stamped again; then the
    partitions together claim every network."""
    from collector.selectors import SLOTS, Selectors, user_slot

    await store.ensure_indexes(Selectors.build(partition="0/3"))
    junk = ["7", -1, SLOTS, 3.5, 3.0, True, [3], {"s": 1}]  # 3.0: a double, as a JavaScript client writes 3
    docs = [{"user": f"j{i}", "service": "github", "mode": "normal", "scheduledTo": clock.now, "slot": v}
            for i, v in enumerate(junk)]
    docs += [{"user": f"n{i}", "service": "github", "mode": "normal", "scheduledTo": clock.now} for i in range(20)]
    await store.networks.insert_many(docs)
    repaired = await store.repair(clock.now, ("initial", "normal"))
    assert sorted(what for _id, what in repaired) == ["slot"] * len(junk)
    assert await store.stamp_slots("normal") == len(docs)
    async for doc in store.networks.find({}):
        assert doc["slot"] == user_slot(doc["user"])
    claimed = [len(await store.claim_many("normal", "p", clock.now, 60, 100,
                                          selectors=Selectors.build(partition=f"{k}/3"))) for k in range(3)]
    assert sum(claimed) == len(docs)


async def test_fleet_figures_are_computed_by_one_process_per_interval_and_read_by_the_others(store, clock):
    """With metrics on, a thousand processes each aggregated the due set every backlog_interval: now the first
    one past the deadline computes, the others read what it stored."""
    computed = []

    def compute(who):
        async def figures():
            computed.append(who)
            await asyncio.sleep(0.05)  # a turn in progress: the others must not compute meanwhile
            return {"backlog": [["normal", "github", len(computed), 1.5]], "uncovered": []}
        return figures

    assert await store.shared_figures("metrics", clock.now, 15.0, compute("a")) is not None
    many = await asyncio.gather(*(store.shared_figures("metrics", clock.now, 15.0, compute(f"p{i}"))
                                  for i in range(10)))
    assert computed == ["a"] and all(f == {"backlog": [["normal", "github", 1, 1.5]], "uncovered": []}
                                     for f in many)
    later = clock.now + timedelta(seconds=16)  # stale: one of the racing processes takes the turn
    racing = await asyncio.gather(*(store.shared_figures("metrics", later, 15.0, compute(f"q{i}")) for i in range(10)))
    assert len(computed) == 2 and computed[1].startswith("q")
    assert sum(1 for f in racing if f and f["backlog"][0][2] == 2) >= 1  # the winner's own figures
    assert all(f is not None for f in racing)  # the others keep the last stored ones


async def test_refreshed_credentials_are_a_compare_and_set_whose_lost_answer_is_told_by_its_stamp(store, clock):
    network_id = await add(store, clock, refreshToken="r0")

    assert await store.update_credentials(network_id, "r0", {"accessToken": "a1", "refreshToken": "r1"}, "stamp-1")
    # the same write again (a retry after its answer was lost): it matches nothing now, and the stamp says it was ours
    assert await store.update_credentials(network_id, "r0", {"accessToken": "a1", "refreshToken": "r1"}, "stamp-1")
    # a refresh obtained with a refresh token the network no longer has: refused
    assert not await store.update_credentials(network_id, "r0", {"accessToken": "a2", "refreshToken": "r2"}, "stamp-2")
    doc = await store.get_network(network_id)
    assert (doc["accessToken"], doc["refreshToken"], doc["credentialsStamp"]) == ("a1", "r1", "stamp-1")


async def test_an_auth_incident_pauses_the_service_and_is_remembered(store, clock):
    assert await store.auth_incident_at("github") is None
    until = clock.now + timedelta(seconds=300)
    await store.declare_auth_incident("github", until, "auth incident: 10 of 10 runs refused", clock.now)
    await store.declare_auth_incident("github", until, "auth incident: 12 of 12 runs refused", clock.now)  # again

    assert await store.auth_incident_at("github") == clock.now
    pause = await store.service_pause("github", clock.now)
    assert pause is not None and pause["pauseReason"].startswith("auth incident")
    assert await store.service_pause("github", until + timedelta(seconds=1)) is None
