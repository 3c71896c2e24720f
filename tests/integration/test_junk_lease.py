"""A junk `lease` (written by the application that writes network documents, not by a process) on both engines.

A process only ever writes a lease whole, `{id: str, owner: str, until: date}` (collector/leases.py). Before,
claims read any other `lease` as held (`lease: null` did not match it, and `lease.until < now` cannot match
without a date), the repair never looked at `lease`, and the backlog and `collector status` counted such a
network neither due nor running: silently uncollectable, forever. Now a claim takes it like an expired lease,
the repair removes it (logging it), status counts it due; a well-formed lease, live, is never taken.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from collector import status
from collector.store import Store

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
LIVE = NOW + timedelta(seconds=100)
PAST = NOW - timedelta(seconds=100)
MODES = ("initial", "normal")

JUNK = [
    False, True, {}, {"until": None}, {"id": "a", "owner": "b", "until": None}, "held", 7, 1.5, [],
    [{"id": "a", "owner": "b", "until": LIVE}],  # an array, even of a lease
    {"id": "a", "owner": "b", "until": LIVE.isoformat()},  # a date as text: never a date to pass
    {"id": "a", "owner": "b"}, {"owner": "b", "until": LIVE}, {"id": 5, "owner": "b", "until": LIVE},
    {"id": "a", "owner": None, "until": LIVE}, {"id": "a", "owner": ["b"], "until": LIVE},
    {"id": "a", "owner": "b", "until": [LIVE]}, {"id": "a", "owner": "b", "until": LIVE, "0": 1},
]


@pytest.fixture
async def store(any_db):
    store = Store(any_db)
    await store.ensure_indexes()
    return store


async def network(store: Store, lease, **fields) -> object:
    doc = {"user": "u1", "service": "github", "mode": "initial", "scheduledTo": NOW - timedelta(minutes=5),
           "lease": lease, **fields}
    return (await store.networks.insert_one(doc)).inserted_id


def row(report: dict, key: str = "backlog") -> dict:
    rows = [r for r in report[key] if r["service"] == "github"]
    return rows[0] if rows else {"due": 0, "running": 0, "count": 0}


@pytest.mark.parametrize("junk", JUNK, ids=repr)
async def test_a_junk_lease_is_claimed_once_and_counted_due(store, junk):
    nid = await network(store, junk)
    before = await status.status(store, NOW)
    assert row(before)["due"] == 1 and row(before)["running"] == 0
    assert [g["due"] for g in before["uncovered"]] == [1]  # due, and no live process runs it: shown
    claimed = await store.claim_many("initial", "p1", NOW, 60, 10)
    assert [doc["_id"] for doc, _lease in claimed] == [nid]
    lease = claimed[0][1]
    assert (await store.get_network(nid))["lease"] == {"id": lease.id, "owner": "p1", "until": lease.until}
    assert await store.claim_many("initial", "p2", NOW, 60, 10) == []  # now held: one process at a time
    after = await status.status(store, NOW)
    assert row(after)["due"] == 0 and row(after)["running"] == 1


@pytest.mark.parametrize("junk", JUNK, ids=repr)
async def test_the_repair_removes_a_junk_lease(store, junk):
    nid = await network(store, junk)
    fixed = await network(store, junk, user="u2", scheduledTo=None)  # repaired in the same update
    done = dict(await store.repair(NOW, MODES))
    assert done == {nid: "lease", fixed: "lease, scheduledTo"}
    assert "lease" not in await store.get_network(nid)
    assert (await store.get_network(fixed))["scheduledTo"] is not None
    assert await store.repair(NOW, MODES) == []


async def test_a_live_lease_is_neither_claimed_nor_repaired_and_an_expired_one_is_claimed(store):
    live = await network(store, {"id": "a", "owner": "p0", "until": LIVE})
    expired = await network(store, {"id": "b", "owner": "p0", "until": PAST}, user="u2")
    assert await store.repair(NOW, MODES) == []
    report = await status.status(store, NOW)
    assert row(report)["due"] == 1 and row(report)["running"] == 1 and report["stuck"] == []
    claimed = await store.claim_many("initial", "p1", NOW, 60, 10)
    assert [doc["_id"] for doc, _lease in claimed] == [expired]
    assert (await store.get_network(live))["lease"]["owner"] == "p0"


async def test_the_repair_never_takes_a_lease_a_claim_won(store):
    """The repair reads junk, a claim takes the network, the repair writes: its guard (still junk) no longer
    matches, so the claimer's lease stays."""
    nid = await network(store, {})
    found = store.networks.find

    def find_then_claim(*args, **kwargs):
        store.networks.find = found  # the repair's own find only
        return Racing(found(*args, **kwargs), store)

    store.networks.find = find_then_claim
    try:
        assert await store.repair(NOW, MODES) == []  # it tried; nothing was done, nothing is reported done
    finally:
        store.networks.find = found
    lease = (await store.get_network(nid))["lease"]
    assert lease["owner"] == "p1" and isinstance(lease["id"], str)


class Racing:
    """A cursor that lets a claim in after it has read its documents, before the caller writes."""

    def __init__(self, cursor, store: Store):
        self.cursor, self.store = cursor, store

    def limit(self, n):
        self.cursor = self.cursor.limit(n)
        return self

    def __aiter__(self):
        return self._iter()

    async def _iter(self):
        docs = [doc async for doc in self.cursor]
        assert len(await self.store.claim_many("initial", "p1", NOW, 60, 10)) == 1
        for doc in docs:
            yield doc


async def test_status_shows_a_lease_running_out_beyond_any_a_process_writes(store):
    """The one kind of network no claim may take (a well-formed, live lease) yet nobody holds: shown."""
    await network(store, {"id": "a", "owner": "app", "until": datetime(9999, 1, 1, tzinfo=UTC)})
    await network(store, {"id": "b", "owner": "p0", "until": LIVE}, user="u2")  # a process's: not stuck
    report = await status.status(store, NOW, lease_ttl=300)
    assert [(r["service"], r["count"]) for r in report["stuck"]] == [("github", 1)]
    text = status.render(report)
    assert "STUCK  1 network(s) leased for more than 20m ahead" in text
    assert "9999-01-01T00:00:00+00:00" in text
    assert await store.claim_many("initial", "p1", NOW, 60, 10) == []
