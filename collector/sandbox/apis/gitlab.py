"""GitLab in the sandbox: GET /api/v4/user and GET /api/v4/users/:id/starred_projects.

As on GitLab: `PRIVATE-TOKEN` or `Authorization: Bearer`, offset pagination (`page`, `per_page`
default 20, max 100 and the sandbox's page_cap) with x-page, x-per-page, x-total, x-total-pages,
x-next-page, x-prev-page and a Link header (prev/next/first/last, the request's other parameters
kept), RateLimit-Limit/Observed/Remaining/Reset (Unix seconds)/ResetTime, 429 "Retry later" with
Retry-After, 401 {"message": "401 Unauthorized"}, 404 {"message": "404 User Not Found"}. Projects
come id-descending (newest star = newest project in the sandbox), in the `simple=true` shape.
"""

from __future__ import annotations

import email.utils
import re
import time
import zlib
from typing import Any
from urllib.parse import urlencode

from collector.sandbox.core import Response, Sandbox, User, iso, json_reply, number, route


def _account(sandbox: Sandbox, headers: dict[str, str]) -> User | None:
    token = headers.get("private-token")
    return sandbox.user(token, "gitlab", headers) if token else sandbox.bearer_user(headers, "gitlab")


def gitlab_id(user: User) -> int:
    return 1000 + zlib.crc32(user.token.encode()) % 9_000_000


def _gate(sandbox: Sandbox, user: User) -> tuple[Response | None, dict[str, str]]:
    """The fault or rate limit this request meets (or None), and the RateLimit-* headers."""
    if (fault := sandbox.fault(user)) is not None:
        return fault, {}
    allowed, remaining, reset = sandbox.quota(user)
    limits = {"ratelimit-limit": str(sandbox.rate_limit), "ratelimit-observed": str(sandbox.rate_limit - remaining),
              "ratelimit-remaining": str(remaining), "ratelimit-reset": str(int(reset)),
              "ratelimit-resettime": email.utils.formatdate(reset, usegmt=True)}
    if allowed:
        return None, limits
    sandbox.count_request(user)
    wait = str(max(int(reset - time.time()), 1))
    return Response(429, b"Retry later\n", {"content-type": "text/plain", **limits, "retry-after": wait}), limits


@route(r"/api/v4/user")
def current_user(sandbox: Sandbox, method: str, headers: dict[str, str], query: dict[str, str], match: re.Match[str],
                 body: bytes) -> Response:
    user = _account(sandbox, headers)
    if user is None:
        return json_reply(401, {"message": "401 Unauthorized"})
    refused, limits = _gate(sandbox, user)
    if refused is not None:
        return refused
    sandbox.count_request(user)
    uid = gitlab_id(user)
    return json_reply(200, {"id": uid, "username": user.name, "name": user.name.title(), "state": "active",
                            "avatar_url": None, "web_url": f"https://gitlab.example/{user.name}"}, limits)


def _project(item: dict[str, Any]) -> dict[str, Any]:
    n = item["id"]
    group = f"group{n % 31}"
    return {
        "id": n, "description": f"Project {n}", "name": f"project-{n}",
        "name_with_namespace": f"Group {n % 31} / project-{n}",
        "path": f"project-{n}", "path_with_namespace": f"{group}/project-{n}", "created_at": iso(item["at"]),
        "default_branch": "main", "tag_list": [], "topics": [],
        "ssh_url_to_repo": f"git@gitlab.example:{group}/project-{n}.git",
        "http_url_to_repo": f"https://gitlab.example/{group}/project-{n}.git",
        "web_url": f"https://gitlab.example/{group}/project-{n}", "readme_url": None, "forks_count": 0,
        "avatar_url": None, "star_count": 1, "last_activity_at": iso(item["at"]),
        "namespace": {"id": n % 31, "name": f"Group {n % 31}", "path": group, "kind": "group", "full_path": group,
                      "parent_id": None, "avatar_url": None, "web_url": f"https://gitlab.example/groups/{group}"},
    }


@route(r"/api/v4/users/([^/]+)/starred_projects")
def starred_projects(sandbox: Sandbox, method: str, headers: dict[str, str], query: dict[str, str],
                     match: re.Match[str], body: bytes) -> Response:
    user = _account(sandbox, headers)
    if user is None:
        return json_reply(401, {"message": "401 Unauthorized"})
    if match.group(1) not in (str(gitlab_id(user)), user.name):
        sandbox.count_request(user)
        return json_reply(404, {"message": "404 User Not Found"})
    refused, limits = _gate(sandbox, user)
    if refused is not None:
        return refused
    size = min(max(number(query.get("per_page"), 20), 1), 100, sandbox.page_cap)
    page = max(number(query.get("page"), 1), 1)
    chunk = sandbox.serve(user, (page - 1) * size, size)
    total = len(user.items)
    pages = max((total + size - 1) // size, 1)
    base = f"{headers.get('x-sandbox-base', '')}/api/v4/users/{match.group(1)}/starred_projects?"

    def at(n: int) -> str:
        return base + urlencode({**query, "page": n, "per_page": size})

    rels = [("prev", page - 1)] if page > 1 else []
    rels += [("next", page + 1)] if page < pages else []
    rels += [("first", 1), ("last", pages)]
    extra = {**limits, "x-page": str(page), "x-per-page": str(size), "x-total": str(total),
             "x-total-pages": str(pages), "x-next-page": str(page + 1) if page < pages else "",
             "x-prev-page": str(page - 1) if page > 1 else "",
             "link": ", ".join(f'<{at(n)}>; rel="{rel}"' for rel, n in rels)}
    return json_reply(200, [_project(item) for item in chunk], extra)
