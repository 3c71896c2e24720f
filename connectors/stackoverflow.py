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
repeats. The access token travels in the X-API-Access-Token header, never in the URL; the app key is
not a secret (Stack Exchange says so) and goes in the `key` parameter.

Errors (api.stackexchange.com/docs/error-handling): "reported on the common response wrapper object in
the error_id, error_message, and error_name fields", and "The HTTP code will be 400 (Bad Request) for all
errors unless the method was called via JSONP". The ones about the token and the app, as documented:
- access_token_required - 401 "A method that requires an access token (obtained via authentication) was
  called without one." / invalid_access_token - 402 "An invalid access token was passed to a method." /
  access_token_compromised - 406 "An access token is no longer believed to be secure": the token is no good
  (expired, revoked, invalidated): Unauthorized (the engine confirms it with a second run before it disables).
- access_denied - 403 "A method which requires certain permissions was called with an access token that
  lacks those permissions.": the token is valid but was not granted what the method needs: Forbidden, the
  network disabled at once with the reason (`forbidden`); retrying the same token cannot help.
- key_required - 405 "A method was called in a manner that requires an application key (generally, with an
  access token), but no key was passed.": the app's setup ([services.stackoverflow] key), no user's fault:
  Forbidden(transient=True), retried with backoff like an outage, so that configuring the key heals every
  network.
- throttle_violation - 502: the IP throttle above. Any other error (bad_parameter 400, no_method 404,
  internal_error 500, temporarily_unavailable 503...): the engine's HTTP status handling.

A network's `options.site` is the site (the API's `site` parameter: "the full domain name (ie.
"stackoverflow.com"), or a short form identified by api_site_parameter"), else the service's. A site
that is no such name, or a cursor page that is no page number, disables the network with the reason
(`collector networks reset ID` starts the history again). A reply whose items are not questions with
an integer `question_id` is a bad response (nothing stored).
"""

from __future__ import annotations

import html
import re
from datetime import datetime, timedelta
from typing import Any

import httpx

from collector.sdk import (
    BadResponse,
    Connector,
    Context,
    Forbidden,
    Item,
    Page,
    PermanentError,
    RateLimit,
    RateLimited,
    Request,
    Unauthorized,
    count,
    excerpt,
    json_body,
    json_value,
    parse_time,
    sweep,
)

TOKEN_ERRORS = {401, 402, 406}  # access_token_required, invalid_access_token, access_token_compromised
ACCESS_DENIED, KEY_REQUIRED, THROTTLE = 403, 405, 502
SITE = re.compile(r"[A-Za-z0-9][A-Za-z0-9.-]{0,99}")
MAX_PAGE = 2**31 - 1  # the API's integer parameters are 32-bit


def _midnight_after(now: datetime) -> datetime:
    return (now + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def page_number(cursor: dict[str, Any]) -> int:
    """The page the sweep in progress continues at (1 without one); PermanentError for junk."""
    value = cursor.get("next")
    if value is None:  # no sweep in progress
        return 1
    page = value if _is_int(value) else int(value) if isinstance(value, str) and value.isascii() and \
        value.isdigit() and len(value) <= 10 else None
    if page is None or not 1 <= page <= MAX_PAGE:
        raise PermanentError(f"field 'cursor': next must be a page number, got {excerpt(repr(value), 40)}")
    return page


class StackOverflowFavorites(Connector):
    service = "stackoverflow"
    api = "Stack Exchange API 2.3: favorites (GET /me/favorites)"
    default_base_url = "https://api.stackexchange.com/2.3"
    auth_header, auth_scheme = "X-API-Access-Token", ""  # the bare access token, in Stack Exchange's own header

    def site(self, ctx: Context) -> str:
        site = ctx.network.options.get("site") or self.options.get("site") or "stackoverflow"
        if not (isinstance(site, str) and SITE.fullmatch(site)):
            raise PermanentError("field 'options': site must be a Stack Exchange site (stackoverflow, superuser, "
                                 f"math.stackexchange.com...), got {excerpt(repr(site), 40)}")
        return site

    def request(self, ctx: Context) -> Request:
        params = {"site": self.site(ctx), "pagesize": 100, "page": page_number(ctx.cursor), "sort": "added",
                  "order": "desc"}
        if self.options.get("key"):
            params["key"] = self.options["key"]
        return Request(f"{self.base_url}/me/favorites", params=params)

    def check(self, ctx: Context, response: httpx.Response) -> None:
        status = response.status_code
        if status < 400 or not response.content.lstrip().startswith(b"{"):
            return
        try:
            body = json_value(response.content)
        except (ValueError, BadResponse):
            return
        error_id = body.get("error_id") if isinstance(body, dict) else None
        if not _is_int(error_id):
            return
        name, text = excerpt(str(body.get("error_name")), 60), excerpt(str(body.get("error_message")), 300)
        message = f"HTTP {status} error {error_id} {name}: {text}"
        if error_id in TOKEN_ERRORS:
            raise Unauthorized(message)
        if error_id == ACCESS_DENIED:  # the token works but lacks the permission: not a token to confirm
            raise Forbidden(message, status=status)
        if error_id == KEY_REQUIRED:  # the app's own setup: fixed once by the operator, for every network
            raise Forbidden(f"{message} (set the app key: [services.stackoverflow] key)", transient=True,
                            status=status)
        if error_id == THROTTLE:
            wait = re.search(r"available in (\d+) seconds", text)
            if wait:
                raise RateLimited(message, RateLimit(retry_after=float(wait.group(1)), scope="service"))
            raise RateLimited(message, RateLimit(minimum_wait=60.0, scope="service"))

    def rate_limit(self, response: httpx.Response, now: datetime) -> RateLimit | None:
        return None  # Stack Exchange reports limits in the body: see parse

    def parse(self, ctx: Context, response: httpx.Response) -> Page:
        body = json_body(response)
        questions = body.get("items")
        if not isinstance(questions, list):
            raise BadResponse(f"expected `items` to be a list of questions, got {type(questions).__name__}")
        items = [self.item(q) for q in questions]
        page = page_number(ctx.cursor)
        nxt = page + 1 if body.get("has_more") is True and page < MAX_PAGE else None
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

    @staticmethod
    def item(q: Any) -> Item:
        """A question; its `question_id` ("integer, refers to a question") is its identity: anything else is a
        bad response, never an item stored under the text of a junk value."""
        qid = q.get("question_id") if isinstance(q, dict) else None
        if not _is_int(qid) or qid <= 0:
            raise BadResponse(f"a favorite without an integer question_id: {excerpt(repr(qid), 40)}")
        title, link, owner = q.get("title"), q.get("link"), q.get("owner")
        name = owner.get("display_name") if isinstance(owner, dict) else None
        return Item(
            id=str(qid),
            title=html.unescape(title) if isinstance(title, str) else "",
            url=link if isinstance(link, str) and link else f"https://stackoverflow.com/q/{qid}",
            author=(html.unescape(name) or None) if isinstance(name, str) else None,
            created=parse_time(q.get("creation_date")),
            raw=q,
        )
