"""GitHub: GET /user/starred (star+json), Link pagination, ETag / If-None-Match (a 304 costs no quota),
x-ratelimit-* per user; compact repositories, full-size ones generated from GitHub's documented schema
(collector/sandbox/payloads.py) or given ones (Sandbox.repos)."""

from __future__ import annotations

import functools
import hashlib
import re
from typing import Any

from collector.sandbox.core import FULL, Repos, Response, Sandbox, iso, json_reply, number, route
from collector.sandbox.payloads import github_repository

# item n's full-size repository (~100 us to build; a benchmark's users share their ids 1..100); never modified
full_size = functools.lru_cache(maxsize=1024)(github_repository)


def _repo(item: dict[str, Any], repos: Repos = None) -> dict[str, Any]:
    n = item["id"]
    if repos == FULL:
        return full_size(n)
    names = {"id": n, "full_name": f"owner{n % 97}/repo-{n}", "html_url": f"https://github.com/owner{n % 97}/repo-{n}"}
    if isinstance(repos, list) and repos:  # a given repository's payload, under this item's id and names
        template = repos[n % len(repos)]
        return {**template, **names, "owner": {**(template.get("owner") or {}), "login": f"owner{n % 97}"},
                "created_at": iso(item["at"])}
    return {**names, "owner": {"login": f"owner{n % 97}"}, "created_at": iso(item["at"])}


@route(r"/user/starred")
def github(sandbox: Sandbox, _method: str, headers: dict[str, str], query: dict[str, str],
        _match: re.Match[str], _body: bytes) -> Response:
    user = sandbox.bearer_user(headers, "github")
    if user is None:
        return json_reply(401, {"message": "Bad credentials", "documentation_url": "https://docs.github.com/rest"})
    ride = sandbox.ride(user)
    if ride is None and (fault := sandbox.fault(user)) is not None:
        return fault
    allowed, remaining, reset = sandbox.quota(user)
    limits = {"x-ratelimit-limit": str(sandbox.rate_limit), "x-ratelimit-remaining": str(remaining),
              "x-ratelimit-reset": str(int(reset)), "x-ratelimit-resource": "core"}
    if not allowed:
        return json_reply(403, {"message": "API rate limit exceeded"}, limits)
    size = min(max(number(query.get("per_page"), 30), 1), sandbox.page_cap)
    page = max(number(query.get("page"), 1), 1)
    last = max((len(user.items) + size - 1) // size, 1)
    etag = '"' + hashlib.sha1(f"{user.token}:{user.next_id}:{page}:{size}".encode()).hexdigest() + '"'
    if headers.get("if-none-match") == etag:
        user.remaining += 1  # a 304 costs no quota on GitHub
        limits["x-ratelimit-remaining"] = str(user.remaining)
        sandbox.count_request(user)
        return Response(304, headers={**limits, "etag": etag})
    chunk = sandbox.page(user, page, size)
    body = [{"starred_at": iso(i["at"]), "repo": _repo(i, sandbox.repos)} for i in chunk]
    base = f"{headers.get('x-sandbox-base', '')}/user/starred?per_page={size}"
    link = []
    if page < last:
        link.append(f'<{base}&page={page + 1}>; rel="next"')
        link.append(f'<{base}&page={last}>; rel="last"')
    extra = {**limits, "etag": etag}
    if link:
        extra["link"] = ", ".join(link)
    if ride is not None:
        extra.update({str(k).lower(): str(v) for k, v in (ride.get("headers") or {}).items()})
    resp = json_reply(200, body, extra)
    resp.fault = ride["kind"] if ride else ""
    return resp
