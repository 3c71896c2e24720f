"""Every MongoDB call lives here: networks, items, service pauses, indexes.

The database handle is a PyMongo async database (`pymongo.AsyncMongoClient(...)[name]`); the
unit tests pass a mongomock-motor database, which speaks the same coroutine API.

Lease protocol (see DESIGN.md): claim with one atomic find_one_and_update on a due, enabled,
unleased (or lease-expired) network; persist items first (idempotent bulk upserts), then the
state guarded by the lease id. A state save whose guard matches nothing is dropped.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from pymongo import ASCENDING, ReturnDocument, UpdateOne
from pymongo.errors import BulkWriteError

from collector.model import SECRET_FIELDS
from collector.sdk import Item

NETWORKS, ITEMS, SERVICES = "networks", "items", "services"
DUE_INDEX = "due"
DUPLICATE_KEY = 11000


@dataclass(frozen=True)
class Lease:
    id: str
    owner: str
    until: datetime


def due_filter(mode: str, now: datetime, exclude_services: Iterable[str] = ()) -> dict[str, Any]:
    """Due, enabled, not leased (or lease expired). No `$not`: not every wire server has it."""
    query: dict[str, Any] = {
        "mode": mode,
        "scheduledTo": {"$lte": now},
        "disabled": {"$ne": True},
        "$or": [{"lease": None}, {"lease.until": {"$lt": now}}],
    }
    excluded = sorted(set(exclude_services))
    if excluded:
        query["service"] = {"$nin": excluded}
    return query


class Store:
    def __init__(self, db: Any, store_raw: bool = True):
        self.db = db
        self.networks = db[NETWORKS]
        self.items = db[ITEMS]
        self.services = db[SERVICES]
        self.store_raw = store_raw

    async def ensure_indexes(self) -> None:
        """Idempotent; every process runs it at start."""
        await self.networks.create_index([("mode", ASCENDING), ("scheduledTo", ASCENDING)], name=DUE_INDEX)
        await self.networks.create_index([("user", ASCENDING), ("service", ASCENDING)], name="user_service")
        await self.items.create_index(
            [("user", ASCENDING), ("service", ASCENDING), ("itemId", ASCENDING)], name="item_key", unique=True
        )
        await self.items.create_index([("network", ASCENDING)], name="network")

    # -- claims ---------------------------------------------------------------------------------

    async def claim(self, mode: str, owner: str, now: datetime, ttl: float,
                    exclude_services: Iterable[str] = ()) -> tuple[dict[str, Any], Lease] | None:
        """Atomically take the most overdue network of `mode`; None when nothing is due."""
        lease = Lease(uuid.uuid4().hex, owner, now + timedelta(seconds=ttl))
        doc = await self.networks.find_one_and_update(
            due_filter(mode, now, exclude_services),
            {"$set": {"lease": {"id": lease.id, "owner": owner, "until": lease.until}}},
            sort=[("scheduledTo", ASCENDING)],
            return_document=ReturnDocument.AFTER,
        )
        return (doc, lease) if doc is not None else None

    async def next_due(self, mode: str) -> datetime | None:
        """When the earliest enabled network of `mode` is due (leased ones included)."""
        doc = await self.networks.find_one(
            {"mode": mode, "scheduledTo": {"$ne": None}, "disabled": {"$ne": True}},
            projection={"scheduledTo": 1},
            sort=[("scheduledTo", ASCENDING)],
        )
        return doc["scheduledTo"] if doc else None

    async def explain_due(self, mode: str, now: datetime) -> dict[str, Any]:
        cursor = self.networks.find(due_filter(mode, now)).sort("scheduledTo", ASCENDING).limit(1)
        return await cursor.explain()

    async def renew(self, network_id: Any, lease: Lease, now: datetime, ttl: float) -> bool:
        result = await self.networks.update_one(
            {"_id": network_id, "lease.id": lease.id},
            {"$set": {"lease.until": now + timedelta(seconds=ttl)}},
        )
        return result.matched_count == 1

    async def release(self, network_id: Any, lease: Lease) -> bool:
        """Give a lease back untouched (shutdown before the run started)."""
        result = await self.networks.update_one({"_id": network_id, "lease.id": lease.id},
                                                {"$unset": {"lease": ""}})
        return result.matched_count == 1

    # -- writes ---------------------------------------------------------------------------------

    async def save_items(self, network: dict[str, Any], items: Sequence[Item], now: datetime) -> int:
        """Bulk upsert under the unique (user, service, itemId) index; returns how many were new."""
        if not items:
            return 0
        user, service = network["user"], network["service"]
        ops = []
        for item in items:
            fields: dict[str, Any] = {
                "network": network["_id"],
                "title": item.title,
                "url": item.url,
                "author": item.author,
                "created": item.created,
                "updatedAt": now,
            }
            if self.store_raw and item.raw is not None:
                fields["raw"] = item.raw
            ops.append(UpdateOne(
                {"user": user, "service": service, "itemId": item.id},
                {"$set": fields, "$setOnInsert": {"collectedAt": now}},
                upsert=True,
            ))
        try:
            return (await self.items.bulk_write(ops, ordered=False)).upserted_count
        except BulkWriteError as exc:
            # two processes upserting the same new item race on the unique index: the loser gets
            # E11000 and retries those operations once, which now match and update
            errors = exc.details.get("writeErrors", [])
            if not errors or any(e.get("code") != DUPLICATE_KEY for e in errors):
                raise
            retried = await self.items.bulk_write([ops[e["index"]] for e in errors], ordered=False)
            return exc.details.get("nUpserted", 0) + retried.upserted_count

    async def save_state(self, network_id: Any, lease: Lease, fields: dict[str, Any],
                         unset: Iterable[str] = (), inc: dict[str, int] | None = None) -> bool:
        """Write the new state if we still hold the lease, releasing it; False if it was lost."""
        update: dict[str, Any] = {"$set": fields, "$unset": {"lease": "", **{k: "" for k in unset}}}
        if inc:
            update["$inc"] = inc
        result = await self.networks.update_one({"_id": network_id, "lease.id": lease.id}, update)
        return result.matched_count == 1

    # -- malformed documents --------------------------------------------------------------------

    async def repair(self, now: datetime, known_modes: Sequence[str]) -> list[tuple[Any, str]]:
        """Give documents inserted without `mode`/`scheduledTo` their defaults and disable the
        ones whose mode is junk; returns (id, what was done) for each document touched."""
        done = []
        query = {
            "disabled": {"$ne": True},
            "$or": [
                {"mode": {"$exists": False}},
                {"scheduledTo": {"$exists": False}},
                {"mode": {"$nin": list(known_modes)}},
            ],
        }
        async for doc in self.networks.find(query, projection={"mode": 1, "scheduledTo": 1}).limit(1000):
            fields: dict[str, Any] = {}
            if "mode" not in doc or doc["mode"] is None:
                fields["mode"] = "initial"
            elif doc["mode"] not in known_modes:
                reason = f"malformed: field 'mode' must be one of {', '.join(known_modes)}"
                fields.update(disabled=True, disabledReason=reason, scheduledTo=None,
                              lastError={"at": now, "kind": "malformed", "status": None, "message": reason})
            if "scheduledTo" not in doc and not fields.get("disabled"):
                fields["scheduledTo"] = now
            if fields:
                await self.networks.update_one({"_id": doc["_id"], "lease": None}, {"$set": fields})
                done.append((doc["_id"], ", ".join(sorted(fields))))
        return done

    # -- service-wide pauses ------------------------------------------------------------------

    async def pause_service(self, service: str, until: datetime, reason: str, now: datetime) -> None:
        await self.services.update_one(
            {"_id": service},
            {"$max": {"pausedUntil": until}, "$set": {"pauseReason": reason, "pausedAt": now}},
            upsert=True,
        )

    async def paused_services(self, now: datetime) -> dict[str, datetime]:
        out = {}
        async for doc in self.services.find({"pausedUntil": {"$gt": now}}):
            out[doc["_id"]] = doc["pausedUntil"]
        return out

    # -- reading --------------------------------------------------------------------------------

    async def get_network(self, network_id: Any) -> dict[str, Any] | None:
        return await self.networks.find_one({"_id": network_id})

    async def insert_network(self, doc: dict[str, Any]) -> Any:
        return (await self.networks.insert_one(doc)).inserted_id


def public_view(doc: dict[str, Any]) -> dict[str, Any]:
    """A network document with its secrets redacted, fit for logs and operator output."""
    return {k: ("[redacted]" if k in SECRET_FIELDS and v else v) for k, v in doc.items()}
