"""Item documents and what goes into them: the item's key, and payloads made storable.

Pure functions, no I/O (the Store writes what these build).
"""

from __future__ import annotations

import json
from datetime import datetime
from json.encoder import encode_basestring
from typing import Any

from bson import BSON
from bson.errors import InvalidDocument
from pymongo import UpdateOne

from collector.model import SECRET_FIELDS

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


def key_prefix(user: Any, service: str, scope: str | None = None) -> str:
    """What every `item_key` of one (user, service), or (user, service, scope), starts with: computed once per
    page."""
    head = [service, user if isinstance(user, str | int) else str(user)]
    return _ENCODE(head if scope is None else [*head, scope])[:-1] + ","


def item_key(user: Any, service: str, item_id: str, prefix: str | None = None, scope: str | None = None) -> str:
    """The _id of an item: one value per (service, user, itemId), unambiguous whatever the parts contain (the JSON
    array [service, user, itemId]), so an upsert finds its document by primary key on any server. The items of a
    connector whose ids are per server (Connector.item_scope: a Mastodon instance, a GitLab server) are keyed
    [service, user, scope, itemId]: four elements, so no scoped key is ever an unscoped one, and the unscoped keys
    are what they always were. `prefix` is key_prefix(user, service, scope) when the caller has it already."""
    head = prefix if prefix is not None else key_prefix(user, service, scope)
    return head + (encode_basestring(item_id) if type(item_id) is str else _ENCODE(item_id)) + "]"


# identity and first sighting: never rewritten (`server`: a scoped item's, collector.sdk.Connector.item_scope);
# the change feed's mark of the run that added it (collector/outbox.py) goes in only with the document
_INSERT_ONLY = ("user", "service", "server", "itemId", "collectedAt", "addedBy")


def refresh_update(doc: dict[str, Any]) -> UpdateOne:
    """The upsert that brings an existing item up to date with `doc` (the insert that was refused)."""
    fields = {k: v for k, v in doc.items() if k != "_id" and k not in _INSERT_ONLY}
    first = {k: doc[k] for k in _INSERT_ONLY if k in doc}
    return UpdateOne({"_id": doc["_id"]}, {"$set": fields, "$setOnInsert": first}, upsert=True)


def public_view(doc: dict[str, Any]) -> dict[str, Any]:
    """A network document with its secrets redacted, fit for logs and operator output."""
    return {k: ("[redacted]" if k in SECRET_FIELDS and v else v) for k, v in doc.items()}
