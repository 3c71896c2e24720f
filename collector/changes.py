"""The change feed: what the application built on the items must hear of, in order, per user.

Writers record each change with its outbox entry in the same single-document update (collector/outbox.py). The
publisher, one task per process, turns entries into events of the `changes` collection:

  1. read the documents with entries (`outbox` is a sparse index), the oldest first, up to `batch`;
  2. per user, take the user's feed lock and reserve as many sequence numbers as the user has entries, in ONE
     update of the user's `feeds` document (`{_id: user, seq, lock}`; upserted): a user's events are written by
     one process at a time, so the numbers of a user's events grow in the order they become visible;
  3. insert the events not written already (an event's id is `<document key>:<kind>:<run>`: an entry published
     twice, after a crash between steps 4 and 5, is one event), in sequence order;
  4. remove the entries from their documents, each document only if its entries are still the ones read (a change
     made meanwhile keeps its entry for the next round);
  5. release the locks.

A crash anywhere leaves the entries in place (published again, under the same ids) or reserved numbers unused
(gaps: sequence numbers grow, they are not contiguous). No event is written without its change (an entry exists
only beside its change), no change stays without its event (its entry stays until the event is written). A
reader follows a user's feed with `find({user, seq: {$gt: last}}).sort(seq)` (`collector changes`).
What this rests on, like the leases (DESIGN.md): a publisher paused past its lock's `lock_ttl` between checking its
lock and inserting could insert numbers below those of a successor; it checks the lock a margin before it expires.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import structlog
from pymongo import ASCENDING, UpdateMany, UpdateOne
from pymongo.errors import BulkWriteError, PyMongoError

from collector import logs, outbox
from collector.config import Settings
from collector.model import utcnow

log = structlog.get_logger("collector.changes")
CHANGES, FEEDS = "changes", "feeds"
DUPLICATE_KEY = 11000
ITEM_FIELDS = ("user", "service", "network", "itemId", "title", "url", "server")


@dataclass(frozen=True)
class Entry:
    user: Any
    at: datetime
    source: str  # "items" or "networks"
    key: Any  # the document's _id
    kind: str
    run: str
    event: dict[str, Any]  # the event's fields other than _id, user, seq
    position: int = 0  # in its document's entries: changes of one document at one moment keep their order

    @property
    def id(self) -> str:
        return outbox.event_id(self.key, self.kind, self.run)


async def ensure_indexes(db: Any) -> None:
    await db[CHANGES].create_index([("user", ASCENDING), ("seq", ASCENDING)], name="user_seq", unique=True)
    for name in ("items", "networks"):
        await db[name].create_index([(outbox.OUTBOX, ASCENDING)], name=outbox.OUTBOX, sparse=True)


def _entries(doc: dict[str, Any], source: str) -> list[Entry]:
    found = []
    for position, raw in enumerate(doc.get(outbox.PENDING) or ()):
        if not isinstance(raw, dict) or not isinstance(raw.get("at"), datetime):
            continue
        kind = str(raw.get("k"))
        event: dict[str, Any] = {"service": doc.get("service"), "at": raw["at"]}
        if source == "items":
            event.update(kind=f"item.{kind}", network=doc.get("network"), item={
                "id": doc.get("itemId"), "key": doc["_id"], "title": doc.get("title"), "url": doc.get("url"),
                **({"server": doc["server"]} if doc.get("server") else {})})
        else:
            event.update(kind=f"network.{kind}", network=doc["_id"], reason=raw.get("why"))
        found.append(Entry(doc.get("user"), raw["at"], source, doc["_id"], kind, str(raw.get("r")), event, position))
    return found


def _hashable(value: Any) -> bool:
    try:
        hash(value)
    except TypeError:
        return False
    return True


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
            except PyMongoError as exc:  # the database is away: the entries wait where they are
                log.warning("publishing the change feed failed", error=logs.describe(exc))
                full = False
            await asyncio.sleep(0 if full else self.settings.publish_interval)

    async def publish(self) -> int:
        """One round; returns how many entries it read (what it could not publish waits for the next)."""
        now = self.clock()
        docs: list[tuple[dict[str, Any], str]] = []
        for source, projection in (("items", ITEM_FIELDS), ("networks", ("user", "service"))):
            cursor = self.db[source].find({outbox.OUTBOX: {"$lte": now}},
                                          projection={outbox.PENDING: 1, **{f: 1 for f in projection}})
            docs += [(doc, source) async for doc in cursor.sort(outbox.OUTBOX, ASCENDING).limit(self.settings.batch)]
        by_user: dict[Any, list[Entry]] = defaultdict(list)
        junk = []
        for doc, source in docs:
            entries = _entries(doc, source)
            if not entries or not _hashable(doc.get("user")):  # nothing this daemon wrote: cleared, not re-read
                junk.append((doc, source))
            for entry in entries if _hashable(doc.get("user")) else ():
                by_user[entry.user].append(entry)
        if junk:
            log.warning("outbox entries without a change (not written by the daemon) removed", documents=len(junk))
            await self._clear(junk)
        if not by_user:
            return len(docs)
        lock = uuid.uuid4().hex
        until = now + timedelta(seconds=self.settings.lock_ttl)
        try:
            ranges = await self._reserve(by_user, lock, now, until)
            if ranges:
                written = await self._write(by_user, ranges, until)
                await self._clear([(doc, source) for doc, source in docs
                                  if _hashable(doc.get("user")) and doc.get("user") in written])
        finally:
            await self.db[FEEDS].update_many({"_id": {"$in": list(by_user)}, "lock.id": lock}, {"$unset": {"lock": ""}})
        return len(docs)

    async def _reserve(self, by_user: dict[Any, list[Entry]], lock: str, now: datetime,
                       until: datetime) -> dict[Any, int]:
        """Lock each user's feed (unless another process holds it) and reserve one number per entry; returns the
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
        events = []
        for user, first in ranges.items():
            ordered = sorted(by_user[user], key=lambda e: (e.at, e.source, str(e.key), e.position))
            events += [{"_id": e.id, "user": user, "seq": first + n, **e.event}
                       for n, e in enumerate(ordered)]
        ids = [e["_id"] for e in events]
        known = {doc["_id"] async for doc in self.db[CHANGES].find({"_id": {"$in": ids}}, projection={"_id": 1})}
        fresh = [e for e in events if e["_id"] not in known]
        margin = timedelta(seconds=min(5.0, self.settings.lock_ttl / 4))
        if self.clock() > until - margin:  # too late: a successor may own these users by the time this lands
            log.warning("change feed lock nearly expired before writing: round abandoned", users=len(ranges))
            return set()
        if not fresh:
            return set(ranges)
        published = self.clock()
        for event in fresh:
            event["published"] = published
        try:
            await self.db[CHANGES].insert_many(fresh, ordered=True)
        except BulkWriteError as exc:  # a stale round's events (its lock expired under it): the rest waits
            errors = exc.details.get("writeErrors", [])
            if any(e.get("code") != DUPLICATE_KEY for e in errors):
                raise
            stopped = fresh[min(e["index"] for e in errors)]["user"]
            self.published += int(exc.details.get("nInserted", 0))
            log.warning("change feed events already written by another round: that user's round abandoned")
            return set(ranges) - {stopped} - {e["user"] for e in fresh[min(e["index"] for e in errors):]}
        self.published += len(fresh)
        return set(ranges)

    async def _clear(self, docs: list[tuple[dict[str, Any], str]]) -> None:
        """Remove the published entries: per document, only if its entries are still those read."""
        groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
        for doc, source in docs:
            groups[(source, repr(doc.get(outbox.PENDING)))].append(doc)
        ops: dict[str, list[UpdateMany]] = defaultdict(list)
        for (source, _), same in groups.items():
            ops[source].append(UpdateMany({"_id": {"$in": [d["_id"] for d in same]},
                                          outbox.PENDING: same[0].get(outbox.PENDING)},
                                         {"$unset": {outbox.PENDING: "", outbox.OUTBOX: ""}}))
        for source, updates in ops.items():
            await self.db[source].bulk_write(updates, ordered=False)


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
