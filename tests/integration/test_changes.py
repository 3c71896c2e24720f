"""The change feed on both databases (mongomock-motor and the wire server): entries written with their change,
events published once each, in a per-user sequence, whatever crashed or raced (collector/changes.py)."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta

from collector import changes, outbox
from collector.changes import Publisher
from collector.model import NetworkKey
from collector.sdk import Item
from collector.store import Lease, Store
from tests.conftest import Clock, make_settings


async def _setup(db, clock, **over):
    store = Store(db, feed=True)
    await store.ensure_indexes()
    await changes.ensure_indexes(db)
    settings = make_settings(**over)
    return store, Publisher(db, settings, clock)


def _network(nid="n1", user="u1", service="github", **fields):
    return {"_id": nid, "user": user, "service": service, "mode": "initial", **fields}


def _key(nid="n1", user="u1", service="github"):
    """The network as the item writes and the state save name it (a run passes its RunNetwork's key)."""
    return NetworkKey(nid, user, service)


async def _events(db, user="u1"):
    return await changes.read(db, user)


def _flat(events):
    """(kind, item id) of every item the events name, in order; (kind, None) for a network event."""
    return [(e["kind"], i["id"]) for e in events for i in e.get("items") or [None] if i] + \
        [(e["kind"], None) for e in events if e["kind"].startswith("network.")]


async def _pending(db):
    """The pointers not retired yet (collector/outbox.py)."""
    return [d async for d in db[outbox.POINTERS].find()]


async def test_new_items_become_events_in_order_once(any_db):
    clock = Clock()
    store, pub = await _setup(any_db, clock)
    net = _key()
    new = await store.save_items(net, [Item(id=str(i), title=f"t{i}") for i in range(5)], clock.now, run="run-1")
    assert new == 5
    assert len(await _pending(any_db)) == 1  # one pointer to the page, written first
    assert {d[outbox.ADDED_BY] async for d in any_db.items.find()} == {"run-1"}  # each item marked with its run
    # the same page again (a run repeated after a crash): nothing new, no second entry
    clock.advance(1)
    assert await store.save_items(net, [Item(id=str(i), title=f"t{i}") for i in range(5)], clock.now, run="run-2") == 0
    assert await pub.publish() == 3  # run-1's pointer; run-2's, which leads to nothing added; and its restorations'
    [event] = await _events(any_db)  # one event for the run's additions, naming each item in page order
    assert event["seq"] == 1 and event["kind"] == "items.added" and event["network"] == "n1"
    assert [i["id"] for i in event["items"]] == [str(i) for i in range(5)] and event["items"][2]["title"] == "t2"
    assert event["_id"] == "n1:added:run-1"  # the id its report would have given
    assert await _pending(any_db) == []
    assert await pub.publish() == 0 and len(await _events(any_db)) == 1


async def test_sequences_are_per_user_and_grow(any_db):
    clock = Clock()
    store, pub = await _setup(any_db, clock)
    await store.save_items(_key("a", "ua"), [Item(id="1"), Item(id="2")], clock.now, run="r1")
    await store.save_items(_key("b", "ub"), [Item(id="1")], clock.now, run="r1")
    await pub.publish()
    clock.advance(5)
    await store.save_items(_key("a", "ua"), [Item(id="3")], clock.now, run="r2")
    await pub.publish()
    assert [e["seq"] for e in await _events(any_db, "ua")] == [1, 2]
    assert [e["seq"] for e in await _events(any_db, "ub")] == [1]
    assert _flat(await changes.read(any_db, "ua", since=1)) == [("items.added", "3")]


async def test_a_crash_after_the_events_before_the_clear_publishes_nothing_twice(any_db):
    clock = Clock()
    store, pub = await _setup(any_db, clock)
    await store.save_items(_key(), [Item(id="1"), Item(id="2")], clock.now, run="r1")

    async def no_retire(done):  # the process dies between the insert and the retirement of the pointers
        raise RuntimeError("killed")

    pub._retire = no_retire  # type: ignore[method-assign]
    try:
        await pub.publish()
    except RuntimeError:
        pass
    assert len(await _events(any_db)) == 1 and len(await _pending(any_db)) == 1
    again = Publisher(any_db, make_settings(), clock)
    await again.publish()
    events = await _events(any_db)
    assert len(events) == 1 and [e["seq"] for e in events] == [1]  # the same id: no duplicate
    assert _flat(events) == [("items.added", "1"), ("items.added", "2")]
    assert await _pending(any_db) == []


async def test_a_held_lock_defers_that_user_only(any_db):
    clock = Clock()
    store, pub = await _setup(any_db, clock)
    await any_db.feeds.insert_one({"_id": "ua", "seq": 7, "lock": {"id": "other", "until": clock.now + timedelta(30)}})
    await store.save_items(_key("a", "ua"), [Item(id="1")], clock.now, run="r1")
    await store.save_items(_key("b", "ub"), [Item(id="1")], clock.now, run="r1")
    await pub.publish()
    assert await _events(any_db, "ua") == [] and len(await _events(any_db, "ub")) == 1
    assert len(await _pending(any_db)) == 1  # ua's pointer waits
    clock.advance(31 * 86400)  # the holder died: its lock expires
    await pub.publish()
    assert [e["seq"] for e in await _events(any_db, "ua")] == [8]
    assert await _pending(any_db) == []


async def test_a_change_made_while_publishing_keeps_its_entry(any_db):
    clock = Clock()
    store, pub = await _setup(any_db, clock)
    await store.save_items(_key(), [Item(id="1")], clock.now, run="r1")
    write = pub._write

    async def meanwhile(by_user, ranges, until):
        written = await write(by_user, ranges, until)
        key = (await any_db.items.find_one())["_id"]  # the item is removed upstream during the round
        await any_db[outbox.POINTERS].insert_one(outbox.pointer(outbox.REMOVED, "rec1", _network(), clock.now,
                                                                keys=[key]))
        await any_db.items.update_one({"_id": key}, {"$set": {"removedAt": clock.now},
                                                     **outbox.mark(outbox.REMOVED, "rec1")})
        return written

    pub._write = meanwhile  # type: ignore[method-assign]
    await pub.publish()
    assert len(await _pending(any_db)) == 1
    pub._write = write  # type: ignore[method-assign]
    await pub.publish()
    assert _flat(await _events(any_db)) == [("items.added", "1"), ("items.removed", "1")]
    assert await _pending(any_db) == []


async def test_network_state_changes_are_events(any_db):
    clock = Clock()
    store, pub = await _setup(any_db, clock)
    await any_db.networks.insert_one(_network(lease={"id": "L1", "owner": "o", "until": clock.now}))
    lease = Lease("L1", "o", clock.now)
    assert await store.save_state("n1", lease, {"disabled": True, "unauthorized": True}, point=_key(),
                                  entries=[outbox.entry("unauthorized", "L1", clock.now, "token refused twice")])
    await pub.publish()
    [event] = await _events(any_db)
    assert event["kind"] == "network.unauthorized" and event["network"] == "n1"
    assert event["reason"] == "token refused twice" and event["_id"] == "n1:unauthorized:L1"
    assert await _pending(any_db) == [] and (await any_db.networks.find_one())[outbox.PENDING] == []


async def test_racing_publishers_write_each_event_once_in_sequence(any_db):
    clock = Clock()
    store, _ = await _setup(any_db, clock, changes={"batch": 7})
    for n in range(6):
        await store.save_items(_key(f"n{n}", f"u{n % 3}"), [Item(id=f"{n}-{i}") for i in range(10)],
                               clock.now, run=uuid.uuid4().hex)
    settings = make_settings(changes={"batch": 7})
    pubs = [Publisher(any_db, settings, clock) for _ in range(3)]
    for _ in range(40):
        await asyncio.gather(*(p.publish() for p in pubs))
        if not await _pending(any_db):
            break
    assert await _pending(any_db) == []
    for user in ("u0", "u1", "u2"):
        events = await _events(any_db, user)
        assert len(events) == 2 and len({e["_id"] for e in events}) == 2  # one per run
        assert sorted(i for _kind, i in _flat(events)) == sorted(f"{n}-{i}" for n in range(6) if n % 3 == int(user[1])
                                                                 for i in range(10))
        seqs = [e["seq"] for e in events]
        assert seqs == sorted(set(seqs))


async def test_restored_when_collected_again_after_removal(any_db):
    clock = Clock()
    store, pub = await _setup(any_db, clock)
    net = _key()
    await store.save_items(net, [Item(id="1")], clock.now, run="r1")
    await any_db.items.update_one({}, {"$set": {"removedAt": clock.now}})
    clock.advance(60)
    assert await store.save_items(net, [Item(id="1")], clock.now, run="r2") == 0
    doc = await any_db.items.find_one()
    assert "removedAt" not in doc
    await pub.publish()
    assert _flat(await _events(any_db)) == [("items.added", "1"), ("items.restored", "1")]


async def test_pointers_to_nothing_are_retired_without_events(any_db):
    clock = Clock()
    store, pub = await _setup(any_db, clock)
    await any_db.networks.insert_one(_network(pending=["junk", {"k": 1}, outbox.entry("disabled", "other", clock.now)]))
    await store.save_items(_key(), [Item(id="1")], clock.now, run="r1")
    await any_db.items.update_one({}, {"$set": {outbox.ADDED_BY: "someone else"}})  # not this run's addition
    gone = clock.now - timedelta(seconds=1)
    await any_db[outbox.POINTERS].insert_many([
        {**outbox.pointer(outbox.ADDED, "r", _network(), clock.now, keys=[{"a": 1}, "missing"]), "until": gone},
        {**outbox.pointer(outbox.STATE, "L", _network(), clock.now), "until": gone},  # its writer died before writing
        {**outbox.pointer(outbox.STATE, "L", _network("nope"), clock.now), "until": gone}])
    await pub.publish()
    assert await _pending(any_db) == [] and await any_db.changes.count_documents({}) == 0


async def test_feed_off_writes_no_pointers_or_marks(any_db):
    clock = Clock()
    store = Store(any_db)
    await store.save_items(_key(), [Item(id="1")], clock.now, run="r1")
    assert await _pending(any_db) == [] and outbox.ADDED_BY not in await any_db.items.find_one()


async def test_a_run_in_flight_is_not_published_until_its_lease_is_released(any_db):
    clock = Clock()
    store, pub = await _setup(any_db, clock)
    until = clock.now + timedelta(seconds=30)
    await any_db.networks.insert_one(_network(lease={"id": "L1", "owner": "o", "until": until}))
    await store.save_items(_key(), [Item(id="1")], clock.now, run="L1")
    await pub.publish()
    assert await _events(any_db) == [] and len(await _pending(any_db)) == 1  # the run may write more
    assert await store.save_state("n1", Lease("L1", "o", until), {"mode": "normal"})
    await pub.publish()
    assert len(await _events(any_db)) == 1 and await _pending(any_db) == []


def test_the_changes_command_prints_a_users_feed_after_a_sequence_number(sync_db, wire_uri):
    import json
    from datetime import UTC, datetime

    from click.testing import CliRunner

    from collector.cli import main

    at = datetime(2026, 12, 1, tzinfo=UTC)
    sync_db.changes.insert_many([{"_id": f"k{n}:added:r", "user": "u1", "seq": n, "kind": "item.added", "at": at,
                                  "item": {"id": str(n)}} for n in (1, 2, 5)] +
                                [{"_id": "x:added:r", "user": "u2", "seq": 3, "kind": "item.added", "at": at}])
    args = ["--mongodb-uri", wire_uri, "--set", f"database.name={sync_db.name}", "changes", "--user", "u1"]
    out = CliRunner().invoke(main, [*args, "--since", "1"])
    assert out.exit_code == 0, out.output
    lines = [json.loads(line) for line in out.output.splitlines()]
    assert [(e["seq"], e["item"]["id"], e["at"]) for e in lines] == [(2, "2", at.isoformat()), (5, "5", at.isoformat())]


async def test_operator_actions_and_repairs_are_events(any_db):
    clock = Clock()
    store, pub = await _setup(any_db, clock)
    await any_db.networks.insert_one(_network(mode="normal", scheduledTo=clock.now))
    await any_db.networks.insert_one(_network("junk", mode="sideways", scheduledTo=clock.now))
    assert await store.reset("n1", clock.now)
    assert await store.enable("n1", clock.now)
    assert await store.disable("n1", "customer left", clock.now)  # at one moment: in the order made
    clock.advance(1)
    await store.repair(clock.now, ("initial", "normal"))
    await pub.publish()
    events = await _events(any_db)
    assert [(e["network"], e["kind"]) for e in events] == [
        ("n1", "network.initial"), ("n1", "network.enabled"), ("n1", "network.disabled"), ("junk", "network.disabled")]
    assert events[2]["reason"] == "operator: customer left" and "malformed" in events[3]["reason"]


async def test_a_run_reports_what_it_added_with_its_state(any_db):
    """The fast path: the state save carries the items the run added, in the order of the page."""
    clock = Clock()
    store, pub = await _setup(any_db, clock)
    until = clock.now + timedelta(seconds=30)
    await any_db.networks.insert_one(_network(lease={"id": "L1", "owner": "o", "until": until}))
    await store.save_items(_key(), [Item(id="old")], clock.now - timedelta(seconds=1), run="L0")
    added = outbox.Added()
    await store.save_items(_key(), [Item(id="b", title="B"), Item(id="old"), Item(id="a")], clock.now, run="L1",
                           added=added)
    assert [i["id"] for i in added.items] == ["b", "a"] and added.complete
    assert await store.save_state("n1", Lease("L1", "o", until), {"mode": "normal"},
                                  entries=[added.entry("L1", clock.now),
                                           outbox.entry("normal", "L1", clock.now, "caught up")])
    await pub.publish()
    events = await _events(any_db)
    assert [e["kind"] for e in events] == ["items.added", "items.added", "network.normal"]
    assert _flat(events) == [("items.added", "old"), ("items.added", "b"), ("items.added", "a"),
                             ("network.normal", None)]
    assert events[1]["items"][0]["title"] == "B" and events[1]["_id"] == "n1:added:L1"
    assert await _pending(any_db) == []
