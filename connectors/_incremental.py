"""Shared logic of newest-first APIs without a "since" filter: a sweep pages through history,
and normal mode stops at the first item already seen, so a normal run usually costs one request.

Cursor fields (all optional):
    next   where the sweep in progress continues (a URL, a page number, a token: connector-owned)
    stop   id of the newest item known before this sweep (normal mode stops there)
    top    id of the newest item seen by this sweep (becomes `stop` when the sweep ends)
"""

from __future__ import annotations

from typing import Any

from collector.sdk import Item


def sweep(cursor: dict[str, Any], items: list[Item], nxt: Any, mode: str,
          keep: dict[str, Any] | None = None) -> tuple[list[Item], dict[str, Any], bool]:
    """Given one page (newest first) and where the next one is, return (new items, cursor, more)."""
    keep = keep or {}
    first_page = cursor.get("next") is None
    top = (items[0].id if items else cursor.get("stop")) if first_page else cursor.get("top")
    fresh = items
    stop = cursor.get("stop")
    if mode == "normal" and stop is not None:
        ids = [i.id for i in items]
        if stop in ids:
            fresh = items[: ids.index(stop)]
            nxt = None  # everything after the known item is known too
    if nxt is not None and items:
        return fresh, {**keep, "next": nxt, "stop": stop, "top": top}, True
    return fresh, {**keep, "stop": top}, False
