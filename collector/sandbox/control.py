"""The sandbox's control API (JSON, under /_sandbox/): users, their items, faults, tokens, revocation storms,
counters. See collector/sandbox/__init__.py for the list."""

from __future__ import annotations

import json
import time
from typing import Any

import collector.sandbox.tokens as tokens
from collector.sandbox.core import CONTROL, FAULTS, FULL, Response, Sandbox, json_reply, repo_list


def _session_fields(data: dict[str, Any]) -> dict[str, Any]:
    """The token fields of a user to create: refresh_token, access_ttl (seconds), rotation, grace (seconds)."""
    out: dict[str, Any] = {}
    if data.get("access_ttl") is not None:
        out["access_ttl"] = float(data["access_ttl"])
    if data.get("grace") is not None:
        out["grace"] = float(data["grace"])
    for name in ("refresh_token", "rotation"):
        if data.get(name) is not None:
            out[name] = str(data[name])
    return out


def control(box: Sandbox, method: str, path: str, body: bytes) -> Response:
    """The control API's entry (registered in collector.sandbox.core.CONTROL below)."""
    try:
        data = json.loads(body or b"{}")
        return _control(box, method, path, data if isinstance(data, dict) else {})
    except (ValueError, TypeError, KeyError) as exc:  # a bad field: the caller's mistake, said as such
        return json_reply(400, {"message": f"{type(exc).__name__}: {exc}"})


def _control(box: Sandbox, method: str, path: str, data: dict[str, Any]) -> Response:
    if path == "/_sandbox/stats":
        return json_reply(200, box.stats())
    if path == "/_sandbox/reset" and method == "POST":
        box.__init__(box.latency, box.rate_limit, box.window, box.page_cap,  # type: ignore[misc]
                     box.quota_max, box.repos)
        return json_reply(200, {"ok": True})
    if path == "/_sandbox/storm" and method == "POST":  # every request of a service (or of all) refused for a while
        service, seconds = str(data.get("service") or "*"), float(data.get("seconds", 30))
        until = box.storm(service, seconds)
        return json_reply(200, {"service": service, "seconds": seconds, "until": until})
    if path == "/_sandbox/bulk" and method == "POST":  # many users at once: tokens prefix0, prefix1...
        prefix, count = str(data["prefix"]), int(data["count"])
        fields = _session_fields(data)
        refresh_prefix = data.get("refresh_prefix")
        for i in range(count):
            if refresh_prefix:
                fields["refresh_token"] = f"{refresh_prefix}{i}"
            box.add_user(data["service"], f"{prefix}{i}", int(data.get("items", 0)), f"{prefix}{i}", **fields)
        return json_reply(200, {"users": count})
    if path == "/_sandbox/repos" and method == "POST":  # {"repos": "full", [repositories] or null}
        repos = data.get("repos")
        if not (repos is None or repos == FULL or repo_list(repos)):
            return json_reply(400, {"message": f"repos: {FULL!r}, a non-empty list of repository objects, or null"})
        box.repos = repos
        return json_reply(200, {"repos": repos if repos == FULL else len(repos or [])})
    if path == "/_sandbox/bulk/add" and method == "POST":  # new items arrive for every user
        with box.lock:
            users = list(box.users)
        for token in users:
            box.add_items(token, int(data.get("count", 1)))
        return json_reply(200, {"users": len(users)})
    if path == "/_sandbox/users" and method == "POST":
        quota = int(data["quota"]) if data.get("quota") is not None else None
        user = box.add_user(data["service"], data["token"], int(data.get("items", 0)), data.get("user"), quota,
                            **_session_fields(data))
        return json_reply(200, {"token": user.token, "items": len(user.items),
                                **(user.session.info() if user.session else {})})
    if path.startswith("/_sandbox/users/"):
        return _user_control(box, method, path, data)
    return json_reply(404, {"message": "no such control endpoint"})


def _user_control(box: Sandbox, method: str, path: str, data: dict[str, Any]) -> Response:
    named, _, verb = path[len("/_sandbox/users/"):].rpartition("/")
    token = box.key(named)
    if token is None:
        return json_reply(404, {"message": "no such user"})
    user = box.users[token]
    if verb == "tokens" and method == "GET":
        return json_reply(200, {"token": token, **(user.session.info() if user.session else {})})
    if method != "POST":
        return json_reply(404, {"message": "no such control endpoint"})
    if verb == "faults":
        if data.get("kind") not in FAULTS:
            return json_reply(400, {"message": f"kind must be one of {', '.join(FAULTS)}"})
        box.inject(token, **data)
        return json_reply(200, {"faults": len(user.faults)})
    if verb == "revoke":
        user.revoked = True
        return json_reply(200, {"revoked": True})
    if verb == "expire":
        if not tokens.expire(box, user):
            return json_reply(400, {"message": "this user's token does not expire (created without access_ttl or "
                                               "refresh_token)"})
        return json_reply(200, {"expired": True, "at": time.time()})
    if verb == "add":
        box.add_items(token, int(data.get("count", 1)))
        return json_reply(200, {"items": len(user.items)})
    if verb in ("remove", "restore"):  # {"ids": [the sandbox's numeric item ids]}: un-starred, starred again
        ids = [int(i) for i in data.get("ids") or []]
        done = box.remove_items(token, ids) if verb == "remove" else box.restore_items(token, ids)
        return json_reply(200, {"ids": done, "items": len(user.items), "removed": len(user.removed)})
    return json_reply(404, {"message": "no such control endpoint"})


CONTROL.append(control)
