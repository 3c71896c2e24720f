"""The change feed's outbox: a change is marked in the document it changes, by the same single-document write, and a
pointer to it is written first.

The marks (MongoDB applies a single-document update whole, so a change never exists without its mark):
  - an item inserted carries `addedBy: <run>` (written with the document, never rewritten);
  - an item marked removed or restored gets `<run>` added to its `removedBy` / `restoredBy` set by that update;
  - a network whose state changes (unauthorized, parked, disabled, normal again, enabled by an operator...) gets an
    entry `{k: kind, r: run, at, why}` pushed on its `pending` array by the update that changes it.
The pointer (`outbox` collection: `{kind, run, lease, network, user, keys, at, until}`) is written before the change:
it tells the publisher (collector/changes.py) which documents to look at, so nothing is ever found by scanning the
items. The publisher publishes the marked changes a pointer leads to (an event id is `<document key>:<kind>:<run>`:
published twice, it is one event) and deletes the pointer once its writer is done (the run's lease released or
expired, or the pointer's `until` passed). A writer that dies after its pointer and before its change leaves a
pointer that leads to nothing: no event. One that dies after its change: the pointer leads to it. So no event
without its change, and no change without its event.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

# what a network document is, as the change feed reports it (a first 401 being confirmed is not reported: the next
# run confirms or clears it)
from collector.states import label as label

PENDING = "pending"  # a network's state changes not published yet
POINTERS = "outbox"  # the collection of pointers
ADDED_BY, REMOVED_BY, RESTORED_BY = "addedBy", "removedBy", "restoredBy"

# what happened to an item
ADDED, REMOVED, RESTORED, STATE = "added", "removed", "restored", "state"
MARKS = {ADDED: ADDED_BY, REMOVED: REMOVED_BY, RESTORED: RESTORED_BY}
# what a network became (`label`): the application acts on each; "enabled": an operator enabled it again
NETWORK_KINDS = ("initial", "normal", "parked", "unauthorized", "disabled", "enabled")


@dataclass
class Added:
    """What a run's item writes added, for its state save to report (the publisher's fast path: it need not read
    the items). `complete` is False when an item may have been added unseen (an upsert that inserted): the
    publisher then reads the marks instead."""
    items: list[dict[str, Any]] = field(default_factory=list)
    complete: bool = True

    def note(self, doc: dict[str, Any]) -> None:
        self.items.append({"key": doc["_id"], "id": doc.get("itemId"), "title": doc.get("title"),
                           "url": doc.get("url"), **({"server": doc["server"]} if doc.get("server") else {})})

    def entry(self, run: str, at: datetime) -> dict[str, Any] | None:
        """The network entry reporting the additions; None when there is nothing to report or it is not complete."""
        return {"k": ADDED, "r": run, "at": at, "items": self.items} if self.items and self.complete else None


def pointer(kind: str, run: str, network: dict[str, Any], at: datetime, *, keys: Sequence[Any] = (),
            lease: str | None = None, until: datetime | None = None) -> dict[str, Any]:
    """The pointer to write before a change: `keys` (items) or the network itself (STATE). `lease`: the run's lease
    id, while it is held the writer may still be writing; `until`: when the writer is surely done (a lease's end)."""
    return {"_id": uuid.uuid4().hex, "kind": kind, "run": run, "lease": lease, "network": network.get("_id"),
            "user": network.get("user"), "service": network.get("service"), "keys": list(keys), "at": at,
            "until": until or at + timedelta(seconds=60)}


def mark(kind: str, run: str) -> dict[str, Any]:
    """The update operators that mark an item removed or restored by `run` (merge them into the update)."""
    return {"$addToSet": {MARKS[kind]: run}}


def entry(kind: str, run: str, at: datetime, why: str | None = None) -> dict[str, Any]:
    """A network's change; `why`: its reason, as the event reports it."""
    return {"k": kind, "r": run, "at": at, **({"why": why} if why is not None else {})}


def push(kind: str, run: str, at: datetime, why: str | None = None) -> dict[str, Any]:
    """The update operators that record a network's change made by the same update (merge them into it)."""
    return {"$push": {PENDING: entry(kind, run, at, why)}}


def push_all(entries: Sequence[dict[str, Any]]) -> dict[str, Any]:
    return {"$push": {PENDING: {"$each": list(entries)}}}


def merge(update: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """`update` (an update document of operators) with the operators of `extra` as well."""
    merged = {op: dict(values) for op, values in update.items()}
    for op, values in extra.items():
        merged.setdefault(op, {}).update(values)
    return merged


def event_id(key: Any, kind: str, run: str) -> str:
    return f"{key}:{kind}:{run}"
