"""The sandbox API's state: users, their items, faults, quotas, counters; the route registry the API
emulators (collector/sandbox/apis/) register with. See collector/sandbox/__init__.py."""

from __future__ import annotations

import functools
import gzip
import json
import re
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

import collector.sandbox.tokens as tokens
from collector.sandbox.users import User as User  # re-exported: the emulators import it from here

REASONS = {200: "OK", 304: "Not Modified", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden",
           404: "Not Found", 405: "Method Not Allowed", 429: "Too Many Requests", 500: "Internal Server Error"}
FULL = "full"  # Sandbox.repos: full-size GitHub repositories generated from GitHub's schema (payloads.py)
Repos = list[dict[str, Any]] | str | None  # compact (None), FULL, or these repositories under each item's id
TOKENLESS = ("hackernews",)  # public APIs: a storm of every service leaves them alone


@dataclass
class Response:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    action: str = ""  # transport faults: "reset" (close unanswered), "delay" then answer, "drip" the body
    seconds: float = 0.0
    chunked: bool = False  # Transfer-Encoding: chunked (no Content-Length: the client cannot refuse it up front)
    fault: str = ""  # the injected fault kind this reply carries, if any


FAULTS = ("status", "rate_limit", "retry_after", "unauthorized", "malformed", "truncated", "wrong_type",
          "oversize", "timeout", "reset", "drip", "backoff", "headers")
# Parameters: status {status, echo}; rate_limit / retry_after / backoff / timeout / drip {seconds};
# unauthorized {echo}; oversize {size, framing: length | chunked | gzip}; headers {status, headers}: a reply
# with exactly these (e.g. absurd x-ratelimit-reset / Retry-After); with status 200 they ride on a served
# page instead (like backoff). echo=True puts the user's token in the error body, as a careless API might
# (after `pad` filler characters: e.g. across the cut of a 200-byte error snippet).


def _rides(fault: dict[str, Any]) -> bool:
    """A fault that rides on a normally served page (counted as a request there)."""
    return fault["kind"] == "backoff" or (fault["kind"] == "headers" and int(fault.get("status", 429)) == 200)


class Sandbox:
    """The state and the counters; `handle` answers one request."""

    def __init__(self, latency: float = 0.0, rate_limit: int = 5000, window: float = 3600.0,
                 page_cap: int = 100, quota: int = 10_000, repos: Repos = None):
        self.latency = latency
        # GitHub repositories as served: compact (5 fields, ~250 bytes of JSON); FULL: full-size ones generated
        # from GitHub's documented repository schema (collector/sandbox/payloads.py, ~5.5 KB each); or, given a
        # list of repositories (e.g. those Likeastore recorded, read from ../shared/fixtures/likeastore beside
        # the clone), those with the ids and names changed
        self.repos = repos
        # Stack Exchange: with an access token (always, here) each user/app pair has a daily quota of its own
        # (api.stackexchange.com/docs/throttle); the IP-wide throttle is the "rate_limit" fault
        self.quota_max = quota
        self.page_cap = page_cap  # the real APIs cap pages at 100; a lower cap makes many pages cheaply
        self.rate_limit = rate_limit
        self.window = window
        self.users: dict[str, User] = {}
        self.requests: Counter[str] = Counter()  # by token
        self.served: Counter[str] = Counter()  # item handouts by token (an item on two pages counts twice)
        self.served_ids: dict[str, set[int]] = {}
        self.faults_served: Counter[str] = Counter()
        self.hits: dict[str, list[float]] = {}  # request times by token (Unix seconds)
        self.log: list[str] = []  # every request target, to prove no token ever travels in a URL
        self.transfers: list[dict[str, Any]] = []  # API replies on the wire (see Server._client)
        self.aliases: dict[str, str] = {}  # every access token a refresh issued -> its user's own token
        self.refresh_owner: dict[str, str] = {}  # every refresh token issued -> its user's own token
        self.storms: dict[str, float] = {}  # service (or "*": all) -> when its revocation storm ends (Unix s)
        self.oauth: Counter[str] = Counter()  # refreshes, refresh_reuse, refresh_invalid, stale_refused
        self.storm_refused: Counter[str] = Counter()  # requests a storm refused, by service
        self.apps: dict[str, dict[str, Any]] = {}  # app-wide state of each API's emulator (app_state)
        self.local = threading.local()  # the request being answered: its access token's state (tokens.check)
        self.total = 0
        self.lock = threading.Lock()

    # -- control ------------------------------------------------------------------------------

    def add_user(self, service: str, token: str, items: int = 0, name: str | None = None,
                 quota: int | None = None, refresh_token: str | None = None, access_ttl: float | None = None,
                 rotation: str | None = None, grace: float | None = None) -> User:
        """`quota`: this user's Stack Exchange daily quota (default: the sandbox's `quota`). With `access_ttl`
        (seconds) and/or `refresh_token`, its tokens expire and rotate (collector/sandbox/tokens.py)."""
        with self.lock:
            user = User(token, service, name or f"user-{len(self.users)}", remaining=self.rate_limit,
                        reset_at=time.time() + self.window, quota=self.quota_max if quota is None else quota)
            user.add(items, time.time())
            self.users[token] = user
            self.served_ids[token] = set()
        tokens.start(self, user, refresh_token, access_ttl, rotation, grace)
        return user

    def key(self, token: str) -> str | None:
        """The user's own token (its key in `users`) for any access token it was given; None if unknown."""
        return token if token in self.users else self.aliases.get(token)

    def storm(self, service: str = "*", seconds: float = 30.0) -> float:
        """A revocation storm: every request to `service` ("*": every service with tokens) is answered as with
        a revoked token for `seconds` (0 ends it); the tokens were never revoked. Returns when it ends."""
        with self.lock:
            self.storms[service] = time.time() + max(float(seconds), 0.0)
            return self.storms[service]

    def add_items(self, token: str, count: int) -> None:
        with self.lock:
            self.users[token].add(count, time.time())

    def remove_items(self, token: str, ids: list[int]) -> list[int]:
        """Items (the sandbox's numeric ids) removed upstream: no API lists them until restored. Returns those found."""
        with self.lock:
            return self.users[token].remove(ids)

    def restore_items(self, token: str, ids: list[int]) -> list[int]:
        """Removed items back in their place (newest first kept). Returns those restored."""
        with self.lock:
            return self.users[token].restore(ids)

    def inject(self, token: str, kind: str, count: int = 1, **params: Any) -> None:
        """The next `count` API requests of this user fail with `kind` (see FAULTS)."""
        if kind not in FAULTS:
            raise ValueError(f"unknown fault kind {kind!r} (known: {', '.join(FAULTS)})")
        if kind == "oversize":  # built now, not while a client waits for it
            _oversize(int(params.get("size", 50_000_000)), params.get("framing") == "gzip")
        with self.lock:
            self.users[token].faults.append({"kind": kind, "count": int(count), **params})

    def _refusal(self, user: User) -> str:
        """Why this request of `user` is answered as with a revoked token: "revoked", "storm", "expired" or
        "superseded" (its access token, tokens.check); "" when it is not."""
        if user.revoked:
            return "revoked"
        now, storms = time.time(), self.storms
        if now < storms.get(user.service, 0) or (user.service not in TOKENLESS and now < storms.get("*", 0)):
            return "storm"
        who, why = getattr(self.local, "stale", ("", ""))
        return str(why) if who == user.token else ""

    def fault(self, user: User) -> Response | None:
        """The response of the next injected fault of this user (or of a refused token: revoked, in a storm,
        expired or superseded), taken now; None when the request is to be answered normally."""
        why = self._refusal(user)
        with self.lock:
            if why:
                self.requests[user.token] += 1
                if why == "storm":
                    self.storm_refused[user.service] += 1
                elif why != "revoked":
                    self.oauth["stale_refused"] += 1
                refused = self._refuse(user)
                refused.fault = "" if why == "revoked" else why
                return refused
            if not user.faults:
                return None
        fault = self._take(user)
        resp = self._fault_reply(user, fault)
        resp.fault = fault["kind"]
        return resp

    def _fault_reply(self, user: User, fault: dict[str, Any]) -> Response:
        kind, seconds = fault["kind"], float(fault.get("seconds", 60))
        echo = f"{'.' * int(fault.get('pad', 0))} (token {user.token})" if fault.get("echo") else ""
        if kind == "status":
            return json_reply(int(fault.get("status", 500)), {"message": "sandbox fault" + echo})
        if kind == "headers":
            return json_reply(int(fault.get("status", 429)), {"message": "sandbox limit headers"},
                         {str(k).lower(): str(v) for k, v in (fault.get("headers") or {}).items()})
        if kind == "rate_limit":
            if user.service == "stackoverflow":
                return json_reply(400, {"error_id": 502, "error_name": "throttle_violation", "error_message":
                                   f"too many requests from this IP, more requests available in {int(seconds)} "
                                   "seconds"}, gzipped=True)
            return json_reply(403, {"message": "API rate limit exceeded"}, {
                "x-ratelimit-limit": str(self.rate_limit), "x-ratelimit-remaining": "0",
                "x-ratelimit-reset": str(int(time.time() + seconds))})
        if kind == "retry_after":
            return json_reply(429, {"message": "slow down"}, {"retry-after": str(int(seconds))})
        if kind == "unauthorized":
            return self._refuse(user, echo)
        if kind == "malformed":
            return Response(200, b'{"items": [1, 2,, oops', {"content-type": "application/json"})
        if kind == "truncated":
            return Response(200, b'[{"starred_at": "2026-01-01T00:00:00Z", "repo": {"id": 1, "full_na',
                            {"content-type": "application/json"})
        if kind == "wrong_type":
            return Response(200, b"<html><body>Service Unavailable</body></html>", {"content-type": "text/html"})
        if kind == "oversize":
            framing = fault.get("framing", "length")
            body = _oversize(int(fault.get("size", 50_000_000)), framing == "gzip")
            if framing == "gzip":  # a gzip bomb: small on the wire, `size` bytes once decoded
                return Response(200, body, {"content-type": "application/json", "content-encoding": "gzip"})
            return Response(200, body, {"content-type": "application/json"}, chunked=framing == "chunked")
        if kind == "timeout":
            return Response(200, b"[]", {"content-type": "application/json"}, action="delay", seconds=seconds)
        if kind == "reset":
            return Response(0, action="reset")
        return Response(200, b"[]" + b" " * 1000, {"content-type": "application/json"}, action="drip",
                        seconds=seconds)

    def _take(self, user: User) -> dict[str, Any]:
        """Consume one use of the user's first fault (counted as a request and as a fault)."""
        with self.lock:
            fault = user.faults[0]
            fault["count"] -= 1
            if fault["count"] <= 0:
                user.faults.pop(0)
            if not _rides(fault):  # a backoff (or 200 headers) rides on a served page, counted there
                self.requests[user.token] += 1
            self.faults_served[fault["kind"]] += 1
            return fault

    def _refuse(self, user: User, echo: str = "") -> Response:
        if user.service == "stackoverflow":
            # api.stackexchange.com/docs/error-handling: invalid_access_token - 402 "An invalid access token was
            # passed to a method" (access_denied - 403 is a token lacking a permission, not a revoked one)
            return json_reply(400, {"error_id": 402, "error_name": "invalid_access_token",
                               "error_message": "the access token was revoked" + echo}, gzipped=True)
        return json_reply(401, {"message": "Bad credentials" + echo, "documentation_url": "https://docs.github.com/rest"})

    def record_transfer(self, **transfer: Any) -> None:
        with self.lock:
            self.transfers.append(transfer)

    def ride(self, user: User) -> dict[str, Any] | None:
        """The user's first fault if it rides on a normally served page (backoff, 200 headers): taken now (the
        page carrying it counts as the request). Asked before `fault`."""
        refused = bool(self._refusal(user))
        with self.lock:
            ride = bool(user.faults) and not refused and _rides(user.faults[0])
        return self._take(user) if ride else None

    def stats(self) -> dict[str, Any]:
        with self.lock:
            return {
                "requests": self.total,
                "by_token": dict(self.requests),
                "served": dict(self.served),
                "unique_served": {t: len(ids) for t, ids in self.served_ids.items()},
                "items": {t: len(u.items) for t, u in self.users.items()},
                "faults": dict(self.faults_served),
                **tokens.stats(self),  # refreshes, refresh_reuse, ..., storm_refused, storms, tokens
            }

    # -- API ----------------------------------------------------------------------------------

    def handle(self, method: str, target: str, headers: dict[str, str], body: bytes) -> Response:
        url = urlsplit(target)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        path = url.path
        if path.startswith("/_sandbox/"):
            return self._control(method, path, body)
        self.local.stale = ("", "")
        with self.lock:
            self.total += 1
            self.log.append(target)
        for pattern, emulator in ROUTES:
            match = pattern.fullmatch(path)
            if match:
                return emulator(self, method, headers, query, match, body)
        return json_reply(404, {"message": "Not Found"})

    def _control(self, method: str, path: str, body: bytes) -> Response:
        # the control API (collector/sandbox/control.py) registers itself, as the emulators do: it imports this module
        return CONTROL[0](self, method, path, body) if CONTROL else json_reply(404, {"message": "no control API"})

    # -- for API emulators (collector/sandbox/apis/*) -----------------------------------------

    def user(self, token: str | None, service: str, headers: dict[str, str] | None = None) -> User | None:
        """The user of an access token to `service` (its own or one a refresh gave it), the hit recorded; None
        for an unknown token. Whether that token is still good is noted for the request (tokens.check), and
        answered by `fault` as a revoked token would be."""
        user = self.users.get(self.key(token or "") or "")
        if user is None or user.service != service:
            return None
        self.local.stale = (user.token, tokens.check(self, user, token or ""))
        arrived = float((headers or {}).get("x-sandbox-arrived") or time.time())
        with self.lock:
            self.hits.setdefault(user.token, []).append(arrived)
        return user

    def bearer_user(self, headers: dict[str, str], service: str) -> User | None:
        """The user of an `Authorization: Bearer <token>` request to `service` (the hit is recorded)."""
        auth = headers.get("authorization", "")
        return self.user(auth[7:].strip() if auth.lower().startswith("bearer ") else None, service, headers)

    def count_request(self, user: User) -> None:
        """Count a request of the user that serves no page (a 304, a rate-limit refusal): `page` counts its own."""
        with self.lock:
            self.requests[user.token] += 1

    def app_state(self, service: str) -> dict[str, Any]:
        """The app-wide state of an API's emulator (e.g. YouTube's daily quota): empty until used, and after a reset."""
        with self.lock:
            return self.apps.setdefault(service, {})

    def quota(self, user: User) -> tuple[bool, int, float]:
        """One request against the user's window quota: (allowed, remaining after it, reset Unix time)."""
        with self.lock:
            now = time.time()
            if now >= user.reset_at:
                user.remaining, user.reset_at = self.rate_limit, now + self.window
            if user.remaining <= 0:
                return False, 0, user.reset_at
            user.remaining -= 1
            return True, user.remaining, user.reset_at

    def serve(self, user: User, start: int, size: int) -> list[dict[str, Any]]:
        """Items [start, start + size) of the user's history (newest first), counted as served.
        Each item is {"id": int, "at": Unix seconds}; ids grow with time."""
        size = min(max(size, 1), self.page_cap)
        start = max(start, 0)
        return self._page_slice(user, start, start + size)

    def position_after(self, user: User, item_id: int) -> int:
        """Index just past the item with this id in the newest-first history (for max_id/after cursors);
        an id that is gone counts by value: items older than it come next."""
        with self.lock:
            for n, item in enumerate(user.items):
                if item["id"] <= item_id:
                    return n + 1 if item["id"] == item_id else n
            return len(user.items)

    def page(self, user: User, page: int, size: int) -> list[dict[str, Any]]:
        """Page `page` (from 1) of `size` items of the user's history (newest first), counted as served; unlike
        `serve`, `size` is not capped."""
        return self._page_slice(user, (page - 1) * size, page * size)

    def _page_slice(self, user: User, start: int, end: int) -> list[dict[str, Any]]:
        with self.lock:
            self.requests[user.token] += 1
            chunk = user.items[start:end]
            self.served[user.token] += len(chunk)
            self.served_ids[user.token].update(i["id"] for i in chunk)
            return list(chunk)

@functools.lru_cache(maxsize=4)
def _oversize(size: int, gzipped: bool) -> bytes:
    body = b"[" + b" " * size + b"]"
    return gzip.compress(body, compresslevel=9) if gzipped else body


def number(value: str | None, default: int) -> int:
    """A query parameter as an integer; `default` when absent or not a number."""
    try:
        return int(value) if value is not None else default
    except ValueError:
        return default


def iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def repo_list(value: Any) -> bool:
    """A usable list of repositories to serve: non-empty, objects only."""
    return isinstance(value, list) and bool(value) and all(isinstance(r, dict) for r in value)


def json_reply(status: int, data: Any, headers: dict[str, str] | None = None, gzipped: bool = False) -> Response:
    body = json.dumps(data).encode()
    extra = {"content-type": "application/json; charset=utf-8", **(headers or {})}
    if gzipped:
        body = gzip.compress(body, compresslevel=1)
        extra["content-encoding"] = "gzip"
    return Response(status, body, extra)


# -- API emulators -------------------------------------------------------------------------------

Emulator = Callable[[Sandbox, str, dict[str, str], dict[str, str], "re.Match[str]", bytes], Response]
ROUTES: list[tuple[re.Pattern[str], Emulator]] = []
CONTROL: list[Callable[[Sandbox, str, str, bytes], Response]] = []  # /_sandbox/... (collector/sandbox/control.py)


def riding(resp: Response) -> bool:
    """A "headers" fault with status 200 (Sandbox.fault): its headers ride on a normally served page."""
    return resp.status == 200 and getattr(resp, "fault", "") == "headers"


def route(pattern: str) -> Callable[[Emulator], Emulator]:
    """Register an API emulator for request paths matching `pattern` (a full match). Emulators live
    in collector/sandbox/apis/, one module per API, imported by the package (collector/sandbox/__init__.py)."""

    def register(fn: Emulator) -> Emulator:
        ROUTES.append((re.compile(pattern), fn))
        return fn

    return register
