"""The due query must be an index scan through the due index on the wire server, never a collection scan.
It runs on MongoDB ($MONGODB_URI) and on the suite's engine (FerretDB v2 + DocumentDB: PostgreSQL plans)."""

from __future__ import annotations

from datetime import timedelta

import pytest

from collector.store import DUE_INDEX, Store, due_filter
from tests.integration.plans import assert_index_scan

pytestmark = pytest.mark.integration


async def test_due_query_is_an_index_scan(wire_db, clock):
    store = Store(wire_db)
    await store.ensure_indexes()
    await wire_db.networks.insert_many([
        {"user": f"u{i}", "service": "github", "mode": "initial" if i % 2 else "normal",
         "scheduledTo": clock.now + timedelta(minutes=i - 50)} for i in range(2000)
    ])
    # the claim's candidate query, as claim_many sends it
    cursor = wire_db.networks.find(due_filter("initial", clock.now), projection={"service": 1})
    assert_index_scan(await cursor.sort("scheduledTo", 1).limit(100).explain(), DUE_INDEX)
    # the scheduler's "when is the next one due" query (Store.next_due)
    cursor = wire_db.networks.find({"mode": "normal", "scheduledTo": {"$ne": None}, "disabled": {"$ne": True}},
                                   projection={"scheduledTo": 1})
    assert_index_scan(await cursor.sort("scheduledTo", 1).limit(1).explain(), DUE_INDEX)
