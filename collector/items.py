"""The item writes of the Store (a mixin: `Store` is these parts over one database): a page of items stored once
whatever repeats it, with the change feed's pointer and marks (collector/outbox.py)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from bson.errors import InvalidDocument
from pymongo import UpdateOne
from pymongo.errors import BulkWriteError

from collector import outbox
from collector.batch import GroupInsert
from collector.documents import bson_safe, item_key, key_prefix, mongo_safe, refresh_update
from collector.model import NetworkKey
from collector.sdk import Item

DUPLICATE_KEY = 11000


class ItemWrites:
    items: Any
    pointers: Any
    pointer_writes: GroupInsert
    feed: bool
    store_raw: bool
    write_batch: int

    async def save_items(self, network: NetworkKey, items: Sequence[Item], now: datetime, run: str = "",
                         lease: str = "", added: outbox.Added | None = None) -> int:
        """Store a page of items keyed by `item_key` (their _id: one document per (service, user, itemId), or per
        (service, user, server, itemId) for items whose ids are per server: Item.scope, from the connector's
        item_scope, stored as `server`); returns how many were new. New items are the common case (a page of
        history, a normal run that stops at the first known item): they go in one unordered insert_many per
        `write_batch`, the cheapest write there is. The ones that exist already (a page run again after a crash, an
        item on two pages) come back as duplicate-key errors and are updated in place by bulk upserts, so a page
        written twice is stored once, with its fields refreshed. With the change feed on (collector/outbox.py), a
        pointer to the page goes first, a new item is marked added by `run` (the run's lease id, or `lease`'s) and
        noted in `added` (for the state save to report), and a known item marked removed is restored."""
        if not items:
            return 0
        feed = self.feed and bool(run)
        user, service = network.user, network.service
        prefixes: dict[str | None, str] = {}  # one key prefix per page: its items share their network's scope
        docs = []
        for item in items:
            scope = item.scope
            prefix = prefixes.get(scope)
            if prefix is None:
                prefix = prefixes[scope] = key_prefix(user, service, scope)
            doc: dict[str, Any] = {
                "_id": item_key(user, service, item.id, prefix),
                "user": user, "service": service, "itemId": item.id,
                "network": network.id,
                "title": item.title,
                "url": item.url,
                "author": item.author,
                "created": item.created,
                "collectedAt": now,
                "updatedAt": now,
            }
            if scope is not None:
                doc["server"] = scope
            if feed:
                doc[outbox.ADDED_BY] = run
            if self.store_raw and item.raw is not None:
                doc["raw"] = mongo_safe(item.raw)
            docs.append(doc)
        restore = None
        if feed:
            restore = (network, run, lease or run, now, added)
            # a run's own additions: no keys (found by network and mark where no report tells: a run that died); a
            # reconciliation's (run != lease), page by page under one run: the page's keys
            keys = [doc["_id"] for doc in docs] if lease and lease != run else []
            await self.pointer_writes.insert(outbox.pointer(outbox.ADDED, run, network.fields(), now,
                                                            lease=lease or run, keys=keys))
        new = 0
        for start in range(0, len(docs), self.write_batch):
            batch = docs[start:start + self.write_batch]
            try:
                new += await self._insert(batch, restore)
            except (OverflowError, InvalidDocument):
                # a value BSON cannot hold (an integer past 64 bits in a payload, an object a connector left
                # in `raw`): those values are stored as their text and the page goes in whole. Rare, so the
                # check is paid only then; what was sent before the error comes back as duplicates (upserted).
                new += await self._insert([bson_safe(doc) for doc in batch], restore)
        return new

    async def _insert(self, docs: list[dict[str, Any]], restore: tuple[Any, ...] | None = None) -> int:
        report: outbox.Added | None = restore[4] if restore is not None else None
        try:
            inserted = len((await self.items.insert_many(docs, ordered=False)).inserted_ids)
            if report is not None:
                for doc in docs:
                    report.note(doc)
            return inserted
        except BulkWriteError as exc:
            errors = exc.details.get("writeErrors", [])
            if not errors or any(e.get("code") != DUPLICATE_KEY for e in errors):
                raise
            # unordered: every document without a write error went in. Read off the errors, not `nInserted`,
            # which a server may count as attempts (mongo-java-server does)
            inserted = len(docs) - len({e["index"] for e in errors})
            failed = {e["index"] for e in errors}
            known = [docs[i] for i in sorted(failed)]
            if restore is not None:  # collected again after it was removed upstream: restored (collector/outbox.py)
                network, run, lease, now, _ = restore
                if report is not None:
                    for doc in (doc for i, doc in enumerate(docs) if i not in failed):
                        report.note(doc)
                keys = [doc["_id"] for doc in known]
                await self.pointers.insert_one(outbox.pointer(outbox.RESTORED, run, network.fields(), now,
                                                              keys=keys, lease=lease))
                await self.items.update_many({"_id": {"$in": keys}, "removedAt": {"$exists": True}},
                                             {"$unset": {"removedAt": ""}, **outbox.mark(outbox.RESTORED, run)})
            upserted = await self._upsert([refresh_update(doc) for doc in known])
            if upserted and report is not None:  # inserted by an upsert (deleted meanwhile): the marks tell
                report.complete = False
            return inserted + upserted

    async def _upsert(self, ops: list[UpdateOne]) -> int:
        try:
            return int((await self.items.bulk_write(ops, ordered=False)).upserted_count)
        except BulkWriteError as exc:
            # two processes upserting the same new item race on the unique key: the loser gets
            # E11000 and retries those operations once, which now match and update
            errors = exc.details.get("writeErrors", [])
            if not errors or any(e.get("code") != DUPLICATE_KEY for e in errors):
                raise
            retried = await self.items.bulk_write([ops[e["index"]] for e in errors], ordered=False)
            return int(exc.details.get("nUpserted", 0)) + int(retried.upserted_count)
