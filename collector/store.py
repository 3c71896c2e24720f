"""Every MongoDB call lives here (with its parts: collector/pauses.py, operations.py, processes.py): claims,
leases, items, states, indexes. The item documents themselves are built by collector/documents.py.

The database handle is a PyMongo async database (`pymongo.AsyncMongoClient(...)[name]`); the
unit tests pass a mongomock-motor database, which speaks the same coroutine API.

Lease protocol (collector/leases.py): claim due, enabled, unleased (or lease-expired) networks in batches,
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

from pymongo import ASCENDING
from pymongo.errors import PyMongoError
from pymongo.write_concern import WriteConcern

from collector import leases, outbox
from collector.batch import GroupCommit, GroupInsert, Guarded, transient
from collector.items import ItemWrites
from collector.model import NetworkKey, service_of
from collector.operations import Operations
from collector.pauses import Pauses
from collector.processes import Processes
from collector.removals import Removals
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


class Store(ItemWrites, Removals, Pauses, Operations, Processes):
    def __init__(self, db: Any, store_raw: bool = True, write_batch: int = 1000, write_concern: str | int | None = None,
                 write_timeout: float = 60.0, feed: bool = False):
        self.db = db
        self.feed = feed  # writes record their change for the change feed (collector/outbox.py, changes.py)
        self.write_batch = max(1, write_batch)
        # leases, states, pauses and items: acknowledged by `write_concern` members (settings: "majority", so
        # a failover's rollback cannot undo a lease or a saved state); None: the client's default
        durable: dict[str, Any] = {}
        if write_concern is not None:
            durable["write_concern"] = WriteConcern(w=write_concern, wtimeout=int(write_timeout * 1000))
        self.networks = db.get_collection(NETWORKS, **durable)
        self.items = db.get_collection(ITEMS, **durable)
        self.pointers = db.get_collection(outbox.POINTERS, **durable)
        self.pointer_writes = GroupInsert(self.pointers)  # one per run that writes items: grouped (batch.py)
        self.services = db.get_collection(SERVICES, **durable)
        self.collectors = db[COLLECTORS]
        self.figures = db[FIGURES]  # fleet-wide figures one process computes for all (Processes.shared_figures)
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
        # (user, service, itemId) index serves readers and is not unique: a unique secondary index slows every
        # item insert (bench/RESULTS-documentdb.md) for no guarantee the _id lacks. A unique one found at start
        # is kept as it is (the operator's call; `collector migrate item-scopes` says how to drop it).
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

    async def save_state(self, network_id: Any, lease: Lease, fields: dict[str, Any],
                         unset: Iterable[str] = (), inc: dict[str, int] | None = None,
                         entries: Sequence[dict[str, Any]] = (), point: NetworkKey | None = None) -> bool:
        """Write the new state if we still hold the lease, releasing it; False if it was lost. Saves that
        arrive together go as one bulk (collector.batch.GroupCommit); `lastLease` (the lease id) tells a
        read-back which of them were applied. `entries`: the run's changes for the change feed, recorded by the same
        update (collector/outbox.py); `point`: the network, when no pointer to it was written yet."""
        update: dict[str, Any] = {"$set": {**fields, "lastLease": lease.id},
                                  "$unset": {"lease": "", **{k: "" for k in unset}}}
        if inc:
            update["$inc"] = inc
        if entries and self.feed:
            if point is not None:
                await self.pointer_writes.insert(outbox.pointer(outbox.STATE, lease.id, point.fields(),
                                                                entries[0]["at"], lease=lease.id))
            update.update(outbox.push_all(entries))
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

    async def seal_credentials(self, network_id: Any, changes: dict[str, tuple[Any, Any]]) -> bool:
        """Replace credentials by their sealed values (collector/secrets.py), `{field: (old, new)}`, if the network
        still holds every old value: one compare-and-set, so a token changed meanwhile is never overwritten."""
        result = await self.networks.update_one({"_id": network_id, **{k: old for k, (old, _new) in changes.items()}},
                                                {"$set": {k: new for k, (_old, new) in changes.items()}})
        return bool(result.matched_count == 1)
