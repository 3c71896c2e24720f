"""YouTube: the videos the user liked, YouTube Data API v3 `GET /youtube/v3/videos?myRating=like`.

Why videos.list and not playlistItems.list on the "Liked videos" playlist: the ratings guide names
videos.list first ("retrieve a list of videos rated by the current user ... through the videos.list
method and its myRating parameter"; playlistItems of `contentDetails.relatedPlaylists.likes` is the
alternative), it needs no extra channels.list call (and quota) to find the playlist id, and its
reference documents exactly this use: "myRating ... Set this parameter's value to like or dislike to
instruct the API to only return videos liked or disliked by the authenticated user"; "maxResults ...
is supported for use in conjunction with the myRating parameter ... Acceptable values are 1 to 50";
the same note for `pageToken`. Quota: 1 unit per call. Pages: `nextPageToken` until it is absent.
Order: most recent like first, as the Liked videos list (the reference does not state it): normal
mode sweeps from the top and stops at the first known video.

Errors (developers.google.com/youtube/v3/docs/errors) come as {"error": {"code", "message",
"errors": [{"domain", "reason", "message"}]}}:
- `quotaExceeded` (403, "you have exceeded your quota") / `dailyLimitExceeded`: the daily quota of
  the Google Cloud project, i.e. of the app: the whole service pauses until the quota resets "at
  midnight Pacific Time (PT)" (America/Los_Angeles, DST-aware);
- `rateLimitExceeded` / `userRateLimitExceeded` (403 or 429): short per-network waits: Retry-After
  when sent, else from a minute, doubling while the limit repeats (the error names no reset);
- `authError` (401, "Invalid Credentials"): unauthorized (the engine's 401 handling, made explicit);
- any other 403 reason (`forbidden`, `insufficientPermissions`, account closed or suspended...):
  `forbidden`, the network disabled with the reason (Forbidden): the token is valid but may not do
  this, retrying the same token cannot help; except the project's own misconfiguration
  (`accessNotConfigured`: the API is not enabled...), which is no user's fault: transient `forbidden`
  (backoff), so that enabling the API heals every network.

Pagination (the discovery document, youtube.v3.json, VideoListResponse): `items` ("type": "array") and
`nextPageToken` ("The token that can be used as the value of the pageToken parameter to retrieve the
next page in the result set.") are separate properties: a page whose liked videos were all filtered out
(deleted, private) may have no items and still a token, which sdk.sweep follows.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import httpx

from collector.sdk import (
    BadResponse,
    Connector,
    Context,
    Forbidden,
    Item,
    Page,
    RateLimit,
    RateLimited,
    Request,
    Unauthorized,
    excerpt,
    item_id,
    json_body,
    json_value,
    parse_time,
    sweep,
)

PACIFIC = ZoneInfo("America/Los_Angeles")
DAILY = {"quotaExceeded", "dailyLimitExceeded"}
SHORT = {"rateLimitExceeded", "userRateLimitExceeded"}
APP_SETUP = {"accessNotConfigured", "SERVICE_DISABLED", "keyInvalid", "keyExpired", "ipRefererBlocked"}


def quota_reset(now: datetime) -> datetime:
    """The next midnight Pacific Time after `now` (23 or 25 hours away on DST change days)."""
    day = now.astimezone(PACIFIC).date() + timedelta(days=1)
    return datetime(day.year, day.month, day.day, tzinfo=PACIFIC).astimezone(now.tzinfo)


def _reasons(response: httpx.Response) -> tuple[list[str], str]:
    """The `reason`s and message of a Google API error body ([] when it is not one); the message is an excerpt
    (scrubbed, then cut: Google echoes what it was sent, a token included)."""
    try:
        error = json_value(response.content).get("error")  # capped: an error body is API data like any other
        return [str(e.get("reason")) for e in error.get("errors") or []], excerpt(str(error.get("message", "")), 200)
    except (ValueError, AttributeError, TypeError, BadResponse):
        return [], ""


class YouTubeLiked(Connector):
    service = "youtube"
    api = "YouTube Data API v3: liked videos (GET /youtube/v3/videos?myRating=like)"
    default_base_url = "https://www.googleapis.com"

    def request(self, ctx: Context) -> Request:
        params = {"myRating": "like", "part": "snippet", "maxResults": 50}
        if ctx.cursor.get("next"):
            params["pageToken"] = ctx.cursor["next"]
        return Request(f"{self.base_url}/youtube/v3/videos", params=params, headers={"Accept": "application/json"})

    def check(self, ctx: Context, response: httpx.Response) -> None:
        if response.status_code not in (401, 403, 429):
            return
        reasons, message = _reasons(response)
        why = f"HTTP {response.status_code} {', '.join(reasons)}: {message}"
        if DAILY & set(reasons):
            raise RateLimited(why, RateLimit(remaining=0, reset_at=quota_reset(ctx.now), scope="service"))
        if SHORT & set(reasons) or response.status_code == 429:
            raise RateLimited(why, RateLimit(minimum_wait=60.0).merge(self.rate_limit(response, ctx.now)))
        if response.status_code == 401 and reasons:  # authError: the engine's 401 handling, made explicit
            raise Unauthorized(why)
        if reasons:  # forbidden, insufficientPermissions, account suspended...; the project's setup is transient
            raise Forbidden(why, transient=bool(APP_SETUP & set(reasons)))

    def parse(self, ctx: Context, response: httpx.Response) -> Page:
        body = json_body(response)
        items = []
        for video in body["items"]:
            snippet = video.get("snippet") or {}
            items.append(Item(
                id=item_id(video["id"]),
                title=snippet.get("title"),
                url=f"https://www.youtube.com/watch?v={video['id']}",
                author=snippet.get("channelTitle"),
                created=parse_time(snippet.get("publishedAt")),
                raw=video,
            ))
        token = body.get("nextPageToken") or None
        if token is not None and not isinstance(token, str):  # VideoListResponse.nextPageToken is a string
            raise BadResponse(f"nextPageToken is not a string: {type(token).__name__}")
        fresh, cursor, more = sweep(ctx.cursor, items, token, ctx.mode)
        return Page(items=fresh, cursor=cursor, more=more)
