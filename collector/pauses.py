"""Service-wide pauses (the `services` collection) and limits of one user on the app: what stops many
networks at once. Part of the Store (a mixin: `Store` is these parts over one database)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any

import structlog
from pymongo.errors import DuplicateKeyError, PyMongoError

from collector import logs
from collector.clock import aware

log = structlog.get_logger("collector.run")


class KnownPauses:
    """The service pauses this process knows of: what the database said at the scheduler's last tick
    (`replace`), plus what a run of this process learned since (`note`: the rest of the process stops at
    once, before the next tick reads it back). Before every request `check` asks the database again (one
    read shared by the runs that start within `shared` seconds of it). Owned by the executor, read by the
    scheduler."""

    def __init__(self, store: Any = None, shared: float = 0.1) -> None:
        self._until: dict[str, datetime] = {}
        self.store = store  # anything with `service_pause(service, now)` (the Store)
        self.shared = shared  # how long one read of a service's pause serves the runs that start after it (s)
        self._reads: dict[str, tuple[float, asyncio.Future[dict[str, Any] | None]]] = {}

    def replace(self, fresh: dict[str, datetime]) -> None:
        self._until = {service: aware(until) for service, until in fresh.items()}

    def note(self, service: str, until: datetime) -> None:
        known = self._until.get(service)
        self._until[service] = max(aware(until), known) if known is not None else aware(until)

    def until(self, service: str, now: datetime) -> datetime | None:
        """When the pause of `service` ends, if one is on at `now`."""
        known = self._until.get(service)
        return known if known is not None and known > now else None

    def active(self, now: datetime) -> dict[str, datetime]:
        return {service: until for service, until in self._until.items() if until > now}

    async def check(self, service: str, now: datetime) -> tuple[datetime, str] | None:
        """(until, why) when `service` is paused for the whole app: nobody calls it until the pause ends. What
        this process knows first, then the database (another process may have paused it a moment ago)."""
        known = self.until(service, now)
        if known is not None:
            return known, "app-wide limit"
        try:
            doc = await self._read(service, now)
        except PyMongoError as exc:
            # the database's word is unknown: the pauses this process knows of still hold (above), and the run goes
            # on (its state save will tell whether the database is back); the failed read is not shared further
            log.warning("could not read the service's pause", error=logs.describe(exc))
            return None
        if doc is None or aware(doc["pausedUntil"]) <= now:  # a shared read: checked against our own clock
            return None
        self.note(service, aware(doc["pausedUntil"]))
        return aware(doc["pausedUntil"]), logs.scrub(str(doc.get("pauseReason") or "app-wide limit"))

    async def _read(self, service: str, now: datetime) -> dict[str, Any] | None:
        """The database's word on a service pause. Runs that start within `shared` seconds of each other (a
        batch of claims starts together) share one read instead of one read each."""
        read = self._reads.get(service)
        if read is None or time.monotonic() - read[0] > self.shared:
            pause: Callable[[str, datetime], Awaitable[dict[str, Any] | None]] = self.store.service_pause
            read = (time.monotonic(), asyncio.ensure_future(pause(service, now)))
            self._reads[service] = read
        try:
            return await asyncio.shield(read[1])  # one waiter cancelled (shutdown) leaves the read to the others
        except PyMongoError:
            if self._reads.get(service) is read:
                del self._reads[service]  # a failed read is not shared with the runs after it
            raise


class Pauses:
    networks: Any
    services: Any

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

    async def declare_auth_incident(self, service: str, until: datetime, reason: str, now: datetime) -> None:
        """A 401 storm on `service` (collector/incidents.py): paused for every process until `until`, and the
        declaration remembered (`authIncidentAt`) so that any process defers the 401s that follow it."""
        await self.pause_service(service, until, reason, now)
        await self.services.update_one({"_id": service}, {"$set": {"authIncidentAt": now}}, upsert=True)

    async def auth_incident_at(self, service: str) -> datetime | None:
        """When an auth incident was last declared on `service`, if ever."""
        doc = await self.services.find_one({"_id": service}, {"authIncidentAt": 1})
        value = (doc or {}).get("authIncidentAt")
        return aware(value) if isinstance(value, datetime) else None

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
        return int(result.modified_count)

    async def paused_services(self, now: datetime) -> dict[str, datetime]:
        out = {}
        async for doc in self.services.find({"pausedUntil": {"$gt": now}}):
            out[doc["_id"]] = doc["pausedUntil"]
        return out

    async def service_pause(self, service: str, now: datetime) -> dict[str, Any] | None:
        """The pause of one service if it is still on (one read by primary key: checked before every call)."""
        doc: dict[str, Any] | None = await self.services.find_one({"_id": service})
        if doc and isinstance(doc.get("pausedUntil"), datetime) and aware(doc["pausedUntil"]) > now:
            return doc
        return None

    async def pauses(self, now: datetime) -> list[dict[str, Any]]:
        """Every service pause still on, with its reason and since when."""
        docs = [doc async for doc in self.services.find({"pausedUntil": {"$gt": now}})]
        return sorted(docs, key=lambda d: d["_id"])
