"""The Store's part of a reconciliation (collector/reconcile.py, a mixin: `Store` is these parts over one database):
mark what a listing page saw, store what it listed that was never stored, restore what it found again, and mark
removed what two complete listings both missed.

Every query is a plain filter and `$set`/`$unset`/`$addToSet` update (no `$expr`, no `$not`, no pipeline update), so
any wire-compatible server runs them. Each change of the change feed (an item removed or restored) is written after
its pointer and carries its mark in the same single-document update (collector/outbox.py).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection, Sequence
from datetime import datetime
from typing import Any

from collector import outbox
from collector.documents import item_key
from collector.model import NetworkKey
from collector.sdk import Item

SEEN = "seenIn"  # the listing (`<reconciliation id>.<phase>`) that saw an item last
REMOVED_AT = "removedAt"
BATCH = 1000  # items marked removed per pointer and update


class Removals:
    items: Any
    networks: Any
    pointers: Any
    feed: bool
    save_items: Callable[..., Awaitable[int]]  # collector/items.py

    async def holds(self, network_id: Any, lease_id: str | None) -> bool:
        """Whether the run holding `lease_id` still holds the network (True when the run has no lease id to check)."""
        if not lease_id:
            return True
        return await self.networks.find_one({"_id": network_id, "lease.id": lease_id}, projection={"_id": 1}) \
            is not None

    async def mark_seen(self, network: NetworkKey, items: Sequence[Item], seen: str, run: str, lease: str | None,
                        now: datetime, skip: Collection[Any] = ()) -> tuple[int, int]:
        """One listing page: its items get `seenIn: seen`; those never stored are stored as new (added by `run`),
        except the keys in `skip` (the normal run's own items, which it stores itself); those marked removed are
        restored (by `run`). Returns (added, restored). Idempotent: a page listed twice changes nothing more."""
        if not items:
            return 0, 0
        user, service = network.user, network.service
        keyed = {item_key(user, service, item.id, scope=item.scope): item for item in items}
        keys = list(keyed)
        found = {doc["_id"]: doc async for doc in self.items.find({"_id": {"$in": keys}},
                                                                  projection={REMOVED_AT: 1})}
        missing = [item for key, item in keyed.items() if key not in found and key not in skip]
        added = await self.save_items(network, missing, now, run=run, lease=lease or "") if missing else 0
        back = [key for key, doc in found.items() if REMOVED_AT in doc]
        restored = 0
        if back:
            update: dict[str, Any] = {"$unset": {REMOVED_AT: ""}, "$set": {SEEN: seen}}
            if self.feed:  # the pointer first, then the change and its mark in one update (collector/outbox.py)
                await self.pointers.insert_one(outbox.pointer(outbox.RESTORED, run, network.fields(), now,
                                                              keys=back, lease=lease))
                update.update(outbox.mark(outbox.RESTORED, run))
            result = await self.items.update_many({"_id": {"$in": back}, REMOVED_AT: {"$exists": True}}, update)
            restored = int(result.modified_count)
        await self.items.update_many({"_id": {"$in": keys}}, {"$set": {SEEN: seen}})
        return added, restored

    @staticmethod
    def unseen_filter(network_id: Any, seen: Sequence[str], started: datetime) -> dict[str, Any]:
        """The items of a network that none of the listings `seen` saw, not marked removed, collected before the
        first of them began (an item collected since may be newer than the listing)."""
        return {"network": network_id, SEEN: {"$nin": list(seen)}, REMOVED_AT: {"$exists": False},
                "collectedAt": {"$lt": started}}

    async def unseen(self, network_id: Any, seen: Sequence[str], started: datetime, limit: int = 1) -> list[Any]:
        """The keys of up to `limit` items `unseen_filter` matches."""
        cursor = self.items.find(self.unseen_filter(network_id, seen, started), projection={"_id": 1}).limit(limit)
        return [doc["_id"] async for doc in cursor]

    async def mark_removed(self, network: NetworkKey, seen: Sequence[str], started: datetime, run: str,
                           lease: str | None, now: datetime) -> int:
        """Mark removed (`removedAt: now`, by `run`) every item of the network that the listings `seen` all missed;
        returns how many. In batches: a pointer to the batch's keys, then one update whose filter re-checks it all."""
        removed = 0
        while True:
            keys = await self.unseen(network.id, seen, started, BATCH)
            if not keys:
                return removed
            update: dict[str, Any] = {"$set": {REMOVED_AT: now}}
            if self.feed:
                await self.pointers.insert_one(outbox.pointer(outbox.REMOVED, run, network.fields(), now,
                                                              keys=keys, lease=lease))
                update.update(outbox.mark(outbox.REMOVED, run))
            result = await self.items.update_many(
                {"_id": {"$in": keys}, **self.unseen_filter(network.id, seen, started)}, update)
            removed += int(result.modified_count)
            if not result.modified_count or len(keys) < BATCH:
                return removed
