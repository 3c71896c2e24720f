"""The processes of the fleet (`collectors`: one document per process, its heartbeat), the fleet-wide figures one
process computes for all, and the aggregations `collector status` shows (the due backlog, disabled and parked
networks). Part of the Store (a mixin)."""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any

from pymongo import ASCENDING
from pymongo.errors import DuplicateKeyError

from collector import leases
from collector.clock import aware
from collector.states import WHERE


class Processes:
    networks: Any
    collectors: Any
    figures: Any

    async def heartbeat(self, owner: str, fields: dict[str, Any], first: dict[str, Any] | None = None) -> None:
        """Write one process's document (`first`: the fields set only when it registers)."""
        update: dict[str, Any] = {"$set": fields}
        if first:
            update["$setOnInsert"] = first
        await self.collectors.update_one({"_id": owner}, update, upsert=True)

    async def fleet(self) -> list[dict[str, Any]]:
        docs = [doc async for doc in self.collectors.find({})]
        return sorted(docs, key=lambda d: (str(d.get("host")), str(d.get("mode")), str(d.get("startedAt")), d["_id"]))

    async def prune_fleet(self, now: datetime) -> int:
        """Delete process documents past their `expireAt` (portable: not every server has TTL indexes)."""
        return int((await self.collectors.delete_many({"expireAt": {"$lt": now}})).deleted_count)

    async def shared_figures(self, name: str, now: datetime, fresh_for: float,
                             compute: Callable[[], Awaitable[dict[str, Any]]]) -> dict[str, Any] | None:
        """Fleet-wide figures (the due backlog, the uncovered networks) computed by one process per `fresh_for`
        seconds and read by the others: a thousand processes with metrics would otherwise each aggregate the
        due set. The first process past the deadline takes the turn (an atomic conditional update) and computes;
        the others keep what is stored (None before anything is). A process that dies in its turn holds it for
        `fresh_for` seconds at most."""
        doc = await self.figures.find_one({"_id": name})
        stored = doc.get("figures") if doc else None
        if doc and isinstance(doc.get("at"), datetime) and aware(doc["at"]) > now - timedelta(seconds=fresh_for):
            return stored if isinstance(stored, dict) else None
        turn_open = {"_id": name, "$or": [{"turnUntil": None}, {"turnUntil": {"$lte": now}}]}
        try:
            taken = await self.figures.update_one(
                turn_open, {"$set": {"turnUntil": now + timedelta(seconds=fresh_for)}}, upsert=True)
        except DuplicateKeyError:  # another process holds the turn (the upsert met its document)
            return stored if isinstance(stored, dict) else None
        if not taken.matched_count and taken.upserted_id is None:
            return stored if isinstance(stored, dict) else None
        figures = await compute()
        await self.figures.update_one({"_id": name}, {"$set": {"at": now, "figures": figures}})
        return figures

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
        unleased = leases.unheld(now)  # the claims' own test: a junk lease is counted due, as it is claimable
        groups = (
            ("due", {**enabled, **unleased}),
            ("overdue", {**enabled, **unleased, "scheduledTo": {"$lte": now - timedelta(seconds=overdue_after)}}),
            ("running", leases.held(now)),
        )
        for name, match in groups:
            pipeline: list[dict[str, Any]] = [{"$match": match},
                        {"$group": {"_id": {"mode": "$mode", "service": "$service"}, "n": {"$sum": 1}}}]
            async for doc in _aggregate(self.networks, pipeline):
                row(doc["_id"] or {})[name] = doc["n"]
        for (mode, service), r in rows.items():
            if r["due"]:
                oldest = await self.networks.find_one({**enabled, **unleased, "mode": mode, "service": service},
                                                      projection={"scheduledTo": 1}, sort=[("scheduledTo", ASCENDING)])
                r["oldestDue"] = oldest["scheduledTo"] if oldest else None
        return sorted(rows.values(), key=lambda r: (r["mode"], r["service"]))

    async def due_by_slot(self, now: datetime) -> list[dict[str, Any]]:
        """Due, unclaimed networks counted per (mode, service, slot): what `collector status` checks against the
        live processes' selectors (a slot no live process of its mode covers is "uncovered")."""
        match = {"disabled": {"$ne": True}, "scheduledTo": {"$lte": now}, **leases.unheld(now)}
        pipeline: list[dict[str, Any]] = [
            {"$match": match},
            {"$group": {"_id": {"mode": "$mode", "service": "$service", "slot": "$slot"}, "n": {"$sum": 1}}}]
        return [{**(doc["_id"] or {}), "n": doc["n"]} async for doc in _aggregate(self.networks, pipeline)]

    async def held_beyond(self, now: datetime, horizon: float) -> list[dict[str, Any]]:
        """Enabled networks whose (well-formed) lease runs out more than `horizon` seconds from now, per (mode,
        service), with the latest `until`: later than any process writes one (a claim or a renewal: lease_ttl
        ahead), so no process holds it, and yet no claim may take it before it expires (a claim never takes a
        well-formed live lease: collector/leases.py). Written by someone else; `collector status` shows them."""
        match = {"disabled": {"$ne": True}, **leases.held(now + timedelta(seconds=horizon))}
        pipeline: list[dict[str, Any]] = [
            {"$match": match},
            {"$group": {"_id": {"mode": "$mode", "service": "$service"}, "n": {"$sum": 1},
                        "until": {"$max": "$lease.until"}}}]
        rows = [{"mode": str((doc["_id"] or {}).get("mode")), "service": str((doc["_id"] or {}).get("service")),
                 "count": doc["n"], "until": doc.get("until")} async for doc in _aggregate(self.networks, pipeline)]
        return sorted(rows, key=lambda r: (r["mode"], r["service"]))

    async def disabled_summary(self, top: int = 5) -> dict[str, Any]:
        """How many networks are disabled, how many of them unauthorized, and the commonest reasons."""
        out: dict[str, Any] = {}
        for name, match in (("disabled", WHERE["disabled"]), ("unauthorized", WHERE["unauthorized"]),
                            # a first 401: due again after unauthorized_recheck, disabled by a second (states.py)
                            ("confirming", WHERE["unauthorized?"])):
            why = "$disabledReason" if name != "confirming" else "$lastError.message"
            pipeline: list[dict[str, Any]] = [{"$match": match}, {"$group": {"_id": why, "n": {"$sum": 1}}}]
            reasons = [(doc["n"], str(doc["_id"])) async for doc in _aggregate(self.networks, pipeline)]
            reasons.sort(key=lambda r: (-r[0], r[1]))
            out[name] = {"count": sum(n for n, _ in reasons),
                         "reasons": [{"reason": reason, "count": n} for n, reason in reasons[:top]]}
        # parked (too many rate limits in a row: due again after a cool-down), by service: each reason names its time
        pipeline = [{"$match": WHERE["parked"]},
                    {"$group": {"_id": "$service", "n": {"$sum": 1}}}]
        parked = sorted([(doc["n"], str(doc["_id"])) async for doc in _aggregate(self.networks, pipeline)],
                        key=lambda r: (-r[0], r[1]))
        out["parked"] = {"count": sum(n for n, _ in parked),
                         "reasons": [{"reason": f"{service}: rate limited too many times in a row", "count": n}
                                     for n, service in parked[:top]]}
        return out


async def _aggregate(collection: Any, pipeline: list[dict[str, Any]]) -> AsyncIterator[dict[str, Any]]:
    """PyMongo async's aggregate is a coroutine that returns a cursor; mongomock-motor's returns it."""
    cursor = collection.aggregate(pipeline)
    if inspect.isawaitable(cursor):
        cursor = await cursor
    async for doc in cursor:
        yield doc
