"""The due query's shape against the due index (the plan itself is checked on a real MongoDB in
tests/integration/test_due_index.py): equality on the index's first key, range and sort on the
second, so the server walks the index in order and stops at the first match."""

from __future__ import annotations

from datetime import UTC, datetime

from collector import leases
from collector.store import due_filter


def test_due_filter_follows_the_index_prefix():
    now = datetime(2026, 1, 1, tzinfo=UTC)
    q = due_filter("initial", now, exclude_services={"b", "a"})
    assert list(q)[:2] == ["mode", "scheduledTo"]
    assert q["mode"] == "initial" and q["scheduledTo"] == {"$lte": now}
    assert q["$nor"] == [leases.held(now)]  # no lease, an expired one or a junk one (collector/leases.py)
    assert q["service"] == {"$nin": ["a", "b"]}
    assert "$not" not in repr(q)  # not every wire-compatible server supports it


async def test_due_index_is_created(mock_db):
    from collector.store import DUE_INDEX, Store

    await Store(mock_db).ensure_indexes()
    info = await mock_db.networks.index_information()
    assert info[DUE_INDEX]["key"] == [("mode", 1), ("scheduledTo", 1)]
    items = await mock_db.items.index_information()
    assert items["item_key"]["key"] == [("user", 1), ("service", 1), ("itemId", 1)]
    assert not items["item_key"].get("unique")  # the _id is the item's unique key
