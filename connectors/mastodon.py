"""Mastodon: the user's favourites (GET /api/v1/favourites) and bookmarks (GET /api/v1/bookmarks).

Mastodon is one API per instance: the network's `options.instance` ("https://mastodon.social")
is the base URL, else the service's configured base_url; there is no default, so a token is never
sent to an instance it does not belong to. The instance must be https (http only for 127.0.0.1 /
localhost: the sandbox); anything else disables the network with the reason.

Docs (docs.joinmastodon.org, methods/favourites.md and methods/bookmarks.md): "Statuses the user
has favourited" / "has bookmarked", `Authorization: Bearer <user token>` with `read:favourites` /
`read:bookmarks`; max_id, since_id, min_id are "Internal parameter. Use HTTP `Link` header for
pagination"; limit "Defaults to 20 statuses. Max 40 statuses" (the controllers use
`limit_param(DEFAULT_STATUSES_LIMIT)`, capped at twice the default of 20); "Because Favourite IDs
are generally not exposed via any API responses, you will have to parse the HTTP `Link` header":
`Link: <.../api/v1/favourites?limit=2&max_id=23716836>; rel="next", <...&min_id=23716978>; rel="prev"`;
401 `{"error": "The access token is invalid"}`. The controllers send rel="next" only when the page
is full and rel="prev" whenever the page is not empty; a min_id request returns the `limit` oldest
entries above min_id, newest first.
Rate limits (api/rate-limits.md): `X-RateLimit-Limit`, `X-RateLimit-Remaining`, `X-RateLimit-Reset`
("Timestamp when your rate limit will reset", an ISO 8601 time), 300 requests per 5 minutes per
account/token; rack_attack.rb also throttles paging requests (max_id/min_id) to 300 per 15 minutes
and answers 429 `{"error": "Too many requests"}` with `X-RateLimit-Remaining: 0` and the reset.
Every limit is per token or account (never app-wide), and the service spans many instances, so a
limit only ever delays the one network (the engine's default header reading).

Pagination: the favourite/bookmark ids of the Link header are the cursor, never status ids (the
order is favouriting time, not status age). Initial mode walks down with the next link's max_id and
remembers the prev link's min_id of the first page (the newest entry when the back-fill started).
Normal mode asks `min_id=<that>`: exactly the entries added since, 40 per request, and stores the
new prev min_id; a full page means more may wait (the next run continues at once). This beats a
sweep that stops at the first known status id: an unfavourited top status would never be met again
(a full re-walk of the history every run) and a re-favourited old one would stop the sweep early
(entries below it lost). A normal run with nothing new costs one request (`[]`, no Link header).
The Link header alone decides whether more waits (openapi.json of /api/v1/favourites documents no other
end marker), never an empty page; a link that names the max_id (or min_id) just sent is the end.

Item identity: a status id is the instance's own. entities/Status.md: `id` "ID of the status in the database",
"String (cast from an integer but not guaranteed to be a number)"; what names a status across the fediverse is
`uri`, "URI of the status used for federation". Each instance's database numbers the statuses it knows with its
own snowflake-like ids (Mastodon's lib/mastodon/snowflake.rb: "6 bytes (48 bits) of millisecond-level timestamp, 2
bytes (16 bits) of sequence data", from the instance's own table sequence), so one id can name two different
statuses on two instances, and one status has a different id on each instance that knows it. Items are scoped to
the network's instance (`item_scope`: its normalized origin, "https://mastodon.social"): a user with networks on two
instances keeps both sets, keyed [service, user, instance, id], each item's `server` the instance.
"""

from __future__ import annotations

from typing import Any, ClassVar
from urllib.parse import parse_qs, urlsplit

import httpx

from collector.sdk import (
    BadResponse,
    Connector,
    Context,
    Forbidden,
    Item,
    Page,
    Request,
    excerpt,
    html_text,
    item_id,
    json_body,
    links,
    next_link,
    parse_time,
    server_url,
    within,
)

LIMIT = 40  # the documented maximum per page
TITLE_MAX = 120


def instance_url(value: Any) -> str:
    """The instance's base URL ("https://host[:port]"), or PermanentError saying what is wrong."""
    return server_url(value, "instance", 'no Mastodon instance: set options.instance on the network (e.g. '
                      '"https://mastodon.social")', "https://mastodon.social")


def _param(url: str | None, name: str) -> str | None:
    """One query parameter of a Link URL (a favourite/bookmark id)."""
    if not url:
        return None
    values = parse_qs(urlsplit(url).query).get(name)
    value = values[-1] if values else None
    if value is not None and not (0 < len(value) <= 64 and value.isalnum()):
        raise BadResponse(f"Link header carries an unusable {name}: {excerpt(value, 70)!r}")
    return value


def title(status: dict[str, Any]) -> str | None:
    """The content warning, else the text of the HTML content, on one line and shortened (html_text: time
    linear in the content and its first 16 KB only, whatever an instance sends)."""
    text = status.get("spoiler_text") or status.get("content") or ""
    text = html_text(text if isinstance(text, str) else "")
    return (text[: TITLE_MAX - 1].rstrip() + "…" if len(text) > TITLE_MAX else text) or None


class MastodonStatuses(Connector):
    """The shared base: a list of statuses paginated by internal ids in the Link header."""

    endpoint: ClassVar[str]
    scope: ClassVar[str]
    default_base_url = ""  # no default instance: a token belongs to one instance only

    def base(self, ctx: Context) -> str:
        """The network's instance: the engine sends its token there only."""
        return instance_url(ctx.network.options.get("instance") or self.base_url)

    def item_scope(self, ctx: Context) -> str:
        """Status ids are per instance (the module's docstring quotes the docs): the instance, normalized."""
        return self.base(ctx)

    def request(self, ctx: Context) -> Request:
        params: dict[str, Any] = {"limit": LIMIT}
        if ctx.mode == "initial":
            if ctx.cursor.get("max_id"):
                params["max_id"] = ctx.cursor["max_id"]
        else:  # no min_id (an empty history at back-fill): everything from the oldest entry is new
            params["min_id"] = ctx.cursor.get("min_id") or "0"
        return Request(f"{self.base(ctx)}/api/v1/{self.endpoint}", params=params)

    def check(self, ctx: Context, response: httpx.Response) -> None:
        # Doorkeeper's 403 {"error": "This action is outside the authorized scopes"}: the token is valid but was
        # not granted read:favourites / read:bookmarks: `forbidden`, disabled with the reason
        if response.status_code == 403 and b"outside the authorized scopes" in response.content[:500]:
            raise Forbidden(f"HTTP 403: the token lacks the {self.scope} scope")

    def parse(self, ctx: Context, response: httpx.Response) -> Page:
        base = self.base(ctx)
        items = [self.item(status) for status in json_body(response, list)]
        max_id = _param(next_link(response, base), "max_id")
        prev = within(links(response.headers).get("prev"), base)
        min_id = _param(prev, "min_id")
        if min_id is None and items and (ctx.mode == "normal" or not ctx.cursor.get("max_id")):
            raise BadResponse("a page of statuses without a Link rel=\"prev\" min_id: cannot tell where new ones start")
        if ctx.mode == "initial":  # walking down the history
            top = ctx.cursor.get("min_id") if ctx.cursor.get("max_id") else min_id
            if max_id and max_id != ctx.cursor.get("max_id"):  # the same max_id again would never end
                return Page(items=items, cursor={"max_id": max_id, "min_id": top}, more=True)
            return Page(items=items, cursor={"min_id": top or "0"}, more=False)
        # normal: the entries just above min_id; a full page (rel="next" sent) means more may wait above
        return Page(items=items, cursor={"min_id": min_id or ctx.cursor.get("min_id") or "0"},
                    more=bool(max_id and min_id and min_id != ctx.cursor.get("min_id")))

    def item(self, status: dict[str, Any]) -> Item:
        shown = status.get("reblog") or status
        account = shown.get("account") or {}
        return Item(
            id=item_id(status["id"]),
            title=title(shown),
            url=shown.get("url") or shown.get("uri"),
            author=account.get("acct") if isinstance(account, dict) else None,
            created=parse_time(shown.get("created_at")),
            raw=status,
        )


class MastodonFavourites(MastodonStatuses):
    service = "mastodon_favourites"
    api = "Mastodon API: favourited statuses (GET /api/v1/favourites)"
    endpoint = "favourites"
    scope = "read:favourites"


class MastodonBookmarks(MastodonStatuses):
    service = "mastodon_bookmarks"
    api = "Mastodon API: bookmarked statuses (GET /api/v1/bookmarks)"
    endpoint = "bookmarks"
    scope = "read:bookmarks"
