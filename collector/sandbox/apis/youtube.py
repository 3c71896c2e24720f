"""YouTube Data API v3 emulator: GET /youtube/v3/videos?myRating=like&part=snippet&maxResults=&pageToken=.

A videoListResponse ({kind, etag, nextPageToken?, prevPageToken?, pageInfo, items}), most recent like
first, `nextPageToken` absent on the last page (opaque tokens anchored on the last video served, so a
like arriving mid-sweep neither repeats nor skips anything). Google-shaped errors: 401 authError for
an unknown or revoked token, 403 `quotaExceeded` when the app's daily quota (`DAILY_UNITS`, one unit
per call, shared by every user, reset at midnight Pacific Time) is spent, 403 `userRateLimitExceeded`
when the user's window (sandbox.quota) is. Injected faults come through sandbox.fault, their 401/403
bodies rewritten in Google's shape.

The app quota is `app_quota(sandbox)`, kept in the sandbox's app state (Sandbox.app_state: forgotten on a
/_sandbox/reset). Tests may set `app_quota(sandbox)["remaining"]`.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
import time
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from collector.sandbox.core import Response, Sandbox, iso, json_reply, route

DAILY_UNITS = 10_000  # the default quota of a Google Cloud project
PACIFIC = ZoneInfo("America/Los_Angeles")
_LOCK = threading.Lock()


def _error(status: int, reason: str, message: str, domain: str = "youtube.quota",
           headers: dict[str, str] | None = None) -> Response:
    body = {"error": {"code": status, "message": message,
                      "errors": [{"message": message, "domain": domain, "reason": reason}]}}
    return json_reply(status, body, headers)


def app_quota(sandbox: Sandbox) -> dict[str, Any]:
    """The app-wide daily quota of this sandbox, {remaining, day}, reset when the Pacific day changes."""
    state = sandbox.app_state("youtube")
    today = datetime.now(PACIFIC).date()
    with _LOCK:
        if state.get("day") != today:  # first use (or the first since a reset), or a new day in Pacific Time
            state["remaining"], state["day"] = DAILY_UNITS, today
        return state


def _spend(sandbox: Sandbox) -> bool:
    state = app_quota(sandbox)
    with _LOCK:
        if state["remaining"] <= 0:
            return False
        state["remaining"] -= 1
        return True


def _token(video_id: int) -> str:
    return base64.urlsafe_b64encode(f"after:{video_id}".encode()).decode().rstrip("=")


def _after(token: str) -> int | None:
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
        return int(raw.removeprefix("after:")) if raw.startswith("after:") else None
    except (ValueError, UnicodeDecodeError):
        return None


def _video(user: Any, item: dict[str, Any]) -> dict[str, Any]:
    n = item["id"]
    return {"kind": "youtube#video", "etag": hashlib.md5(str(n).encode()).hexdigest()[:27], "id": video_id(n),
            "snippet": {"publishedAt": iso(item["at"]), "channelId": f"UC{n % 53:022d}", "title": f"Video {n}",
                        "description": f"Liked by {user.name}", "channelTitle": f"Channel {n % 53}",
                        "categoryId": "22", "liveBroadcastContent": "none"}}


def video_id(n: int) -> str:
    """An 11-character video id for sandbox item n."""
    return f"v{n:010d}"


def _translate(fault: Response) -> Response:
    """The generic injected faults, in Google's error shape where one exists."""
    if fault.status == 401:
        return _error(401, "authError", "Request had invalid authentication credentials.", domain="global")
    if fault.status == 403:
        reset = fault.headers.get("x-ratelimit-reset")
        wait = max(int(reset) - int(time.time()), 1) if reset and reset.isdigit() else 60
        return _error(403, "userRateLimitExceeded", "Rate Limit Exceeded", domain="usageLimits",
                      headers={"retry-after": str(wait)})
    return fault


@route(r"/youtube/v3/videos")
def liked_videos(sandbox: Any, method: str, headers: dict[str, str], query: dict[str, str], match: Any,
                 body: bytes) -> Response:
    user = sandbox.bearer_user(headers, "youtube")
    if user is None:
        return _error(401, "authError", "Request had invalid authentication credentials.", domain="global")
    if (fault := sandbox.fault(user)) is not None:
        return _translate(fault)
    if query.get("myRating") != "like" or "snippet" not in query.get("part", "").split(","):
        return _error(400, "missingRequiredParameter", "No filter selected.", domain="youtube.parameter")
    if not _spend(sandbox):
        return _error(403, "quotaExceeded", "The request cannot be completed because you have exceeded your "
                      '<a href="/youtube/v3/getting-started#quota">quota</a>.')
    allowed, _remaining, reset = sandbox.quota(user)
    if not allowed:
        return _error(403, "userRateLimitExceeded", "Rate Limit Exceeded", domain="usageLimits",
                      headers={"retry-after": str(max(int(reset - time.time()) + 1, 1))})
    try:
        size = min(max(int(query.get("maxResults", 5)), 1), 50)
    except ValueError:
        return _error(400, "invalidParameter", "Invalid value for maxResults.", domain="youtube.parameter")
    start = 0
    if query.get("pageToken"):
        after = _after(query["pageToken"])
        if after is None:
            return _error(400, "invalidPageToken", "The request specifies an invalid page token.",
                          domain="youtube.parameter")
        start = sandbox.position_after(user, after)
    chunk = sandbox.serve(user, start, size)
    reply: dict[str, Any] = {
        "kind": "youtube#videoListResponse",
        "etag": hashlib.md5(json.dumps([i["id"] for i in chunk]).encode()).hexdigest()[:27],
        "items": [_video(user, i) for i in chunk],
        "pageInfo": {"totalResults": len(user.items), "resultsPerPage": len(chunk)},
    }
    if chunk and start + len(chunk) < len(user.items):
        reply["nextPageToken"] = _token(chunk[-1]["id"])
    return json_reply(200, reply)
