"""Store.claim_many when the server fails a batch (a deadlock victim, a stepped-down primary): what the
failed command did lease is read back and handed to the caller, never left on the networks to expire; only
a batch that claimed nothing raises. And racing claimers: each network to exactly one of them."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
from pymongo.errors import OperationFailure

from collector.store import Store


@pytest.fixture
async def store(mock_db, clock):
    store = Store(mock_db)
    await store.ensure_indexes()
    for i in range(6):
        await store.insert_network({"user": f"u{i}", "service": "github", "accessToken": "t0ken", "mode": "initial",
                                    "scheduledTo": clock.now - timedelta(seconds=i)})
    return store


def update_fails(store: Store, after: int | None) -> None:
    """The next update_many of the networks raises a transient error, after leasing `after` of its documents
    (None: it leases nothing, as a statement rolled back on PostgreSQL)."""
    real = store.networks.update_many

    async def update_many(query, update, **kwargs):
        store.networks.update_many = real
        if after:
            ids = [doc["_id"] async for doc in store.networks.find(query, {"_id": 1})][:after]
            await real({**query, "_id": {"$in": ids}}, update, **kwargs)
        raise OperationFailure("deadlock detected", code=1)

    store.networks.update_many = update_many


async def test_what_a_failed_batch_leased_is_handed_over(store, clock, mock_db):
    update_fails(store, after=2)  # MongoDB applies an update_many document by document
    got = await store.claim_many("initial", "me", clock.now, 60, want=6)
    assert len(got) == 2
    leased = {doc["_id"] async for doc in mock_db.networks.find({"lease.owner": "me"})}
    assert leased == {doc["_id"] for doc, _lease in got}  # every lease written is the caller's to run


async def test_a_batch_that_claimed_nothing_raises(store, clock, mock_db):
    update_fails(store, after=None)
    with pytest.raises(OperationFailure, match="deadlock"):
        await store.claim_many("initial", "me", clock.now, 60, want=6)
    assert await mock_db.networks.count_documents({"lease": {"$exists": True}}) == 0


async def test_the_most_overdue_first_in_order(store, clock):
    got = await store.claim_many("initial", "me", clock.now, 60, want=3)
    assert [doc["user"] for doc, _lease in got] == ["u5", "u4", "u3"]
    assert len({lease.id for _doc, lease in got}) == 1  # one lease id for the batch, one _id per network


async def test_racing_claimers_take_each_network_once(store, clock):
    got = await asyncio.gather(*(store.claim_many("initial", f"p{i}", clock.now, 60, want=4) for i in range(4)))
    ids = [doc["_id"] for batch in got for doc, _lease in batch]
    assert len(ids) == 6 and len(set(ids)) == 6


async def test_a_batch_whose_read_back_fails_gives_its_leases_back(store, clock, mock_db):
    real = store.networks.find

    def find(query, *args, **kwargs):
        if "lease.id" in query:  # the read-back of what the update leased
            raise OperationFailure("connection reset", code=6)
        return real(query, *args, **kwargs)

    store.networks.find = find
    with pytest.raises(OperationFailure, match="connection reset"):
        await store.claim_many("initial", "me", clock.now, 60, want=6)
    # nobody runs them, so nobody may hold them: no lease_ttl of silence
    assert await mock_db.networks.count_documents({"lease": {"$exists": True}}) == 0


@pytest.mark.parametrize("stage", ["update", "read-back"])
async def test_a_claim_cancelled_mid_way_gives_its_leases_back(store, clock, mock_db, stage):
    """A shutdown cancels the fill while a batch is on the wire: what the update leased goes back."""
    reached = asyncio.Event()
    real_update, real_find = store.networks.update_many, store.networks.find

    async def slow_update(query, update, **kwargs):
        result = await real_update(query, update, **kwargs)  # the server applied it...
        if stage == "update":
            reached.set()
            await asyncio.Event().wait()  # ...and its answer never comes
        return result

    class SlowCursor:
        def __init__(self, cursor):
            self.cursor = cursor

        def sort(self, *args):
            return self

        def __aiter__(self):
            return self

        async def __anext__(self):
            reached.set()
            await asyncio.Event().wait()

    def find(query, *args, **kwargs):
        cursor = real_find(query, *args, **kwargs)
        return SlowCursor(cursor) if stage == "read-back" and "lease.id" in query else cursor

    store.networks.update_many, store.networks.find = slow_update, find
    claim = asyncio.create_task(store.claim_many("initial", "me", clock.now, 60, want=6))
    await asyncio.wait_for(reached.wait(), 5)
    assert await mock_db.networks.count_documents({"lease": {"$exists": True}}) == 6
    store.networks.update_many = real_update
    claim.cancel()
    with pytest.raises(asyncio.CancelledError):
        await claim
    assert await mock_db.networks.count_documents({"lease": {"$exists": True}}) == 0
