"""Spotify Web API emulator: GET /v1/me/tracks?limit=&offset= (the user's saved tracks).

A paging object {href, items: [{added_at, track}], limit, next, offset, previous, total}, newest save
first, `next`/`previous` absolute URLs on this server (null at the ends), limit 1..50 (and the
sandbox's page cap). Errors as Spotify sends them, {"error": {"status", "message"}}: 401 for an unknown,
expired or revoked token; 429 with Retry-After (seconds) when the user's window (sandbox.quota) is
spent. Injected faults come through sandbox.fault (their 401 and 403 rate limits rewritten in
Spotify's shape: a 429 + Retry-After).
"""

from __future__ import annotations

import time
from typing import Any

from collector.sandbox.core import Response, iso, json_reply, route


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    return json_reply(status, {"error": {"status": status, "message": message}}, headers)


def track_id(n: int) -> str:
    """A 22-character Spotify id for sandbox item n."""
    return f"{n:022d}"


def _saved(item: dict[str, Any]) -> dict[str, Any]:
    n, tid = item["id"], track_id(item["id"])
    artist = {"id": f"{n % 41:022d}", "name": f"Artist {n % 41}", "type": "artist", "uri": f"spotify:artist:{n % 41}",
              "external_urls": {"spotify": f"https://open.spotify.com/artist/{n % 41:022d}"}}
    return {"added_at": iso(item["at"]), "track": {
        "id": tid, "name": f"Track {n}", "type": "track", "uri": f"spotify:track:{tid}", "duration_ms": 180_000,
        "artists": [artist], "album": {"id": f"{n % 89:022d}", "name": f"Album {n % 89}", "album_type": "album"},
        "external_urls": {"spotify": f"https://open.spotify.com/track/{tid}"},
        "href": f"https://api.spotify.com/v1/tracks/{tid}", "is_local": False, "popularity": n % 100}}


def _translate(fault: Response) -> Response:
    if fault.status == 401:  # an expired access token is its own message at Spotify
        return _error(401, "The access token expired" if fault.fault == "expired" else "Invalid access token")
    if fault.status == 403 and fault.headers.get("x-ratelimit-remaining") == "0":
        reset = fault.headers.get("x-ratelimit-reset", "")
        wait = max(int(reset) - int(time.time()), 1) if reset.isdigit() else 30
        return _error(429, "API rate limit exceeded", {"retry-after": str(wait)})
    return fault


def _int(value: str | None, default: int) -> int | None:
    try:
        return int(value) if value is not None else default
    except ValueError:
        return None


@route(r"/v1/me/tracks")
def saved_tracks(sandbox: Any, method: str, headers: dict[str, str], query: dict[str, str], match: Any,
                 body: bytes) -> Response:
    user = sandbox.bearer_user(headers, "spotify")
    if user is None:
        return _error(401, "Invalid access token")
    if (fault := sandbox.fault(user)) is not None:
        return _translate(fault)
    allowed, _remaining, reset = sandbox.quota(user)
    if not allowed:
        return _error(429, "API rate limit exceeded", {"retry-after": str(max(int(reset - time.time()) + 1, 1))})
    limit, offset = _int(query.get("limit"), 20), _int(query.get("offset"), 0)
    if limit is None or offset is None or not 1 <= limit <= 50 or offset < 0:
        return _error(400, "Invalid limit" if limit is None or not 1 <= limit <= 50 else "Invalid offset")
    limit = min(limit, sandbox.page_cap)
    chunk = sandbox.serve(user, offset, limit)
    total = len(user.items)
    base = f"{headers.get('x-sandbox-base', '')}/v1/me/tracks"
    return json_reply(200, {
        "href": f"{base}?offset={offset}&limit={limit}",
        "items": [_saved(i) for i in chunk],
        "limit": limit,
        "next": f"{base}?offset={offset + limit}&limit={limit}" if offset + limit < total else None,
        "offset": offset,
        "previous": f"{base}?offset={max(offset - limit, 0)}&limit={limit}" if offset else None,
        "total": total,
    })
