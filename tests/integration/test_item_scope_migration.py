"""`collector migrate item-scopes` (collector/migrations.py) on both engines: items of the per-server services
stored under their old [service, user, itemId] keys move to [service, user, server, itemId], nothing lost; a
second run, or two runs at once, change nothing more; what cannot be moved is left and counted; GitHub's items
are not touched."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import pytest
from click.testing import CliRunner

from collector import plugins
from collector.cli import main
from collector.documents import item_key
from collector.migrations import Refused, ScopeMigration, migrate_item_scopes, scoped_connectors
from collector.store import Store
from tests.conftest import make_settings

T0 = datetime(2026, 1, 1, tzinfo=UTC)
T1 = datetime(2026, 3, 1, tzinfo=UTC)
NETWORKS = [
    {"_id": "m1", "user": "u1", "service": "mastodon_favourites", "options": {"instance": "https://one.social"}},
    {"_id": "m2", "user": "u1", "service": "mastodon_favourites", "options": {"instance": "Two.Social/"}},
    {"_id": "b1", "user": "u2", "service": "mastodon_bookmarks", "options": {"instance": "https://one.social"},
     "accessToken": "collector:v1:k1:sealed"},
    {"_id": "g1", "user": "u1", "service": "gitlab", "options": {"user_id": 42}},  # the service's server: gitlab.com
    {"_id": "g2", "user": "u1", "service": "gitlab", "options": {"base_url": "https://code.example.org/gitlab/api/v4"}},
    {"_id": "bad", "user": "u3", "service": "mastodon_favourites", "options": {}},  # no instance: server unknown
    {"_id": "gh", "user": "u1", "service": "github"},
]
ITEMS = {"m1": ["1", "2", "3", "4"], "m2": ["5", "6", "7"], "b1": ["1", "2"], "g1": ["1", "2", "3"], "g2": ["4", "5"],
         "bad": ["1"], "gh": ["1", "2"], "gone": ["99"]}
SERVERS = {"m1": "https://one.social", "m2": "https://two.social", "b1": "https://one.social",
           "g1": "https://gitlab.com", "g2": "https://code.example.org/gitlab"}
MOVABLE = sum(len(ids) for net, ids in ITEMS.items() if net in SERVERS)


def old_item(net: str, item_id: str) -> dict[str, Any]:
    doc = next((n for n in NETWORKS if n["_id"] == net), {"user": "u1", "service": "mastodon_favourites"})
    user, service = doc["user"], doc["service"]
    return {"_id": item_key(user, service, item_id), "user": user, "service": service, "itemId": item_id,
            "network": net, "title": f"{net} {item_id}", "url": None, "author": None, "created": None,
            "collectedAt": T0, "updatedAt": T0, "raw": {"id": item_id, "nested": {"kept": [1, 2]}}}


def new_item(net: str, item_id: str, **over: Any) -> dict[str, Any]:
    doc = old_item(net, item_id)
    return {**doc, "_id": item_key(doc["user"], doc["service"], item_id, scope=SERVERS[net]), "server": SERVERS[net],
            **over}


async def seed(db: Any, present: bool = True) -> Store:
    """The networks and their items as an earlier version stored them; with `present`, two items already under their
    new key too: one written since by an upgraded daemon (newer fields, a later first sighting), one copied by a run
    of the migration that died before its delete."""
    store = Store(db)
    await store.ensure_indexes()
    await db.networks.insert_many([dict(n) for n in NETWORKS])
    await db.items.insert_many([old_item(net, i) for net, ids in ITEMS.items() for i in ids])
    if present:
        await db.items.insert_many([new_item("m1", "1", title="fresh", collectedAt=T1, updatedAt=T1),
                                    new_item("m2", "5")])
    return store


def connectors() -> dict[str, Any]:
    return scoped_connectors(plugins.discover(), make_settings())


async def snapshot(db: Any) -> dict[str, dict[str, Any]]:
    return {doc["_id"]: doc for doc in await db.items.find({}).to_list(None)}


def expected() -> dict[str, dict[str, Any]]:
    docs = [new_item(net, i) for net, ids in ITEMS.items() if net in SERVERS for i in ids]
    docs += [old_item(net, i) for net, ids in ITEMS.items() if net not in SERVERS for i in ids]
    out = {doc["_id"]: doc for doc in docs}
    first = item_key("u1", "mastodon_favourites", "1", scope=SERVERS["m1"])
    out[first] = {**out[first], "title": "fresh", "updatedAt": T1}  # the newer copy wins, the first sighting stays
    return out


async def test_old_keys_move_to_scoped_keys_and_nothing_is_lost(any_db):
    store = await seed(any_db)
    lines: list[str] = []

    report = await migrate_item_scopes(store, connectors(), 3, lines.append)

    assert (report.moved, report.orphaned, report.unknown, report.blocked) == (MOVABLE, 1, 1, 0)
    assert report.scanned == MOVABLE + 2 and len(lines) == -(-report.scanned // 3)
    assert sorted(report.shared) == ["g1", "g2", "m1", "m2"]  # one user, one service, two servers
    assert await snapshot(any_db) == expected()


async def test_a_second_run_changes_nothing_more(any_db):
    store = await seed(any_db)
    await migrate_item_scopes(store, connectors(), 4, lambda _line: None)
    before = await snapshot(any_db)

    again = await migrate_item_scopes(store, connectors(), 4, lambda _line: None)

    assert (again.scanned, again.moved, again.orphaned, again.unknown) == (2, 0, 1, 1)
    assert await snapshot(any_db) == before == expected()


async def test_concurrent_runs_move_each_item_once(any_db):
    store = await seed(any_db)

    reports: list[ScopeMigration] = await asyncio.gather(
        *(migrate_item_scopes(Store(any_db), connectors(), batch, lambda _line: None) for batch in (2, 3, 5)))

    assert sum(r.moved for r in reports) == MOVABLE, reports
    assert all(r.blocked == 0 and r.orphaned == 1 and r.unknown == 1 for r in reports)
    assert await snapshot(any_db) == expected()
    assert (await migrate_item_scopes(store, connectors(), 3, lambda _line: None)).moved == 0


async def test_a_dry_run_counts_and_writes_nothing(any_db):
    store = await seed(any_db)
    before = await snapshot(any_db)

    report = await migrate_item_scopes(store, connectors(), 3, lambda _line: None, dry_run=True)

    assert (report.moved, report.orphaned, report.unknown) == (MOVABLE, 1, 1)
    assert await snapshot(any_db) == before


async def test_a_unique_legacy_index_is_refused_before_anything_moves(any_db):
    store = await seed(any_db, present=False)
    await any_db.items.drop_index("item_key")
    await any_db.items.create_index([("user", 1), ("service", 1), ("itemId", 1)], name="item_key", unique=True)
    before = await snapshot(any_db)

    with pytest.raises(Refused, match="dropIndex"):
        await migrate_item_scopes(store, connectors(), 3, lambda _line: None)

    assert await snapshot(any_db) == before


def test_the_command_moves_the_items(wire_uri, sync_db):

    sync_db.networks.insert_many([dict(n) for n in NETWORKS])
    sync_db.items.insert_many([old_item(net, i) for net, ids in ITEMS.items() for i in ids])
    args = ["--mongodb-uri", wire_uri, "--set", f"database.name={sync_db.name}", "migrate", "item-scopes"]

    first = CliRunner().invoke(main, args)
    second = CliRunner().invoke(main, args)

    assert first.exit_code == 0, first.output
    assert f"done: {MOVABLE + 2} items with an old key: {MOVABLE} moved, 1 left (network gone)" in first.output
    assert "4 networks share a user and a service" in first.output
    assert second.exit_code == 0 and "done: 2 items with an old key: 0 moved" in second.output
    assert sync_db.items.count_documents({"server": {"$exists": True}}) == MOVABLE
