"""The probe: what the daemon relies on from its database, checked on the wire server before the rest of the
suite is trusted. Any server (the suite's mongo-java-server, or $MONGODB_URI) must pass it.

- claims are atomic: 8 clients (8 connection pools) claiming 500 due networks with the daemon's own claim
  path (Store.claim_many) take each network exactly once;
- updates of one document are atomic: 2 x 1,000 concurrent `$inc` from two clients give 2,000, and two
  clients `$set`ting different fields of the same documents lose neither;
- lease-guarded state saves are never lost to a concurrent lease renewal (the heartbeat's update_many);
- bulk writes of 1,000 upserts and 1,000 updates finish (FerretDB v1 stalled on ~100 in flight);
- the due query is an index scan through the due index (where the server has `explain`: skipped, with that
  reason, on one without it).

FerretDB v1.24 failed the first three (about 1 claim in 5 taken twice, lost increments, lost saves).
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from datetime import timedelta

import pytest
from pymongo import AsyncMongoClient, UpdateOne
from pymongo.errors import PyMongoError

from collector.batch import transient
from collector.store import DUE_INDEX, Store, due_filter
from tests.integration.plans import assert_index_scan, explain

CLIENTS = 8
NETWORKS = 500
STALL = 120.0  # seconds: a bulk command still unanswered by then is a stall, not a slow machine


@pytest.fixture
async def clients(wire_uri, wire_db):
    """CLIENTS independent clients (each its own connection pool) on the test's database."""
    opened = [AsyncMongoClient(wire_uri, tz_aware=True, serverSelectionTimeoutMS=10_000) for _ in range(CLIENTS)]
    try:
        yield [client[wire_db.name] for client in opened]
    finally:
        await asyncio.gather(*(client.close() for client in opened))


async def seed(db, clock, count: int) -> list:
    docs = [{"user": f"u{i}", "service": "github" if i % 3 else "stackoverflow", "accessToken": "t0ken",
             "mode": "initial", "scheduledTo": clock.now - timedelta(seconds=i % 97)} for i in range(count)]
    return (await db.networks.insert_many(docs)).inserted_ids


async def test_claims_are_atomic_across_clients(wire_db, clients, clock):
    await Store(wire_db).ensure_indexes()
    ids = await seed(wire_db, clock, NETWORKS)
    taken: Counter = Counter()

    transient: list[str] = []

    async def claimer(db, n: int) -> None:
        store = Store(db)
        while True:
            try:
                got = await store.claim_many("initial", f"proc{n}", clock.now, 60, want=16)
            except PyMongoError as exc:  # a whole batch failed (e.g. a deadlock victim): the daemon's next fill
                transient.append(str(exc)[:80])  # tries again, so does this claimer, a bounded number of times
                assert len(transient) <= 50, transient
                continue
            if not got:
                return
            taken.update(doc["_id"] for doc, _lease in got)

    # two claimers a client, as a daemon runs several fills' worth of claims on one pool
    await asyncio.gather(*(claimer(db, n) for n, db in enumerate(clients) for _ in range(2)))
    twice = {nid: n for nid, n in taken.items() if n > 1}
    assert not twice, f"{len(twice)} of {NETWORKS} networks claimed more than once: the server's findAndModify " \
                      "is not atomic (the lease protocol cannot hold on it)"
    assert set(taken) == set(ids), f"{NETWORKS - len(taken)} due networks never claimed"
    owners = {doc["lease"]["owner"] async for doc in wire_db.networks.find({}, {"lease.owner": 1})}
    assert len(owners) > 1  # the claimers really raced


async def test_concurrent_increments_are_not_lost(wire_db, clients):
    await wire_db.counters.insert_one({"_id": "c", "n": 0})

    async def bump(db) -> None:
        for _ in range(1000):
            await db.counters.update_one({"_id": "c"}, {"$inc": {"n": 1}})

    await asyncio.gather(bump(clients[0]), bump(clients[1]))
    assert (await wire_db.counters.find_one({"_id": "c"}))["n"] == 2000, "concurrent updates of one document lost"


async def test_concurrent_sets_of_different_fields_keep_both(wire_db, clients):
    await wire_db.docs.insert_many([{"_id": i} for i in range(200)])

    async def write(db, field: str) -> None:
        await asyncio.gather(*(db.docs.update_one({"_id": i}, {"$set": {field: i}}) for i in range(200)))

    await asyncio.gather(write(clients[0], "a"), write(clients[1], "b"))
    incomplete = await wire_db.docs.count_documents({"$or": [{"a": {"$exists": False}}, {"b": {"$exists": False}}]})
    assert incomplete == 0, f"{incomplete} of 200 documents lost one of two concurrent updates"


async def test_lease_guarded_saves_survive_concurrent_renewals(wire_db, clients, clock):
    """A run's state save (update_one guarded by the lease, unsetting it) racing the heartbeat's renewal
    (update_many of the same leases): every save lands and no lease is left behind."""
    await Store(wire_db).ensure_indexes()
    await seed(wire_db, clock, 300)
    runner, heartbeat = Store(clients[0]), Store(clients[1])
    claims = await runner.claim_many("initial", "me", clock.now, 60, want=300)
    assert len(claims) == 300
    held = [(doc["_id"], lease) for doc, lease in claims]
    done = asyncio.Event()

    async def renew() -> int:
        rounds = 0
        while not done.is_set():
            try:
                await heartbeat.renew_many(held, clock.now, 60)
            except PyMongoError as exc:
                # a deadlock victim its own retries did not get through (the bulk saves lock many rows at once):
                # the heartbeat logs it and renews at the next beat, well inside lease_ttl; anything else fails
                assert transient(exc), exc
                continue
            rounds += 1
        return rounds

    async def save(doc, lease) -> bool:
        return await runner.save_state(doc["_id"], lease, {"mode": "normal", "cursor": {"page": 2}},
                                       inc={"stats.runs": 1})

    renewer = asyncio.create_task(renew())
    saved = await asyncio.gather(*(save(doc, lease) for doc, lease in claims))
    done.set()
    assert await renewer >= 1
    assert all(saved), f"{saved.count(False)} saves found their lease gone"
    assert await wire_db.networks.count_documents({"mode": "normal", "stats.runs": 1}) == 300, "saves lost"
    assert await wire_db.networks.count_documents({"lease": {"$exists": True}}) == 0, "leases left behind"


async def test_bulk_writes_of_1000_do_not_stall(wire_db):
    async def bounded(coro):
        return await asyncio.wait_for(coro, STALL)

    ops = [UpdateOne({"_id": f"i{i}"}, {"$set": {"v": i}, "$setOnInsert": {"first": i}}, upsert=True)
           for i in range(1000)]
    assert (await bounded(wire_db.items.bulk_write(ops, ordered=False))).upserted_count == 1000
    ops = [UpdateOne({"_id": f"i{i}"}, {"$set": {"v": -i}}, upsert=True) for i in range(1000)]
    result = await bounded(wire_db.items.bulk_write(ops, ordered=False))
    assert (result.matched_count, result.upserted_count) == (1000, 0)
    docs = [{"_id": uuid.uuid4().hex, "n": i} for i in range(1000)]
    assert len((await bounded(wire_db.items.insert_many(docs, ordered=False))).inserted_ids) == 1000


async def test_the_due_query_is_an_index_scan(wire_db, clock):
    await Store(wire_db).ensure_indexes()
    await seed(wire_db, clock, 2000)
    await wire_db.networks.update_many({"service": "github"}, {"$set": {"mode": "normal"}})
    cursor = wire_db.networks.find(due_filter("initial", clock.now), projection={"service": 1})
    assert_index_scan(await explain(cursor.sort("scheduledTo", 1).limit(100)), DUE_INDEX)
