"""GitLab: the projects a user starred (GET /api/v4/users/:user_id/starred_projects), gitlab.com or
self-hosted (the network's `options.base_url`, else the service's base_url; https, http only for
127.0.0.1/localhost; a trailing /api/v4 is accepted).

Docs (docs.gitlab.com, api/project_starring.md): "Get a list of visible projects starred by the given
user", `user_id` "The ID or username of the user", `order_by` id, name, path, created_at, ... (no
star time), `sort` asc/desc, `simple` "Return only limited fields for each project". REST API
(api/rest): `per_page` "default: 20, max: 100"; offset pagination headers `x-next-page`, `x-total`,
`x-total-pages` and a `Link` header with rel prev/next/first/last, "Please use these links instead
of generating your own URLs"; over 10,000 records x-total and rel="last" are left out. The next link
(or x-next-page) alone decides: a page is never taken for the last because it is empty, and a next link
equal to the page just fetched ends the walk (an API looping on one page would never end). Auth
(api/rest/authentication): `Authorization: Bearer <token>` (OAuth 2.0 tokens, and personal access
tokens too) or `PRIVATE-TOKEN` (sent for `glpat-` tokens); invalid: 401 `{"message": "401
Unauthorized"}`; a token without read_api/read_user scope: 403 `{"error": "insufficient_scope"}`
(`forbidden` here: the network disabled with the reason, the token works but may not read this; any
other 403 too, by the engine). Rate limits: `RateLimit-Limit`,
`RateLimit-Remaining`, `RateLimit-Reset` (Unix time), `RateLimit-ResetTime`, and 429 + `Retry-After`
"indicating the number of seconds remaining until the current limit expires" (engine default
reading). GitLab.com limits authenticated API traffic per user (2,000 requests a minute), so a limit
never pauses the whole service.

The user: `options.user_id` (id or username); without it the first run asks GET /api/v4/user once
and keeps the id in the cursor (one extra request per network, not per run).

Normal mode: the list is ordered by project (order_by=id, stable), not by star time, so a new star
can land on any page and nothing like "since" exists. A normal run fetches page 1: when `x-total`
and the ids of page 1 are what the last complete walk saw, nothing is new (one request; exact when
the stars fit on one page, <= 100). Otherwise it re-walks every page (ceil(stars / 100) requests),
upserting, so only new projects count as new. Blind spot: an unstar and a star of projects beyond
page 1 in the same interval leave both unchanged; a full re-walk at least every `rewalk_interval`
seconds (service option, default a day) bounds that delay. A change during a walk is caught by the
next run (the fingerprint stored is the one of the walk's first page).

Item identity: a project id is the id of one GitLab installation. api/rest ("`id` vs `iid`"): "`id`: ID that is
unique across all projects", the projects of the instance that answers: every installation numbers its own from 1
(a self-managed server's first project is id 1, as gitlab.com's was), so project 42 of gitlab.com and project 42
of a company's GitLab are two projects. Items are scoped to the network's server (`item_scope`: the base URL
without /api/v4, normalized, "https://gitlab.com"): a user with networks on two servers keeps both sets, keyed
[service, user, server, id], each item's `server` that base URL.
"""

from __future__ import annotations

import hashlib
from typing import Any
from urllib.parse import quote

import httpx

from collector.sdk import (
    BadResponse,
    Connector,
    Context,
    Forbidden,
    Item,
    Page,
    PermanentError,
    Request,
    count,
    excerpt,
    item_id,
    json_body,
    next_link,
    parse_time,
)
from collector.sdk import server_url as sdk_server_url

PER_PAGE = 100
REWALK_INTERVAL = 86_400.0
WALK = ("walk_total", "walk_head", "walk_at")
KNOWN = ("total", "head", "walked_at")


def server_url(value: Any) -> str:
    """The GitLab server's base URL (scheme, host, optional relative path; a trailing /api/v4 is dropped)."""
    return sdk_server_url(value.strip().rstrip("/").removesuffix("/api/v4") if isinstance(value, str) else value,
                          "GitLab base URL", "no GitLab server: set options.base_url on the network or the "
                          "service's base_url", "https://gitlab.com", path=True)


class GitLabStarred(Connector):
    service = "gitlab"
    api = "GitLab REST API v4: starred projects (GET /users/:id/starred_projects)"
    default_base_url = "https://gitlab.com"

    def base(self, ctx: Context) -> str:
        """The network's GitLab API (its own server, else the service's): the engine sends the token there only."""
        return server_url(ctx.network.options.get("base_url") or self.base_url) + "/api/v4"

    def item_scope(self, ctx: Context) -> str:
        """Project ids are per installation (the module's docstring quotes the docs): the server, normalized."""
        return server_url(ctx.network.options.get("base_url") or self.base_url)

    def auth_headers(self, ctx: Context) -> dict[str, str]:
        token = ctx.network.token  # personal access tokens in their own header, OAuth tokens as a bearer
        return {"PRIVATE-TOKEN": token} if token.startswith("glpat-") else super().auth_headers(ctx)

    def user_id(self, ctx: Context) -> str | None:
        value = ctx.network.options.get("user_id", ctx.cursor.get("user_id"))
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | str) or not 0 < len(str(value).strip()) <= 255:
            raise PermanentError("options.user_id must be a GitLab user id or username, "
                                 f"got {excerpt(str(value), 60)!r}")
        return str(value).strip()

    def request(self, ctx: Context) -> Request:
        api = self.base(ctx)
        user = self.user_id(ctx)
        if user is None:
            return Request(f"{api}/user")
        if ctx.cursor.get("next"):  # the engine sends the token only inside the base URL
            return Request(str(ctx.cursor["next"]))
        params = {"per_page": PER_PAGE, "order_by": "id", "sort": "desc", "simple": "true"}
        return Request(f"{api}/users/{quote(user, safe='')}/starred_projects", params=params)

    def check(self, ctx: Context, response: httpx.Response) -> None:
        head = response.content[:500]
        if response.status_code == 403 and b"insufficient_scope" in head:
            raise Forbidden("HTTP 403: insufficient_scope (the token needs read_api)")
        if response.status_code == 404 and b"User Not Found" in head:
            raise PermanentError(f"GitLab user {self.user_id(ctx)!r} not found (options.user_id)")

    def parse(self, ctx: Context, response: httpx.Response) -> Page:
        if self.user_id(ctx) is None:  # the answer of GET /user
            uid = json_body(response, dict).get("id")
            if not isinstance(uid, int) or isinstance(uid, bool):
                raise BadResponse(f"GET /user gave no numeric id: {excerpt(str(uid), 40)!r}")
            return Page(items=[], cursor={**ctx.cursor, "user_id": uid}, more=True)
        api = self.base(ctx)
        projects = json_body(response, list)
        items = [self.item(p) for p in projects]
        nxt = next_link(response, api)
        page = count(response.headers.get("x-next-page"))
        if nxt is None and page:  # no Link header: the next page number
            nxt = str(response.request.url.copy_merge_params({"page": page}))
        keep = {"user_id": ctx.cursor["user_id"]} if "user_id" in ctx.cursor else {}
        known = {k: ctx.cursor[k] for k in KNOWN if k in ctx.cursor}
        if ctx.cursor.get("next") is None:  # page 1: start a walk, or find nothing changed
            total = count(response.headers.get("x-total"))
            head = hashlib.sha1(",".join(i.id for i in items).encode()).hexdigest()[:16]
            walked = known.get("walked_at")
            due = not isinstance(walked, int | float) or ctx.now.timestamp() - walked >= self.rewalk_interval()
            if ctx.mode == "normal" and known.get("total") == total and known.get("head") == head and not due:
                return Page(items=[], cursor={**keep, **known}, more=False)
            walk = {"walk_total": total, "walk_head": head, "walk_at": ctx.now.timestamp()}
        else:
            walk = {k: ctx.cursor.get(k) for k in WALK}
        if nxt and nxt == ctx.cursor.get("next"):
            nxt = None  # the page just fetched named itself as the next one: the walk would never end
        if nxt:
            return Page(items=items, cursor={**keep, **known, **walk, "next": nxt}, more=True)
        return Page(items=items, cursor={**keep, "total": walk["walk_total"], "head": walk["walk_head"],
                                         "walked_at": walk["walk_at"]}, more=False)

    def rewalk_interval(self) -> float:
        value = self.options.get("rewalk_interval", REWALK_INTERVAL)
        return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else REWALK_INTERVAL

    def item(self, project: dict[str, Any]) -> Item:
        namespace = project.get("namespace") or {}
        owner = project.get("owner") or {}
        return Item(
            id=item_id(project["id"]),
            title=project.get("path_with_namespace") or project.get("name_with_namespace") or project.get("name"),
            url=project.get("web_url"),
            author=namespace.get("full_path") or owner.get("username"),
            created=parse_time(project.get("created_at")),
            raw=project,
        )
