"""Stack Overflow: the user's favorites (bookmarks), Stack Exchange API 2.3 `GET /me/favorites`.

pagesize=100, page=N, `has_more`; newest favorite first (sort=added), normal mode stops at the
first known question. Every response is gzip'd (decoded by the engine). Limits are in the body
(api.stackexchange.com/docs/throttle): every request here carries an access_token, so
`quota_remaining` is the daily quota of this user/app pair, not the app's: at 0 this user's networks
wait (scope "user"), the other users go on. The quota's day is not documented as a calendar day (it is
reported to run 24 hours from its first request); the daemon resumes at the next midnight UTC and
obeys the wait any later throttle names. `backoff` asks the app to wait N seconds before calling the
method again (service-wide), and the IP-wide throttle (over 30 requests a second) answers HTTP 400
`error_id` 502 throttle_violation, with "more requests available in N seconds" when it says (service-
wide: the IP is the fleet's); one without seconds is waited out from a minute, doubling while it
repeats. Errors come as HTTP 400 with an `error_id` (401-406 token problems).
The access token travels in the X-API-Access-Token header, never in the URL; the app key is not
a secret (Stack Exchange says so) and goes in the `key` parameter.
"""

from __future__ import annotations

import html
import re
from datetime import datetime, timedelta

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
    Unauthorized,
    count,
    json_body,
    json_value,
    parse_time,
    sweep,
)

TOKEN_ERRORS = {401, 402, 403, 406}  # access_token_required, invalid, access_denied, compromised
THROTTLE = 502


def _midnight_after(now: datetime) -> datetime:
    return (now + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)


class StackOverflowFavorites(Connector):
    service = "stackoverflow"
    api = "Stack Exchange API 2.3: favorites (GET /me/favorites)"
    default_base_url = "https://api.stackexchange.com/2.3"
    auth_header, auth_scheme = "X-API-Access-Token", ""  # the bare access token, in Stack Exchange's own header

    def request(self, ctx: Context) -> Request:
        params = {
            "site": ctx.network.options.get("site") or self.options.get("site", "stackoverflow"),
            "pagesize": 100,
            "page": int(ctx.cursor.get("next") or 1),
            "sort": "added",
            "order": "desc",
        }
        if self.options.get("key"):
            params["key"] = self.options["key"]
        return Request(f"{self.base_url}/me/favorites", params=params)

    def check(self, ctx: Context, response: httpx.Response) -> None:
        if response.status_code < 400 or not response.content.lstrip().startswith(b"{"):
            return
        try:
            body = json_value(response.content)
        except (ValueError, BadResponse):
            return
        error_id = body.get("error_id") if isinstance(body, dict) else None
        message = f"{body.get('error_name')}: {body.get('error_message')}" if error_id else ""
        if error_id in TOKEN_ERRORS:
            raise Unauthorized(message)
        if error_id == THROTTLE:
            wait = re.search(r"available in (\d+) seconds", str(body.get("error_message"))[:500])
            if wait:
                raise RateLimited(message, RateLimit(retry_after=float(wait.group(1)), scope="service"))
            raise RateLimited(message, RateLimit(minimum_wait=60.0, scope="service"))

    def rate_limit(self, response: httpx.Response, now: datetime) -> RateLimit | None:
        return None  # Stack Exchange reports limits in the body: see parse

    def parse(self, ctx: Context, response: httpx.Response) -> Page:
        body = json_body(response)
        items = [
            Item(
                id=str(q["question_id"]),
                title=html.unescape(q.get("title") or ""),
                url=q.get("link") or f"https://stackoverflow.com/q/{q['question_id']}",
                author=html.unescape((q.get("owner") or {}).get("display_name") or "") or None,
                created=parse_time(q.get("creation_date")),
                raw=q,
            )
            for q in body["items"]
        ]
        page = int(ctx.cursor.get("next") or 1)
        nxt = page + 1 if body.get("has_more") else None
        fresh, cursor, more = sweep(ctx.cursor, items, nxt, ctx.mode)
        # numbers from the body are checked: a str here would break the engine's comparisons
        backoff = count(body.get("backoff"))
        remaining = count(body.get("quota_remaining"))
        limit = None
        if backoff:  # the method, for the whole app
            limit = RateLimit(retry_after=float(backoff), scope="service")
        elif remaining is not None:  # this user/app pair's daily quota (a token is always sent)
            limit = RateLimit(remaining=remaining, limit=count(body.get("quota_max")),
                              reset_at=_midnight_after(ctx.now), scope="user")
        return Page(items=fresh, cursor=cursor, more=more, rate_limit=limit)
