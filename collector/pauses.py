"""Service-wide pauses (the `services` collection) and limits of one user on the app: what stops many
networks at once. Part of the Store (a mixin: `Store` is these parts over one database)."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from pymongo.errors import DuplicateKeyError

from collector.model import aware


class KnownPauses:
    """The service pauses this process knows of: what the database said at the scheduler's last tick
    (`replace`), plus what a run of this process learned since (`note`: the rest of the process stops at
    once, before the next tick reads it back). Owned by the executor, read by the scheduler."""

    def __init__(self) -> None:
        self._until: dict[str, datetime] = {}

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
