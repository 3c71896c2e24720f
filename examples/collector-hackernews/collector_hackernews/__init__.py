"""Hacker News: everything a user submitted (stories, comments), from the HN Search API.

    GET https://hn.algolia.com/api/v1/search_by_date?tags=author_<username>&hitsPerPage=100
        -> {"hits": [{"objectID", "title" | "comment_text", "url", "author", "created_at_i", ...}],
            "nbHits", "page", "nbPages", "hitsPerPage"}

No token: the username comes from the network's `options.username`. Hits come newest first, and the
API serves at most 1,000 of them per query whatever the page, so a sweep walks back by time instead
of by page: `numericFilters=created_at_i<=T`, T the oldest second reached so far (the ids already
stored at that second are skipped). Normal mode sweeps the same way but only down to the newest
second of the previous sweep (`created_at_i>=S`): one request when little is new, several pages
when a lot is, nothing skipped. Limit: 10,000 requests per hour per IP and no rate-limit headers:
the engine's 429/Retry-After handling covers it.
"""

from __future__ import annotations

import re

import httpx

from collector.sdk import Connector, Context, Item, Page, PermanentError, Request, item_id, json_body, parse_time

PER_PAGE = 100


class HackerNewsSubmissions(Connector):
    service = "hackernews"
    api = "HN Search API (Algolia): a user's submissions, GET /api/v1/search_by_date"
    default_base_url = "https://hn.algolia.com/api/v1"
    required = ()  # a public API: no token

    def request(self, ctx: Context) -> Request:
        username = ctx.network.options.get("username")
        if not isinstance(username, str) or not re.fullmatch(r"[A-Za-z0-9_-]{2,32}", username):
            raise PermanentError("options.username must be a Hacker News username")
        filters = []
        if "before" in ctx.cursor:  # a sweep in progress continues below the oldest second it reached
            filters.append(f"created_at_i<={int(ctx.cursor['before'])}")
        if ctx.mode == "normal" and "stop" in ctx.cursor:  # only what is not older than what we have
            filters.append(f"created_at_i>={int(ctx.cursor['stop'])}")
        params = {"tags": f"author_{username}", "hitsPerPage": PER_PAGE}
        if filters:
            params["numericFilters"] = ",".join(filters)
        return Request(f"{self.base_url}/search_by_date", params=params)

    def parse(self, ctx: Context, response: httpx.Response) -> Page:
        body = json_body(response)
        hits = body["hits"]
        cursor = ctx.cursor
        known = set(cursor.get("edge_ids", [])) | set(cursor.get("stop_ids", []))  # stored at a boundary second
        items = [Item(id=item_id(h["objectID"]), title=h.get("title") or h.get("story_title") or "",
                      url=h.get("url") or f"https://news.ycombinator.com/item?id={h['objectID']}",
                      author=h.get("author"), created=parse_time(h.get("created_at_i")), raw=h)
                 for h in hits if str(h["objectID"]) not in known]
        at = {str(h["objectID"]): int(h["created_at_i"]) for h in hits}
        if "before" not in cursor and hits:  # the first page of a sweep: remember its newest second
            top = max(at.values())
            cursor = {**cursor, "top": top, "top_ids": [i for i, t in at.items() if t == top]}
        if not items or int(body.get("nbHits") or 0) <= len(hits):  # the sweep is over: stop at its newest second
            top = cursor.get("top", cursor.get("stop"))
            done = {"stop": top, "stop_ids": cursor.get("top_ids", cursor.get("stop_ids", []))} if top else {}
            return Page(items=items, cursor=done, more=False)
        oldest = min(at.values())
        edge = [i for i, t in at.items() if t == oldest]
        if oldest == cursor.get("before"):  # more than a page at one second: keep what we had too
            edge = sorted(set(edge) | set(cursor.get("edge_ids", [])))
        return Page(items=items, cursor={**cursor, "before": oldest, "edge_ids": edge}, more=True)
