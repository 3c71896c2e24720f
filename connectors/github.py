"""GitHub: the authenticated user's starred repositories (GET /user/starred).

Link-header pagination with per_page=100, newest star first; the star+json media type adds
`starred_at`. Normal mode sends If-None-Match with the ETag of the last first page: a 304
costs no quota. Limits: x-ratelimit-* headers (engine default). Secondary limits come as a 403/429 whose
message says so ("You have exceeded a secondary rate limit", or the older "You have triggered an abuse
detection mechanism"): GitHub's "Rate limits for the REST API" says to wait until `retry-after` when sent,
until `x-ratelimit-reset` when `x-ratelimit-remaining` is 0, else at least a minute, and to wait an
exponentially increasing time while the limit repeats: the engine does that from `minimum_wait`.
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
    item_id,
    json_value,
    next_link,
    parse_time,
    sweep,
)

SECONDARY = (b"secondary rate limit", b"abuse detection mechanism")


class GitHubStarred(Connector):
    service = "github"
    api = "GitHub REST API: starred repositories (GET /user/starred)"
    default_base_url = "https://api.github.com"

    def request(self, ctx: Context) -> Request:
        headers = {"Accept": "application/vnd.github.star+json", "X-GitHub-Api-Version": "2022-11-28"}
        if ctx.cursor.get("next"):  # the engine sends the token only inside the base URL
            return Request(str(ctx.cursor["next"]), headers=headers)
        if ctx.mode == "normal" and ctx.cursor.get("etag"):
            headers["If-None-Match"] = ctx.cursor["etag"]
        params = {"per_page": 100, "sort": "created", "direction": "desc"}
        return Request(f"{self.base_url}/user/starred", params=params, headers=headers)

    def check(self, ctx: Context, response: httpx.Response) -> None:
        head = response.content[:2000].lower()
        if response.status_code in (403, 429) and any(words in head for words in SECONDARY):
            # exactly what retry-after / a spent x-ratelimit-reset says; else a minute, doubling while it repeats
            waits = RateLimit(minimum_wait=60.0).merge(self.rate_limit(response, ctx.now))
            raise RateLimited("secondary rate limit", waits)

    def parse(self, ctx: Context, response: httpx.Response) -> Page:
        data = json_value(response.content)
        if not isinstance(data, list):
            raise BadResponse(f"expected a list of starred repositories, got {type(data).__name__}")
        items = []
        for entry in data:
            repo = entry.get("repo", entry)  # star+json wraps {starred_at, repo}
            items.append(Item(
                id=item_id(repo["id"]),
                title=repo.get("full_name"),
                url=repo.get("html_url"),
                author=(repo.get("owner") or {}).get("login"),
                created=parse_time(entry.get("starred_at")) or parse_time(repo.get("created_at")),
                raw=entry,
            ))
        nxt = next_link(response, self.base_url)
        first = ctx.cursor.get("next") is None
        etag = response.headers.get("etag") if first else ctx.cursor.get("etag")
        fresh, cursor, more = sweep(ctx.cursor, items, nxt, ctx.mode, keep={"etag": etag} if etag else {})
        return Page(items=fresh, cursor=cursor, more=more)
