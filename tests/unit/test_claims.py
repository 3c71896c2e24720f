"""Store.claim_many when the server fails some claims (a deadlock victim, a stepped-down primary): the claims
already made are returned, never dropped with their leases on; only a batch that claimed nothing raises."""

from __future__ import annotations

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


def failing(store: Store, fail: int) -> list[int]:
    """Make the first `fail` calls of store._take raise a transient server error; returns the call log."""
    real, calls = store._take, []

    async def take(*args, **kwargs):
        calls.append(1)
        if len(calls) <= fail:
            raise OperationFailure("deadlock detected", code=1)
        return await real(*args, **kwargs)

    store._take = take
    return calls


async def test_a_failed_claim_keeps_the_others(store, clock, mock_db):
    failing(store, 2)
    got = await store.claim_many("initial", "me", clock.now, 60, want=6)
    assert len(got) == 4
    leased = {doc["_id"] async for doc in mock_db.networks.find({"lease.owner": "me"})}
    assert leased == {doc["_id"] for doc, _lease in got}  # every lease written is handed to the caller


async def test_a_batch_that_claimed_nothing_raises(store, clock, mock_db):
    failing(store, 100)
    with pytest.raises(OperationFailure, match="deadlock"):
        await store.claim_many("initial", "me", clock.now, 60, want=6)
    assert await mock_db.networks.count_documents({"lease": {"$exists": True}}) == 0
