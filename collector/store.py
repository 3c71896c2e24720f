"""Every MongoDB call lives here: networks, items, service pauses, indexes.

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
import inspect
import json
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from json.encoder import encode_basestring
from typing import Any

from bson import BSON
from bson.errors import InvalidDocument
from pymongo import ASCENDING, UpdateOne
from pymongo.errors import BulkWriteError, DuplicateKeyError, PyMongoError
from pymongo.write_concern import WriteConcern

from collector.batch import GroupCommit, Guarded, transient
from collector.model import SECRET_FIELDS, aware
from collector.sdk import Item

NETWORKS, ITEMS, SERVICES, COLLECTORS = "networks", "items", "services", "collectors"
DUE_INDEX = "due"
ITEM_INDEX = "item_key"
DUPLICATE_KEY = 11000


_SCALARS = frozenset({str, int, float, bool, type(None)})


def mongo_safe(value: Any, depth: int = 0) -> Any:
    """An API payload with keys a document may hold: a leading `$` (Bluesky's `$type`, JSON-LD's
    `@`-less cousins) and `.` are replaced by their full-width forms (U+FF04, U+FF0E), which
    MongoDB stores as plain characters. Nesting deeper than 64 levels is cut off.
    What needs no change is returned as it is, not copied (most payloads: one walk, no allocation).
    A dict's keys are checked in one pass in C (joined), and only its containers are walked: 5 us for
    a recorded GitHub repository (it was 25 us key by key, the largest share of the daemon's own CPU)."""
    if depth > 64:
        return None
    if isinstance(value, dict):
        try:
            joined = "\0".join(value)
            keys_ok = "." not in joined and "\0$" not in joined and joined[:1] != "$"
        except TypeError:  # a key that is not a string
            keys_ok = False
        if not keys_ok:
            return {(k if type(k) is str and k[:1] != "$" and "." not in k else _safe_key(k)):
                    (v if type(v) in _SCALARS else mongo_safe(v, depth + 1)) for k, v in value.items()}
        out = None
        for k, v in value.items():
            if type(v) in _SCALARS:
                continue
            new = mongo_safe(v, depth + 1)
            if new is not v:
                if out is None:
                    out = dict(value)  # the first change: a copy, the rest stays shared
                out[k] = new
        return value if out is None else out
    if isinstance(value, list | tuple):
        seq = None
        for i, v in enumerate(value):
            new = v if type(v) in _SCALARS else mongo_safe(v, depth + 1)
            if seq is None and new is not v:
                seq = list(value[:i])
            if seq is not None:
                seq.append(new)
        return value if seq is None else seq
    return value


INT64 = range(-2**63, 2**63)


def bson_safe(value: Any) -> Any:
    """`value` with what BSON cannot encode as its text: integers outside 64 bits (JSON has no limit:
    an API may send 2**64) and objects of types BSON does not know. Containers are rebuilt (their depth
    is mongo_safe's cut already)."""
    if isinstance(value, bool) or value is None or isinstance(value, str | float | datetime | bytes):
        return value
    if isinstance(value, int):
        return value if value in INT64 else str(value)
    if isinstance(value, dict):
        return {k: bson_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [bson_safe(v) for v in value]
    try:
        BSON.encode({"v": value})
    except (InvalidDocument, OverflowError, TypeError):
        return str(value)
    return value  # ObjectId, Decimal128, Regex...: BSON has them


def _safe_key(key: Any) -> str:
    if not isinstance(key, str):
        return str(key)
    return (("\uff04" + key[1:]) if key.startswith("$") else key).replace(".", "\uff0e")


_ENCODE = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def key_prefix(user: Any, service: str) -> str:
    """What every `item_key` of one (user, service) starts with: computed once per page."""
    return _ENCODE([service, user if isinstance(user, str | int) else str(user)])[:-1] + ","


def item_key(user: Any, service: str, item_id: str, prefix: str | None = None) -> str:
    """The _id of an item: one value per (service, user, itemId), unambiguous whatever the parts
    contain (the JSON array [service, user, itemId]), so an upsert finds its document by primary key
    on any server. `prefix` is key_prefix(user, service) when the caller has it already."""
    head = prefix if prefix is not None else key_prefix(user, service)
    return head + (encode_basestring(item_id) if type(item_id) is str else _ENCODE(item_id)) + "]"


@dataclass(frozen=True)
class Lease:
    id: str
    owner: str
    until: datetime


def service_of(doc: dict[str, Any]) -> str:
    """A network document's service, or "?" when the field is not a string (a malformed document)."""
    return doc["service"] if isinstance(doc.get("service"), str) else "?"


def due_filter(mode: str, now: datetime, exclude_services: Iterable[str] = ()) -> dict[str, Any]:
    """Due, enabled, not leased (or lease expired). No `$not`: not every wire server has it."""
    query: dict[str, Any] = {
        "mode": mode,
        "scheduledTo": {"$lte": now},
        "mode.0": {"$exists": False},  # an array holding `mode` would match it (and every other mode it holds)
        "disabled": {"$ne": True},
        "$or": [{"lease": None}, {"lease.until": {"$lt": now}}],
    }
    excluded = sorted(set(exclude_services))
    if excluded:
        query["service"] = {"$nin": excluded}
    return query


class Store:
    def __init__(self, db: Any, store_raw: bool = True, write_batch: int = 1000, write_concern: str | int | None = None,
                 write_timeout: float = 60.0):
        self.db = db
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
        self.store_raw = store_raw
        self.state_writes = GroupCommit(self.networks)
        self._background: set[asyncio.Future[None]] = set()

    async def ensure_indexes(self) -> None:
        """Idempotent; every process runs it at start."""
        await self.networks.create_index([("mode", ASCENDING), ("scheduledTo", ASCENDING)], name=DUE_INDEX)
        await self.networks.create_index([("user", ASCENDING), ("service", ASCENDING)], name="user_service")
        # An item's identity is its _id, item_key(service, user, itemId): the primary key makes it unique. The
        # (user, service, itemId) index serves readers and is not unique: a unique secondary index cut the
        # insert rate 3 to 4 times on the test engine (bench/RESULTS.md) for no guarantee the _id lacks. A
        # unique one created by an earlier version is kept as it is (rebuilding it is the operator's call).
        if ITEM_INDEX not in await self.items.index_information():
            await self.items.create_index(
                [("user", ASCENDING), ("service", ASCENDING), ("itemId", ASCENDING)], name=ITEM_INDEX)
        await self.items.create_index([("network", ASCENDING)], name="network")

    # -- claims ---------------------------------------------------------------------------------

    async def claim(self, mode: str, owner: str, now: datetime, ttl: float,
                    exclude_services: Iterable[str] = ()) -> tuple[dict[str, Any], Lease] | None:
        """Atomically take the most overdue network of `mode`; None when nothing is due."""
        got = await self.claim_many(mode, owner, now, ttl, 1, exclude_services)
        return got[0] if got else None

    async def claim_many(self, mode: str, owner: str, now: datetime, ttl: float, want: int,
                         exclude_services: Iterable[str] = (), room: Callable[[str], int] | None = None,
                         ) -> list[tuple[dict[str, Any], Lease]]:
        """Take up to `want` due networks of `mode`, the most overdue first, in three round trips a batch:
        one query reads the candidates (an index scan of the due index), ONE update_many leases those of
        them that still match the whole due filter (the server re-checks it per document, atomically: a
        candidate another process took in between no longer matches), stamping them with this batch's
        lease id, and one find by _id and that id reads back what was won. Each network goes to exactly one
        claimer. Candidates lost to a racing process are replaced by another round of fresh candidates
        (at most 8 rounds), so racing processes share the backlog instead of starving each other.
        `room(service)` caps how many of one service are taken (the per-service concurrency).
        A batch the server fails (a transient error: a deadlock victim on PostgreSQL-based servers, a
        primary stepping down) is read back all the same, so a lease it did write is handed to the caller,
        never left to expire; only when nothing at all was claimed does the first error propagate."""
        exclude = set(exclude_services)
        claimed: list[tuple[dict[str, Any], Lease]] = []
        per_service: Counter = Counter()
        failure: PyMongoError | None = None
        for _round in range(8):
            need = want - len(claimed)
            if need <= 0:
                break
            query = due_filter(mode, now, exclude)
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
                return (await self.networks.update_many(query, {"$set": {"lease.until": until}})).matched_count
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
        return result.matched_count == 1

    # -- writes ---------------------------------------------------------------------------------

    async def save_items(self, network: dict[str, Any], items: Sequence[Item], now: datetime) -> int:
        """Store a page of items keyed by `item_key` (their _id: one document per (service, user, itemId));
        returns how many were new. New items are the common case (a page of history, a normal run that
        stops at the first known item): they go in one unordered insert_many per `write_batch`, the
        cheapest write there is. The ones that exist already (a page run again after a crash, an item on
        two pages) come back as duplicate-key errors and are updated in place by bulk upserts, so a page
        written twice is stored once, with its fields refreshed."""
        if not items:
            return 0
        user, service = network["user"], network["service"]
        prefix = key_prefix(user, service)
        docs = []
        for item in items:
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
            inserted = int(exc.details.get("nInserted", len(docs) - len(errors)))
            return inserted + await self._upsert([_refresh(docs[e["index"]]) for e in errors])

    async def _upsert(self, ops: list[UpdateOne]) -> int:
        try:
            return (await self.items.bulk_write(ops, ordered=False)).upserted_count
        except BulkWriteError as exc:
            # two processes upserting the same new item race on the unique key: the loser gets
            # E11000 and retries those operations once, which now match and update
            errors = exc.details.get("writeErrors", [])
            if not errors or any(e.get("code") != DUPLICATE_KEY for e in errors):
                raise
            retried = await self.items.bulk_write([ops[e["index"]] for e in errors], ordered=False)
            return exc.details.get("nUpserted", 0) + retried.upserted_count

    async def save_state(self, network_id: Any, lease: Lease, fields: dict[str, Any],
                         unset: Iterable[str] = (), inc: dict[str, int] | None = None) -> bool:
        """Write the new state if we still hold the lease, releasing it; False if it was lost. Saves that
        arrive together go as one bulk (collector.batch.GroupCommit); `lastLease` (the lease id) tells a
        read-back which of them were applied."""
        update: dict[str, Any] = {"$set": {**fields, "lastLease": lease.id},
                                  "$unset": {"lease": "", **{k: "" for k in unset}}}
        if inc:
            update["$inc"] = inc
        return await self.state_writes.submit(Guarded(network_id, {"lease.id": lease.id}, update,
                                                      ("lastLease", lease.id)))

    async def update_credentials(self, network_id: Any, old_refresh_token: str, fields: dict[str, Any]) -> bool:
        """Store refreshed tokens if the network still has the refresh token they were obtained with."""
        result = await self.networks.update_one({"_id": network_id, "refreshToken": old_refresh_token},
                                                {"$set": fields})
        return result.matched_count == 1

    # -- malformed documents --------------------------------------------------------------------

    async def repair(self, now: datetime, known_modes: Sequence[str]) -> list[tuple[Any, str]]:
        """Give documents inserted without `mode`/`scheduledTo` (or with null) their defaults and
        disable the ones whose mode or scheduledTo is junk (never due otherwise, and without a
        reason); returns (id, what was done) for each document touched."""
        done = []
        query = {
            "disabled": {"$ne": True},
            "$or": [
                {"mode": {"$exists": False}},
                {"scheduledTo": {"$exists": False}},
                {"mode": {"$nin": list(known_modes)}},
                {"mode.0": {"$exists": True}},  # an array, even one holding a known mode
                # null or not a date (no due query ever matches those): `$nor`, as `$not` is not everywhere
                {"$nor": [{"scheduledTo": {"$gte": datetime(1, 1, 1, tzinfo=UTC)}}]},
                {"scheduledTo.0": {"$exists": True}},  # an array, even of dates
            ],
        }
        async for doc in self.networks.find(query, projection={"mode": 1, "scheduledTo": 1}).limit(1000):
            fields: dict[str, Any] = {}
            reason = None
            if "mode" not in doc or doc["mode"] is None:
                fields["mode"] = "initial"
            elif doc["mode"] not in known_modes:
                reason = f"malformed: field 'mode' must be one of {', '.join(known_modes)}"
            due = doc.get("scheduledTo")
            if due is not None and not isinstance(due, datetime) and reason is None:
                reason = f"malformed: field 'scheduledTo' must be a date, got {type(due).__name__}"
            if reason is not None:
                fields.update(disabled=True, disabledReason=reason, scheduledTo=None,
                              lastError={"at": now, "kind": "malformed", "status": None, "message": reason})
            elif due is None:  # missing or null: the default
                fields["scheduledTo"] = now
            if fields:
                await self.networks.update_one({"_id": doc["_id"], "lease": None}, {"$set": fields})
                done.append((doc["_id"], ", ".join(sorted(fields))))
        return done

    # -- service-wide pauses ------------------------------------------------------------------

    async def pause_service(self, service: str, until: datetime, reason: str, now: datetime, streak: int = 1) -> None:
        """Pause a service for every process until `until`, unless a later pause is on already: that one
        stays, with its own reason (the later end and the reason that goes with it are one fact). `streak`:
        app-wide limits in a row, this one included (they escalate together: service_limit_streak)."""
        later_than_ours = {"_id": service, "$or": [{"pausedUntil": {"$lt": until}}, {"pausedUntil": None}]}
        update = {"$set": {"pausedUntil": until, "pauseReason": reason, "pausedAt": now, "limitStreak": streak}}
        try:
            await self.services.update_one(later_than_ours, update, upsert=True)
        except DuplicateKeyError:
            # the document exists with a later pause (nothing matched, the upsert collided with it), or another
            # process created it a moment ago: once more without the insert, which settles the second case
            await self.services.update_one(later_than_ours, update)

    async def service_limit_streak(self, service: str, now: datetime, within: float) -> int:
        """App-wide limits in a row of `service`: the streak its last pause recorded, if that pause ended less
        than `within` seconds ago (a pause long over starts a new streak)."""
        doc = await self.services.find_one({"_id": service}, {"pausedUntil": 1, "limitStreak": 1})
        if not doc or not isinstance(doc.get("pausedUntil"), datetime):
            return 0
        if aware(doc["pausedUntil"]) < now - timedelta(seconds=within):
            return 0
        streak = doc.get("limitStreak")
        return streak if isinstance(streak, int) and not isinstance(streak, bool) and 0 <= streak < 10_000 else 0

    async def defer_user(self, user: Any, service: str, network_id: Any, until: datetime) -> int:
        """A limit of this user on this app (a per-user quota): the user's other networks of the service wait
        for it too, instead of each spending a request to learn it. Returns how many were moved."""
        result = await self.networks.update_many(
            {"user": user, "service": service, "_id": {"$ne": network_id}, "disabled": {"$ne": True},
             "scheduledTo": {"$lt": until}},
            {"$set": {"scheduledTo": until, "rateLimitedUntil": until}})
        return result.modified_count

    async def paused_services(self, now: datetime) -> dict[str, datetime]:
        out = {}
        async for doc in self.services.find({"pausedUntil": {"$gt": now}}):
            out[doc["_id"]] = doc["pausedUntil"]
        return out

    async def service_pause(self, service: str, now: datetime) -> dict[str, Any] | None:
        """The pause of one service if it is still on (one read by primary key: checked before every call)."""
        doc = await self.services.find_one({"_id": service})
        if doc and isinstance(doc.get("pausedUntil"), datetime) and aware(doc["pausedUntil"]) > now:
            return doc
        return None

    async def pauses(self, now: datetime) -> list[dict[str, Any]]:
        """Every service pause still on, with its reason and since when."""
        docs = [doc async for doc in self.services.find({"pausedUntil": {"$gt": now}})]
        return sorted(docs, key=lambda d: d["_id"])

    # -- operator actions -----------------------------------------------------------------------

    async def enable(self, network_id: Any, now: datetime) -> bool:
        """Clear disabled/unauthorized/errors and make the network due now."""
        result = await self.networks.update_one({"_id": network_id}, _enable_update(now))
        return result.matched_count == 1

    async def enable_many(self, now: datetime, service: str | None = None, reason_kind: str | None = None,
                          dry_run: bool = False) -> tuple[int, list[dict[str, Any]]]:
        """Enable every disabled network of `service` whose last error was of `reason_kind` (after an API
        outage disabled them, say); networks an operator disabled are left alone. Returns how many matched
        (and, for a dry run, up to 10 of them, unchanged)."""
        query: dict[str, Any] = {"disabled": True, "$nor": [{"disabledReason": {"$regex": "^operator:"}}]}
        if service is not None:
            query["service"] = service
        if reason_kind is not None:
            query["lastError.kind"] = reason_kind
        if dry_run:
            sample = await self.networks.find(query).limit(10).to_list(None)
            return await self.networks.count_documents(query), [public_view(d) for d in sample]
        result = await self.networks.update_many(query, _enable_update(now))
        return result.modified_count, []

    async def disable(self, network_id: Any, reason: str, now: datetime) -> bool:
        result = await self.networks.update_one({"_id": network_id}, {"$set": {
            "disabled": True, "disabledReason": f"operator: {reason}", "disabledAt": now, "scheduledTo": None}})
        return result.matched_count == 1

    async def reset(self, network_id: Any, now: datetime) -> bool:
        """Back to initial mode from the start of the history (items already stored stay)."""
        result = await self.networks.update_one({"_id": network_id}, {
            "$set": {"mode": "initial", "cursor": {}, "errors": 0, "scheduledTo": now, "disabled": False,
                     "unauthorized": False},
            "$unset": {"disabledReason": "", "disabledAt": "", "rateLimitedUntil": ""}})
        return result.matched_count == 1

    # -- the fleet registry ---------------------------------------------------------------------

    async def heartbeat(self, owner: str, fields: dict[str, Any], first: dict[str, Any] | None = None) -> None:
        """Write one process's registry document (`first`: the fields set only when it registers)."""
        update: dict[str, Any] = {"$set": fields}
        if first:
            update["$setOnInsert"] = first
        await self.collectors.update_one({"_id": owner}, update, upsert=True)

    async def fleet(self) -> list[dict[str, Any]]:
        docs = [doc async for doc in self.collectors.find({})]
        return sorted(docs, key=lambda d: (str(d.get("host")), str(d.get("mode")), str(d.get("startedAt")), d["_id"]))

    async def prune_fleet(self, now: datetime) -> int:
        """Delete registry documents past their `expireAt` (portable: not every server has TTL indexes)."""
        return (await self.collectors.delete_many({"expireAt": {"$lt": now}})).deleted_count

    # -- status ---------------------------------------------------------------------------------

    async def backlog(self, now: datetime, overdue_after: float) -> list[dict[str, Any]]:
        """Per (mode, service): networks due now and unclaimed, how many of them overdue (due for
        longer than `overdue_after` seconds), how many are running, and the oldest due moment."""
        rows: dict[tuple[str, str], dict[str, Any]] = {}

        def row(key: dict[str, Any]) -> dict[str, Any]:
            mode, service = str(key.get("mode")), str(key.get("service"))
            return rows.setdefault((mode, service), {"mode": mode, "service": service, "due": 0, "overdue": 0,
                                                     "running": 0, "oldestDue": None})

        enabled = {"disabled": {"$ne": True}, "scheduledTo": {"$lte": now}}
        unleased = {"$or": [{"lease": None}, {"lease.until": {"$lt": now}}]}
        groups = (
            ("due", {**enabled, **unleased}),
            ("overdue", {**enabled, **unleased, "scheduledTo": {"$lte": now - timedelta(seconds=overdue_after)}}),
            ("running", {"lease.until": {"$gte": now}}),
        )
        for name, match in groups:
            pipeline = [{"$match": match},
                        {"$group": {"_id": {"mode": "$mode", "service": "$service"}, "n": {"$sum": 1}}}]
            async for doc in _aggregate(self.networks, pipeline):
                row(doc["_id"] or {})[name] = doc["n"]
        for (mode, service), r in rows.items():
            if r["due"]:
                oldest = await self.networks.find_one({**enabled, **unleased, "mode": mode, "service": service},
                                                      projection={"scheduledTo": 1}, sort=[("scheduledTo", ASCENDING)])
                r["oldestDue"] = oldest["scheduledTo"] if oldest else None
        return sorted(rows.values(), key=lambda r: (r["mode"], r["service"]))

    async def disabled_summary(self, top: int = 5) -> dict[str, Any]:
        """How many networks are disabled, how many of them unauthorized, and the commonest reasons."""
        out: dict[str, Any] = {}
        for name, match in (("disabled", {"disabled": True, "unauthorized": {"$ne": True}}),
                            ("unauthorized", {"disabled": True, "unauthorized": True})):
            pipeline = [{"$match": match}, {"$group": {"_id": "$disabledReason", "n": {"$sum": 1}}}]
            reasons = [(doc["n"], str(doc["_id"])) async for doc in _aggregate(self.networks, pipeline)]
            reasons.sort(key=lambda r: (-r[0], r[1]))
            out[name] = {"count": sum(n for n, _ in reasons),
                         "reasons": [{"reason": reason, "count": n} for n, reason in reasons[:top]]}
        # parked (too many rate limits in a row: due again after a cool-down), by service: each reason names its time
        pipeline = [{"$match": {"parkedAt": {"$exists": True}, "disabled": {"$ne": True}}},
                    {"$group": {"_id": "$service", "n": {"$sum": 1}}}]
        parked = sorted([(doc["n"], str(doc["_id"])) async for doc in _aggregate(self.networks, pipeline)],
                        key=lambda r: (-r[0], r[1]))
        out["parked"] = {"count": sum(n for n, _ in parked),
                         "reasons": [{"reason": f"{service}: rate limited too many times in a row", "count": n}
                                     for n, service in parked[:top]]}
        return out

    # -- reading --------------------------------------------------------------------------------

    async def get_network(self, network_id: Any) -> dict[str, Any] | None:
        return await self.networks.find_one({"_id": network_id})

    async def insert_network(self, doc: dict[str, Any]) -> Any:
        return (await self.networks.insert_one(doc)).inserted_id


_INSERT_ONLY = ("user", "service", "itemId", "collectedAt")  # identity and first sighting: never rewritten


def _refresh(doc: dict[str, Any]) -> UpdateOne:
    """The upsert that brings an existing item up to date with `doc` (the insert that was refused)."""
    fields = {k: v for k, v in doc.items() if k != "_id" and k not in _INSERT_ONLY}
    return UpdateOne({"_id": doc["_id"]}, {"$set": fields, "$setOnInsert": {k: doc[k] for k in _INSERT_ONLY}},
                     upsert=True)


async def _aggregate(collection: Any, pipeline: list[dict[str, Any]]) -> AsyncIterator[dict[str, Any]]:
    """PyMongo async's aggregate is a coroutine that returns a cursor; mongomock-motor's returns it."""
    cursor = collection.aggregate(pipeline)
    if inspect.isawaitable(cursor):
        cursor = await cursor
    async for doc in cursor:
        yield doc


def _enable_update(now: datetime) -> dict[str, Any]:
    return {"$set": {"disabled": False, "unauthorized": False, "errors": 0, "scheduledTo": now},
            "$unset": {"disabledReason": "", "disabledAt": "", "failingSince": "", "parkedAt": "", "parkedReason": "",
                       "rateLimitStreak": ""}}


def public_view(doc: dict[str, Any]) -> dict[str, Any]:
    """A network document with its secrets redacted, fit for logs and operator output."""
    return {k: ("[redacted]" if k in SECRET_FIELDS and v else v) for k, v in doc.items()}
