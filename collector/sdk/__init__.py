"""The plugin API a connector author sees: every name in `__all__`, and nothing else.

A connector translates one API into pages of items. It builds the request for a cursor and
parses a response into a `Page`; the engine owns the loop, the HTTP client, the rate limits,
the retries and the storage. `Connector` is abstract: a class that does not implement both `request`
and `parse` is reported broken when it loads (collector/plugins.py), and its networks are disabled.

    class MyStars(Connector):
        service = "myapi"
        api = "MyAPI stars (GET /v1/stars)"
        default_base_url = "https://api.example.com"

        def request(self, ctx):  # the engine adds `Authorization: Bearer <token>` (see auth_headers)
            return Request(f"{self.base_url}/v1/stars", params={"page": ctx.cursor.get("page", 1)})

        def parse(self, ctx, response):
            data = json_body(response)  # response.json() with caps on elements and nesting
            ...
            return Page(items=[...], cursor={"page": n + 1}, more=bool(data["next"]))

Messages (lastError, a disabled network's reason, logs) have every secret of the run scrubbed, then bounded:
shorten an API's text with `excerpt(text, limit)`, never `text[:n]` (a cut token escapes the scrub).

The modules beside this one (`_connector`, `_errors`, `_limits`, `_urls`, `_bounded`, `_helpers`) are internal:
the engine imports from them the names only it uses; a connector imports from `collector.sdk` alone.
"""

from __future__ import annotations

from collector.sdk._bounded import html_text, item_id, json_body, json_value
from collector.sdk._connector import Connector, Context, Item, Page, Request, Tokens
from collector.sdk._errors import BadResponse, ConnectorError, Forbidden, PermanentError, RateLimited, Unauthorized
from collector.sdk._helpers import excerpt, sweep
from collector.sdk._limits import RateLimit, count, header_rate_limit, parse_time
from collector.sdk._urls import links, next_link, server_url, within

__all__ = [
    "BadResponse",
    "Connector",
    "ConnectorError",
    "Context",
    "Forbidden",
    "Item",
    "Page",
    "PermanentError",
    "RateLimit",
    "RateLimited",
    "Request",
    "Tokens",
    "Unauthorized",
    "count",
    "excerpt",
    "header_rate_limit",
    "html_text",
    "item_id",
    "json_body",
    "json_value",
    "links",
    "next_link",
    "parse_time",
    "server_url",
    "sweep",
    "within",
]
