"""Every MongoDB call lives here (with its parts: collector/pauses.py, operations.py, registry.py): claims,
leases, items, states, indexes. The item documents themselves are built by collector/documents.py.

The database handle is a PyMongo async database (`pymongo.AsyncMongoClient(...)[name]`); the
unit tests pass a mongomock-motor database, which speaks the same coroutine API.

Lease protocol (see DESIGN.md): claim due, enabled, unleased (or lease-expired) networks in batches,
by one update_many whose filter the server re-checks per document atomically; persist items first
(idempotent inserts, upserts for the items already there), then the state guarded by the lease id.
A state save whose guard matches nothing is dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from bson.errors import InvalidDocument
from pymongo import ASCENDING, UpdateOne
from pymongo.errors import BulkWriteError, PyMongoError
from pymongo.write_concern import WriteConcern

from collector import leases, outbox
from collector.batch import GroupCommit, Guarded, transient
from collector.documents import bson_safe, item_key, key_prefix, mongo_safe, refresh_update
from collector.operations import Operations
from collector.pauses import Pauses
from collector.registry import Registry
from collector.sdk import Item
from collector.selectors import Selectors, user_slot

NETWORKS, ITEMS, SERVICES, COLLECTORS, FIGURES = "networks", "items", "services", "collectors", "figures"
DUE_INDEX = "due"
# the due indexes of processes with selectors, created by the first such process (every other process pays
# nothing for them): a partitioned claim reads (mode, slot, scheduledTo), a claim of a few services
# (mode, service, scheduledTo), so neither scans the other partitions' or services' due networks
DUE_SLOT_INDEX = "due_slot"
DUE_SERVICE_INDEX = "due_service"
ITEM_INDEX = "item_key"
DUPLICATE_KEY = 11000


@dataclass(frozen=True)
class Lease:
    id: str
    owner: str
    until: datetime


def service_of(doc: dict[str, Any]) -> str:
    """A network document's service, or "?" when the field is not a string (a malformed document)."""
    return doc["service"] if isinstance(doc.get("service"), str) else "?"


def due_filter(mode: str, now: datetime, exclude_services: Iterable[str] = (),
               selectors: Selectors | None = None) -> dict[str, Any]:
    """Due, enabled, not leased (or lease expired, or a lease of a shape no process writes: collector/leases.py),
    of `selectors` (the process's services and partition), but not of `exclude_services` (paused or full right
    now). No `$not`: not every wire server has it."""
    query: dict[str, Any] = {
        "mode": mode,
        "scheduledTo": {"$lte": now},
        "mode.0": {"$exists": False},  # an array holding `mode` would match it (and every other mode it holds)
        "disabled": {"$ne": True},
        # a junk lease (`false`, `{}`, `{until: null}`, a string...) is no lease: nobody holds it and, read as
        # held, it would never expire. Claiming over it keeps one process at a time: a held lease is always
        # well-formed and live, so this never matches it (collector/leases.py says why in full)
        **leases.unheld(now),
    }
    clauses = (selectors or Selectors()).query(exclude_services)
    query.update(clauses if clauses is not None else {"service": {"$in": []}})  # None: every service skipped
    return query


def with_slot(doc: dict[str, Any]) -> dict[str, Any]:
    """A new network document with its user's partition slot (collector/selectors.py), unless it has one."""
    return doc if "slot" in doc else {**doc, "slot": user_slot(doc.get("user"))}


class Store(Pauses, Operations, Registry):
    def __init__(self, db: Any, store_raw: bool = True, write_batch: int = 1000, write_concern: str | int | None = None,
                 write_timeout: float = 60.0, feed: bool = False):
        self.db = db
        self.feed = feed  # item writes record their change for the change feed (collector/outbox.py, changes.py)
        self.write_batch = max(1, write_batch)
        # leases, states, pauses and items: acknowledged by `write_concern` members (settings: "majority", so
        # a failover's rollback cannot undo a lease or a saved state); None: the client's default
        durable: dict[str, Any] = {}
        if write_concern is not None:
            durable["write_concern"] = WriteConcern(w=write_concern, wtimeout=int(write_timeout * 1000))
        self.networks = db.get_collection(NETWORKS, **durable)
        self.items = db.get_collection(ITEMS, **durable)
        self.services = db.get_collection(SERVICES, **durable)
        self.collectors = db[COLLECTORS]
        self.figures = db[FIGURES]  # fleet-wide figures one process computes for all (Registry.shared_figures)
        self.store_raw = store_raw
        self.state_writes = GroupCommit(self.networks)
        self._background: set[asyncio.Future[None]] = set()

    async def ensure_indexes(self, selectors: Selectors | None = None) -> None:
        """Idempotent; every process runs it at start (with its selectors: the due index its claims read)."""
        await self.networks.create_index([("mode", ASCENDING), ("scheduledTo", ASCENDING)], name=DUE_INDEX)
        if selectors is not None and selectors.partition is not None:
            await self.networks.create_index([("mode", ASCENDING), ("slot", ASCENDING), ("scheduledTo", ASCENDING)],
                                             name=DUE_SLOT_INDEX)
        if selectors is not None and selectors.services:
            await self.networks.create_index(
                [("mode", ASCENDING), ("service", ASCENDING), ("scheduledTo", ASCENDING)], name=DUE_SERVICE_INDEX)
        await self.networks.create_index([("user", ASCENDING), ("service", ASCENDING)], name="user_service")
        # An item's identity is its _id, item_key(service, user, itemId): the primary key makes it unique. The
        # (user, service, itemId) index serves readers and is not unique: a unique secondary index cut the
        # insert rate 3 to 4 times on FerretDB v2 + DocumentDB (bench/RESULTS-documentdb.md) for no guarantee
        # the _id lacks. A unique one created by an earlier version is kept as it is (the operator's call).
        if ITEM_INDEX not in await self.items.index_information():
            await self.items.create_index(
                [("user", ASCENDING), ("service", ASCENDING), ("itemId", ASCENDING)], name=ITEM_INDEX)
        await self.items.create_index([("network", ASCENDING)], name="network")

    # -- claims ---------------------------------------------------------------------------------

    async def claim_many(self, mode: str, owner: str, now: datetime, ttl: float, want: int,
                         exclude_services: Iterable[str] = (), room: Callable[[str], int] | None = None,
                         selectors: Selectors | None = None) -> list[tuple[dict[str, Any], Lease]]:
        """Take up to `want` due networks of `mode`, the most overdue first, in three round trips a batch:
        one query reads the candidates (an index scan of the due index), ONE update_many leases those of
        them that still match the whole due filter (the server re-checks it per document, atomically: a
        candidate another process took in between no longer matches), stamping them with this batch's
        lease id, and one find by _id and that id reads back what was won. Each network goes to exactly one
        claimer. Candidates lost to a racing process are replaced by another round of fresh candidates
        (at most 8 rounds), so racing processes share the backlog instead of starving each other.
        `room(service)` caps how many of one service are taken (the per-service concurrency); `selectors`: only
        the networks of the process's services and partition.
        A batch the server fails (a transient error: a deadlock victim on PostgreSQL-based servers, a
        primary stepping down) is read back all the same, so a lease it did write is handed to the caller,
        never left to expire; only when nothing at all was claimed does the first error propagate."""
        exclude = set(exclude_services)
        claimed: list[tuple[dict[str, Any], Lease]] = []
        per_service: Counter[str] = Counter()
        failure: PyMongoError | None = None
        for _round in range(8):
            need = want - len(claimed)
            if need <= 0:
                break
            if selectors is not None and selectors.query(exclude) is None:
                break  # every service this process runs is paused or full
            query = due_filter(mode, now, exclude, selectors)
            cursor = self.networks.find(query, projection={"service": 1}).sort("scheduledTo", ASCENDING)
            picked: list[tuple[Any, str]] = []  # (_id, service), most overdue first
            capped = False
            for doc in [doc async for doc in cursor.limit(min(2 * need + 8, 1000))]:
                service = service_of(doc)
                if room is not None and per_service[service] >= room(service):
                    exclude.add(service)  # full: the next round reads the other services' candidates
                    capped = True
                    continue
                per_service[service] += 1
                picked.append((doc["_id"], service))
                if len(picked) == need:
                    break
            if not picked and not capped:
                break  # nothing is due
            won, failure = await self._lease_batch(query, [nid for nid, _service in picked], owner, now, ttl)
            claimed += won
            for _nid, service in picked:  # count what was won, not what was tried
                per_service[service] -= 1
            per_service.update(service_of(doc) for doc, _lease in won)
            if failure is not None or (len(won) == len(picked) and not capped):
                break  # a failure, or every candidate won and no service was full: no other round
        if failure is not None and not claimed:
            raise failure
        return claimed

    async def _lease_batch(self, query: dict[str, Any], ids: list[Any], owner: str, now: datetime, ttl: float,
                           ) -> tuple[list[tuple[dict[str, Any], Lease]], PyMongoError | None]:
        """Lease those of `ids` that still match `query` (one update_many), read them back (one find), the most
        overdue first; returns them with the error of the update if it failed."""
        if not ids:
            return [], None
        lease = Lease(uuid.uuid4().hex, owner, now + timedelta(seconds=ttl))
        error: PyMongoError | None = None
        try:
            await self.networks.update_many({**query, "_id": {"$in": ids}},
                                            {"$set": {"lease": {"id": lease.id, "owner": owner, "until": lease.until}}})
        except PyMongoError as exc:
            error = exc  # some documents may be leased all the same (MongoDB applies an update_many doc by doc)
        except asyncio.CancelledError:  # shutdown mid-claim: whatever the update leased goes back
            await self._give_back(ids, lease)
            raise
        try:
            cursor = self.networks.find({"_id": {"$in": ids}, "lease.id": lease.id}).sort("scheduledTo", ASCENDING)
            docs = [doc async for doc in cursor]
        except PyMongoError as exc:  # nothing is handed out, so nothing may stay leased (lease_ttl of silence)
            await self._give_back(ids, lease)
            return [], error or exc
        except asyncio.CancelledError:
            await self._give_back(ids, lease)
            raise
        return [(doc, lease) for doc in docs], error

    async def _give_back(self, ids: list[Any], lease: Lease) -> None:
        """Unlease what a batch leased but nobody will run; best effort (the server may be what failed),
        shielded from a cancellation (it is what cancelled claims need)."""
        async def give_back() -> None:
            with contextlib.suppress(PyMongoError):
                await self.networks.update_many({"_id": {"$in": ids}, "lease.id": lease.id}, {"$unset": {"lease": ""}})

        task = asyncio.ensure_future(give_back())
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.shield(task)

    async def next_due(self, mode: str) -> datetime | None:
        """When the earliest enabled network of `mode` is due (leased ones included)."""
        doc = await self.networks.find_one(
            {"mode": mode, "scheduledTo": {"$ne": None}, "disabled": {"$ne": True}},
            projection={"scheduledTo": 1},
            sort=[("scheduledTo", ASCENDING)],
        )
        return doc["scheduledTo"] if doc else None

    async def renew_many(self, held: Sequence[tuple[Any, Lease]], now: datetime, ttl: float) -> int:
        """Push the leases of runs in flight forward (the heartbeat does this); `held` is (network _id, lease)
        of each. Returns how many of them this process still holds. One command for all of them, by _id
        (the primary key serves it: the lease id alone has no index and was a full scan of `networks` per
        heartbeat) and lease id (only what is still ours)."""
        if not held:
            return 0
        until = now + timedelta(seconds=ttl)
        lease_ids = sorted({lease.id for _nid, lease in held})  # one id per claim batch
        query = {"_id": {"$in": [nid for nid, _lease in held]}, "lease.id": {"$in": lease_ids}}
        attempt = 0
        while True:
            try:
                return int((await self.networks.update_many(query, {"$set": {"lease.until": until}})).matched_count)
            except PyMongoError as exc:  # a deadlock victim (it races the state saves of the same documents)
                if attempt == GroupCommit.RETRIES or not transient(exc):
                    raise
            attempt += 1
            await asyncio.sleep(0.01 * attempt)

    async def release(self, network_id: Any, lease: Lease, until: datetime | None = None) -> bool:
        """Give a lease back untouched (shutdown before the run started), or, with `until`, keep it only
        until then (a run that crashed: retried after a pause, not after the whole lease_ttl)."""
        update = {"$set": {"lease.until": until}} if until is not None else {"$unset": {"lease": ""}}
        result = await self.networks.update_one({"_id": network_id, "lease.id": lease.id}, update)
        return bool(result.matched_count == 1)

    # -- writes ---------------------------------------------------------------------------------

    async def save_items(self, network: dict[str, Any], items: Sequence[Item], now: datetime, run: str = "") -> int:
        """Store a page of items keyed by `item_key` (their _id: one document per (service, user, itemId), or per
        (service, user, server, itemId) for items whose ids are per server: Item.scope, from the connector's
        item_scope, stored as `server`); returns how many were new. New items are the common case (a page of
        history, a normal run that stops at the first known item): they go in one unordered insert_many per
        `write_batch`, the cheapest write there is. The ones that exist already (a page run again after a crash, an
        item on two pages) come back as duplicate-key errors and are updated in place by bulk upserts, so a page
        written twice is stored once, with its fields refreshed. With the change feed on, a new item carries the entry
        of its addition (`run`: the run's lease id), and a known item marked removed is restored."""
        if not items:
            return 0
        added = outbox.fields(outbox.ADDED, run, now) if self.feed and run else None
        user, service = network["user"], network["service"]
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
                "network": network["_id"],
                "title": item.title,
                "url": item.url,
                "author": item.author,
                "created": item.created,
                "collectedAt": now,
                "updatedAt": now,
            }
            if scope is not None:
                doc["server"] = scope
            if added is not None:
                doc.update(added)
            if self.store_raw and item.raw is not None:
                doc["raw"] = mongo_safe(item.raw)
            docs.append(doc)
        new = 0
        for start in range(0, len(docs), self.write_batch):
            batch = docs[start:start + self.write_batch]
            try:
                new += await self._insert(batch)
            except (OverflowError, InvalidDocument):
                # a value BSON cannot hold (an integer past 64 bits in a payload, an object a connector left
                # in `raw`): those values are stored as their text and the page goes in whole. Rare, so the
                # check is paid only then; what was sent before the error comes back as duplicates (upserted).
                new += await self._insert([bson_safe(doc) for doc in batch])
        return new

    async def _insert(self, docs: list[dict[str, Any]]) -> int:
        try:
            return len((await self.items.insert_many(docs, ordered=False)).inserted_ids)
        except BulkWriteError as exc:
            errors = exc.details.get("writeErrors", [])
            if not errors or any(e.get("code") != DUPLICATE_KEY for e in errors):
                raise
            # unordered: every document without a write error went in. Read off the errors, not `nInserted`,
            # which a server may count as attempts (mongo-java-server does)
            inserted = len(docs) - len({e["index"] for e in errors})
            known = [docs[e["index"]] for e in errors]
            if outbox.OUTBOX in known[0]:  # collected again after it was removed upstream: restored
                await self.items.bulk_write([UpdateOne(
                    {"_id": doc["_id"], "removedAt": {"$exists": True}},
                    {"$unset": {"removedAt": ""}, **outbox.push(outbox.RESTORED, doc[outbox.PENDING][0]["r"],
                                                                doc["updatedAt"])}) for doc in known], ordered=False)
            return inserted + await self._upsert([refresh_update(doc) for doc in known])

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

    async def save_state(self, network_id: Any, lease: Lease, fields: dict[str, Any],
                         unset: Iterable[str] = (), inc: dict[str, int] | None = None,
                         change: tuple[str, datetime, str] | None = None) -> bool:
        """Write the new state if we still hold the lease, releasing it; False if it was lost. Saves that
        arrive together go as one bulk (collector.batch.GroupCommit); `lastLease` (the lease id) tells a
        read-back which of them were applied. `change` (kind, at, why): what the network became, for the change feed,
        recorded by the same update (collector/outbox.py)."""
        update: dict[str, Any] = {"$set": {**fields, "lastLease": lease.id},
                                  "$unset": {"lease": "", **{k: "" for k in unset}}}
        if inc:
            update["$inc"] = inc
        if change is not None and self.feed:
            update.update(outbox.push(change[0], lease.id, change[1], change[2]))
        return await self.state_writes.submit(Guarded(network_id, {"lease.id": lease.id}, update,
                                                      ("lastLease", lease.id)))

    async def update_credentials(self, network_id: Any, old_refresh_token: Any, fields: dict[str, Any],
                                 stamp: str) -> bool:
        """Store refreshed tokens if the network still has the refresh token they were obtained with (its stored
        value: sealed, when tokens are encrypted). `stamp` (`credentialsStamp`) tells a write applied by an
        earlier attempt whose answer was lost (a retry after AutoReconnect) from one that never matched."""
        result = await self.networks.update_one({"_id": network_id, "refreshToken": old_refresh_token},
                                                {"$set": {**fields, "credentialsStamp": stamp}})
        if result.matched_count == 1:
            return True
        doc = await self.networks.find_one({"_id": network_id}, {"credentialsStamp": 1})
        return bool(doc and doc.get("credentialsStamp") == stamp)

    # -- reading --------------------------------------------------------------------------------

    async def get_network(self, network_id: Any) -> dict[str, Any] | None:
        doc: dict[str, Any] | None = await self.networks.find_one({"_id": network_id})
        return doc

    async def insert_network(self, doc: dict[str, Any]) -> Any:
        return (await self.networks.insert_one(with_slot(doc))).inserted_id

    async def stamp_slots(self, mode: str, limit: int = 1000) -> int:
        """Give a `slot` to networks of `mode` written without one (by an application that inserts network
        documents itself): a partitioned process claims only networks with a slot of its partition. Read
        through the due_slot index (a missing slot is its null prefix); one bulk of updates by _id. Returns how
        many were stamped."""
        docs = [doc async for doc in self.networks.find({"mode": mode, "slot": None}, projection={"user": 1})
                .limit(limit)]
        if not docs:
            return 0
        result = await self.networks.bulk_write(
            [UpdateOne({"_id": doc["_id"], "slot": None}, {"$set": {"slot": user_slot(doc.get("user"))}})
             for doc in docs], ordered=False)
        return int(result.modified_count)

    async def seal_credentials(self, network_id: Any, changes: dict[str, tuple[Any, Any]]) -> bool:
        """Replace credentials by their sealed values (collector/secrets.py), `{field: (old, new)}`, if the network
        still holds every old value: one compare-and-set, so a token changed meanwhile is never overwritten."""
        result = await self.networks.update_one({"_id": network_id, **{k: old for k, (old, _new) in changes.items()}},
                                                {"$set": {k: new for k, (_old, new) in changes.items()}})
        return bool(result.matched_count == 1)
