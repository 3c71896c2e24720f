"""collector/leases.py: the query clauses and their Python twin agree on every shape of `lease`, and the due
filter, the backlog and the repair use them (the behaviour on both engines: tests/integration/test_junk_lease.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from mongomock_motor import AsyncMongoMockClient

from collector import leases
from collector.store import due_filter

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
LIVE, PAST = NOW + timedelta(seconds=60), NOW - timedelta(seconds=60)
WELL_FORMED = [{"id": "a", "owner": "b", "until": LIVE}, {"id": "a", "owner": "b", "until": PAST}]
JUNK = [False, True, 0, 7, 1.5, "held", "", [], [1], [{"id": "a", "owner": "b", "until": LIVE}], {},
        {"until": None}, {"until": LIVE}, {"id": "a", "owner": "b"}, {"id": "a", "owner": "b", "until": "tomorrow"},
        {"id": "a", "owner": "b", "until": 1e12}, {"id": 1, "owner": "b", "until": LIVE},
        {"id": "a", "owner": ["b"], "until": LIVE}, {"id": "a", "owner": "b", "until": [LIVE]},
        {"id": "a", "owner": "b", "until": LIVE, "0": 1}]


@pytest.fixture
async def networks():
    return AsyncMongoMockClient(tz_aware=True)["leases"]["networks"]


async def matches(networks, lease, query) -> bool:
    await networks.delete_many({})
    await networks.insert_one({"_id": 1, "lease": lease})
    return await networks.count_documents({"_id": 1, **query}) == 1


@pytest.mark.parametrize("lease", [None, *WELL_FORMED, *JUNK], ids=repr)
async def test_the_query_and_the_python_check_agree(networks, lease):
    junk = lease in JUNK
    assert leases.is_malformed(lease) is junk
    assert await matches(networks, lease, leases.malformed()) is junk
    live = lease == WELL_FORMED[0]
    assert await matches(networks, lease, leases.held(NOW)) is live
    assert await matches(networks, lease, leases.unheld(NOW)) is not live


async def test_a_missing_lease_is_no_lease(networks):
    await networks.insert_one({"_id": 1})
    assert await networks.count_documents({"_id": 1, **leases.unheld(NOW)}) == 1
    assert await networks.count_documents({"_id": 1, **leases.malformed()}) == 0


def test_the_due_filter_takes_only_what_no_process_holds():
    query = due_filter("initial", NOW)
    assert query["$nor"] == [leases.held(NOW)] and "$or" not in query
