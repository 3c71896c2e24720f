"""The due query must be an index scan through the due index on the wire server, never a collection scan.
It runs wherever the server has `explain` (MongoDB through $MONGODB_URI; FerretDB v2 + DocumentDB: PostgreSQL
plans) and is skipped with that reason on the suite's own engine, which has none (tests/integration/plans.py)."""

from __future__ import annotations

from datetime import timedelta

from collector.store import DUE_INDEX, Store, due_filter
from tests.integration.plans import assert_index_scan, explain, scans


async def test_due_query_is_an_index_scan(wire_db, clock):
    store = Store(wire_db)
    await store.ensure_indexes()
    await wire_db.networks.insert_many([
        {"user": f"u{i}", "service": "github", "mode": "initial" if i % 2 else "normal",
         "scheduledTo": clock.now + timedelta(minutes=i - 50)} for i in range(2000)
    ])
    # the claim's candidate query, as claim_many sends it
    cursor = wire_db.networks.find(due_filter("initial", clock.now), projection={"service": 1})
    assert_index_scan(await explain(cursor.sort("scheduledTo", 1).limit(100)), DUE_INDEX)
    # the scheduler's "when is the next one due" query (Store.next_due)
    cursor = wire_db.networks.find({"mode": "normal", "scheduledTo": {"$ne": None}, "disabled": {"$ne": True}},
                                   projection={"scheduledTo": 1})
    assert_index_scan(await explain(cursor.sort("scheduledTo", 1).limit(1)), DUE_INDEX)


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
    found = scans(await explain(cursor))
    assert found and all(kind == "index" for kind, _name in found), f"plan scans {found}"


async def test_claims_of_a_partition_or_a_few_services_scan_their_own_due_index(wire_db, clock):
    """A process with selectors claims through the index its selectors create (Store.ensure_indexes): it reads
    its own partition's or services' due networks, not every due network with a filter."""
    from collector.selectors import Selectors, user_slot
    from collector.store import DUE_SERVICE_INDEX, DUE_SLOT_INDEX

    partition, services = Selectors.build(partition="1/3"), Selectors.build("github,gitlab")
    store = Store(wire_db)
    await store.ensure_indexes(partition)
    await store.ensure_indexes(services)
    await wire_db.networks.insert_many([
        {"user": f"u{i}", "slot": user_slot(f"u{i}"), "service": ("github", "gitlab", "youtube", "reddit")[i % 4],
         "mode": "normal", "scheduledTo": clock.now + timedelta(minutes=i % 100 - 50)} for i in range(4000)])
    # the claims take only what the selectors say
    got = await store.claim_many("normal", "p1", clock.now, 60, 5000, selectors=partition)
    due = await wire_db.networks.count_documents({"scheduledTo": {"$lte": clock.now}, "slot": {"$in": list(
        partition.partition.slots)}})
    assert len(got) == due > 0 and all(partition.covers(doc["service"], doc["slot"]) for doc, _lease in got)
    for selectors, index in ((partition, DUE_SLOT_INDEX), (services, DUE_SERVICE_INDEX)):
        query = due_filter("normal", clock.now, {"gitlab"} if selectors is services else (), selectors)
        cursor = wire_db.networks.find(query, projection={"service": 1}).sort("scheduledTo", 1).limit(100)
        assert_index_scan(await explain(cursor), index)


async def test_the_slot_stamping_reads_the_due_slot_index(wire_db, clock):
    """Every partitioned process looks for networks without a slot at every tick: an index scan, or the whole
    collection would be read a few times a second."""
    from collector.selectors import Selectors, user_slot
    from collector.store import DUE_SLOT_INDEX

    store = Store(wire_db)
    await store.ensure_indexes(Selectors.build(partition="0/2"))
    await wire_db.networks.insert_many([
        {"user": f"u{i}", "service": "github", "mode": "normal", "scheduledTo": clock.now,
         **({"slot": user_slot(f"u{i}")} if i % 50 else {})} for i in range(3000)])
    cursor = wire_db.networks.find({"mode": "normal", "slot": None}, projection={"user": 1}).limit(1000)
    assert await store.stamp_slots("normal") == 60
    assert_index_scan(await explain(cursor), DUE_SLOT_INDEX)
