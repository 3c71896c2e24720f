"""The due query must be an index scan through the due index on the wire server, never a collection scan.
It runs on MongoDB ($MONGODB_URI) and on the suite's engine (FerretDB v2 + DocumentDB: PostgreSQL plans)."""

from __future__ import annotations

from datetime import timedelta

import pytest

from collector.store import DUE_INDEX, Store, due_filter
from tests.integration.plans import assert_index_scan, scans

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


async def test_the_heartbeat_s_lease_renewal_reads_by_primary_key(wire_db, clock):
    """Store.renew_many filtered on `lease.id` alone (no index): every process scanned `networks` every 5 s."""
    store = Store(wire_db)
    await store.ensure_indexes()
    await wire_db.networks.insert_many([
        {"user": f"u{i}", "service": "github", "mode": "initial", "scheduledTo": clock.now} for i in range(2000)])
    held = await store.claim_many("initial", "me", clock.now, 60, 20)
    assert await store.renew_many([(doc["_id"], lease) for doc, lease in held], clock.now, 60) == 20
    # the renewal's filter, as renew_many sends it, explained as the query it is
    ids, lease_ids = [doc["_id"] for doc, _ in held], sorted({lease.id for _, lease in held})
    cursor = wire_db.networks.find({"_id": {"$in": ids}, "lease.id": {"$in": lease_ids}})
    found = scans(await cursor.explain())
    assert found and all(kind == "index" for kind, _name in found), f"plan scans {found}"
