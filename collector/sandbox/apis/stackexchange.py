"""Stack Exchange: GET /2.3/me/favorites, gzip'd, page/pagesize, has_more, quota_* per user/app pair,
`backoff` riding on a page; the IP throttle is the `rate_limit` fault."""

from __future__ import annotations

import re

from collector.sandbox.core import Response, Sandbox, json_reply, number, route


@route(r"/2.3/me/favorites")
def stackexchange(sandbox: Sandbox, _method: str, headers: dict[str, str], query: dict[str, str],
        _match: re.Match[str], _body: bytes) -> Response:
    user = sandbox.user(headers.get("x-api-access-token"), "stackoverflow", headers)
    if user is None:
        return json_reply(400, {"error_id": 401, "error_name": "access_token_required",
                           "error_message": "`access_token` is required"}, gzipped=True)
    backoff, ride = None, sandbox.ride(user)
    if ride is not None and ride["kind"] == "backoff":  # a normal reply asking callers to wait
        backoff = int(ride["seconds"])
    elif ride is None and (fault := sandbox.fault(user)) is not None:
        return fault
    with sandbox.lock:
        if user.quota <= 0:  # this user/app pair's quota is spent: the API refuses this user until its day ends
            return json_reply(400, {"error_id": 502, "error_name": "throttle_violation", "error_message":
                               "too many requests from this IP, more requests available in 86400 seconds"},
                         gzipped=True)
        user.quota -= 1
        quota = user.quota
    size = min(max(number(query.get("pagesize"), 30), 1), sandbox.page_cap)
    page = max(number(query.get("page"), 1), 1)
    chunk = sandbox.page(user, page, size)
    items = [{"question_id": i["id"], "title": f"Question {i['id']} &amp; friends",
              "link": f"https://stackoverflow.com/questions/{i['id']}", "creation_date": int(i["at"]),
              "owner": {"display_name": user.name}} for i in chunk]
    body = {"items": items, "has_more": page * size < len(user.items), "quota_max": sandbox.quota_max,
            "quota_remaining": quota}
    if backoff is not None:
        body["backoff"] = backoff
    resp = json_reply(200, body, {str(k).lower(): str(v) for k, v in ((ride or {}).get("headers") or {}).items()},
                 gzipped=True)
    resp.fault = ride["kind"] if ride else ""
    return resp
