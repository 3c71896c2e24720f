"""State saves in bulk (collector.batch.GroupCommit), on mongomock-motor and the wire server: saves that
arrive together go as one bulk_write, each still guarded by its lease, each told whether it was applied."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
from pymongo.errors import AutoReconnect, WriteError

from collector.batch import GroupCommit, Guarded
from collector.store import Store


@pytest.fixture
async def store(any_db):
    store = Store(any_db)
    await store.ensure_indexes()
    return store


async def leased(store, clock, n, **extra):
    """n networks, each claimed (leased) by this test; returns [(doc, lease)]."""
    for i in range(n):
        await store.insert_network({"user": f"u{i}", "service": "github", "accessToken": "t0ken",
                                    "mode": "initial", "scheduledTo": clock.now, **extra})
    claims = await store.claim_many("initial", "me", clock.now, 60, n)
    assert len(claims) == n
    return claims


def save(store, doc, lease, clock, **fields):
    return store.save_state(doc["_id"], lease, {"scheduledTo": clock.now + timedelta(hours=1), **fields},
                            inc={"stats.runs": 1})


async def test_saves_that_arrive_together_go_as_one_bulk_and_release_their_leases(store, clock):
    claims = await leased(store, clock, 40)
    results = await asyncio.gather(*(save(store, doc, lease, clock, errors=0) for doc, lease in claims))
    assert results == [True] * 40
    # the first went alone (nothing was in flight), the rest waited for it and went together
    assert store.state_writes.ops == 40 and store.state_writes.bulks < 10
    async for net in store.networks.find({}):
        assert "lease" not in net and net["stats"]["runs"] == 1 and net["lastLease"]
        assert net["scheduledTo"] == clock.now + timedelta(hours=1)


async def test_a_save_whose_lease_was_lost_is_dropped_and_only_that_one_says_so(store, clock):
    claims = await leased(store, clock, 12)
    lost = claims[5]
    # another process took network 5 over after our lease expired
    await store.networks.update_one({"_id": lost[0]["_id"]},
                                    {"$set": {"lease": {"id": "theirs", "owner": "them", "until": clock.now}}})
    results = await asyncio.gather(*(save(store, doc, lease, clock, errors=0) for doc, lease in claims))
    assert results == [i != 5 for i in range(12)]
    net = await store.networks.find_one({"_id": lost[0]["_id"]})
    assert net["lease"]["id"] == "theirs" and "stats" not in net and "lastLease" not in net
    assert store.state_writes.dropped == 1


async def test_a_save_the_server_refuses_fails_alone(wire_db, clock):
    # the wire server only: mongomock raises a TypeError of its own for `$inc` on a string
    store = Store(wire_db)
    claims = await leased(store, clock, 6)
    bad = claims[2]
    await store.networks.update_one({"_id": bad[0]["_id"]}, {"$set": {"stats": {"runs": "junk"}}})
    results = await asyncio.gather(*(save(store, doc, lease, clock) for doc, lease in claims),
                                   return_exceptions=True)
    assert isinstance(results[2], WriteError)
    assert [r for i, r in enumerate(results) if i != 2] == [True] * 5
    net = await store.networks.find_one({"_id": bad[0]["_id"]})
    assert net["lease"]["id"] == bad[1].id  # refused: still leased, it expires and the run repeats


class Failing:
    """A collection whose bulk_write fails as a whole (the connection dropped)."""

    def __init__(self, inner):
        self.inner = inner

    async def bulk_write(self, *_args, **_kwargs):
        await asyncio.sleep(0.01)
        raise AutoReconnect("connection reset")

    def __getattr__(self, name):
        return getattr(self.inner, name)


async def test_a_failed_bulk_is_every_save_s_error_and_the_next_bulk_is_written(store, clock):
    claims = await leased(store, clock, 5)
    store.state_writes = GroupCommit(Failing(store.networks))
    results = await asyncio.gather(*(save(store, doc, lease, clock) for doc, lease in claims),
                                   return_exceptions=True)
    assert all(isinstance(r, AutoReconnect) for r in results)
    store.state_writes = GroupCommit(store.networks)
    assert await asyncio.gather(*(save(store, doc, lease, clock) for doc, lease in claims)) == [True] * 5


async def test_a_cancelled_caller_does_not_take_the_others_down_and_drain_waits_for_the_bulk(store, clock):
    claims = await leased(store, clock, 8)
    tasks = [asyncio.create_task(save(store, doc, lease, clock)) for doc, lease in claims]
    await asyncio.sleep(0)  # every save queued, the first bulk on its way
    tasks[3].cancel()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    await store.state_writes.drain()
    assert isinstance(results[3], asyncio.CancelledError)
    assert [r for i, r in enumerate(results) if i != 3] == [True] * 7
    # the cancelled save was queued all the same: its update was written (its caller just did not wait)
    assert await store.networks.count_documents({"lease": {"$exists": True}}) == 0


async def test_updates_of_documents_with_unhashable_ids_are_told_apart_on_read_back(any_db, clock):
    coll = any_db["odd"]
    ids = [{"a": 1}, {"b": [1, 2]}, "x"]
    await coll.insert_many([{"_id": i, "lease": {"id": "L"}} for i in ids])
    await coll.update_one({"_id": {"b": [1, 2]}}, {"$set": {"lease.id": "other"}})
    batch = GroupCommit(coll)
    ops = [Guarded(i, {"lease.id": "L"}, {"$set": {"stamp": "L"}, "$unset": {"lease": ""}}, ("stamp", "L"))
           for i in ids]
    assert await asyncio.gather(*(batch.submit(op) for op in ops)) == [True, False, True]



class Deadlocking:
    """A collection whose first bulk_write loses a deadlock: `how` = "one" (the update at index 1 is the victim,
    the others applied), "all" (the bulk ran in one transaction: everything rolled back, the server still
    counting the others as matched) or "command" (the whole command failed)."""

    def __init__(self, inner, how):
        self.inner, self.how, self.calls = inner, how, 0

    async def bulk_write(self, requests, **kwargs):
        from pymongo.errors import BulkWriteError, OperationFailure

        self.calls += 1
        if self.calls > 1:
            return await self.inner.bulk_write(requests, **kwargs)
        if self.how == "command":
            raise OperationFailure("deadlock detected", code=16908292)
        if self.how == "one":
            await self.inner.bulk_write([r for i, r in enumerate(requests) if i != 1], **kwargs)
        error = {"index": 1, "code": 16908292, "errmsg": "deadlock detected"}
        raise BulkWriteError({"writeErrors": [error], "writeConcernErrors": [], "nInserted": 0, "nUpserted": 0,
                              "nMatched": len(requests) - 1, "nModified": len(requests) - 1, "nRemoved": 0,
                              "upserted": []})

    def __getattr__(self, name):
        return getattr(self.inner, name)


@pytest.mark.parametrize("how", ["one", "all", "command"])
async def test_a_deadlock_victim_is_written_again_and_nothing_is_reported_lost(store, clock, how):
    claims = await leased(store, clock, 6)
    lost = claims[4]  # and one lease really lost meanwhile: it must still say so
    # the whole lease replaced (mongomock shares one lease object between the documents update_many leased)
    await store.networks.update_one({"_id": lost[0]["_id"]},
                                    {"$set": {"lease": {"id": "theirs", "owner": "them", "until": clock.now}}})
    deadlocking = Deadlocking(store.networks, how)
    store.state_writes = GroupCommit(deadlocking)
    tasks = [asyncio.create_task(save(store, doc, lease, clock)) for doc, lease in claims]
    results = await asyncio.gather(*tasks)
    assert results == [i != 4 for i in range(6)]
    assert deadlocking.calls >= 2
    assert await store.networks.count_documents({"lease.id": {"$ne": "theirs"}, "lease": {"$exists": True}}) == 0
    assert await store.networks.count_documents({"stats.runs": 1}) == 5  # each applied exactly once


async def test_an_update_bson_cannot_encode_fails_alone_not_its_bulk(store, clock):
    """An integer past 64 bits in one save (a connector's cursor) is refused by the client for the whole bulk:
    the bulk is written again one update at a time, and only that save gets the error."""
    claims = await leased(store, clock, 6)
    tasks = [asyncio.create_task(save(store, doc, lease, clock, cursor={"next": 2**64 if i == 2 else i}))
             for i, (doc, lease) in enumerate(claims)]
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert isinstance(results[2], OverflowError)
    assert [r for i, r in enumerate(results) if i != 2] == [True] * 5
    assert store.state_writes.bulks < 6 + 2  # they went together (then one by one), not each alone
    poisoned = await store.networks.find_one({"_id": claims[2][0]["_id"]})
    assert poisoned["lease"]["id"] == claims[2][1].id and "cursor" not in poisoned
