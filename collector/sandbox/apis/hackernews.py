"""HN Search API (Algolia): GET /api/v1/search_by_date?tags=author_<name>&hitsPerPage=&numericFilters=
for the example plugin package (examples/collector-hackernews). No token: users are found by name.
Each item's `created_at_i` is derived from its id (one minute apart), newest first like the real API."""

from __future__ import annotations

import re
from typing import Any

from collector.sandbox.core import Response, Sandbox, iso, json_reply, route

EPOCH = 1_600_000_000
_FILTER = re.compile(r"created_at_i(<=|>=|<|>|=)(\d+)")


def created(item: dict[str, Any]) -> int:
    return EPOCH + int(item["id"]) * 60


@route(r"/api/v1/search_by_date")
def search_by_date(box: Sandbox, method: str, headers: dict[str, str], query: dict[str, str],
                   match: re.Match[str], body: bytes) -> Response:
    tags = query.get("tags", "")
    name = tags[len("author_"):] if tags.startswith("author_") else None
    user = next((u for u in list(box.users.values()) if u.service == "hackernews" and u.name == name), None)
    if user is None or box.user(user.token, "hackernews", headers) is None:
        return json_reply(200, {"hits": [], "nbHits": 0, "page": 0, "nbPages": 0, "hitsPerPage": 20})
    if (fault := box.fault(user)) is not None:
        return fault
    low, high = None, None
    for op, value in _FILTER.findall(query.get("numericFilters", "")):
        n = int(value)
        if op in ("<=", "<"):
            high = n if op == "<=" else n - 1
        elif op in (">=", ">"):
            low = n if op == ">=" else n + 1
    with box.lock:
        ordered = [created(i) for i in user.items]  # newest first
    start = next((k for k, t in enumerate(ordered) if high is None or t <= high), len(ordered))
    end = next((k for k, t in enumerate(ordered) if low is not None and t < low), len(ordered))
    size = max(1, min(int(query.get("hitsPerPage") or 20), 1000))
    chunk = box.serve(user, start, min(size, max(end - start, 0))) if end > start else []
    hits = [{"objectID": str(i["id"]), "title": f"Story {i['id']}", "url": f"https://example.test/{i['id']}",
             "author": user.name, "created_at_i": created(i),
             "created_at": iso(created(i)), "_tags": ["story", f"author_{user.name}"]} for i in chunk]
    return json_reply(200, {"hits": hits, "nbHits": max(end - start, 0), "page": 0, "hitsPerPage": size,
                            "nbPages": 1})
