"""Mastodon in the sandbox: GET /api/v1/favourites and GET /api/v1/bookmarks.

One sandbox user per service name ("mastodon_favourites", "mastodon_bookmarks"): a token is either
a favourites or a bookmarks user. As on Mastodon: `Authorization: Bearer`, `limit` (default 20,
capped at 40 and at the sandbox's page_cap), internal favourite/bookmark ids in the Link header
only (rel="next" with max_id when the page is full, rel="prev" with min_id when it is not empty),
a min_id request returns the entries just above min_id (newest first), X-RateLimit-* with an ISO
8601 reset, 429 `{"error": "Too many requests"}`, 401 `{"error": "The access token is invalid"}`.
The sandbox item id is the favourite/bookmark id; the status id is derived from it and unordered.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

from collector.sandbox.core import Response, Sandbox, iso, json_reply, route

SERVICES = {"favourites": "mastodon_favourites", "bookmarks": "mastodon_bookmarks"}


def status_id(entry_id: int) -> str:
    """A status id unrelated to the order of favouriting (a bijection on ids below 10**9)."""
    return str(109_000_000_000_000_000 + (entry_id * 2_654_435_761) % 10**9)


def _status(kind: str, item: dict[str, Any]) -> dict[str, Any]:
    n = item["id"]
    sid = status_id(n)
    author = f"author{n % 53}"
    return {
        "id": sid, "created_at": iso(item["at"]), "in_reply_to_id": None, "in_reply_to_account_id": None,
        "sensitive": False, "spoiler_text": "", "visibility": "public", "language": "en",
        "uri": f"https://remote.example/users/{author}/statuses/{sid}",
        "url": f"https://remote.example/@{author}/{sid}",
        "replies_count": 0, "reblogs_count": 0, "favourites_count": 1,
        "favourited": kind == "favourites", "reblogged": False, "muted": False, "bookmarked": kind == "bookmarks",
        "content": f"<p>Status {n} &amp; friends</p>", "reblog": None,
        "account": {"id": str(n % 53), "username": author, "acct": f"{author}@remote.example",
                    "display_name": f"Author {n % 53}"},
        "media_attachments": [], "mentions": [], "tags": [], "emojis": [], "card": None, "poll": None,
    }


def _id(value: str | None) -> int | None:
    try:
        return int(value) if value else None
    except ValueError:
        return None


@route(r"/api/v1/(favourites|bookmarks)")
def statuses(sandbox: Sandbox, method: str, headers: dict[str, str], query: dict[str, str], match: re.Match[str],
             body: bytes) -> Response:
    kind = match.group(1)
    user = sandbox.bearer_user(headers, SERVICES[kind])
    if user is None:
        return json_reply(401, {"error": "The access token is invalid"})
    if (fault := sandbox.fault(user)) is not None:
        return fault
    allowed, remaining, reset = sandbox.quota(user)
    limits = {"x-ratelimit-limit": str(sandbox.rate_limit), "x-ratelimit-remaining": str(remaining),
              "x-ratelimit-reset": datetime.fromtimestamp(reset, UTC).isoformat(timespec="microseconds")
              .replace("+00:00", "Z")}
    if not allowed:
        sandbox.count_request(user)
        return json_reply(429, {"error": "Too many requests"}, limits)
    limit = min(abs(_id(query.get("limit")) or 20), 40) or 20
    size = min(limit, sandbox.page_cap)
    min_id, max_id = _id(query.get("min_id")), _id(query.get("max_id"))
    if min_id is not None:  # the `size` oldest entries above min_id, served newest first
        with sandbox.lock:
            above = sum(1 for i in user.items if i["id"] > min_id and (max_id is None or i["id"] < max_id))
            first = sum(1 for i in user.items if max_id is not None and i["id"] >= max_id)
        start = first + max(above - size, 0)
        if above:
            chunk = sandbox.serve(user, start, first + above - start)
        else:
            chunk = []
            sandbox.count_request(user)
    else:
        chunk = sandbox.serve(user, sandbox.position_after(user, max_id) if max_id is not None else 0, size)
    base = f"{headers.get('x-sandbox-base', '')}/api/v1/{kind}?" + (f"limit={query['limit']}&" if "limit" in query
                                                                   else "")
    link = []
    if len(chunk) == size:
        link.append(f'<{base}max_id={chunk[-1]["id"]}>; rel="next"')
    if chunk:
        link.append(f'<{base}min_id={chunk[0]["id"]}>; rel="prev"')
    if link:
        limits["link"] = ", ".join(link)
    return json_reply(200, [_status(kind, item) for item in chunk], limits)
