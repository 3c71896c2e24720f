"""A local sandbox API: a real HTTP/1.1 server on 127.0.0.1 that imitates the APIs our connectors
call, with the same URL shapes, pagination, headers and body fields, and counts everything it
serves so a test can prove nothing was lost or fetched twice.

    GitHub          GET /user/starred?per_page=&page=    Link, ETag/If-None-Match, x-ratelimit-*
    Stack Exchange  GET /2.3/me/favorites?page=&pagesize= gzip, has_more, quota_*, backoff

Control endpoints (JSON): POST /_sandbox/users {service, token, items, user?} creates a user with
`items` starred things (newest first); POST /_sandbox/users/<token>/add {count} makes new items
arrive; GET /_sandbox/stats returns the counters; POST /_sandbox/reset forgets everything.

Run it alone:  python -m collector.sandbox --port 8900   (prints the base URL)
Point the connectors at it: --set services.github.base_url=http://127.0.0.1:8900
                            --set services.stackoverflow.base_url=http://127.0.0.1:8900/2.3
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gzip
import hashlib
import json
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

REASONS = {200: "OK", 304: "Not Modified", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden",
           404: "Not Found", 429: "Too Many Requests", 500: "Internal Server Error"}


@dataclass
class User:
    token: str
    service: str
    name: str
    items: list[dict[str, Any]] = field(default_factory=list)  # newest first
    next_id: int = 1
    remaining: int = 5000
    reset_at: float = 0.0

    def add(self, count: int, now: float) -> None:
        fresh = []
        for _ in range(count):
            n = self.next_id
            self.next_id += 1
            fresh.append({"id": n, "at": now})
        self.items[:0] = reversed(fresh)


@dataclass
class Response:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


class Sandbox:
    """The state and the counters; `handle` answers one request."""

    def __init__(self, latency: float = 0.0, rate_limit: int = 5000, window: float = 3600.0,
                 page_cap: int = 100):
        self.latency = latency
        self.page_cap = page_cap  # the real APIs cap pages at 100; a lower cap makes many pages cheaply
        self.rate_limit = rate_limit
        self.window = window
        self.users: dict[str, User] = {}
        self.requests: Counter = Counter()  # by token
        self.served: Counter = Counter()  # item handouts by token (an item on two pages counts twice)
        self.served_ids: dict[str, set[int]] = {}
        self.log: list[str] = []  # every request target, to prove no token ever travels in a URL
        self.total = 0
        self.lock = threading.Lock()

    # -- control ------------------------------------------------------------------------------

    def add_user(self, service: str, token: str, items: int = 0, name: str | None = None) -> User:
        with self.lock:
            user = User(token, service, name or f"user-{len(self.users)}", remaining=self.rate_limit,
                        reset_at=time.time() + self.window)
            user.add(items, time.time())
            self.users[token] = user
            self.served_ids[token] = set()
            return user

    def add_items(self, token: str, count: int) -> None:
        with self.lock:
            self.users[token].add(count, time.time())

    def stats(self) -> dict[str, Any]:
        with self.lock:
            return {
                "requests": self.total,
                "by_token": dict(self.requests),
                "served": dict(self.served),
                "unique_served": {t: len(ids) for t, ids in self.served_ids.items()},
                "items": {t: len(u.items) for t, u in self.users.items()},
            }

    # -- API ----------------------------------------------------------------------------------

    def handle(self, method: str, target: str, headers: dict[str, str], body: bytes) -> Response:
        url = urlsplit(target)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        path = url.path
        if path.startswith("/_sandbox/"):
            return self._control(method, path, body)
        with self.lock:
            self.total += 1
            self.log.append(target)
        if path == "/user/starred":
            return self._github(headers, query)
        if path == "/2.3/me/favorites":
            return self._stackexchange(headers, query)
        return _json(404, {"message": "Not Found"})

    def _control(self, method: str, path: str, body: bytes) -> Response:
        data = json.loads(body or b"{}")
        if path == "/_sandbox/stats":
            return _json(200, self.stats())
        if path == "/_sandbox/reset" and method == "POST":
            self.__init__(self.latency, self.rate_limit, self.window, self.page_cap)
            return _json(200, {"ok": True})
        if path == "/_sandbox/users" and method == "POST":
            user = self.add_user(data["service"], data["token"], int(data.get("items", 0)), data.get("user"))
            return _json(200, {"token": user.token, "items": len(user.items)})
        if path.startswith("/_sandbox/users/") and path.endswith("/add") and method == "POST":
            token = path[len("/_sandbox/users/"):-len("/add")]
            if token not in self.users:
                return _json(404, {"message": "no such user"})
            self.add_items(token, int(data.get("count", 1)))
            return _json(200, {"items": len(self.users[token].items)})
        return _json(404, {"message": "no such control endpoint"})

    def _user(self, token: str | None, service: str) -> User | None:
        user = self.users.get(token or "")
        return user if user and user.service == service else None

    def _page(self, user: User, page: int, size: int) -> list[dict[str, Any]]:
        with self.lock:
            self.requests[user.token] += 1
            chunk = user.items[(page - 1) * size: page * size]
            self.served[user.token] += len(chunk)
            self.served_ids[user.token].update(i["id"] for i in chunk)
            return list(chunk)

    def _github(self, headers: dict[str, str], query: dict[str, str]) -> Response:
        auth = headers.get("authorization", "")
        user = self._user(auth[7:] if auth.lower().startswith("bearer ") else None, "github")
        if user is None:
            return _json(401, {"message": "Bad credentials", "documentation_url": "https://docs.github.com/rest"})
        now = time.time()
        if now >= user.reset_at:
            user.remaining, user.reset_at = self.rate_limit, now + self.window
        limits = {"x-ratelimit-limit": str(self.rate_limit), "x-ratelimit-reset": str(int(user.reset_at)),
                  "x-ratelimit-resource": "core"}
        if user.remaining <= 0:
            return _json(403, {"message": "API rate limit exceeded"}, {**limits, "x-ratelimit-remaining": "0"})
        user.remaining -= 1
        limits["x-ratelimit-remaining"] = str(user.remaining)
        size = min(max(_int(query.get("per_page"), 30), 1), self.page_cap)
        page = max(_int(query.get("page"), 1), 1)
        last = max((len(user.items) + size - 1) // size, 1)
        etag = '"' + hashlib.sha1(f"{user.token}:{user.next_id}:{page}:{size}".encode()).hexdigest() + '"'
        if headers.get("if-none-match") == etag:
            user.remaining += 1  # a 304 costs no quota on GitHub
            limits["x-ratelimit-remaining"] = str(user.remaining)
            with self.lock:
                self.requests[user.token] += 1
            return Response(304, headers={**limits, "etag": etag})
        chunk = self._page(user, page, size)
        body = [{"starred_at": _iso(i["at"]), "repo": _repo(user, i)} for i in chunk]
        base = f"{headers.get('x-sandbox-base', '')}/user/starred?per_page={size}"
        link = []
        if page < last:
            link.append(f'<{base}&page={page + 1}>; rel="next"')
            link.append(f'<{base}&page={last}>; rel="last"')
        extra = {**limits, "etag": etag}
        if link:
            extra["link"] = ", ".join(link)
        return _json(200, body, extra)

    def _stackexchange(self, headers: dict[str, str], query: dict[str, str]) -> Response:
        user = self._user(headers.get("x-api-access-token"), "stackoverflow")
        if user is None:
            return _json(400, {"error_id": 401, "error_name": "access_token_required",
                               "error_message": "`access_token` is required"}, gzipped=True)
        size = min(max(_int(query.get("pagesize"), 30), 1), self.page_cap)
        page = max(_int(query.get("page"), 1), 1)
        chunk = self._page(user, page, size)
        items = [{"question_id": i["id"], "title": f"Question {i['id']} &amp; friends",
                  "link": f"https://stackoverflow.com/questions/{i['id']}", "creation_date": int(i["at"]),
                  "owner": {"display_name": user.name}} for i in chunk]
        return _json(200, {"items": items, "has_more": page * size < len(user.items), "quota_max": 10000,
                           "quota_remaining": 9999}, gzipped=True)


def _int(value: str | None, default: int) -> int:
    try:
        return int(value) if value is not None else default
    except ValueError:
        return default


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def _repo(user: User, item: dict[str, Any]) -> dict[str, Any]:
    n = item["id"]
    return {"id": n, "full_name": f"owner{n % 97}/repo-{n}", "html_url": f"https://github.com/owner{n % 97}/repo-{n}",
            "owner": {"login": f"owner{n % 97}"}, "created_at": _iso(item["at"])}


def _json(status: int, data: Any, headers: dict[str, str] | None = None, gzipped: bool = False) -> Response:
    body = json.dumps(data).encode()
    extra = {"content-type": "application/json; charset=utf-8", **(headers or {})}
    if gzipped:
        body = gzip.compress(body, compresslevel=1)
        extra["content-encoding"] = "gzip"
    return Response(status, body, extra)


# -- the HTTP server ---------------------------------------------------------------------------


class Server:
    """Serves a Sandbox on 127.0.0.1 from a background thread (or the current loop via `serve`)."""

    def __init__(self, sandbox: Sandbox | None = None, port: int = 0):
        self.sandbox = sandbox or Sandbox()
        self.port = port
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.AbstractServer | None = None
        self._ready = threading.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def serve(self) -> None:
        self._server = await asyncio.start_server(self._client, "127.0.0.1", self.port, backlog=2048)
        self.port = self._server.sockets[0].getsockname()[1]
        self._loop = asyncio.get_running_loop()
        self._ready.set()
        async with self._server:
            with contextlib.suppress(asyncio.CancelledError):
                await self._server.serve_forever()

    def start(self) -> Server:
        self._thread = threading.Thread(target=lambda: asyncio.run(self.serve()), daemon=True, name="sandbox")
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("sandbox server did not start")
        return self

    def stop(self) -> None:
        if self._loop and self._server:
            self._loop.call_soon_threadsafe(self._server.close)
        if self._thread:
            self._thread.join(5)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                line = await reader.readline()
                if not line:
                    break
                method, target, _version = line.decode("latin-1").split(" ", 2)
                headers = {}
                while (raw := await reader.readline()) not in (b"\r\n", b"\n", b""):
                    name, _, value = raw.decode("latin-1").partition(":")
                    headers[name.strip().lower()] = value.strip()
                body = await reader.readexactly(int(headers.get("content-length", 0) or 0))
                headers["x-sandbox-base"] = f"http://{headers.get('host', f'127.0.0.1:{self.port}')}"
                if self.sandbox.latency and not target.startswith("/_sandbox/"):
                    await asyncio.sleep(self.sandbox.latency)
                resp = self.sandbox.handle(method, target, headers, body)
                head = [f"HTTP/1.1 {resp.status} {REASONS.get(resp.status, 'Status')}",
                        f"content-length: {len(resp.body)}"]
                head += [f"{k}: {v}" for k, v in resp.headers.items()]
                writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + resp.body)
                await writer.drain()
                if headers.get("connection", "").lower() == "close":
                    break
        except (ConnectionError, asyncio.IncompleteReadError, ValueError):
            pass
        finally:
            writer.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m collector.sandbox", description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=8900)
    parser.add_argument("--latency", type=float, default=0.0, help="seconds added to every API reply")
    args = parser.parse_args(argv)
    server = Server(Sandbox(latency=args.latency), args.port)

    async def run() -> None:
        task = asyncio.create_task(server.serve())
        await asyncio.get_running_loop().run_in_executor(None, server._ready.wait)
        print(server.url, flush=True)
        await task

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run())


if __name__ == "__main__":
    main()
