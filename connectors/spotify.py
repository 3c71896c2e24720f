"""Spotify: the user's saved tracks ("Liked Songs"), Web API `GET /v1/me/tracks`.

Reference (developer.spotify.com, Get User's Saved Tracks): "limit ... Default: 20. Minimum: 1.
Maximum: 50", "offset ... The index of the first item to return"; the reply is a paging object
{href, items: [{added_at, track}], limit, next ("URL to the next page of items. (null if none)"),
offset, previous, total}. Still available to Development Mode apps after the February 2026 changes
(only the PUT/DELETE /me/tracks writes moved to /me/library). Newest save first: normal mode sweeps
from offset 0 and stops at the first known track. The `next` URL of the body is followed as given
and refused (BadResponse) when it leaves the configured base URL: the token goes with it.

Item id: the track id alone. A track is in the library at most once (saving it again does not add a
second entry) and `added_at` changes when it is re-saved, so added_at+id would store one track twice.

Limits (Rate Limits guide): "calculated based on the number of calls that your app makes to Spotify in
a rolling 30 second window", answered with 429 and Retry-After (seconds); since July 2026 a spent
quota is a 429 with {"error": {"status": 429, "reason": "QUOTA_EXCEEDED"}}, counted per developer
account. Both are app-wide, so a 429 pauses the whole service for Retry-After (a minute when absent)
rather than one network: every other network of the app would only collect 429s meanwhile.
401 ("The access token expired", or revoked): unauthorized, by the engine (refresh is the engine's).
"""

from __future__ import annotations

import httpx

from collector.sdk import (
    BadResponse,
    Connector,
    Context,
    Item,
    Page,
    RateLimit,
    RateLimited,
    Request,
    excerpt,
    item_id,
    json_body,
    parse_time,
    sweep,
    within,
)


class SpotifySavedTracks(Connector):
    service = "spotify"
    api = "Spotify Web API: saved tracks (GET /v1/me/tracks)"
    default_base_url = "https://api.spotify.com"

    limit_scope = "service"  # Spotify's rate limit is the app's, over a rolling 30 s window

    def request(self, ctx: Context) -> Request:
        headers = {"Accept": "application/json"}
        if ctx.cursor.get("next"):  # the engine sends the token only inside the base URL
            return Request(str(ctx.cursor["next"]), headers=headers)
        return Request(f"{self.base_url}/v1/me/tracks", params={"limit": 50, "offset": 0}, headers=headers)

    def check(self, ctx: Context, response: httpx.Response) -> None:
        if response.status_code == 429:
            # Retry-After when sent (Spotify documents it); else from a minute, doubling while the 429s repeat
            limit = RateLimit(minimum_wait=60.0, scope="service").merge(self.rate_limit(response, ctx.now))
            reason = excerpt(response.content, 300).strip().replace("\n", " ")  # scrubbed, then cut
            raise RateLimited(f"HTTP 429 (app-wide limit): {reason}", limit)

    def parse(self, ctx: Context, response: httpx.Response) -> Page:
        body = json_body(response)
        items = []
        for saved in body["items"]:
            track = saved.get("track") or {}
            if not (track.get("id") or track.get("uri")):
                continue  # nothing stable to key it on (Spotify may send a null track)
            artists = track.get("artists") or [{}]
            items.append(Item(
                id=item_id(track.get("id") or track["uri"]),
                title=track.get("name"),
                url=(track.get("external_urls") or {}).get("spotify"),
                author=artists[0].get("name"),
                created=parse_time(saved.get("added_at")),
                raw=saved,
            ))
        nxt = body.get("next")
        if nxt is not None and not isinstance(nxt, str):
            raise BadResponse(f"next must be a URL, got {type(nxt).__name__}")
        fresh, cursor, more = sweep(ctx.cursor, items, within(nxt, self.base_url, "next URL"), ctx.mode)
        return Page(items=fresh, cursor=cursor, more=more)
