"""The SDK's helpers for a connector's messages and pagination (public through collector.sdk)."""

from __future__ import annotations

from typing import Any

from collector import logs
from collector.sdk._connector import Item


def excerpt(text: str | bytes, limit: int = 200) -> str:
    """At most `limit` characters of `text` (bytes: a response body, decoded as UTF-8) for a message, with
    the run's secrets scrubbed first. The only way a connector should shorten text from an API: a cut made
    before the scrub can leave part of a token, which the scrub no longer recognizes."""
    return logs.clip(text, limit)


def sweep(cursor: dict[str, Any], items: list[Item], nxt: Any, mode: str,
          keep: dict[str, Any] | None = None) -> tuple[list[Item], dict[str, Any], bool]:
    """Pagination of newest-first APIs without a "since" filter. Given one page (newest first) and
    where the next one is (a URL, a page number, a cursor token: yours), returns (new items, the
    cursor to store, more). Initial mode pages through the whole history; normal mode stops at the
    first item already seen, so a normal run usually costs one request.

    The API's next-page pointer alone decides whether the sweep goes on: a page with no items that
    still names a next page is followed (APIs filter after paging: YouTube's videos.list documents
    `nextPageToken` apart from `items`, Bluesky's AppView drops blocked or deleted posts from a page,
    Reddit drops removed things), never taken for the end. Two things end it: no pointer (None), or a
    pointer equal to the one this page was fetched with (`cursor["next"]`): an API that keeps answering
    with the same token would otherwise be asked the same page forever; the sweep ends there as at
    its last page (initial mode switches to normal).

    Cursor fields: `next` (where the sweep in progress continues), `stop` (the newest id known
    before this sweep: normal mode stops there), `top` (the newest id of this sweep, which becomes
    `stop` when it ends; None while the sweep has met only empty pages); `keep` adds fields of your
    own (an ETag...)."""
    keep = keep or {}
    sent = cursor.get("next")
    top = cursor.get("top") if sent is not None else None
    if top is None and items:  # the first item this sweep meets is its newest
        top = items[0].id
    fresh = items
    stop = cursor.get("stop")
    if mode == "normal" and stop is not None:
        ids = [i.id for i in items]
        if stop in ids:
            fresh = items[: ids.index(stop)]
            nxt = None  # everything after the known item is known too
    if nxt is not None and sent is not None and (nxt == sent or str(nxt) == str(sent)):
        nxt = None  # the same page again: following it would never end
    if nxt is not None:
        return fresh, {**keep, "next": nxt, "stop": stop, "top": top}, True
    return fresh, {**keep, "stop": top if top is not None else stop}, False
