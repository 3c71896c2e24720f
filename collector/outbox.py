"""The change feed's outbox: a change and the note that it must be published are one single-document write.

Every write that makes a change the application must hear of (an item added, removed or restored; a network
becoming unauthorized, parked, disabled or normal again) writes, in the same update of the same document, an entry
in that document's `pending` array and the time of its oldest entry in `outbox` (a sparse, indexed field). MongoDB
applies a single-document update whole, so a change never exists without its entry, and an entry never without
its change, whatever crashes. The publisher (collector/changes.py) turns entries into events of the `changes`
collection, each with its user's next sequence number, and only then removes the entries: an event exists before
its entry goes, so a crash between the two publishes the entry again, under the same event id (dropped as a
duplicate). An entry is `{k: kind, r: run, at: when}`: the run (a lease id, a reconciliation id, an operator
action's id) makes the event id, `<document key>:<kind>:<run>`, the same however often it is published.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

PENDING, OUTBOX = "pending", "outbox"

# what happened to an item
ADDED, REMOVED, RESTORED = "added", "removed", "restored"
ITEM_KINDS = (ADDED, REMOVED, RESTORED)
# what a network became (`label`): the application acts on each; "enabled": an operator enabled it again
NETWORK_KINDS = ("initial", "normal", "parked", "unauthorized", "disabled", "enabled")


def label(doc: dict[str, Any]) -> str:
    """What a network document is, as the change feed reports it: unauthorized (the user must reconnect), disabled,
    parked, or its mode. A first 401 still being confirmed is not reported (the next run confirms or clears it)."""
    if doc.get("disabled") is True:
        return "unauthorized" if doc.get("unauthorized") is True else "disabled"
    if doc.get("parkedAt"):
        return "parked"
    return str(doc.get("mode"))


def entry(kind: str, run: str, at: datetime, why: str | None = None) -> dict[str, Any]:
    """`why`: a network change's reason, as the event reports it."""
    return {"k": kind, "r": run, "at": at, **({"why": why} if why is not None else {})}


def fields(kind: str, run: str, at: datetime) -> dict[str, Any]:
    """The fields a new document carries when its creation is a change (an item inserted)."""
    return {PENDING: [entry(kind, run, at)], OUTBOX: at}


def push(kind: str, run: str, at: datetime, why: str | None = None) -> dict[str, Any]:
    """The update operators that record a change made by the same update (merge them into it)."""
    return {"$push": {PENDING: entry(kind, run, at, why)}, "$min": {OUTBOX: at}}


def merge(update: dict[str, Any], kind: str, run: str, at: datetime, why: str | None = None) -> dict[str, Any]:
    """`update` (an update document of operators) recording a change of `kind` as well."""
    merged = {op: dict(values) for op, values in update.items()}
    for op, values in push(kind, run, at, why).items():
        merged.setdefault(op, {}).update(values)
    return merged


def event_id(key: Any, kind: str, run: str) -> str:
    return f"{key}:{kind}:{run}"
