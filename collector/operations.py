"""What operators do to networks (enable, disable, reset, in bulk) and the repair of malformed documents.
Part of the Store (a mixin: `Store` is these parts over one database)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from pymongo import UpdateOne

from collector import leases, outbox
from collector.documents import public_view
from collector.selectors import SLOTS, slot_number, user_slot
from collector.states import FILTERS

STATES = tuple(FILTERS)  # `networks list --state` (collector/states.py: the query of each)


class Operations:
    networks: Any
    feed: bool  # the change feed is on: what an operator or the repair does to a network is an event too

    async def _told(self, query: dict[str, Any], update: dict[str, Any], kind: str, now: datetime, why: str,
                    many: bool = False) -> Any:
        """Apply `update` to the networks of `query`, recording the change for the change feed (collector/outbox.py)
        when it is on: a pointer to each network first, then the entry in the same update as the change."""
        if self.feed:
            run = f"op-{uuid.uuid4().hex}"
            targets = [doc async for doc in self.networks.find(query, projection={"user": 1, "service": 1})]
            if targets:
                await self.networks.database[outbox.POINTERS].insert_many(
                    [outbox.pointer(outbox.STATE, run, doc, now) for doc in targets])
            update = outbox.merge(update, outbox.push(kind, run, now, why))
        return await (self.networks.update_many if many else self.networks.update_one)(query, update)

    async def list_networks(self, user: str | None = None, service: str | None = None, mode: str | None = None,
                            state: str | None = None, limit: int = 1000) -> list[dict[str, Any]]:
        """Networks matching every filter given, secrets redacted (`collector networks list`). `state`: one of
        STATES (parked: rate limited too many times in a row, due again after park_for)."""
        query: dict[str, Any] = {}
        if user:
            query["user"] = user
        if service:
            query["service"] = service
        if mode:
            query["mode"] = mode
        if state is not None:
            if state not in FILTERS:
                raise ValueError(f"state must be one of {', '.join(STATES)}, got {state!r}")
            query.update(FILTERS[state])
        return [public_view(d) async for d in self.networks.find(query).limit(limit)]

    async def repair(self, now: datetime, known_modes: Sequence[str]) -> list[tuple[Any, str]]:
        """Give documents inserted without `mode`/`scheduledTo` (or with null) their defaults,
        disable the ones whose mode or scheduledTo is junk (never due otherwise, and without a
        reason), and remove a `lease` of a shape no process writes (collector/leases.py: nobody holds it;
        claims already see through it, this cleans the document and logs it); returns (id, what was done)
        for each document touched. A well-formed lease, live or expired, is never touched."""
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
                # a partition slot that is not a slot number (a partitioned process would never claim the network):
                # removed, and a partitioned process stamps the right one (Store.stamp_slots)
                {"$nor": [{"slot": None}, {"slot": {"$type": "int", "$gte": 0, "$lt": SLOTS}}]},
                {"slot.0": {"$exists": True}},
                leases.malformed(),
            ],
        }
        projection = {"mode": 1, "scheduledTo": 1, "slot": 1, "lease": 1}
        async for doc in self.networks.find(query, projection=projection).limit(1000):
            fields: dict[str, Any] = {}
            reason = None
            junk_slot = "slot" in doc and doc["slot"] is not None and not slot_number(doc["slot"])
            junk_lease = leases.is_malformed(doc.get("lease"))
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
            if fields or junk_slot or junk_lease:
                update: dict[str, Any] = {"$set": fields} if fields else {}
                unset = [*(["slot"] if junk_slot else []), *(["lease"] if junk_lease else [])]
                if unset:
                    update["$unset"] = dict.fromkeys(unset, "")
                # only a document nobody holds (re-checked by the server, atomically): still the junk lease it
                # had, or no lease or an expired one (a process killed during a run); a claim that won it meanwhile
                # wrote a live lease, which this no longer matches, and the run it started settles the document
                guard = leases.malformed() if junk_lease else leases.unheld(now)
                if reason is not None:
                    result = await self._told({"_id": doc["_id"], **guard}, update, "disabled", now, reason)
                else:
                    result = await self.networks.update_one({"_id": doc["_id"], **guard}, update)
                if result.modified_count:
                    done.append((doc["_id"], ", ".join(sorted([*fields, *unset]))))
        return done

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

    async def enable(self, network_id: Any, now: datetime) -> bool:
        """Clear the network's failure state (`cleared`) and make it due now."""
        result = await self._told({"_id": network_id}, cleared(now), "enabled", now, "operator: enabled")
        return bool(result.matched_count == 1)

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
        result = await self._told(query, cleared(now), "enabled", now, "operator: enabled", many=True)
        return result.modified_count, []

    async def disable(self, network_id: Any, reason: str, now: datetime) -> bool:
        result = await self._told({"_id": network_id}, {"$set": {
            "disabled": True, "disabledReason": f"operator: {reason}", "disabledAt": now, "scheduledTo": None}},
            "disabled", now, f"operator: {reason}")
        return bool(result.matched_count == 1)

    async def reset(self, network_id: Any, now: datetime) -> bool:
        """Back to initial mode from the start of the history (items already stored stay), its failure state
        cleared as by `enable`."""
        update = outbox.merge(cleared(now), {"$set": {"mode": "initial", "cursor": {}}})
        result = await self._told({"_id": network_id}, update, "initial", now, "operator: reset")
        return bool(result.matched_count == 1)


# a network's failure state: disabled (why, since when), unauthorized, an error streak, a limit streak, parked, and
# the 401s counted (a network enabled after its user reconnected has its next 401 confirmed again, collector/states.py)
FAILURE_UNSET = ("disabledReason", "disabledAt", "failingSince", "rateLimitedUntil", "rateLimitStreak", "parkedAt",
                 "parkedReason", "authFailures")


def cleared(now: datetime) -> dict[str, Any]:
    """The update that clears a network's failure state and makes it due now (an operator's enable or reset)."""
    return {"$set": {"disabled": False, "unauthorized": False, "errors": 0, "scheduledTo": now},
            "$unset": dict.fromkeys(FAILURE_UNSET, "")}
