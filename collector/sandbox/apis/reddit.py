"""Reddit emulator: GET /user/<name>/saved and /user/<name>/upvoted (oauth.reddit.com shapes).

Listings {"kind": "Listing", "data": {"after", "before", "dist", "modhash", "geo_filter",
"children": [{"kind": "t3"|"t1", "data": {...}}]}}, newest first; `limit` (default 25, at most 100
and the sandbox's page cap), `after` = the fullname of the last item seen (null at the end). A
sandbox user of service "reddit_saved" serves /saved, one of "reddit_upvoted" /upvoted; <name> must
be the user's own name (Reddit: 403 for anyone else's). Every reply carries X-Ratelimit-Used,
X-Ratelimit-Remaining (a float, "599.0") and X-Ratelimit-Reset (seconds until the window ends); an
exhausted window answers 429. A request without a User-Agent is refused with 429 too (Reddit
throttles anonymous agents). Text fields are HTML-escaped unless raw_json=1. Injected faults are
served in Reddit's shapes where Reddit has one: 401 {"message": "Unauthorized", "error": 401},
rate limits as 429 with the headers above.
"""

from __future__ import annotations

import html
import re
import time
from typing import Any

from collector.sandbox.core import Response, Sandbox, json_reply, riding, route

SERVICES = {"saved": "reddit_saved", "upvoted": "reddit_upvoted"}
SUBREDDITS = ("python", "programming", "aww", "askscience", "dataisbeautiful")
DIGITS = "0123456789abcdefghijklmnopqrstuvwxyz"


def base36(n: int) -> str:
    out = ""
    while True:
        n, r = divmod(n, 36)
        out = DIGITS[r] + out
        if not n:
            return out


def fullname(item_id: int) -> str:
    """Every fifth saved/upvoted thing is a comment (t1), the rest are posts (t3)."""
    return f"{'t1' if item_id % 5 == 0 else 't3'}_{base36(item_id)}"


def thing(item: dict[str, Any], raw_json: bool) -> dict[str, Any]:
    """A post or comment; without raw_json=1 Reddit HTML-escapes &, < and > in its text fields."""
    text = (lambda s: s) if raw_json else (lambda s: html.escape(s, quote=False))
    n = item["id"]
    name = fullname(n)
    kind, short = name.split("_", 1)
    sub = SUBREDDITS[n % len(SUBREDDITS)]
    common = {"id": short, "name": name, "author": f"redditor{n % 53}", "subreddit": sub,
              "subreddit_name_prefixed": f"r/{sub}", "created_utc": float(int(item["at"])), "score": n % 997}
    if kind == "t1":
        link = base36(n + 1_000_000)
        return {"kind": "t1", "data": {**common, "body": text(f"Comment {n} & <its> text"), "link_id": f"t3_{link}",
                                       "link_title": text(f"Thread {link} & friends"),
                                       "permalink": f"/r/{sub}/comments/{link}/thread_{link}/{short}/"}}
    return {"kind": "t3", "data": {**common, "title": text(f"Post {n} & <friends>"), "num_comments": n % 40,
                                   "permalink": f"/r/{sub}/comments/{short}/post_{short}/",
                                   "url": f"https://example.com/{short}", "is_self": False}}


def _headers(sandbox: Sandbox, remaining: int, reset_at: float) -> dict[str, str]:
    return {"x-ratelimit-used": str(sandbox.rate_limit - remaining), "x-ratelimit-remaining": f"{remaining:.1f}",
            "x-ratelimit-reset": str(max(int(reset_at - time.time()), 0))}


def _reddit_fault(resp: Response) -> Response:
    """The sandbox's generic faults (GitHub-shaped) in Reddit's shapes; transport faults unchanged."""
    out = resp
    if resp.status == 401:
        out = json_reply(401, {"message": "Unauthorized", "error": 401})
    elif resp.status == 403 and resp.headers.get("x-ratelimit-remaining") == "0":
        wait = max(int(resp.headers.get("x-ratelimit-reset", "0")) - int(time.time()), 0)
        out = json_reply(429, {"message": "Too Many Requests", "error": 429},
                         {"x-ratelimit-used": "600", "x-ratelimit-remaining": "0.0", "x-ratelimit-reset": str(wait)})
    elif resp.status == 429:
        out = json_reply(429, {"message": "Too Many Requests", "error": 429}, resp.headers)
    out.fault = getattr(resp, "fault", "")
    return out


@route(r"/user/(?P<name>[A-Za-z0-9_-]+)/(?P<listing>saved|upvoted)(?:\.json)?")
def listing(sandbox: Sandbox, method: str, headers: dict[str, str], query: dict[str, str], match: re.Match[str],
            body: bytes) -> Response:
    if not headers.get("user-agent"):
        return json_reply(429, {"message": "Too Many Requests", "error": 429})
    user = sandbox.bearer_user(headers, SERVICES[match["listing"]])
    if user is None:
        return json_reply(401, {"message": "Unauthorized", "error": 401})
    ride: dict[str, str] = {}
    if (fault := sandbox.fault(user)) is not None:
        if not riding(fault):
            return _reddit_fault(fault)
        ride = {k: v for k, v in fault.headers.items() if k != "content-type"}
    allowed, remaining, reset_at = sandbox.quota(user)
    limits = _headers(sandbox, remaining, reset_at)
    if not allowed:
        return json_reply(429, {"message": "Too Many Requests", "error": 429}, limits)
    if match["name"].lower() != user.name.lower():
        return json_reply(403, {"message": "Forbidden", "error": 403}, limits)
    try:
        size = min(max(int(query.get("limit", 25)), 1), 100)
    except ValueError:
        size = 25
    start = 0
    after = query.get("after", "")
    if after[:3] in ("t1_", "t3_"):
        try:
            start = sandbox.position_after(user, int(after[3:], 36))
        except ValueError:
            start = 0
    chunk = sandbox.serve(user, start, size)
    more = start + len(chunk) < len(user.items)
    children = [thing(item, query.get("raw_json") == "1") for item in chunk]
    data = {"after": children[-1]["data"]["name"] if children and more else None, "dist": len(children),
            "modhash": None, "geo_filter": "", "children": children, "before": None}
    reply = json_reply(200, {"kind": "Listing", "data": data}, {**limits, **ride})
    reply.fault = "headers" if ride else ""
    return reply
