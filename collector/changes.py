"""The change feed: what the application built on the items must hear of, in order, per user.

Writers mark each change in the document it changes, by the same single-document write, after writing a pointer to
it (collector/outbox.py). The publisher, one task per process, turns the marked changes into events of the `changes`
collection:

  1. read pointers, the oldest first, up to `batch`; skip those of runs still in flight (their network's lease is
     live and is the pointer's);
  2. follow each to the documents it names (by _id) and keep the changes marked by its run: items `addedBy`, in
     `removedBy` or `restoredBy` the run, a network's `pending` entries of the run; drop those published already (an
     event's id is `<document key>:<kind>:<run>`);
  3. per user, take the user's feed lock and reserve one sequence number per event in ONE update of the user's
     `feeds` document (`{_id: user, seq, lock}`, upserted): a user's events are written by one process at a time,
     so a user's numbers grow in the order its events become visible;
  4. insert the events; remove the network entries published; delete the pointers whose writer is done;
  5. release the locks.

A crash anywhere leaves pointers in place (followed again; their events keep their ids: a duplicate is dropped) or
reserved numbers unused (gaps: sequence numbers grow, they are not contiguous). No event without its change (an event
is made only of a marked change found in the database), no change without its event (its pointer stays until the
change's event is written). A reader follows a user's feed with `find({user, seq: {$gt: last}}).sort(seq)`
(`collector changes`). What this rests on, like the leases (collector/leases.py): a publisher paused past its lock's
`lock_ttl` between checking its lock and inserting could insert numbers below a successor's; it checks the lock a
margin before it expires. A run's writes are over when its lease is released or another process holds it.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

import structlog
from pymongo import ASCENDING, UpdateOne
from pymongo.errors import BulkWriteError, PyMongoError

from collector import logs, outbox
from collector.clock import utcnow
from collector.config import Settings

log = structlog.get_logger("collector.changes")
CHANGES, FEEDS = "changes", "feeds"
DUPLICATE_KEY = 11000
ITEM_FIELDS = ("user", "service", "network", "itemId", "title", "url", "server")


@dataclass(frozen=True)
class Entry:
    """One event to publish: `id` its identity, `event` its fields other than _id, user, seq."""
    user: Any
    at: datetime
    id: str
    event: dict[str, Any]
    position: int = 0  # changes made at one moment keep the order in which they were found


async def ensure_indexes(db: Any) -> None:
    await db[CHANGES].create_index([("user", ASCENDING), ("seq", ASCENDING)], name="user_seq", unique=True)
    await db[outbox.POINTERS].create_index([("at", ASCENDING)], name="at")


def _hashable(value: Any) -> bool:
    try:
        hash(value)
    except TypeError:
        return False
    return True


def _summary(doc: dict[str, Any]) -> dict[str, Any]:
    """An item as events show it (outbox.Added.note makes the same of a document being inserted)."""
    return {"key": doc["_id"], "id": doc.get("itemId"), "title": doc.get("title"), "url": doc.get("url"),
            **({"server": doc["server"]} if doc.get("server") else {})}


def _items_event(pointer: dict[str, Any], kind: str, items: list[dict[str, Any]], ident: str, at: datetime,
                 service: Any) -> Entry:
    return Entry(pointer.get("user"), at, ident, {"kind": f"items.{kind}", "service": service,
                                                 "network": pointer.get("network"), "at": at, "items": items})


def _marked(pointer: dict[str, Any], items: dict[Any, dict[str, Any]]) -> list[Entry]:
    """The items `pointer` leads to that carry its run's mark (the slow path: no report tells what they are), as one
    event; its id names the pointer (a run may write several pointers of one kind: a listing page each). A pointer
    without keys leads to its network's items."""
    kind, run = pointer["kind"], pointer["run"]
    found = []
    keys = pointer.get("keys") or [k for k, doc in items.items() if doc.get("network") == pointer.get("network")]
    for key in keys:
        doc = items.get(key) if _hashable(key) else None
        mark = (doc or {}).get(outbox.MARKS[kind])
        if doc is not None and (mark == run if kind == outbox.ADDED else isinstance(mark, list) and run in mark):
            found.append(_summary(doc))
    if not found:
        return []
    # a run's own additions: the id its report would give (a publisher that found the report and one that came after
    # it was removed write one event); a keyed pointer (a listing page): the pointer's own
    ident = outbox.event_id(pointer.get("network"), kind, f"{run}:{pointer['_id']}" if pointer.get("keys") else run)
    return [_items_event(pointer, kind, found, ident, pointer["at"], pointer.get("service"))]


def _network_entries(pointer: dict[str, Any], doc: dict[str, Any]) -> list[Entry]:
    """The changes of `pointer`'s run recorded on network `doc`: its state changes, and the items its state save
    reported added (the fast path: the items need not be read)."""
    found = []
    for position, raw in enumerate(doc.get(outbox.PENDING) or ()):
        if not (isinstance(raw, dict) and raw.get("r") == pointer["run"] and isinstance(raw.get("at"), datetime)):
            continue
        kind, ident = str(raw.get("k")), outbox.event_id(doc["_id"], str(raw.get("k")), pointer["run"])
        if kind == outbox.ADDED:
            items = [i for i in raw.get("items") or () if isinstance(i, dict)]
            if items:
                found.append(replace(_items_event({**pointer, "user": doc.get("user")}, kind, items, ident, raw["at"],
                                                  doc.get("service")), position=position))
        else:
            found.append(Entry(doc.get("user"), raw["at"], ident, {
                "kind": f"network.{kind}", "service": doc.get("service"), "network": doc["_id"], "at": raw["at"],
                "reason": raw.get("why")}, position))
    return found


def _reported(doc: dict[str, Any] | None, run: str) -> bool:
    """Whether network `doc` carries the report of what `run` added."""
    return any(isinstance(raw, dict) and raw.get("r") == run and raw.get("k") == outbox.ADDED
               for raw in (doc or {}).get(outbox.PENDING) or ())


class Publisher:
    def __init__(self, db: Any, settings: Settings, clock: Callable[[], datetime] = utcnow):
        self.db = db
        self.settings = settings.changes
        self.hooks = bool(settings.webhooks.url)  # mark users with events to deliver (collector/webhooks.py)
        self.clock = clock
        self.published = 0  # events written by this process

    async def run(self) -> None:
        """Publish until cancelled: at once again while rounds come back full, else every publish_interval."""
        while True:
            try:
                full = await self.publish() >= self.settings.batch
            except PyMongoError as exc:  # the database is away: the pointers wait where they are
                log.warning("publishing the change feed failed", error=logs.describe(exc))
                full = False
            await asyncio.sleep(0 if full else self.settings.publish_interval)

    async def publish(self) -> int:
        """One round; returns how many pointers it read (what it could not publish waits for the next)."""
        now = self.clock()
        pointers = [p async for p in self.db[outbox.POINTERS].find({"at": {"$lte": now}}).sort("at", ASCENDING)
                    .limit(self.settings.batch)]
        if not pointers:
            return 0
        networks = {doc["_id"]: doc async for doc in self.db.networks.find(
            {"_id": {"$in": list({p.get("network") for p in pointers if _hashable(p.get("network"))})}},
            projection={"lease": 1, outbox.PENDING: 1, "user": 1, "service": 1})}
        ready = [p for p in pointers if not self._in_flight(p, networks.get(p.get("network")), now)]
        # the items a pointer names are read only where no report tells what they are: a run that died or lost its
        # lease before its state save, a removal or a restoration
        unreported = {p["_id"]: p for p in ready if p.get("kind") in outbox.MARKS and not (
            p["kind"] == outbox.ADDED and _reported(networks.get(p.get("network")), p.get("run")))}
        keys = list({k for p in unreported.values() for k in p.get("keys") or () if _hashable(k)})
        # a pointer without keys (a run's additions) is followed by its network and its run's mark
        runs = [{"network": p.get("network"), outbox.ADDED_BY: p.get("run")} for p in unreported.values()
                if not p.get("keys") and _hashable(p.get("network"))]
        clauses = ([{"_id": {"$in": keys}}] if keys else []) + runs
        projection = {"network": 1, "user": 1, "service": 1, "itemId": 1, "title": 1, "url": 1, "server": 1,
                      **dict.fromkeys(outbox.MARKS.values(), 1)}
        items = {doc["_id"]: doc async for doc in self.db.items.find({"$or": clauses}, projection=projection)} \
            if clauses else {}
        entries: dict[str, list[Entry]] = {}  # by pointer
        seen_runs: set[tuple[Any, str]] = set()  # (network, run) whose entries a pointer of this round gathered
        for p in ready:
            found: list[Entry] = []
            if p["_id"] in unreported:
                found += _marked(p, items)
            net = networks.get(p.get("network"))
            if net is not None and (net["_id"], p.get("run")) not in seen_runs:
                seen_runs.add((net["_id"], p.get("run")))
                found += _network_entries(p, net)
            entries[p["_id"]] = [replace(e, position=len(entries) * 100_000 + n) for n, e in enumerate(found)]
        # an event written already (a round that died before retiring its pointers) is not looked for: its insert
        # is refused as a duplicate and the number reserved for it stays unused
        by_user: dict[Any, list[Entry]] = defaultdict(list)
        for entry in {e.id: e for found in entries.values() for e in found if _hashable(e.user)}.values():
            by_user[entry.user].append(entry)
        written: set[Any] = set()
        if by_user:
            lock = uuid.uuid4().hex
            until = now + timedelta(seconds=self.settings.lock_ttl)
            try:
                ranges = await self._reserve(by_user, lock, now, until)
                if ranges:
                    written = await self._write(by_user, ranges, until)
            finally:
                await self.db[FEEDS].update_many({"_id": {"$in": list(by_user)}, "lock.id": lock},
                                                 {"$unset": {"lock": ""}})
        done = [p for p in ready if all(e.user in written for e in entries[p["_id"]]
                                        if _hashable(e.user)) and self._over(p, networks.get(p.get("network")), now,
                                                                             bool(entries[p["_id"]]))]
        await self._retire(done)
        return len(pointers)

    @staticmethod
    def _in_flight(pointer: dict[str, Any], network: dict[str, Any] | None, now: datetime) -> bool:
        """The pointer's run may still be writing: its network's lease is live and is the run's."""
        lease = (network or {}).get("lease")
        return bool(pointer.get("lease")) and isinstance(lease, dict) and lease.get("id") == pointer["lease"] \
            and isinstance(lease.get("until"), datetime) and lease["until"] > now

    @staticmethod
    def _over(pointer: dict[str, Any], network: dict[str, Any] | None, now: datetime, found: bool) -> bool:
        """The pointer's writer is done: its run's lease released or held by another (not in flight: checked),
        the change it points at found (an operator's action), or its `until` passed (a writer that died)."""
        lease = (network or {}).get("lease")
        released = bool(pointer.get("lease")) and (not isinstance(lease, dict) or lease.get("id") != pointer["lease"])
        until = pointer.get("until")
        return released or found or not isinstance(until, datetime) or until <= now

    async def _retire(self, done: list[dict[str, Any]]) -> None:
        """Delete the pointers `done`, after removing the network entries they published."""
        ops = [UpdateOne({"_id": key}, {"$pull": {outbox.PENDING: {"r": {"$in": sorted(runs)}}}})
               for key, runs in _network_runs(done).items()]
        if ops:
            await self.db.networks.bulk_write(ops, ordered=False)
        if done:
            await self.db[outbox.POINTERS].delete_many({"_id": {"$in": [p["_id"] for p in done]}})

    async def _reserve(self, by_user: dict[Any, list[Entry]], lock: str, now: datetime,
                       until: datetime) -> dict[Any, int]:
        """Lock each user's feed (unless another process holds it) and reserve one number per event; returns the
        first number of each user won."""
        free = {"$or": [{"lock": {"$exists": False}}, {"lock.until": {"$lte": now}}]}
        ops = []
        for user, entries in by_user.items():
            update: dict[str, Any] = {"$set": {"lock": {"id": lock, "until": until}}, "$inc": {"seq": len(entries)}}
            if self.hooks:
                update["$min"] = {"hookDue": now}
            ops.append(UpdateOne({"_id": user, **free}, update, upsert=True))
        try:
            await self.db[FEEDS].bulk_write(ops, ordered=False)
        except BulkWriteError as exc:  # a held lock: the upsert of its user collides with the held document
            if any(e.get("code") != DUPLICATE_KEY for e in exc.details.get("writeErrors", [])):
                raise
        won = self.db[FEEDS].find({"_id": {"$in": list(by_user)}, "lock.id": lock}, projection={"seq": 1})
        return {doc["_id"]: int(doc["seq"]) - len(by_user[doc["_id"]]) + 1 async for doc in won}

    async def _write(self, by_user: dict[Any, list[Entry]], ranges: dict[Any, int], until: datetime) -> set[Any]:
        """Insert the events of the users won, in sequence order; returns the users whose events are all written."""
        margin = timedelta(seconds=min(5.0, self.settings.lock_ttl / 4))
        if self.clock() > until - margin:  # too late: a successor may own these users by the time this lands
            log.warning("change feed lock nearly expired before writing: round abandoned", users=len(ranges))
            return set()
        published = self.clock()
        events = []
        for user, first in ranges.items():
            ordered = sorted(by_user[user], key=lambda e: (e.at, e.position))
            events += [{"_id": e.id, "user": user, "seq": first + n, **e.event, "published": published}
                       for n, e in enumerate(ordered)]
        try:
            await self.db[CHANGES].insert_many(events, ordered=False)
        except BulkWriteError as exc:  # an event another round wrote meanwhile: the same event, kept once
            if any(e.get("code") != DUPLICATE_KEY for e in exc.details.get("writeErrors", [])):
                raise
            self.published += int(exc.details.get("nInserted", 0))
            return set(ranges)
        self.published += len(events)
        return set(ranges)


def _network_runs(done: list[dict[str, Any]]) -> dict[Any, set[str]]:
    """network _id -> the runs whose entries on it are published (by the pointers `done`)."""
    runs: dict[Any, set[str]] = defaultdict(set)
    for p in done:
        if _hashable(p.get("network")) and isinstance(p.get("run"), str):
            runs[p["network"]].add(p["run"])
    return runs


async def read(db: Any, user: Any, since: int = 0, limit: int = 1000) -> list[dict[str, Any]]:
    """A user's events after sequence number `since`, in order."""
    cursor = db[CHANGES].find({"user": user, "seq": {"$gt": since}}).sort("seq", ASCENDING).limit(limit)
    return [doc async for doc in cursor]


async def follow(db: Any, user: Any, since: int = 0, every: float = 1.0) -> AsyncIterator[dict[str, Any]]:
    """A user's events after `since`, then each new one as it is published (polls every `every` seconds)."""
    while True:
        events = await read(db, user, since)
        for event in events:
            since = max(since, int(event["seq"]))
            yield event
        if not events:
            await asyncio.sleep(every)
