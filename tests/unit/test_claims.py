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
