"""Reddit: the user's saved and upvoted posts and comments (GET /user/{username}/saved, /upvoted).

Both are Listings on https://oauth.reddit.com, newest first, with no "since" filter: limit=100,
`after` = the fullname of the last item (`data.after`, null at the end), raw_json=1 (text as typed,
not HTML-escaped). Normal mode stops at the first known item (sdk.sweep): one request when nothing
is new. The account name is the network's `options.username` (the listings are per user; Reddit
answers 403 for anyone else's). Items: `name` (fullname, t3_ post / t1_ comment) as id.

Docs (reddit.com/dev/api, github.com/reddit-archive/reddit/wiki/API and /JSON):
- Listings: "after / before - only one should be specified. these indicate the fullname of an item
  in the listing to use as the anchor point of the slice"; `limit` at most 100; Listing `after`:
  "null if there is no next page"; only 1000 items of a listing are reachable.
- API rules: "Change your client's User-Agent string to something unique and descriptive ... Many
  default User-Agents ... are drastically limited": the engine's client sends `http.user_agent`
  (set it to e.g. "linux:collector:0.1 (by /u/you)").
- Rate limits: "X-Ratelimit-Used: Approximate number of requests used in this period,
  X-Ratelimit-Remaining: Approximate number of requests left to use, X-Ratelimit-Reset: Approximate
  number of seconds to end of period" (remaining comes as a float, "599.0"); 429 on excess. Since
  July 2023 the free tier is "100 queries per minute per OAuth client id" and the headers count "by
  client id only": the quota is the app's, so an exhausted one pauses the whole service.
- Errors: {"message": "Unauthorized", "error": 401} (engine: unauthorized), 403 Forbidden.
"""

from __future__ import annotations

import re
from typing import ClassVar

import httpx

from collector.sdk import (
    BadResponse,
    Connector,
    Context,
    Item,
    Page,
    PermanentError,
    Request,
    excerpt,
    json_body,
    parse_time,
    sweep,
)

USERNAME = re.compile(r"[A-Za-z0-9_-]{1,32}")
WEB = "https://www.reddit.com"


class RedditListing(Connector):
    """One of the user's Listings; subclasses name it."""

    listing: ClassVar[str]
    default_base_url = "https://oauth.reddit.com"
    # x-ratelimit-* is one quota per OAuth client id: every network of the service waits (a 429 without them
    # still stops the service, for the engine's default wait)
    limit_scope = "service"
    # "only 1000 items of a listing are reachable": a reconciliation that lists that many marks nothing removed
    listing_cap: ClassVar[int] = 1000

    def request(self, ctx: Context) -> Request:
        username = ctx.network.options.get("username")
        if not isinstance(username, str) or not username.strip():
            raise PermanentError("missing option 'options.username' (the Reddit account name)")
        username = username.strip().removeprefix("/u/").removeprefix("u/")
        if not USERNAME.fullmatch(username):
            raise PermanentError("option 'options.username' is not a Reddit account name")
        params: dict[str, str | int] = {"limit": 100, "raw_json": 1}
        if ctx.cursor.get("next"):
            params["after"] = str(ctx.cursor["next"])
        return Request(f"{self.base_url}/user/{username}/{self.listing}", params=params)

    def parse(self, ctx: Context, response: httpx.Response) -> Page:
        body = json_body(response)
        if body.get("kind") != "Listing" or not isinstance(body.get("data"), dict):
            raise BadResponse(f"expected a Listing, got kind {excerpt(str(body.get('kind')), 40)!r}")
        data = body["data"]
        children = data.get("children")
        nxt = data.get("after")
        if not isinstance(children, list) or not (nxt is None or isinstance(nxt, str)):
            raise BadResponse("Listing without a children list or with a non-string 'after'")
        items = [self.item(child["data"]) for child in children]
        fresh, cursor, more = sweep(ctx.cursor, items, nxt or None, ctx.mode)
        return Page(items=fresh, cursor=cursor, more=more)

    @staticmethod
    def item(thing: dict) -> Item:
        name = thing["name"]
        if not isinstance(name, str) or not name:
            raise BadResponse("a listing item without a fullname")
        title = thing.get("title") or thing.get("link_title") or (thing.get("body") or "")[:300] or None
        permalink = thing.get("permalink")
        return Item(
            id=name,
            title=title,
            url=WEB + permalink if isinstance(permalink, str) and permalink.startswith("/") else thing.get("url"),
            author=thing.get("author"),
            created=parse_time(thing.get("created_utc")),
            raw=thing,
        )


class RedditSaved(RedditListing):
    service = "reddit_saved"
    api = "Reddit API: saved posts and comments (GET /user/{username}/saved)"
    listing = "saved"


class RedditUpvoted(RedditListing):
    service = "reddit_upvoted"
    api = "Reddit API: upvoted posts (GET /user/{username}/upvoted)"
    listing = "upvoted"
